//! Draining an instance's console ring into lines.
//!
//! Each instance writes bytes into its ring without ever waiting; the supervisor copies them
//! out on every pass, cuts them into lines and reports each ([`Event::Console`]). The ring's
//! indices are read from shared memory and validated by `bootproto::ring::consume` against
//! the capacity the manager configured; the header's capacity and the `dropped` counter are
//! checked too. Anything impossible is a [`Violation`], which fails the instance: it is never
//! trusted, never a panic.

use core::fmt::Write;
use core::mem::offset_of;

use bootproto::ring::{self, RingData};
use bootproto::{layout, ConsoleRing};

use super::error::Violation;
use super::events::Event;
use super::instance::{Instance, RECENT_LINES};
use super::machine::{MemError, Phys, Sink};

/// A console line longer than this is reported in pieces.
pub const MAX_LINE: usize = 200;
/// Bytes copied out per read of the ring.
const CHUNK: usize = 512;

/// The data area of a ring, read through physical memory. A read the window refuses gives 0
/// (and is reported by the header reads, which fail the same way first).
struct RingView<'a, P: Phys> {
    phys: &'a P,
    data: u64,
}

impl<P: Phys> RingData for RingView<'_, P> {
    fn read(&self, i: u32) -> u8 {
        let mut b = [0u8];
        let _ = self.phys.read(self.data + u64::from(i), &mut b);
        b[0]
    }

    fn write(&mut self, _i: u32, _b: u8) {
        // The manager never writes an instance's console data.
    }
}

/// What a drain found wrong, if anything.
pub(super) enum DrainError {
    Violation(Violation),
    Memory(MemError),
}

impl From<MemError> for DrainError {
    fn from(e: MemError) -> Self {
        DrainError::Memory(e)
    }
}

/// Copies everything pending in the instance's ring out, reporting complete lines.
pub(super) fn drain<M: Phys + Sink>(
    m: &mut M,
    inst: &mut Instance,
    ring_at: u64,
) -> Result<(), DrainError> {
    let head_at = ring_at + offset_of!(ConsoleRing, head) as u64;
    let tail_at = ring_at + offset_of!(ConsoleRing, tail) as u64;
    let capacity = m.read_u32(ring_at + offset_of!(ConsoleRing, capacity) as u64)?;
    ring::check_capacity(capacity, layout::CONSOLE_CAPACITY)
        .map_err(|e| DrainError::Violation(Violation::ConsoleRing(e)))?;
    let mut buf = [0u8; CHUNK];
    // Bounded: each pass copies up to the ring's capacity.
    for _ in 0..(layout::CONSOLE_CAPACITY as usize / CHUNK + 1) {
        let head = m.read_u32(head_at)?;
        let tail = m.read_u32(tail_at)?;
        let view = RingView { phys: &*m, data: ring_at + bootproto::CONSOLE_DATA_OFFSET as u64 };
        let c = ring::consume(head, tail, layout::CONSOLE_CAPACITY, &view, &mut buf)
            .map_err(|e| DrainError::Violation(Violation::ConsoleRing(e)))?;
        for &b in &buf[..c.copied] {
            push_byte(m, inst, b);
        }
        inst.console.bytes = inst.console.bytes.saturating_add(c.copied as u64);
        m.write_u32(tail_at, c.tail)?;
        if c.remaining == 0 {
            break;
        }
    }
    let dropped = m.read_u64(ring_at + offset_of!(ConsoleRing, dropped) as u64)?;
    let seen = inst.console.dropped_seen;
    if dropped < seen {
        return Err(DrainError::Violation(Violation::ConsoleDropped {
            before: seen,
            after: dropped,
        }));
    }
    if dropped > seen {
        let n = dropped - seen;
        m.event(&Event::ConsoleDropped { name: &inst.name, bytes: n });
        inst.console.dropped = inst.console.dropped.saturating_add(n);
        inst.console.dropped_seen = dropped;
    }
    Ok(())
}

fn push_byte<S: Sink>(sink: &mut S, inst: &mut Instance, b: u8) {
    match b {
        b'\n' => flush(sink, inst),
        b'\r' => {}
        b if b.is_ascii_graphic() || b == b' ' || b == b'\t' => inst.console.line.push(b as char),
        b => {
            let _ = write!(inst.console.line, "\\x{b:02x}");
        }
    }
    if inst.console.line.len() >= MAX_LINE {
        flush(sink, inst);
    }
}

/// Reports the pending partial line, if any.
pub(super) fn flush<S: Sink>(sink: &mut S, inst: &mut Instance) {
    if inst.console.line.is_empty() {
        return;
    }
    let line = core::mem::take(&mut inst.console.line);
    sink.event(&Event::Console { name: &inst.name, line: &line });
    inst.console.lines = inst.console.lines.saturating_add(1);
    inst.console.recent.push(line, RECENT_LINES);
}

/// Forgets the ring's state (a start gives the instance a fresh, zeroed ring).
pub(super) fn reset(inst: &mut Instance) {
    inst.console.dropped_seen = 0;
}
