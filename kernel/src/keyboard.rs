//! The PS/2 keyboard through the i8042 controller, polled: the control shell's input on a
//! machine without a serial port. Scan codes become bytes in `platform::keyboard`.
//!
//! Ports and status bits: IBM "Keyboard/Auxiliary Device Controller" (PS/2 Hardware Interface
//! Technical Reference): data at 0x60, status at 0x64 with bit 0 "output buffer full" and bit 5
//! "the byte is from the auxiliary device" (a PS/2 mouse, whose bytes are dropped). USB
//! keyboards appear here only when the firmware emulates a PS/2 keyboard ("USB legacy
//! support"); without that, and on machines with no i8042 at all, nothing is read.

use platform::keyboard::Decoder;
use spin::Mutex;
use x86_64::instructions::port::Port;

const DATA: u16 = 0x60;
const STATUS: u16 = 0x64;
const OUTPUT_FULL: u8 = 1 << 0;
const FROM_AUX: u8 = 1 << 5;
/// What an absent controller's status port reads as (nothing decodes the ISA bus).
const ABSENT: u8 = 0xFF;

struct Keyboard {
    decoder: Decoder,
    present: bool,
}

static KEYBOARD: Mutex<Keyboard> =
    Mutex::new(Keyboard { decoder: Decoder::DEFAULT, present: false });

fn status() -> u8 {
    let mut p: Port<u8> = Port::new(STATUS);
    // SAFETY: reading the i8042 status register has no side effect on the controller or on
    // any device an instance owns (instances get only the UARTs their manifest names).
    unsafe { p.read() }
}

fn data() -> u8 {
    let mut p: Port<u8> = Port::new(DATA);
    // SAFETY: reading the data register takes the byte the status said is waiting; the
    // keyboard controller belongs to the manager.
    unsafe { p.read() }
}

/// Looks for the controller once: a status of 0xFF means there is none.
pub fn init() -> bool {
    let present = status() != ABSENT;
    KEYBOARD.lock().present = present;
    present
}

/// The next byte typed on the keyboard, if one is waiting. At most a few bytes are read per
/// call (key releases and mouse bytes give nothing).
pub fn try_read() -> Option<u8> {
    let mut k = KEYBOARD.try_lock()?;
    if !k.present {
        return None;
    }
    for _ in 0..4 {
        let s = status();
        if s & OUTPUT_FULL == 0 {
            return None;
        }
        let byte = data();
        if s & FROM_AUX != 0 {
            continue;
        }
        if let Some(b) = k.decoder.feed(byte) {
            return Some(b);
        }
    }
    None
}
