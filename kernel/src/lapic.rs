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
const XAPIC_SVR: u64 = 0xF0;
const XAPIC_ICR_LOW: u64 = 0x300;
const XAPIC_ICR_HIGH: u64 = 0x310;
/// x2APIC MSRs (SDM Vol. 3A, "x2APIC Register Address Space").
const X2APIC_ID_MSR: u32 = 0x802;
const X2APIC_SVR_MSR: u32 = 0x80F;
const X2APIC_ICR_MSR: u32 = 0x830;

/// ICR fields (SDM Vol. 3A, "Interrupt Command Register (ICR)").
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
    /// Every IPI is logged; tests assert which CPUs were (and were not) sent one.
    log_ipis: bool,
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
        let lapic = Lapic { base, mmio_virt: phys_offset + base.base, log_ipis: true };
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
        if self.log_ipis {
            log::info!("ipi: {what} -> APIC {apic_id}");
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

/// The TSC-backed delay for the start-up sequence.
pub struct TscDelay;

impl platform::apstart::Delay for TscDelay {
    fn delay_us(&mut self, us: u64) {
        crate::time::delay_micros(us);
    }
}
