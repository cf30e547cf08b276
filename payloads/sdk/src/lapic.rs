//! The instance's own CPU's local APIC: just what the SDK needs for waits that halt (the
//! timer) and, for channels, doorbells (fixed IPIs to a peer's CPU).
//!
//! The mode is read from this CPU's `IA32_APIC_BASE` (SDM Vol. 3A, "Local APIC Status and
//! Location"): with x2APIC enabled the registers are MSRs, otherwise they are the 4 KiB page
//! the manager mapped uncached at `BootInfo::lapic_base`. An APIC the SDK cannot reach (no
//! page mapped and no x2APIC) leaves it `None`, and waits spin instead.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// IA32_APIC_BASE (SDM Vol. 4, "Model-Specific Registers"): bit 10 x2APIC enable, bit 11
/// global enable.
const IA32_APIC_BASE: u32 = 0x1B;
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_EN: u64 = 1 << 11;

/// Register offsets in xAPIC mode (SDM Vol. 3A, "Local APIC Register Address Map"); the
/// x2APIC MSR is `0x800 + offset / 16`.
const REG_ID: u32 = 0x20;
const REG_EOI: u32 = 0xB0;
const REG_SVR: u32 = 0xF0;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_DIVIDE: u32 = 0x3E0;
/// SVR bit 8: software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// Timer divide configuration "divide by 1".
const DIVIDE_BY_1: u32 = 0b1011;
/// ICR delivery status (xAPIC): the IPI has not left yet.
const ICR_PENDING: u32 = 1 << 12;
/// Bound on waiting for the ICR to be free (polls).
const ICR_POLLS: u32 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    XApic { base: u64 },
    X2Apic,
}

/// 0: not set up; 1: xAPIC at `MMIO`; 2: x2APIC.
static MODE: AtomicU8 = AtomicU8::new(0);
static MMIO: AtomicU64 = AtomicU64::new(0);

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading IA32_APIC_BASE or an x2APIC register MSR in the mode that has it; no
    // memory effects.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn wrmsr(msr: u32, v: u64) {
    // SAFETY: only x2APIC register MSRs of this CPU's own APIC are written, with values the SDM
    // defines for them.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32,
            options(nostack, preserves_flags))
    };
}

/// The mode this CPU's APIC is in, and whether the SDK can reach it.
pub fn detect(mapped_base: u64) -> Option<Mode> {
    let base = rdmsr(IA32_APIC_BASE);
    if base & APIC_BASE_EN == 0 {
        return None;
    }
    if base & APIC_BASE_EXTD != 0 {
        return Some(Mode::X2Apic);
    }
    // The page must be the one this CPU's APIC decodes, and the manager must have mapped it.
    let decoded = base & 0x000F_FFFF_FFFF_F000;
    (mapped_base != 0 && mapped_base == decoded).then_some(Mode::XApic { base: mapped_base })
}

/// Uses `mode` from now on (set once, by `irq::init`).
pub(crate) fn set_mode(mode: Mode) {
    match mode {
        Mode::XApic { base } => {
            MMIO.store(base, Ordering::Relaxed);
            MODE.store(1, Ordering::Release);
        }
        Mode::X2Apic => MODE.store(2, Ordering::Release),
    }
}

fn read(reg: u32) -> u32 {
    match MODE.load(Ordering::Acquire) {
        1 => {
            let p = (MMIO.load(Ordering::Relaxed) + u64::from(reg)) as *const u32;
            // SAFETY: `p` is a register of the APIC page the manager mapped uncached for this
            // instance (checked by `detect`); registers are read with aligned 32-bit loads.
            unsafe { p.read_volatile() }
        }
        2 => rdmsr(0x800 + reg / 16) as u32,
        _ => 0,
    }
}

fn write(reg: u32, v: u32) {
    match MODE.load(Ordering::Acquire) {
        1 => {
            let p = (MMIO.load(Ordering::Relaxed) + u64::from(reg)) as *mut u32;
            // SAFETY: as in `read`; writes of the registers the SDK owns on its own CPU.
            unsafe { p.write_volatile(v) }
        }
        2 => wrmsr(0x800 + reg / 16, u64::from(v)),
        _ => {}
    }
}

/// Whether the APIC is usable (`set_mode` ran).
pub fn ready() -> bool {
    MODE.load(Ordering::Acquire) != 0
}

/// Software-enables this CPU's APIC with spurious vector `spurious`, and routes the timer to
/// `timer_vector` (one-shot, divide by 1, stopped).
pub(crate) fn enable(spurious: u8, timer_vector: u8) {
    write(REG_SVR, SVR_ENABLE | u32::from(spurious));
    write(REG_TIMER_DIVIDE, DIVIDE_BY_1);
    write(REG_TIMER_INITIAL, 0);
    write(REG_LVT_TIMER, u32::from(timer_vector));
}

/// Starts the timer counting down `count` ticks (0 stops it).
pub(crate) fn arm_timer(count: u32) {
    write(REG_TIMER_INITIAL, count);
}

/// End of interrupt (from an interrupt handler).
pub(crate) fn eoi() {
    write(REG_EOI, 0);
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    match MODE.load(Ordering::Acquire) {
        2 => read(REG_ID),
        _ => read(REG_ID) >> 24,
    }
}

/// Sends a fixed IPI with `vector` to the CPU with `apic_id` (physical destination). Returns
/// false if the APIC is not usable or the IPI never left.
pub fn send_ipi(apic_id: u32, vector: u8) -> bool {
    match MODE.load(Ordering::Acquire) {
        1 => {
            write(REG_ICR_HIGH, apic_id << 24);
            write(REG_ICR_LOW, u32::from(vector));
            (0..ICR_POLLS).any(|_| read(REG_ICR_LOW) & ICR_PENDING == 0)
        }
        2 => {
            wrmsr(0x830, (u64::from(apic_id) << 32) | u64::from(vector));
            true
        }
        _ => false,
    }
}
