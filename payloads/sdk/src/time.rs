//! Time from the TSC, at the frequency the manager calibrated (`BootInfo::tsc_hz`).
//!
//! The instance reads the time stamp counter (`RDTSC`) and converts with the manager's
//! calibration. When the manager reports 0 (unknown), the SDK assumes [`FALLBACK_TSC_HZ`], so
//! delays stay bounded but may be off by the ratio of the real rate. Every wait here ends: it
//! waits for a deadline computed up front, halting on the local APIC timer where it can
//! ([`crate::irq`]).

use core::sync::atomic::{AtomicU64, Ordering};

/// The frequency assumed when the boot info says 0 (1 GHz).
pub const FALLBACK_TSC_HZ: u64 = 1_000_000_000;

static TSC_HZ: AtomicU64 = AtomicU64::new(FALLBACK_TSC_HZ);

pub(crate) fn init(tsc_hz: u64) {
    let hz = if tsc_hz == 0 { FALLBACK_TSC_HZ } else { tsc_hz };
    TSC_HZ.store(hz, Ordering::Relaxed);
}

/// The TSC frequency in use (the manager's calibration, or the fallback).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// The time stamp counter.
pub fn now_ticks() -> u64 {
    // SAFETY: RDTSC reads a counter; it has no memory effects and is available on every
    // x86_64 CPU (CR4.TSD only restricts it outside ring 0, and the instance runs in ring 0).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC ticks in `us` microseconds (saturating).
pub fn ticks_for_us(us: u64) -> u64 {
    let ticks = u128::from(tsc_hz()) * u128::from(us) / 1_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// Microseconds between two TSC readings (`later` before `earlier` counts as 0).
pub fn us_between(earlier: u64, later: u64) -> u64 {
    let ticks = later.saturating_sub(earlier);
    u64::try_from(u128::from(ticks) * 1_000_000 / u128::from(tsc_hz())).unwrap_or(u64::MAX)
}

/// A point in TSC time to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(u64);

impl Deadline {
    /// `us` microseconds from now.
    pub fn after_us(us: u64) -> Deadline {
        Deadline(now_ticks().saturating_add(ticks_for_us(us)))
    }

    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Deadline {
        Deadline::after_us(ms.saturating_mul(1000))
    }

    /// The TSC value it stands for.
    pub fn ticks(&self) -> u64 {
        self.0
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        now_ticks() >= self.0
    }

    /// Waits until the deadline has passed, halting the CPU between timer interrupts when the
    /// SDK could set the timer up (see [`crate::irq`]), spinning otherwise.
    pub fn wait(&self) {
        crate::irq::halt_until(self.0);
    }
}

/// Waits `us` microseconds.
pub fn delay_us(us: u64) {
    Deadline::after_us(us).wait();
}

/// Waits `ms` milliseconds.
pub fn delay_ms(ms: u64) {
    Deadline::after_ms(ms).wait();
}
