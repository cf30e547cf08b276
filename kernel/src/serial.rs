//! The manager's serial console (COM1) and the `log` backend that writes to it.
//!
//! Every log line carries a time stamp (seconds since the TSC was calibrated, see [`crate::time`])
//! and a level, e.g. `[    0.012345] INFO  manager: ...`.
//!
//! Printing does not wait for the UART: the text goes into a queue
//! ([`platform::logbuf::LogBuf`], [`QUEUE_BYTES`]) and the port is fed from it while the manager
//! waits anyway ([`drain_until`], called by the BSP's halting wait). A 254-instance boot
//! logs about 300 KB; sent synchronously that is 28 s on a real UART at 115200 baud, and under
//! QEMU with 255 vCPUs it was 5.9 s of the manager's time. [`flush`] sends everything at once:
//! the run's end ([`crate::qemu::finish`]) and the panic path call it, and a writer that finds
//! the queue full drains its front first, so no text is ever dropped or reordered unless the
//! UART itself stops taking bytes (then the oldest bytes are discarded and counted, and the
//! manager keeps going).
//!
//! The queue and the port sit behind one `spin::Mutex`; the manager is single-threaded on the
//! BSP, and the panic handler takes the lock with `try_lock` first so that a panic while
//! printing still gets its message out.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use platform::logbuf::LogBuf;
use spin::Mutex;

use crate::time::Deadline;
use crate::uart::{Uart, COM1};

/// Room for a large boot's log between two waits (in `.bss`, not the heap: the log works
/// before the heap exists).
pub const QUEUE_BYTES: usize = 256 * 1024;
/// Line-status polls before a UART that never empties its FIFO is called stuck.
const STUCK_POLLS: u32 = 100_000;

struct Serial {
    uart: Option<Uart>,
    queue: LogBuf<QUEUE_BYTES>,
}

static SERIAL: Mutex<Serial> = Mutex::new(Serial { uart: None, queue: LogBuf::new() });

/// Bytes sent, the time spent sending them, bytes discarded because the UART was stuck, and
/// the most bytes ever queued (for the report's `console` section).
static SENT: AtomicU64 = AtomicU64::new(0);
static SEND_US: AtomicU64 = AtomicU64::new(0);
static DISCARDED: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

/// What the serial console has done since boot.
pub struct Stats {
    pub sent: u64,
    pub send_us: u64,
    pub discarded: u64,
    pub peak_queued: u64,
}

pub fn stats() -> Stats {
    Stats {
        sent: SENT.load(Relaxed),
        send_us: SEND_US.load(Relaxed),
        discarded: DISCARDED.load(Relaxed),
        peak_queued: PEAK.load(Relaxed),
    }
}

impl Serial {
    /// Sends one FIFO's worth from the front of the queue if the UART can take it; false if
    /// it cannot (or there is nothing to send).
    fn send_some(&mut self) -> bool {
        let Some(uart) = &self.uart else { return false };
        if self.queue.is_empty() || !uart.can_send() {
            return false;
        }
        let n = uart.send_burst(self.queue.front());
        self.queue.consume(n);
        SENT.fetch_add(n as u64, Relaxed);
        true
    }

    /// Sends from the front until at least `room` bytes are free (everything, for
    /// `QUEUE_BYTES`). A UART that stays busy for [`STUCK_POLLS`] polls loses the front burst.
    fn make_room(&mut self, room: usize) {
        if self.uart.is_none() {
            return;
        }
        let start = crate::time::micros_since_boot();
        while self.queue.free() < room.min(QUEUE_BYTES) && !self.queue.is_empty() {
            if !(0..STUCK_POLLS).any(|_| self.send_some()) {
                let n = self.queue.front().len().min(crate::uart::FIFO_BYTES);
                self.queue.consume(n);
                DISCARDED.fetch_add(n as u64, Relaxed);
            }
        }
        SEND_US.fetch_add(crate::time::micros_since_boot().saturating_sub(start), Relaxed);
    }

    /// Queues `bytes`, draining the front whenever the queue is full.
    fn queue(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = self.queue.push(bytes);
            bytes = &bytes[n..];
            if !bytes.is_empty() {
                if self.uart.is_none() {
                    // Before `init` there is no port to drain into: the newest text is lost.
                    DISCARDED.fetch_add(bytes.len() as u64, Relaxed);
                    return;
                }
                self.make_room(bytes.len());
            }
        }
        PEAK.fetch_max(self.queue.len() as u64, Relaxed);
    }
}

/// Text into the queue, with each `\n` as `\r\n` (what terminals expect).
impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut lines = s.split('\n');
        if let Some(first) = lines.next() {
            self.queue(first.as_bytes());
        }
        for line in lines {
            self.queue(b"\r\n");
            self.queue(line.as_bytes());
        }
        Ok(())
    }
}

/// The shell's prompt is the last thing on the console line: output that follows must start
/// a new line first (see [`start_line`]).
pub static PROMPT_SHOWN: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Ends the prompt's line if the prompt is showing, so output does not run into it.
pub fn start_line() {
    if PROMPT_SHOWN.swap(false, Relaxed) {
        print(format_args!("\n"));
    }
}

static LOGGER: Logger = Logger;

struct Logger;

pub fn init(level: log::LevelFilter) {
    // SAFETY: COM1 is the legacy UART at 0x3F8; the manager is the only code using these ports
    // (instances are never given COM1).
    let port = unsafe { Uart::new(COM1) };
    port.init();
    SERIAL.lock().uart = Some(port);
    // `set_logger` fails only if a logger is already set, which init() runs once to avoid.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Writes formatted text to the console (no time stamp, no level): the screen and the serial
/// queue.
pub fn print(args: fmt::Arguments) {
    crate::fbcon::write_fmt(args);
    print_serial_only(args);
}

/// Writes to the serial console only, not the screen (machine-readable report lines and long
/// listings such as the memory map, which would push everything else off a screen).
pub fn print_serial_only(args: fmt::Arguments) {
    let _ = SERIAL.lock().write_fmt(args);
}

/// Feeds the UART from the queue until the queue is empty, the UART's FIFO is full, or
/// `deadline` passes. Returns whether bytes are still queued.
pub fn drain_until(deadline: &Deadline) -> bool {
    let Some(mut s) = SERIAL.try_lock() else { return false };
    let start = crate::time::micros_since_boot();
    while !deadline.passed() && s.send_some() {}
    SEND_US.fetch_add(crate::time::micros_since_boot().saturating_sub(start), Relaxed);
    !s.queue.is_empty()
}

/// Sends everything queued (bounded: a stuck UART loses its bytes instead of hanging us).
pub fn flush() {
    if let Some(mut s) = SERIAL.try_lock() {
        s.make_room(QUEUE_BYTES);
    }
}

/// Writes to the console even if the lock is held (used by the panic handler, which may run
/// while the lock's owner is interrupted mid-line; a garbled line beats a silent hang).
pub fn print_emergency(args: fmt::Arguments) {
    crate::fbcon::emergency_write_fmt(args);
    if let Some(mut s) = SERIAL.try_lock() {
        s.make_room(QUEUE_BYTES);
        if let Some(uart) = s.uart.as_mut() {
            let _ = uart.write_fmt(args);
        }
        return;
    }
    // SAFETY: COM1 exists (init ran or the port writes are harmless); the other user of the
    // port is the interrupted code on this same CPU, which cannot run concurrently with us.
    // What it had queued stays queued: the handler halts, so it is lost.
    let mut port = unsafe { Uart::new(COM1) };
    let _ = port.write_fmt(args);
}

/// Reads one byte from the console if one is waiting.
pub fn try_read() -> Option<u8> {
    SERIAL.lock().uart.as_ref().and_then(Uart::try_read)
}

#[macro_export]
macro_rules! println {
    () => {{ $crate::serial::start_line(); $crate::serial::print(format_args!("\n")) }};
    ($($arg:tt)*) => {{
        $crate::serial::start_line();
        $crate::serial::print(format_args!("{}\n", format_args!($($arg)*)))
    }};
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let us = crate::time::micros_since_boot();
        start_line();
        print(format_args!(
            "[{:5}.{:06}] {:5} {}\n",
            us / 1_000_000,
            us % 1_000_000,
            record.level(),
            record.args()
        ));
    }

    fn flush(&self) {}
}
