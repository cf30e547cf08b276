//! The real machine behind the supervisor's traits: planned physical memory, the BSP's local
//! APIC (IPIs and a timer), the TSC clock, and the log.
//!
//! Waiting halts: [`Clock::wait_us`] arms the local APIC timer for the time left and executes
//! `sti; hlt`, so the BSP sleeps until the timer (or another interrupt) wakes it. Under QEMU's
//! TCG every virtual CPU is a host thread, and a BSP that spun would take host time from the
//! very APs it is waiting for; on real hardware it would burn power. Very short waits, and
//! machines whose timer could not be calibrated, spin on the TSC.

use platform::apstart::{Ipi, IpiError};
use platform::supervisor::{Clock, Devices, Event, Level, MemError, Phys, Sink};

use crate::lapic::Lapic;
use crate::physmem::PlanMemory;
use crate::time::{self, Deadline};

/// Waits shorter than this spin: arming the timer and halting costs more.
const MIN_HALT_US: u64 = 20;

pub struct Bsp {
    pub mem: PlanMemory,
    pub lapic: Lapic,
    /// The local APIC timer's input clock (0: unknown, so waits spin).
    pub timer_hz: u64,
}

impl Phys for Bsp {
    fn read(&self, paddr: u64, out: &mut [u8]) -> Result<(), MemError> {
        self.mem.read(paddr, out)
    }
    fn write(&mut self, paddr: u64, bytes: &[u8]) -> Result<(), MemError> {
        self.mem.write(paddr, bytes)
    }
    fn fill(&mut self, paddr: u64, len: u64, byte: u8) -> Result<(), MemError> {
        self.mem.fill(paddr, len, byte)
    }
    fn read_u32(&self, paddr: u64) -> Result<u32, MemError> {
        self.mem.read_u32(paddr)
    }
    fn read_u64(&self, paddr: u64) -> Result<u64, MemError> {
        self.mem.read_u64(paddr)
    }
    fn write_u32(&mut self, paddr: u64, v: u32) -> Result<(), MemError> {
        self.mem.write_u32(paddr, v)
    }
    fn first_nonzero(&self, paddr: u64, len: u64) -> Result<Option<u64>, MemError> {
        self.mem.first_nonzero(paddr, len)
    }
}

/// Halts until `deadline`, waking on the local APIC timer.
pub fn halt_until(lapic: &Lapic, timer_hz: u64, deadline: Deadline) {
    loop {
        let left = deadline.remaining_micros();
        if left == 0 {
            break;
        }
        if left < MIN_HALT_US || timer_hz == 0 {
            while !deadline.passed() {
                core::hint::spin_loop();
            }
            break;
        }
        let count =
            (u128::from(left) * u128::from(timer_hz) / 1_000_000).clamp(1, u32::MAX as u128);
        lapic.arm_timer(count as u32);
        // `sti; hlt`: interrupts are taken only after the `hlt` starts, so a timer that fires
        // in between still wakes it; then interrupts are off again for the manager's code.
        x86_64::instructions::interrupts::enable_and_hlt();
        x86_64::instructions::interrupts::disable();
    }
    lapic.arm_timer(0);
}

impl Clock for Bsp {
    fn now_us(&self) -> u64 {
        time::micros_since_boot()
    }

    /// Waits `us`, feeding the serial console from its queue meanwhile: while bytes are
    /// queued the BSP sleeps only until the UART's FIFO would be empty again.
    fn wait_us(&mut self, us: u64) {
        let deadline = Deadline::after_micros(us);
        crate::fbcon::flush_if_due();
        while crate::serial::drain_until(&deadline) && !deadline.passed() {
            let fifo = Deadline::after_micros(crate::uart::FIFO_DRAIN_US);
            halt_until(&self.lapic, self.timer_hz, fifo.min(deadline));
        }
        halt_until(&self.lapic, self.timer_hz, deadline);
    }

    fn tsc_to_us(&self, tsc: u64) -> u64 {
        let ago = time::ticks_to_micros(time::rdtsc().saturating_sub(tsc));
        time::micros_since_boot().saturating_sub(ago)
    }
}

impl Ipi for Bsp {
    fn send_init_assert(&mut self, apic_id: u32) -> Result<(), IpiError> {
        self.lapic.send_init_assert(apic_id)
    }
    fn send_init_deassert(&mut self, apic_id: u32) -> Result<(), IpiError> {
        self.lapic.send_init_deassert(apic_id)
    }
    fn send_startup(&mut self, apic_id: u32, vector: u8) -> Result<(), IpiError> {
        self.lapic.send_startup(apic_id, vector)
    }
}

impl Devices for Bsp {
    fn quiesce_uart(&mut self, io_base: u16) {
        // Only the UARTs a manifest can assign (checked against the bundle's list): never
        // COM1, the manager's own console.
        if !platform::bundle::Uart::ALL.iter().any(|u| u.io_base() == io_base) {
            return;
        }
        // SAFETY: `io_base` is one of the legacy UARTs an instance may own; the manager drives
        // it only here, while no instance owns it (before its start, after its stop).
        let uart = unsafe { crate::uart::Uart::new(io_base) };
        uart.quiesce();
    }
}

impl Sink for Bsp {
    fn event(&mut self, e: &Event<'_>) {
        if let Event::Console { .. } | Event::ConsoleDropped { .. } = e {
            // Instance output is printed as is, without a time stamp or level.
            crate::println!("{e}");
            return;
        }
        let level = match e.level() {
            Level::Error => log::Level::Error,
            Level::Warn => log::Level::Warn,
            Level::Info => log::Level::Info,
            Level::Debug => log::Level::Debug,
        };
        log::log!(level, "{e}");
    }
}
