//! Time: the TSC, calibrated once against the legacy PIT.
//!
//! The manager needs a time source for log stamps, for the SDM's INIT/SIPI delays and for
//! every bounded wait. The TSC is read with `rdtsc`; its frequency is measured at boot by
//! counting TSC ticks across a known PIT channel 2 interval (the method Linux's
//! `pit_calibrate_tsc` and hermit use). Everything after calibration converts ticks to
//! microseconds with that figure.
//!
//! Intel 8254 datasheet, "Control Word Format" and mode 0 ("Interrupt on Terminal Count"):
//! channel 2 is gated by bit 0 of port 0x61 and its output is readable at bit 5 of 0x61.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

/// PIT input clock, Hz (Intel 8254 as wired in the PC/AT).
pub const PIT_HZ: u64 = 1_193_182;
/// Calibration interval: 10 ms of PIT counts (11932 fits the 16-bit counter).
const CALIBRATION_MS: u64 = 10;
const PIT_CHANNEL2_DATA: u16 = 0x42;
const PIT_COMMAND: u16 = 0x43;
/// NMI status and control port: bit 0 gates PIT channel 2, bit 1 enables the speaker, bit 5
/// reads channel 2's output.
const PORT_61: u16 = 0x61;
/// Upper bound on polls of the PIT output before we declare the PIT absent.
const PIT_POLL_LIMIT: u64 = 50_000_000;
/// Used when calibration fails: a plausible frequency keeps every timeout bounded (a wrong
/// figure stretches or shrinks them, it never makes them infinite).
const FALLBACK_TSC_HZ: u64 = 2_000_000_000;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy)]
pub enum CalibrationError {
    /// The PIT's channel 2 output never went high within the poll limit.
    PitSilent,
}

pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no memory effects; every x86_64 CPU implements it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC frequency. Call once, early, with interrupts off.
pub fn calibrate() -> Result<u64, CalibrationError> {
    TSC_AT_BOOT.store(rdtsc(), Ordering::Relaxed);
    let result = measure();
    let hz = *result.as_ref().unwrap_or(&FALLBACK_TSC_HZ);
    TSC_HZ.store(hz, Ordering::Relaxed);
    result
}

fn measure() -> Result<u64, CalibrationError> {
    let count = PIT_HZ * CALIBRATION_MS / 1000;
    let mut port61: Port<u8> = Port::new(PORT_61);
    let mut command: Port<u8> = Port::new(PIT_COMMAND);
    let mut data: Port<u8> = Port::new(PIT_CHANNEL2_DATA);
    // SAFETY: port 0x61 is the PC/AT system control port; setting bit 0 (gate) and clearing
    // bit 1 (speaker) only affects PIT channel 2, which nothing else uses.
    let v = unsafe { port61.read() };
    // SAFETY: as above.
    unsafe { port61.write((v & !0x02) | 0x01) };
    // Channel 2, access lobyte/hibyte, mode 0, binary.
    // SAFETY: programming PIT channel 2, unused by anything else in the manager.
    unsafe { command.write(0b1011_0000) };
    // SAFETY: channel 2 data port, low byte then high byte as the command word selected.
    unsafe { data.write((count & 0xff) as u8) };
    // SAFETY: as above.
    unsafe { data.write((count >> 8) as u8) };
    let start = rdtsc();
    let mut polls = 0u64;
    // SAFETY: reading the status port has no side effects.
    while unsafe { port61.read() } & 0x20 == 0 {
        polls += 1;
        if polls > PIT_POLL_LIMIT {
            return Err(CalibrationError::PitSilent);
        }
        core::hint::spin_loop();
    }
    let ticks = rdtsc().wrapping_sub(start);
    Ok(ticks * 1000 / CALIBRATION_MS)
}

pub fn tsc_hz() -> u64 {
    match TSC_HZ.load(Ordering::Relaxed) {
        0 => FALLBACK_TSC_HZ,
        hz => hz,
    }
}

/// Microseconds since [`calibrate`] ran.
pub fn micros_since_boot() -> u64 {
    let ticks = rdtsc().wrapping_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    ticks_to_micros(ticks)
}

pub fn ticks_to_micros(ticks: u64) -> u64 {
    ((ticks as u128) * 1_000_000 / tsc_hz() as u128) as u64
}

pub fn micros_to_ticks(us: u64) -> u64 {
    ((us as u128) * tsc_hz() as u128 / 1_000_000) as u64
}

/// A point in time after which a bounded wait gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(u64);

impl Deadline {
    pub fn after_micros(us: u64) -> Self {
        Deadline(rdtsc().saturating_add(micros_to_ticks(us)))
    }

    pub fn passed(&self) -> bool {
        rdtsc() >= self.0
    }

    /// Microseconds left (0 once passed).
    pub fn remaining_micros(&self) -> u64 {
        ticks_to_micros(self.0.saturating_sub(rdtsc()))
    }
}

/// Busy-waits `us` microseconds (bounded by construction).
pub fn delay_micros(us: u64) {
    let d = Deadline::after_micros(us);
    while !d.passed() {
        core::hint::spin_loop();
    }
}
