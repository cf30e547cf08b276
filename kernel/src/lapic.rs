//! The bootstrap CPU's local APIC: just enough to send INIT and Start-up IPIs.
//!
//! The mode in force decides the path (SDM Vol. 3A, "Advanced Programmable Interrupt
//! Controller (APIC)"): in xAPIC mode the ICR is two 32-bit MMIO registers (high half first,
//! the write to the low half sends) and the delivery-status bit tells when the IPI left; in
//! x2APIC mode the ICR is one 64-bit MSR write with the destination in bits 63:32 and no
//! delivery status. Firmware on modern machines may hand over the BSP in x2APIC mode already,
//! where MMIO IPIs silently do nothing, so the mode is read from `IA32_APIC_BASE`, never
//! assumed.

use platform::apic::{ApicBase, ApicMode, IA32_APIC_BASE_MSR};
use platform::apstart::{Ipi, IpiError};
use x86_64::registers::model_specific::Msr;

use crate::time::Deadline;

/// xAPIC register offsets (SDM Vol. 3A, "Local APIC Register Address Map").
const XAPIC_ID: u64 = 0x20;
const XAPIC_EOI: u64 = 0xB0;
const XAPIC_SVR: u64 = 0xF0;
const XAPIC_ICR_LOW: u64 = 0x300;
const XAPIC_ICR_HIGH: u64 = 0x310;
const XAPIC_LVT_TIMER: u64 = 0x320;
const XAPIC_TIMER_INITIAL: u64 = 0x380;
const XAPIC_TIMER_CURRENT: u64 = 0x390;
const XAPIC_TIMER_DIVIDE: u64 = 0x3E0;
/// x2APIC MSRs (SDM Vol. 3A, "x2APIC Register Address Space"): the xAPIC offset / 16 + 0x800.
const X2APIC_ID_MSR: u32 = 0x802;
const X2APIC_EOI_MSR: u32 = 0x80B;
const X2APIC_SVR_MSR: u32 = 0x80F;
const X2APIC_ICR_MSR: u32 = 0x830;

/// The vector the manager's LAPIC timer interrupts on (its only interrupt; SDM Vol. 3A,
/// "Local Vector Table": vectors 0-31 are reserved for exceptions).
pub const TIMER_VECTOR: u8 = 0x40;
/// Timer divide configuration "divide by 1" (SDM Vol. 3A, "Divide Configuration Register").
const TIMER_DIVIDE_BY_1: u32 = 0b1011;
/// LVT mask bit.
const LVT_MASKED: u32 = 1 << 16;
/// How long the timer is counted against the TSC at boot.
const TIMER_CALIBRATION_US: u64 = 10_000;

/// Where the interrupt handler sends its EOI: 0 = x2APIC MSR, otherwise the xAPIC EOI
/// register's virtual address (set once by [`Lapic::bsp`]).
static EOI_TARGET: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Signals end of interrupt to the BSP's local APIC (called by the timer handler).
pub fn eoi() {
    match EOI_TARGET.load(core::sync::atomic::Ordering::Relaxed) {
        0 => {
            // SAFETY: the EOI MSR exists in x2APIC mode, which EOI_TARGET = 0 means; writing 0
            // signals end of interrupt and nothing else.
            unsafe { Msr::new(X2APIC_EOI_MSR).write(0) };
        }
        addr => {
            // SAFETY: `addr` is the xAPIC EOI register, mapped through the physical-memory
            // window; a 32-bit write of 0 signals end of interrupt.
            unsafe { (addr as *mut u32).write_volatile(0) };
        }
    }
}

/// ICR fields (SDM Vol. 3A, "Interrupt Command Register (ICR)").
const ICR_DELIVERY_MODE: u32 = 0b111 << 8;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_TRIGGER_LEVEL: u32 = 1 << 15;
/// SVR bit 8: APIC software enable; vector 0xFF for spurious interrupts.
const SVR_ENABLE: u32 = 1 << 8;
const SPURIOUS_VECTOR: u32 = 0xFF;
/// Bound on waiting for the ICR's delivery status to clear.
const ICR_DELIVERY_TIMEOUT_US: u64 = 100_000;

pub struct Lapic {
    pub base: ApicBase,
    mmio_virt: u64,
    /// INITs and SIPIs sent, per APIC ID (for the run report: which CPUs were, and were not,
    /// sent an IPI). One entry per CPU ever addressed.
    pub sent: alloc::collections::BTreeMap<u32, IpiCount>,
}

/// How many INIT (asserts) and Start-up IPIs one APIC ID was sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct IpiCount {
    pub init: u32,
    pub sipi: u32,
}

/// Switches the BSP's local APIC from xAPIC to x2APIC mode when the CPU supports it (SDM Vol.
/// 3A, "x2APIC State Transitions": xAPIC → x2APIC by setting EXTD while EN is set). x2APIC
/// addresses every APIC ID with MSR writes, and is what large machines' firmware hands over
/// anyway. Returns whether the mode was changed.
pub fn enable_x2apic_if_supported(supported: bool) -> bool {
    let mut msr = Msr::new(IA32_APIC_BASE_MSR);
    // SAFETY: reading IA32_APIC_BASE has no side effects.
    let raw = unsafe { msr.read() };
    if !supported || ApicBase::from_msr(raw).mode != ApicMode::XApic {
        return false;
    }
    // SAFETY: the CPU reports x2APIC support (CPUID.1:ECX[21]) and the APIC is enabled in
    // xAPIC mode, from which setting EXTD is a legal transition; interrupts are off.
    unsafe { msr.write(raw | platform::apic::APIC_BASE_EXTD) };
    true
}

impl Lapic {
    /// Reads the BSP's APIC mode and base; software-enables the APIC.
    pub fn bsp(phys_offset: u64) -> Lapic {
        // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU; reading it has no side effects.
        let raw = unsafe { Msr::new(IA32_APIC_BASE_MSR).read() };
        let base = ApicBase::from_msr(raw);
        let lapic = Lapic {
            base,
            mmio_virt: phys_offset + base.base,
            sent: alloc::collections::BTreeMap::new(),
        };
        let eoi = match base.mode {
            ApicMode::X2Apic => 0,
            _ => lapic.mmio_virt + XAPIC_EOI,
        };
        EOI_TARGET.store(eoi, core::sync::atomic::Ordering::Relaxed);
        match base.mode {
            ApicMode::XApic => {
                let svr = lapic.read(XAPIC_SVR);
                lapic.write(XAPIC_SVR, svr | SVR_ENABLE | SPURIOUS_VECTOR);
            }
            ApicMode::X2Apic => {
                let mut msr = Msr::new(X2APIC_SVR_MSR);
                // SAFETY: in x2APIC mode the SVR MSR exists; setting the enable bit only lets
                // the APIC accept interrupts, and the manager keeps interrupts off.
                let svr = unsafe { msr.read() };
                // SAFETY: as above.
                unsafe { msr.write(svr | (SVR_ENABLE | SPURIOUS_VECTOR) as u64) };
            }
            ApicMode::Disabled | ApicMode::Invalid => {}
        }
        lapic
    }

    /// This CPU's APIC ID (x2APIC ID in x2APIC mode).
    pub fn id(&self) -> Option<u32> {
        match self.base.mode {
            ApicMode::XApic => Some(platform::apic::xapic_id_from_register(self.read(XAPIC_ID))),
            ApicMode::X2Apic => {
                // SAFETY: the x2APIC ID MSR exists in x2APIC mode; reading it is side-effect free.
                Some(unsafe { Msr::new(X2APIC_ID_MSR).read() } as u32)
            }
            ApicMode::Disabled | ApicMode::Invalid => None,
        }
    }

    /// A register by its xAPIC offset, through MMIO or the x2APIC MSR (offset / 16 + 0x800).
    fn reg_read(&self, reg: u64) -> u32 {
        match self.base.mode {
            ApicMode::X2Apic => {
                // SAFETY: in x2APIC mode every xAPIC register at offset `reg` is the MSR
                // 0x800 + reg / 16; the manager reads only timer registers this way.
                unsafe { Msr::new(0x800 + (reg / 16) as u32).read() as u32 }
            }
            _ => self.read(reg),
        }
    }

    fn reg_write(&self, reg: u64, value: u32) {
        match self.base.mode {
            ApicMode::X2Apic => {
                let mut msr = Msr::new(0x800 + (reg / 16) as u32);
                // SAFETY: as in `reg_read`; the manager writes only the timer's registers and
                // the LVT entry that routes it to TIMER_VECTOR.
                unsafe { msr.write(value as u64) };
            }
            _ => self.write(reg, value),
        }
    }

    /// Measures the timer's input clock against the TSC; leaves the timer stopped and its LVT
    /// entry set to interrupt on [`TIMER_VECTOR`] (one-shot). 0 if the APIC is unusable.
    pub fn calibrate_timer(&self) -> u64 {
        if !matches!(self.base.mode, ApicMode::XApic | ApicMode::X2Apic) {
            return 0;
        }
        self.reg_write(XAPIC_TIMER_DIVIDE, TIMER_DIVIDE_BY_1);
        self.reg_write(XAPIC_LVT_TIMER, LVT_MASKED | TIMER_VECTOR as u32);
        self.reg_write(XAPIC_TIMER_INITIAL, u32::MAX);
        crate::time::delay_micros(TIMER_CALIBRATION_US);
        let left = self.reg_read(XAPIC_TIMER_CURRENT);
        self.reg_write(XAPIC_TIMER_INITIAL, 0);
        self.reg_write(XAPIC_LVT_TIMER, TIMER_VECTOR as u32);
        u64::from(u32::MAX - left) * 1_000_000 / TIMER_CALIBRATION_US
    }

    /// Starts the timer counting down `count` ticks (0 stops it); it interrupts once.
    pub fn arm_timer(&self, count: u32) {
        self.reg_write(XAPIC_TIMER_INITIAL, count);
    }

    fn read(&self, reg: u64) -> u32 {
        let p = (self.mmio_virt + reg) as *const u32;
        // SAFETY: in xAPIC mode the APIC's 4 KiB register page is at `base`, mapped through
        // the bootloader's physical-memory window; registers are 32-bit aligned and must be
        // accessed with 32-bit volatile loads.
        unsafe { p.read_volatile() }
    }

    fn write(&self, reg: u64, value: u32) {
        let p = (self.mmio_virt + reg) as *mut u32;
        // SAFETY: as in `read`; the registers we write (SVR, ICR) have no memory side effects.
        unsafe { p.write_volatile(value) }
    }

    fn send(&mut self, apic_id: u32, low: u32, what: &str) -> Result<(), IpiError> {
        if !self.base.can_address(apic_id) {
            return Err(IpiError::Unaddressable { apic_id });
        }
        // At debug level: a 300-CPU start is 1200 IPIs.
        log::debug!("ipi: {what} -> APIC {apic_id}");
        let count = self.sent.entry(apic_id).or_default();
        let mode = low & ICR_DELIVERY_MODE;
        if mode == ICR_STARTUP {
            count.sipi = count.sipi.saturating_add(1);
        } else if mode == ICR_INIT && low & ICR_LEVEL_ASSERT != 0 {
            count.init = count.init.saturating_add(1);
        }
        match self.base.mode {
            ApicMode::X2Apic => {
                let value = ((apic_id as u64) << 32) | low as u64;
                // SAFETY: the x2APIC ICR MSR; writing it sends exactly the IPI described.
                unsafe { Msr::new(X2APIC_ICR_MSR).write(value) };
                Ok(())
            }
            _ => {
                self.write(XAPIC_ICR_HIGH, apic_id << 24);
                self.write(XAPIC_ICR_LOW, low);
                let deadline = Deadline::after_micros(ICR_DELIVERY_TIMEOUT_US);
                while self.read(XAPIC_ICR_LOW) & ICR_DELIVERY_PENDING != 0 {
                    if deadline.passed() {
                        return Err(IpiError::DeliveryTimeout { apic_id });
                    }
                    core::hint::spin_loop();
                }
                Ok(())
            }
        }
    }
}

impl Ipi for Lapic {
    fn send_init_assert(&mut self, apic_id: u32) -> Result<(), IpiError> {
        self.send(apic_id, ICR_INIT | ICR_LEVEL_ASSERT | ICR_TRIGGER_LEVEL, "INIT")
    }

    fn send_init_deassert(&mut self, apic_id: u32) -> Result<(), IpiError> {
        if self.base.mode == ApicMode::X2Apic {
            // x2APIC has no INIT level de-assert (SDM Vol. 3A, "x2APIC Interrupt Command Register").
            return Ok(());
        }
        self.send(apic_id, ICR_INIT | ICR_TRIGGER_LEVEL, "INIT de-assert")
    }

    fn send_startup(&mut self, apic_id: u32, vector: u8) -> Result<(), IpiError> {
        self.send(apic_id, ICR_STARTUP | vector as u32, "SIPI")
    }
}
