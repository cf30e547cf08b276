//! The hardware the supervisor drives, as small traits: physical memory it was given, a clock
//! that can wait, the local APIC's IPIs ([`crate::apstart::Ipi`]), and a sink for what it has
//! to say. The manager implements them over the real machine (`kernel/src/machine.rs`); the
//! host tests implement them over a simulated one, in which fake APs run the start-up protocol
//! against the same tables the real start-up code reads.

use core::fmt;

use crate::apstart::Ipi;

use super::events::Event;

/// A physical access the manager's memory window refused: outside every range the plan handed
/// out, or past the end of the address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemError {
    pub paddr: u64,
    pub len: u64,
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "physical memory [{:#x}, +{:#x}) is not memory the plan gave the manager",
            self.paddr, self.len
        )
    }
}

impl core::error::Error for MemError {}

/// Physical memory, confined to what the partition plan handed out. Every method fails rather
/// than touch anything else.
pub trait Phys {
    fn read(&self, paddr: u64, out: &mut [u8]) -> Result<(), MemError>;
    fn write(&mut self, paddr: u64, bytes: &[u8]) -> Result<(), MemError>;
    fn fill(&mut self, paddr: u64, len: u64, byte: u8) -> Result<(), MemError>;

    /// An aligned 32-bit word another CPU may be writing (read once, as a whole).
    fn read_u32(&self, paddr: u64) -> Result<u32, MemError> {
        let mut b = [0u8; 4];
        self.read(paddr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// An aligned 64-bit word another CPU may be writing (read once, as a whole).
    fn read_u64(&self, paddr: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(paddr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn write_u32(&mut self, paddr: u64, v: u32) -> Result<(), MemError> {
        self.write(paddr, &v.to_le_bytes())
    }

    /// The first non-zero byte in `[paddr, paddr + len)`, if any: how a scrub is verified.
    fn first_nonzero(&self, paddr: u64, len: u64) -> Result<Option<u64>, MemError> {
        let mut buf = [0u8; 512];
        let mut at = paddr;
        let end = paddr.checked_add(len).ok_or(MemError { paddr, len })?;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            self.read(at, &mut buf[..n])?;
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                return Ok(Some(at + i as u64));
            }
            at += n as u64;
        }
        Ok(None)
    }
}

/// Time, and a way to wait that gives the CPU away.
pub trait Clock {
    /// Microseconds since the manager started.
    fn now_us(&self) -> u64;
    /// Waits about `us` microseconds, halting where it can; may return early (an interrupt),
    /// never much later.
    fn wait_us(&mut self, us: u64);
    /// The time since the manager started at which the time-stamp counter read `tsc` (an AP's
    /// TSC is synchronised with the BSP's on the machines this runs on; a value from the
    /// future gives now).
    fn tsc_to_us(&self, tsc: u64) -> u64;
}

/// Where the supervisor reports what happens.
pub trait Sink {
    fn event(&mut self, e: &Event<'_>);
}

/// The legacy devices the manager hands to instances.
pub trait Devices {
    /// Leaves the 16550 UART at `io_base` quiet: interrupts off, modem control (OUT2, DTR,
    /// RTS) off, FIFOs cleared, 8N1 with the divisor latch closed (PC16550D, "Register
    /// Summary"). Done before an instance gets the UART and after it is stopped, so no
    /// interrupt or half-sent byte of one life reaches the next.
    fn quiesce_uart(&mut self, io_base: u16);
}

/// Everything the supervisor needs from the machine.
pub trait Machine: Phys + Clock + Ipi + Sink + Devices {}

impl<T: Phys + Clock + Ipi + Sink + Devices> Machine for T {}

/// The SDM delays of the INIT-SIPI sequence, through the machine's clock.
impl<C: Clock> crate::apstart::Delay for C {
    fn delay_us(&mut self, us: u64) {
        let end = self.now_us().saturating_add(us);
        // One reading per turn: the clock moves between two readings, so a second one could
        // be past `end` after the first was not (found by CI: an overflow panic).
        loop {
            let now = self.now_us();
            if now >= end {
                break;
            }
            self.wait_us(end - now);
        }
    }
}

/// The loader's and the page-table builder's views of the supervisor's memory.
pub(super) struct LoaderMemory<'a, P: Phys>(pub &'a mut P);

impl<P: Phys> loader::PhysMemory for LoaderMemory<'_, P> {
    fn write(&mut self, paddr: u64, bytes: &[u8]) -> Result<(), loader::MemoryError> {
        self.0.write(paddr, bytes).map_err(|e| loader::MemoryError { paddr: e.paddr, len: e.len })
    }

    fn fill(&mut self, paddr: u64, len: u64, byte: u8) -> Result<(), loader::MemoryError> {
        self.0
            .fill(paddr, len, byte)
            .map_err(|e| loader::MemoryError { paddr: e.paddr, len: e.len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apstart::Delay;
    use core::cell::Cell;

    /// A clock that moves on every reading, as a real one does between two instructions.
    struct Moving {
        now: Cell<u64>,
        step: u64,
    }

    impl Clock for Moving {
        fn now_us(&self) -> u64 {
            self.now.set(self.now.get() + self.step);
            self.now.get()
        }
        fn wait_us(&mut self, us: u64) {
            self.now.set(self.now.get() + us);
        }
        fn tsc_to_us(&self, tsc: u64) -> u64 {
            tsc
        }
    }

    #[test]
    fn a_delay_survives_a_clock_that_moves_between_readings() {
        // With step 7 and a 10 µs delay, the second reading of a turn lands past the end
        // although the first did not: the subtraction must use one reading.
        for step in 1..20 {
            let mut c = Moving { now: Cell::new(0), step };
            c.delay_us(10);
            assert!(c.now.get() >= 10);
        }
    }
}
