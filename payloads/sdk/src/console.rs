//! The console: formatted text into the instance's console ring.
//!
//! The ring (`bootproto::ConsoleRing`) is the instance's only output channel; the manager
//! drains it. Printing never waits: bytes that do not fit are dropped and added to the ring's
//! `dropped` counter (`bootproto::ring::write`). A `print!` formats into a small stack buffer and
//! publishes it in as few ring writes as possible, so a short line reaches the manager in one
//! piece (or is cut at the point where the ring filled up).
//!
//! # Invariants
//! - `RING`/`DATA`/`CAPACITY` are set once by `init` (from `_start`, before `main`) and only
//!   read afterwards. While `RING` is null, output is discarded.
//! - Single producer: only the instance's CPU prints, and not reentrantly (see the crate docs).

use core::fmt;
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use bootproto::ring::{self, RingData};
use bootproto::ConsoleRing;

static RING: AtomicPtr<ConsoleRing> = AtomicPtr::new(core::ptr::null_mut());
static DATA: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static CAPACITY: AtomicU32 = AtomicU32::new(0);

/// Bytes gathered on the stack before they go to the ring.
const LINE_BUFFER_BYTES: usize = 128;

/// Sets up the console.
///
/// # Safety
/// `ring` is the instance's console ring header, and `data..data + capacity` its data area:
/// mapped, writable and not used for anything else for the instance's lifetime; `capacity` is
/// a power of two and equals `ring.capacity`. Called once, before anything prints.
pub(crate) unsafe fn init(ring: &'static ConsoleRing, data: *mut u8, capacity: u32) {
    DATA.store(data, Ordering::Relaxed);
    CAPACITY.store(capacity, Ordering::Relaxed);
    RING.store((ring as *const ConsoleRing).cast_mut(), Ordering::Release);
}

/// The data area, as the ring logic sees it.
struct Data {
    base: *mut u8,
    capacity: u32,
}

impl RingData for Data {
    fn read(&self, i: u32) -> u8 {
        if i >= self.capacity {
            return 0;
        }
        let p = self.base.wrapping_add(i as usize);
        // SAFETY: `i < capacity` (checked above), so `p` lies in `base..base + capacity`, the
        // data area `init` was given: mapped and readable.
        unsafe { p.read_volatile() }
    }

    fn write(&mut self, i: u32, b: u8) {
        if i >= self.capacity {
            return;
        }
        let p = self.base.wrapping_add(i as usize);
        // SAFETY: `i < capacity` (checked above), so `p` lies in `base..base + capacity`, the
        // data area `init` was given: mapped, writable, and ours (the producer lock is held) between
        // `tail` and `tail + capacity`, which is where the ring logic writes. Volatile: the
        // manager reads it from another CPU after the release store of `head`.
        unsafe { p.write_volatile(b) }
    }
}

/// Writes raw bytes to the console ring; returns how many were dropped (also added to the
/// ring's `dropped` counter). Before the console is set up, every byte is dropped uncounted.
pub fn write_bytes(bytes: &[u8]) -> u64 {
    let ring = RING.load(Ordering::Acquire);
    // SAFETY: `RING` is null or the header `init` was given, valid for the instance's lifetime
    // and accessed only through its atomics (and the constant `capacity`).
    let Some(ring) = (unsafe { ring.as_ref() }) else {
        return bytes.len() as u64;
    };
    // One producer at a time, whichever CPU of the instance prints. A CPU that cannot get the
    // lock in time (its holder faulted mid-write, say) drops its bytes rather than hang.
    let mut tries = 0u32;
    while PRODUCER.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err()
    {
        tries += 1;
        if tries > LOCK_TRIES {
            return bytes.len() as u64;
        }
        core::hint::spin_loop();
    }
    let mut data =
        Data { base: DATA.load(Ordering::Relaxed), capacity: CAPACITY.load(Ordering::Relaxed) };
    let dropped = ring::write(ring, &mut data, bytes);
    PRODUCER.store(false, Ordering::Release);
    dropped
}

/// Held by the CPU writing into the ring.
static PRODUCER: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// Attempts at the producer lock before a write is dropped (far longer than any write takes).
const LOCK_TRIES: u32 = 1 << 24;

/// A `fmt::Write` that buffers on the stack and flushes to the ring.
struct LineWriter {
    buf: [u8; LINE_BUFFER_BYTES],
    len: usize,
}

impl LineWriter {
    fn flush(&mut self) {
        if self.len > 0 {
            write_bytes(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl fmt::Write for LineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s.as_bytes();
        while !rest.is_empty() {
            if self.len == self.buf.len() {
                self.flush();
            }
            let n = rest.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&rest[..n]);
            self.len += n;
            rest = &rest[n..];
        }
        Ok(())
    }
}

/// Formats `args` into the console ring. Used by [`print!`](crate::print) and
/// [`println!`](crate::println).
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut w = LineWriter { buf: [0; LINE_BUFFER_BYTES], len: 0 };
    // The writer itself never fails; an error can only come from a Display impl, and then the
    // output so far is still worth flushing.
    let _ = fmt::Write::write_fmt(&mut w, args);
    w.flush();
}

/// Prints to the console ring (never blocks; drops what does not fit).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the console ring (never blocks; drops what does not fit).
#[macro_export]
macro_rules! println {
    () => { $crate::console::_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
