//! From "how QEMU ended" to a pass/fail verdict with a one-line reason.
//!
//! The manager ends a QEMU run through `isa-debug-exit`: writing 0x10 exits with status 33
//! (pass), 0x11 with 35 (fail). QEMU runs with `-no-reboot`, so a triple fault or any reset
//! makes QEMU exit with status 0, which we report as a failure of its own.

use std::time::Duration;

/// Exit status for a manager that reported a pass through the debug-exit port (33).
pub const EXIT_PASS: i32 = bootproto::report::qemu_status(bootproto::report::DEBUG_EXIT_PASS);
/// Exit status for a manager that reported a failure (35).
pub const EXIT_FAIL: i32 = bootproto::report::qemu_status(bootproto::report::DEBUG_EXIT_FAIL);

/// How the QEMU process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    /// Killed by a signal (no exit code).
    Signalled,
    /// We killed it after the timeout.
    TimedOut(Duration),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub pass: bool,
    pub reason: String,
}

/// Decides the verdict from how QEMU ended and what the manager printed.
pub fn decide(ending: &Ending, serial: &str) -> Verdict {
    let panic_line = serial.lines().rev().find(|l| l.starts_with("PANIC: ")).map(str::trim);
    let fail = |reason: String| Verdict { pass: false, reason };
    match ending {
        Ending::Exited(EXIT_PASS) => match panic_line {
            // Cannot happen with the manager's own exit paths, but never call it a pass.
            Some(p) => fail(format!("the manager reported a pass after a panic: {p}")),
            None => Verdict { pass: true, reason: "the manager reported a pass".into() },
        },
        Ending::Exited(EXIT_FAIL) => match panic_line {
            Some(p) => fail(format!("the manager panicked: {}", p.trim_start_matches("PANIC: "))),
            None => {
                let why = serial
                    .lines()
                    .rev()
                    .find(|l| l.contains("ERROR") || l.contains("FAIL"))
                    .map(str::trim)
                    .unwrap_or("no reason printed");
                fail(format!("the manager reported a failure: {why}"))
            }
        },
        Ending::Exited(0) => fail(
            "the machine reset (a triple fault, or a reset request; QEMU ran with -no-reboot)"
                .into(),
        ),
        Ending::Exited(code) => fail(format!(
            "QEMU exited with status {code} (not a manager verdict: QEMU failed to start or crashed; see the serial log)"
        )),
        Ending::Signalled => fail("QEMU was killed by a signal".into()),
        Ending::TimedOut(t) => fail(format!(
            "timed out after {} s without a verdict; QEMU was killed",
            t.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_needs_exit_33_and_no_panic() {
        assert!(decide(&Ending::Exited(33), "boot complete\n").pass);
        assert!(!decide(&Ending::Exited(33), "PANIC: x at a.rs:1:1\n").pass);
    }

    #[test]
    fn a_panic_is_a_failure_with_its_message() {
        let v = decide(&Ending::Exited(35), "hello\nPANIC: self-test at kernel/src/main.rs:9:5\n");
        assert!(!v.pass);
        assert_eq!(v.reason, "the manager panicked: self-test at kernel/src/main.rs:9:5");
    }

    #[test]
    fn other_endings_fail_with_specific_reasons() {
        assert!(decide(&Ending::Exited(0), "").reason.contains("triple fault"));
        assert!(decide(&Ending::Exited(1), "").reason.contains("status 1"));
        let t = decide(&Ending::TimedOut(Duration::from_secs(30)), "");
        assert!(!t.pass && t.reason.contains("30 s"));
        let e = decide(&Ending::Exited(35), "[ 0.1] ERROR acpi: bad MADT\n");
        assert!(e.reason.contains("bad MADT"));
    }
}
