//! What the manager tells the host about a run: one source for the manager (`kernel/`), the
//! QEMU runner (`tests/`) and xtask.
//!
//! The manager prints machine-readable lines `REPORT {"section":"...",...}` on its serial
//! console next to the human-readable log; the host collects them into the run report. A QEMU
//! build of the manager ends the run through QEMU's `isa-debug-exit` device.

/// The prefix of a report line.
pub const PREFIX: &str = "REPORT ";

/// The report's sections, by the `section` key of their line.
pub mod section {
    pub const BOOT: &str = "boot";
    pub const APIC: &str = "apic";
    pub const CPUS: &str = "cpus";
    pub const MEMSPEED: &str = "memspeed";
    pub const PLAN: &str = "plan";
    pub const INSTANCES: &str = "instances";
    pub const IPIS: &str = "ipis";
    pub const FRAMES: &str = "frames";
    pub const TIMELINE: &str = "timeline";
    pub const CONSOLE: &str = "console";
    pub const CHANNELS: &str = "channels";
}

/// `-device isa-debug-exit,iobase=0xf4,iosize=0x04` (QEMU docs, "isa-debug-exit").
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// What the manager writes to the port for a pass and a failure.
pub const DEBUG_EXIT_PASS: u32 = 0x10;
pub const DEBUG_EXIT_FAIL: u32 = 0x11;

/// QEMU's exit status for a value `v` written to the debug-exit port: `(v << 1) | 1`.
pub const fn qemu_status(v: u32) -> i32 {
    ((v << 1) | 1) as i32
}
