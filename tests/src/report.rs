//! The run report: one JSON file per QEMU run, for people and for CI.
//!
//! The host fills in how the run was set up and how it ended; the manager contributes
//! sections by printing `REPORT {"section":NAME,...}` lines on its console (see
//! `kernel/src/report.rs`). Each section lands under its name at the top level of the report;
//! a later line for the same section replaces an earlier one (the manager re-emits tables as
//! they change), and a line of the form `{"section":NAME,"items":[...]}` contributes the array
//! itself. `version` grows when the meaning of a field changes.

use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

/// The prefix of a report line (one source: `bootproto::report`).
pub use bootproto::report::PREFIX as REPORT_PREFIX;
pub const REPORT_VERSION: u32 = 1;

/// One device UART of a run: `{"device": "com2", "instance": NAME, "log": PATH}`.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device: String,
    pub instance: String,
    pub log: String,
}

#[derive(Serialize, Debug, Clone)]
pub struct RunReport {
    pub version: u32,
    pub firmware: String,
    pub smp: u32,
    pub memory: String,
    pub machine: String,
    pub accel: String,
    pub result: String,
    pub reason: String,
    pub serial_log: String,
    pub duration_ms: u64,
    pub qemu_command: Vec<String>,
    /// The UARTs instances owned, and where each one's output went.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceRecord>,
    /// Sections the manager reported (`boot`, and later `cpus`, `plan`, `instances`).
    #[serde(flatten)]
    pub sections: Map<String, Value>,
    /// Report lines that were not valid JSON (a corrupted console): kept, never dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub malformed_lines: Vec<String>,
}

/// Collects the manager's report sections from a console log.
pub fn collect_sections(serial: &str) -> (Map<String, Value>, Vec<String>) {
    let mut sections = Map::new();
    let mut malformed = Vec::new();
    for line in serial.lines() {
        let Some(json) = line.trim_end_matches('\r').strip_prefix(REPORT_PREFIX) else { continue };
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(mut obj)) => {
                let Some(Value::String(name)) = obj.remove("section") else {
                    malformed.push(line.to_string());
                    continue;
                };
                if is_reserved(&name) {
                    malformed.push(line.to_string());
                    continue;
                }
                let value = match (obj.len(), obj.remove("items")) {
                    (1, Some(items)) => items,
                    (_, Some(items)) => {
                        obj.insert("items".into(), items);
                        Value::Object(obj)
                    }
                    (_, None) => Value::Object(obj),
                };
                sections.insert(name, value);
            }
            _ => malformed.push(line.to_string()),
        }
    }
    (sections, malformed)
}

/// Section names that would collide with the host's own fields.
fn is_reserved(name: &str) -> bool {
    matches!(
        name,
        "version"
            | "firmware"
            | "smp"
            | "memory"
            | "machine"
            | "accel"
            | "result"
            | "reason"
            | "serial_log"
            | "duration_ms"
            | "qemu_command"
            | "malformed_lines"
    )
}

impl RunReport {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_collected_last_wins_and_items_unwrap() {
        let log = "noise\nREPORT {\"section\":\"boot\",\"firmware\":\"BIOS\"}\n\
                   REPORT {\"section\":\"cpus\",\"items\":[{\"apic_id\":0}]}\n\
                   REPORT {\"section\":\"boot\",\"firmware\":\"UEFI\"}\r\n";
        let (s, bad) = collect_sections(log);
        assert!(bad.is_empty());
        assert_eq!(s["boot"]["firmware"], "UEFI");
        assert_eq!(s["cpus"][0]["apic_id"], 0);
    }

    #[test]
    fn malformed_and_colliding_lines_are_kept_aside() {
        let log = "REPORT {not json\nREPORT {\"section\":\"result\",\"x\":1}\nREPORT [1]\n";
        let (s, bad) = collect_sections(log);
        assert!(s.is_empty());
        assert_eq!(bad.len(), 3);
    }
}
