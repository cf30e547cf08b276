//! Draining an instance's console ring to the serial console.
//!
//! Each instance writes bytes into its ring without ever waiting; the manager copies them out
//! on every supervision pass, cuts them into lines and prints each as `[name] line`. The ring's
//! indices are read from shared memory and validated by `bootproto::ring::consume` against the
//! capacity the manager configured: a corrupted ring is reported and reset, never trusted.
//! Bytes the instance dropped because its ring was full are reported as a count.

use alloc::collections::VecDeque;
use alloc::string::String;
use core::fmt::Write;
use core::mem::offset_of;
use core::sync::atomic::{compiler_fence, Ordering};

use bootproto::{layout, ring, ConsoleRing};

use super::Instance;
use crate::physmem::PhysWindow;

/// A console line longer than this is printed in pieces.
const MAX_LINE: usize = 200;
/// Lines kept per instance for the shell's `log` command.
pub const RECENT_LINES: usize = 40;

/// Console bookkeeping for one instance.
#[derive(Default)]
pub struct Console {
    line: String,
    dropped_seen: u64,
    pub bytes: u64,
    pub lines: u64,
    pub dropped: u64,
    pub recent: VecDeque<String>,
    /// Set when the ring was found corrupted (reported once per start).
    pub corrupt: Option<String>,
}

impl Console {
    /// Forgets the ring's state (a restart gives the instance a fresh, zeroed ring).
    pub fn reset_ring(&mut self) {
        self.dropped_seen = 0;
        self.corrupt = None;
    }
}

/// The data area of a console ring, read through the physical window.
struct RingView {
    window: PhysWindow,
    data: u64,
}

impl ring::RingData for RingView {
    fn read(&self, i: u32) -> u8 {
        let mut b = [0u8];
        self.window.read_bytes(self.data + i as u64, &mut b);
        b[0]
    }

    fn write(&mut self, _i: u32, _b: u8) {
        // The manager never writes an instance's console data.
    }
}

/// Copies everything pending in the instance's ring to the serial console.
pub fn drain(inst: &mut Instance, window: PhysWindow) {
    let Some(shared) = inst.shared else { return };
    let base = shared.console;
    let head_at = base + offset_of!(ConsoleRing, head) as u64;
    let tail_at = base + offset_of!(ConsoleRing, tail) as u64;
    let view = RingView { window, data: base + bootproto::CONSOLE_DATA_OFFSET as u64 };
    let mut buf = [0u8; 512];
    // Bounded: each pass copies up to the ring's capacity.
    for _ in 0..(layout::CONSOLE_CAPACITY as usize / buf.len() + 1) {
        let head = window.read_u32(head_at);
        compiler_fence(Ordering::Acquire);
        let tail = window.read_u32(tail_at);
        match ring::consume(head, tail, layout::CONSOLE_CAPACITY, &view, &mut buf) {
            Ok(c) => {
                for &b in &buf[..c.copied] {
                    push_byte(inst, b);
                }
                inst.console.bytes += c.copied as u64;
                compiler_fence(Ordering::Release);
                window.write_u32(tail_at, c.tail);
                if c.remaining == 0 {
                    break;
                }
            }
            Err(e) => {
                if inst.console.corrupt.is_none() {
                    log::error!("instance '{}': console: {e}; its ring is reset", inst.name);
                    inst.console.corrupt = Some(alloc::format!("{e}"));
                }
                window.write_u32(tail_at, head);
                break;
            }
        }
    }
    let dropped = window.read_u64(base + offset_of!(ConsoleRing, dropped) as u64);
    if dropped > inst.console.dropped_seen {
        let n = dropped - inst.console.dropped_seen;
        crate::serial::start_line();
        crate::println!("[{}] ... {} bytes dropped (console ring full)", inst.name, n);
        inst.console.dropped += n;
        inst.console.dropped_seen = dropped;
    }
}

fn push_byte(inst: &mut Instance, b: u8) {
    match b {
        b'\n' => flush(inst),
        b'\r' => {}
        b if b.is_ascii_graphic() || b == b' ' || b == b'\t' => inst.console.line.push(b as char),
        b => {
            let _ = write!(inst.console.line, "\\x{b:02x}");
        }
    }
    if inst.console.line.len() >= MAX_LINE {
        flush(inst);
    }
}

/// Prints the pending partial line, if any.
pub fn flush(inst: &mut Instance) {
    let line = core::mem::take(&mut inst.console.line);
    crate::serial::start_line();
    crate::println!("[{}] {}", inst.name, line);
    inst.console.lines += 1;
    if inst.console.recent.len() == RECENT_LINES {
        inst.console.recent.pop_front();
    }
    inst.console.recent.push_back(line);
}

pub fn has_partial_line(inst: &Instance) -> bool {
    !inst.console.line.is_empty()
}
