//! The manager's serial console (COM1) and the `log` backend that writes to it.
//!
//! Every log line carries a time stamp (seconds since the TSC was calibrated, see [`crate::time`])
//! and a level, e.g. `[    0.012345] INFO  manager: ...`. The console is one `spin::Mutex`
//! around the UART; the manager is single-threaded on the BSP, and the panic handler takes the
//! lock with `try_lock` first so that a panic while printing still gets its message out.

use core::fmt::{self, Write};

use spin::Mutex;
use uart_16550::SerialPort;

/// COM1's I/O base (the PC/AT legacy assignment; QEMU's `-serial` device sits there).
const COM1_IO_BASE: u16 = 0x3F8;

static SERIAL: Mutex<Option<SerialPort>> = Mutex::new(None);

/// The shell's prompt is the last thing on the console line: output that follows must start
/// a new line first (see [`start_line`]).
pub static PROMPT_SHOWN: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Ends the prompt's line if the prompt is showing, so output does not run into it.
pub fn start_line() {
    if PROMPT_SHOWN.swap(false, core::sync::atomic::Ordering::Relaxed) {
        print(format_args!("\n"));
    }
}

static LOGGER: Logger = Logger;

struct Logger;

pub fn init(level: log::LevelFilter) {
    // SAFETY: COM1 is the legacy UART at 0x3F8; the manager is the only code using these ports.
    let mut port = unsafe { SerialPort::new(COM1_IO_BASE) };
    port.init();
    *SERIAL.lock() = Some(port);
    // `set_logger` fails only if a logger is already set, which init() runs once to avoid.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Writes formatted text to the console (no time stamp, no level).
pub fn print(args: fmt::Arguments) {
    crate::fbcon::write_fmt(args);
    if let Some(port) = SERIAL.lock().as_mut() {
        let _ = port.write_fmt(args);
    }
}

/// Writes to the serial console only, not the screen (long machine-readable listings such as
/// the memory map, which would push everything else off a screen).
pub fn print_serial_only(args: fmt::Arguments) {
    if let Some(port) = SERIAL.lock().as_mut() {
        let _ = port.write_fmt(args);
    }
}

/// Writes to the console even if the lock is held (used by the panic handler, which may run
/// while the lock's owner is interrupted mid-line; a garbled line beats a silent hang).
pub fn print_emergency(args: fmt::Arguments) {
    crate::fbcon::emergency_write_fmt(args);
    if let Some(mut guard) = SERIAL.try_lock() {
        if let Some(port) = guard.as_mut() {
            let _ = port.write_fmt(args);
        }
        return;
    }
    // SAFETY: COM1 exists (init ran or the port writes are harmless); the other user of the
    // port is the interrupted code on this same CPU, which cannot run concurrently with us.
    let mut port = unsafe { SerialPort::new(COM1_IO_BASE) };
    let _ = port.write_fmt(args);
}

/// Reads one byte from the console if one is waiting.
pub fn try_read() -> Option<u8> {
    SERIAL.lock().as_mut().and_then(|p| p.try_receive().ok())
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
