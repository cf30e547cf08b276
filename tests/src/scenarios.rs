//! The QEMU test scenarios run by `cargo xtask test`.
//!
//! Each scenario names the manager build it needs, how to boot it, and a check over what the
//! machine printed and reported. A check asserts on content (the banner, the firmware the
//! manager detected, report fields), never only on the exit status.

use serde_json::Value;

use crate::qemu::{Firmware, Outcome};
use crate::report::collect_sections;

/// Which build of the manager a scenario boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelVariant {
    /// The manager for real machines (USB stick images): never touches QEMU's exit port.
    Usb,
    /// The normal manager, built for QEMU runs (exit port enabled).
    Qemu,
    /// The manager with the `selftest-panic` feature: panics right after its banner.
    SelftestPanic,
}

impl KernelVariant {
    /// Cargo features for the kernel crate.
    pub fn features(self) -> &'static [&'static str] {
        match self {
            KernelVariant::Usb => &[],
            KernelVariant::Qemu => &["qemu-exit"],
            KernelVariant::SelftestPanic => &["qemu-exit", "selftest-panic"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelVariant::Usb => "usb",
            KernelVariant::Qemu => "qemu",
            KernelVariant::SelftestPanic => "selftest-panic",
        }
    }
}

pub struct Scenario {
    pub name: &'static str,
    pub firmware: Firmware,
    pub kernel: KernelVariant,
    pub smp: u32,
    pub memory: &'static str,
    pub timeout_secs: u64,
    /// Returns what is wrong, or `Ok` when the run shows the behaviour.
    pub check: fn(&Outcome) -> Result<(), String>,
}

pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "boot-banner-bios",
            firmware: Firmware::Bios,
            kernel: KernelVariant::Qemu,
            smp: 4,
            memory: "512M",
            timeout_secs: 60,
            check: |o| check_banner(o, "BIOS"),
        },
        Scenario {
            name: "boot-banner-uefi",
            firmware: Firmware::Uefi,
            kernel: KernelVariant::Qemu,
            smp: 4,
            memory: "512M",
            timeout_secs: 90,
            check: |o| check_banner(o, "UEFI"),
        },
        Scenario {
            name: "panic-is-a-failure-bios",
            firmware: Firmware::Bios,
            kernel: KernelVariant::SelftestPanic,
            smp: 4,
            memory: "512M",
            timeout_secs: 60,
            check: check_panic_reported,
        },
    ]
}

fn expect(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn check_banner(o: &Outcome, firmware: &str) -> Result<(), String> {
    expect(o.verdict.pass, || format!("run failed: {}", o.verdict.reason))?;
    let s = &o.serial;
    expect(s.contains("multikernel manager"), || "no banner on the console".into())?;
    expect(s.contains(&format!("firmware: {firmware}")), || {
        format!("the manager did not detect {firmware} firmware")
    })?;
    expect(s.contains("acpi: RSDP at 0x"), || "no RSDP address in the banner".into())?;
    expect(s.lines().any(|l| l.starts_with("memmap 0x") && l.ends_with("usable")), || {
        "no usable memory region listed".into()
    })?;
    let (sections, _) = collect_sections(s);
    let boot = sections.get("boot").ok_or("no `boot` report section")?;
    expect(boot["firmware"] == Value::from(firmware), || format!("report firmware is {}", boot["firmware"]))?;
    // 512 MiB of RAM: well over 400 MiB must be usable, and never more than the machine has.
    let usable = boot["usable_bytes"].as_u64().unwrap_or(0);
    expect((400 << 20..=512 << 20).contains(&usable), || {
        format!("implausible usable memory for a 512 MiB machine: {usable} bytes")
    })?;
    expect(boot["rsdp"].as_u64().unwrap_or(0) != 0, || "report has no RSDP".into())?;
    expect(boot["free_frames"].as_u64().unwrap_or(0) > 1000, || "frame allocator is empty".into())?;
    expect(s.contains("manager: boot complete"), || "the manager did not finish booting".into())
}

fn check_panic_reported(o: &Outcome) -> Result<(), String> {
    expect(!o.verdict.pass, || "a panicking manager was reported as a pass".into())?;
    expect(o.verdict.reason.contains("self-test: the manager panics on purpose"), || {
        format!("the verdict does not carry the panic message: {}", o.verdict.reason)
    })?;
    expect(o.verdict.reason.contains("kernel/src/main.rs"), || {
        format!("the verdict does not carry the panic location: {}", o.verdict.reason)
    })
}
