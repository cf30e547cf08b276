//! What a Linux instance is given: where its boot data goes in its region, the e820 map that
//! lists only what it owns, the command line the manager puts before the user's, and the check
//! that a kernel fits (run by `cargo xtask check` and by the manager alike).
//!
//! The facts behind each choice (measured on an unmodified Debian 6.1 kernel, with sources) are
//! in `shared/research/linux-instance.md`; `docs/linux.md` says the same for users.
//!
//! Region layout (`base` ≥ 16 MiB in practice; the planner places it):
//! ```text
//! base                                                                      base + size
//! | kernel window [load, load + init_size) | initrd | free RAM | cmdline | ACPI | native area |
//! ```
//! - the kernel is placed by [`crate::bzimage::place`] below `kernel_limit`;
//! - `cmdline` is one page; the ACPI view ([`crate::acpiview`]) follows it;
//! - the native area is the multikernel [`Layout`] for one CPU: its boot-info page holds the
//!   zero page, its status page is the opt-in heartbeat page, its slot is the boot CPU's
//!   start-up slot (GDT, TSS, early IDT) the trampoline uses before jumping to Linux.
//!
//! The e820 map: the instance's low slice (below 1 MiB, for Linux's real-mode trampoline,
//! which it needs even on one CPU) and `[base, cmdline)` as RAM; the command-line page and the
//! native area reserved; the ACPI pages as ACPI. Nothing else exists for it.
//!
//! # Invariants
//! A [`LinuxLayout`] has `base ≤ kernel_limit = cmdline < acpi < native.reserved_start ≤ end`,
//! all page-aligned.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use bootproto::layout::{Layout, PAGE};

use crate::acpiview::{self, ViewSpec};
use crate::bundle::Uart;
use crate::bzimage::{self, Kernel, PlaceError, E820, E820_ACPI, E820_RAM, E820_RESERVED};
use crate::memmap::Range;

/// Bytes of low memory (below 1 MiB) each Linux instance gets for its real-mode trampoline:
/// Linux 6.1 took 28 KiB (7 pages, `reserve_real_mode`); 64 KiB leaves room for other versions.
pub const LOW_MEMORY_BYTES: u64 = 64 * 1024;

/// Where a Linux instance's boot data sits in its region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxLayout {
    /// The native layout for one CPU (zero page in `boot_info`, heartbeat page in `status`,
    /// the boot CPU's slot).
    pub native: Layout,
    /// The command-line page: also the first byte the kernel may not use.
    pub cmdline: u64,
    /// The ACPI view's address and length (page-rounded).
    pub acpi: u64,
    pub acpi_len: u64,
}

impl LinuxLayout {
    /// `None` if the region cannot hold the boot data and one page more.
    pub fn new(base: u64, size: u64, acpi_bytes: u64) -> Option<Self> {
        let native = Layout::new(base, size, 1)?;
        let acpi_len = acpi_bytes.checked_add(PAGE - 1)? & !(PAGE - 1);
        let acpi = native.reserved_start.checked_sub(acpi_len)?;
        let cmdline = acpi.checked_sub(PAGE)?;
        (cmdline > base).then_some(LinuxLayout { native, cmdline, acpi, acpi_len })
    }

    /// The kernel and its initrd must end at or below this.
    pub fn kernel_limit(&self) -> u64 {
        self.cmdline
    }

    /// The zero page's address (RSI at entry).
    pub fn zero_page(&self) -> u64 {
        self.native.boot_info
    }

    /// The e820 table: `low` (the instance's slice below 1 MiB) and the region.
    pub fn e820(&self, low: Option<Range>) -> Vec<E820> {
        let mut v = Vec::new();
        if let Some(l) = low.filter(|l| !l.is_empty()) {
            v.push(E820 { addr: l.start, size: l.len(), kind: E820_RAM });
        }
        let n = &self.native;
        v.push(E820 { addr: n.base, size: self.cmdline - n.base, kind: E820_RAM });
        v.push(E820 { addr: self.cmdline, size: PAGE, kind: E820_RESERVED });
        v.push(E820 { addr: self.acpi, size: self.acpi_len, kind: E820_ACPI });
        let tail = n.reserved_start;
        v.push(E820 { addr: tail, size: n.end() - tail, kind: E820_RESERVED });
        v
    }
}

/// The manager's part of the command line, before the user's (who can override any of it: the
/// kernel takes the last value of a repeated option). Each option's reason is in
/// `docs/linux.md`, "The command line".
///
/// `status` is the instance's status page: `mk.status=<address>` tells an init that wants to
/// report in where to write (see `docs/linux.md`, "Telling the manager it is alive"); Linux
/// itself ignores the option.
pub fn default_cmdline(uart: Option<Uart>, tsc_khz: u64, initrd: bool, status: u64) -> String {
    let mut s = String::new();
    if let Some(u) = uart {
        let port = u.io_base();
        s += &format!(
            "console=uart8250,io,{port:#x},115200n8 earlycon=uart8250,io,{port:#x},115200n8 "
        );
    }
    s += "8250.nr_uarts=1 nokaslr no5lvl pci=off iommu=off clocksource=tsc tsc=reliable ";
    if tsc_khz > 0 {
        s += &format!("tsc_early_khz={tsc_khz} ");
    }
    s += "no_ipi_broadcast=1 nmi_watchdog=0 io_delay=none panic=0 sysctl.kernel.sysrq=0";
    if initrd {
        s += " rdinit=/init";
    }
    s += &format!(" mk.status={status:#x}");
    s
}

/// The whole command line: the defaults, then the user's.
pub fn cmdline(defaults: &str, user: &str) -> String {
    match user.trim() {
        "" => String::from(defaults),
        u => format!("{defaults} {u}"),
    }
}

/// What an instance gives a Linux kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fit<'a> {
    pub memory: u64,
    pub cpus: usize,
    pub initrd_len: u64,
    pub cmdline: &'a str,
    pub uart: Option<Uart>,
}

/// Why a Linux kernel cannot run in what its instance gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinuxError {
    /// The region cannot even hold the boot data.
    RegionTooSmall {
        memory: u64,
    },
    Place(PlaceError),
    /// The command line (defaults included) is longer than the kernel accepts.
    CmdlineTooLong {
        len: usize,
        max: u32,
    },
    /// The ACPI view cannot be built.
    Acpi(acpiview::ViewError),
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinuxError::RegionTooSmall { memory } => write!(
                f,
                "{} KiB of memory cannot hold a Linux instance's boot data",
                memory / 1024
            ),
            LinuxError::Place(e) => e.fmt(f),
            LinuxError::CmdlineTooLong { len, max } => write!(
                f,
                "the command line is {len} bytes with the manager's defaults; this kernel takes \
                 at most {max} (cmdline_size)"
            ),
            LinuxError::Acpi(e) => write!(f, "its ACPI view cannot be built: {e}"),
        }
    }
}

impl core::error::Error for LinuxError {}

/// The ACPI view's size for `cpus` CPUs, as large as any APIC IDs can make it (x2APIC
/// entries), with `uarts` UARTs.
pub fn acpi_bytes_bound(cpus: usize, uart: Option<Uart>) -> Result<u64, LinuxError> {
    let ids: Vec<u32> = (0..cpus as u32).map(|i| 300 + i).collect();
    let uarts: Vec<u16> = uart.map(Uart::io_base).into_iter().collect();
    let spec = ViewSpec {
        cpus: &ids,
        uarts: &uarts,
        lapic_base: acpiview::DEFAULT_LAPIC_BASE,
        oem_id: *b"MKRNL ",
    };
    acpiview::size(&spec).map(|s| s as u64).map_err(LinuxError::Acpi)
}

/// Whether `kernel` fits what `fit` gives it: the boot data, the decompression window and the
/// initrd in `fit.memory` bytes (placed at 16 MiB or above, where the planner puts Linux), and
/// the command line within the kernel's limit.
pub fn check_fit(kernel: &Kernel, fit: &Fit<'_>) -> Result<(), LinuxError> {
    let acpi = acpi_bytes_bound(fit.cpus.max(1), fit.uart)?;
    let base = bzimage::MIN_LOAD_ADDRESS;
    let size = fit.memory & !(PAGE - 1);
    let layout = LinuxLayout::new(base, size, acpi)
        .ok_or(LinuxError::RegionTooSmall { memory: fit.memory })?;
    bzimage::place(kernel, base, layout.kernel_limit(), fit.initrd_len)
        .map_err(LinuxError::Place)?;
    let defaults = default_cmdline(fit.uart, u32::MAX as u64, fit.initrd_len > 0, u64::MAX);
    let len = cmdline(&defaults, fit.cmdline).len();
    if len > kernel.cmdline_size as usize {
        return Err(LinuxError::CmdlineTooLong { len, max: kernel.cmdline_size });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_stacks_cmdline_acpi_and_the_native_area_at_the_top() {
        let base = 0x1000_0000;
        let l = LinuxLayout::new(base, 256 << 20, 700).unwrap();
        let end = base + (256 << 20);
        assert_eq!(l.native.end(), end);
        assert_eq!(l.acpi_len, PAGE, "700 bytes round up to a page");
        assert_eq!(l.acpi + l.acpi_len, l.native.reserved_start);
        assert_eq!(l.cmdline + PAGE, l.acpi);
        assert_eq!(l.kernel_limit(), l.cmdline);
        assert_eq!(l.zero_page(), end - PAGE, "the zero page is the boot-info page");
        assert!(LinuxLayout::new(base, 16 << 10, 700).is_none(), "too small for the boot data");
    }

    #[test]
    fn the_e820_lists_only_the_instances_memory_with_the_right_types() {
        let base = 0x1000_0000;
        let l = LinuxLayout::new(base, 128 << 20, 5000).unwrap();
        let low = Range::new(0x9_0000, 0xA_0000);
        let e = l.e820(Some(low));
        assert_eq!(e[0], E820 { addr: 0x9_0000, size: 0x1_0000, kind: E820_RAM });
        assert_eq!(e[1], E820 { addr: base, size: l.cmdline - base, kind: E820_RAM });
        assert_eq!(e[2].kind, E820_RESERVED);
        assert_eq!(e[3], E820 { addr: l.acpi, size: 2 * PAGE, kind: E820_ACPI });
        // Contiguous from base to the region's end, nothing outside.
        let total: u64 = e[1..].iter().map(|x| x.size).sum();
        assert_eq!(total, 128 << 20);
        for w in e[1..].windows(2) {
            assert_eq!(w[0].addr + w[0].size, w[1].addr);
        }
        assert_eq!(l.e820(None).len(), 4, "no low slice, no entry for it");
    }

    #[test]
    fn the_default_command_line_keeps_linux_off_shared_hardware() {
        let c = default_cmdline(Some(Uart::Com2), 2_596_132, true, 0x1234_5000);
        for must in [
            "console=uart8250,io,0x2f8,115200n8",
            "earlycon=uart8250,io,0x2f8,115200n8",
            "8250.nr_uarts=1",
            "no_ipi_broadcast=1",
            "pci=off",
            "panic=0",
            "tsc_early_khz=2596132",
            "rdinit=/init",
            "mk.status=0x12345000",
        ] {
            assert!(c.contains(must), "{must} missing from {c}");
        }
        assert!(!c.contains("ttyS") && !c.contains("0x3f8"), "never the manager's COM1: {c}");
        let none = default_cmdline(None, 0, false, 0);
        assert!(
            !none.contains("console=")
                && !none.contains("tsc_early_khz")
                && !none.contains("rdinit")
        );
        assert_eq!(cmdline("a b", "  "), "a b");
        assert_eq!(cmdline("a b", "quiet"), "a b quiet", "the user's options come last and win");
    }
}
