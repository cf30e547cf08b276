//! The status panel a screen shows above the scrolling log (machines without a serial port):
//! one line per instance, composed here so its content is host-tested; the framebuffer console
//! only draws it.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::machine::Machine;
use super::Supervisor;

impl<M: Machine> Supervisor<'_, M> {
    /// At most `rows` lines: a header, one line per instance (name, CPUs, state, time since
    /// its heartbeat last moved, restarts, its last console line), and, when they do not all
    /// fit, a last line saying how many more there are (`list` on the console shows them).
    pub fn panel_lines(&self, rows: usize) -> Vec<String> {
        let now = self.m.now_us();
        let mut lines = Vec::new();
        if rows == 0 {
            return lines;
        }
        lines.push(format!(
            "{:<12} {:<9} {:<9} {:>9} {:>8}  {}",
            "instance", "cpus", "state", "heartbeat", "restarts", "last console line"
        ));
        let room = rows - 1;
        let shown = if self.instances.len() > room { room.saturating_sub(1) } else { room };
        for inst in self.instances.iter().take(shown) {
            let cpus = match inst.cpus() {
                [] => String::from("-"),
                [one] => format!("{one}"),
                [first, .., last] if inst.cpus().len() > 2 => {
                    format!("{first}..{last} ({})", inst.cpus().len())
                }
                many => many.iter().map(|c| format!("{c}")).collect::<Vec<_>>().join(","),
            };
            let heartbeat = match inst.heartbeat_age_us(now) {
                Some(age) if inst.heartbeat > 0 => {
                    format!("{}.{} s", age / 1_000_000, age / 100_000 % 10)
                }
                _ => String::from("-"),
            };
            let last = inst.console.recent.iter().last().map_or("", String::as_str);
            lines.push(format!(
                "{:<12} {:<9} {:<9} {:>9} {:>8}  {}",
                inst.name,
                cpus,
                inst.state.name(),
                heartbeat,
                inst.restarts,
                last
            ));
        }
        if shown < self.instances.len() {
            lines.push(format!(
                "... and {} more instances ('list' on the serial console)",
                self.instances.len() - shown
            ));
        }
        lines
    }
}
