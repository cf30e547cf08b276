//! `cargo xtask inspect madt [--json] FILE...`: the manager's MADT parser, run on the host.
//!
//! Each file is a raw MADT (`/sys/firmware/acpi/tables/APIC` as root, `acpidump -b`, or a
//! capture from `cargo xtask capture-madt`). It goes through [`platform::madt::parse`], the
//! same code the manager runs at boot, so the verdict and the message are the manager's.
//!
//! Every file gets an answer: a file that cannot be read or does not validate is reported with
//! its specific error and the others are still inspected; the exit code is 1 if any failed.
//!
//! With `--json`, one object per file per line:
//! `{"file", "cpus": [{"uid", "apic_id", "enabled", "online_capable", "kind"}], "io_apics":
//! [{"id", "address", "gsi_base"}], "error": null | "message"}`, plus `local_apic_address`,
//! `pcat_compat`, `overrides` and `notes` for tools that want them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use platform::madt::{self, CpuKind, Inventory};
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct MadtArgs {
    /// One JSON object per file per line instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Raw MADT files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub fn run(args: MadtArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for file in &args.files {
        let result = inspect(file);
        failed |= result.is_err();
        let text = if args.json {
            format!("{}\n", to_json(file, &result))
        } else {
            to_text(file, &result)
        };
        // A closed pipe (`| head`) ends the listing quietly instead of panicking.
        if out.write_all(text.as_bytes()).is_err() {
            break;
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Reads and parses one file; the error is the message to show.
fn inspect(file: &Path) -> Result<Inventory, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    madt::parse(&bytes).map_err(|e| e.to_string())
}

fn kind_name(kind: CpuKind) -> &'static str {
    match kind {
        CpuKind::Lapic => "lapic",
        CpuKind::X2apic => "x2apic",
    }
}

fn to_json(file: &Path, result: &Result<Inventory, String>) -> Value {
    match result {
        Ok(inv) => json!({
            "file": file.display().to_string(),
            "local_apic_address": inv.local_apic_address,
            "pcat_compat": inv.pcat_compat,
            "cpus": inv.cpus.iter().map(|c| json!({
                "uid": c.uid,
                "apic_id": c.apic_id,
                "enabled": c.enabled,
                "online_capable": c.online_capable,
                "kind": kind_name(c.kind),
            })).collect::<Vec<_>>(),
            "io_apics": inv.io_apics.iter().map(|io| json!({
                "id": io.id,
                "address": io.address,
                "gsi_base": io.gsi_base,
            })).collect::<Vec<_>>(),
            "overrides": inv.overrides.iter().map(|o| json!({
                "bus": o.bus,
                "source": o.source,
                "gsi": o.gsi,
                "flags": o.flags,
            })).collect::<Vec<_>>(),
            "notes": inv.notes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "error": null,
        }),
        Err(msg) => json!({
            "file": file.display().to_string(),
            "cpus": [],
            "io_apics": [],
            "error": msg,
        }),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub(crate) fn to_text(file: &Path, result: &Result<Inventory, String>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let inv = match result {
        Ok(inv) => inv,
        Err(msg) => {
            let _ = writeln!(s, "{}: REFUSED: {msg}\n", file.display());
            return s;
        }
    };
    let enabled = inv.cpus.iter().filter(|c| c.enabled).count();
    let startable = inv.cpus.iter().filter(|c| c.enabled || c.online_capable).count();
    let _ = writeln!(
        s,
        "{}: MADT revision {}, OEM {:?}, local APIC at {:#x}{}",
        file.display(),
        inv.revision,
        String::from_utf8_lossy(&inv.oem_id).trim_end(),
        inv.local_apic_address,
        if inv.pcat_compat { ", dual 8259 PICs present (PCAT_COMPAT)" } else { "" }
    );
    let _ = writeln!(
        s,
        "  {} CPU(s): {enabled} enabled, {startable} startable (enabled or online-capable)",
        inv.cpus.len()
    );
    let _ = writeln!(
        s,
        "  {:>10} {:>10} {:<7} {:<8} online-capable",
        "uid", "apic_id", "kind", "enabled"
    );
    for c in &inv.cpus {
        let _ = writeln!(
            s,
            "  {:>10} {:>10} {:<7} {:<8} {}",
            c.uid,
            c.apic_id,
            kind_name(c.kind),
            yes_no(c.enabled),
            yes_no(c.online_capable)
        );
    }
    let _ = writeln!(s, "  {} IO APIC(s)", inv.io_apics.len());
    for io in &inv.io_apics {
        let _ =
            writeln!(s, "    id {:>3} at {:#010x}, GSI base {}", io.id, io.address, io.gsi_base);
    }
    if !inv.overrides.is_empty() {
        let _ = writeln!(s, "  {} interrupt source override(s)", inv.overrides.len());
        for o in &inv.overrides {
            let bus = if o.bus == 0 { "ISA".to_string() } else { format!("bus {}", o.bus) };
            let _ = writeln!(
                s,
                "    {bus} IRQ {:>2} -> GSI {:>3} (flags {:#06x})",
                o.source, o.gsi, o.flags
            );
        }
    }
    for n in &inv.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_file_gets_an_error_object() {
        let f = Path::new("/nonexistent/APIC");
        let v = to_json(f, &inspect(f));
        assert!(v["error"].as_str().unwrap().contains("cannot read"));
        assert_eq!(v["cpus"], json!([]));
    }

    #[test]
    fn committed_capture_is_listed() {
        let f =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../platform/tests/data/madt/q35-smp4.bin");
        let v = to_json(&f, &inspect(&f));
        assert_eq!(v["error"], Value::Null);
        assert_eq!(v["cpus"].as_array().unwrap().len(), 4);
        assert_eq!(v["cpus"][3]["apic_id"], 3);
        assert_eq!(v["cpus"][0]["kind"], "lapic");
        assert!(!v["io_apics"].as_array().unwrap().is_empty());
        assert!(to_text(&f, &inspect(&f)).contains("4 CPU(s)"));
    }
}
