//! PC keyboard input for the control shell: scan code set 1 to the bytes a serial terminal
//! would send.
//!
//! The i8042 keyboard controller translates what an AT keyboard sends into scan code set 1
//! (the IBM PC XT codes) unless told otherwise, and firmware leaves translation on; USB
//! keyboards reach the i8042 as set 1 too when the firmware's "USB legacy support" emulates
//! one. Codes from the Microsoft "Keyboard Scan Code Specification" (rev. 1.3a, Appendix C,
//! column "Scan 1 Make"); a key's break code is its make code with bit 7 set, and extended
//! keys are prefixed by 0xE0.
//!
//! What the shell needs, on a US layout: letters, digits, punctuation, space, Enter (`\r`),
//! Backspace (0x7F), with Shift and Caps Lock. Everything else (function keys, arrows, Ctrl,
//! Alt, the keypad but its Enter) is ignored. The decoder is a pure state machine over
//! untrusted bytes: any sequence gives at most one byte per call and never panics.

/// Keys of set 1 from 0x00 to 0x39: (unshifted, shifted); 0 where the key gives nothing.
const KEYS: [(u8, u8); 0x3A] = [
    (0, 0),       // 0x00
    (0, 0),       // 0x01 Escape
    (b'1', b'!'), // 0x02
    (b'2', b'@'),
    (b'3', b'#'),
    (b'4', b'$'),
    (b'5', b'%'),
    (b'6', b'^'),
    (b'7', b'&'),
    (b'8', b'*'),
    (b'9', b'('),
    (b'0', b')'), // 0x0B
    (b'-', b'_'),
    (b'=', b'+'),
    (0x7F, 0x7F), // 0x0E Backspace
    (b' ', b' '), // 0x0F Tab, as a space
    (b'q', b'Q'), // 0x10
    (b'w', b'W'),
    (b'e', b'E'),
    (b'r', b'R'),
    (b't', b'T'),
    (b'y', b'Y'),
    (b'u', b'U'),
    (b'i', b'I'),
    (b'o', b'O'),
    (b'p', b'P'),
    (b'[', b'{'),
    (b']', b'}'),
    (b'\r', b'\r'), // 0x1C Enter
    (0, 0),         // 0x1D Left Ctrl
    (b'a', b'A'),   // 0x1E
    (b's', b'S'),
    (b'd', b'D'),
    (b'f', b'F'),
    (b'g', b'G'),
    (b'h', b'H'),
    (b'j', b'J'),
    (b'k', b'K'),
    (b'l', b'L'),
    (b';', b':'),
    (b'\'', b'"'),
    (b'`', b'~'),
    (0, 0), // 0x2A Left Shift
    (b'\\', b'|'),
    (b'z', b'Z'), // 0x2C
    (b'x', b'X'),
    (b'c', b'C'),
    (b'v', b'V'),
    (b'b', b'B'),
    (b'n', b'N'),
    (b'm', b'M'),
    (b',', b'<'),
    (b'.', b'>'),
    (b'/', b'?'),
    (0, 0),       // 0x36 Right Shift
    (b'*', b'*'), // 0x37 keypad *
    (0, 0),       // 0x38 Left Alt
    (b' ', b' '), // 0x39 Space
];

const LEFT_SHIFT: u8 = 0x2A;
const RIGHT_SHIFT: u8 = 0x36;
const CAPS_LOCK: u8 = 0x3A;
const ENTER: u8 = 0x1C;
const EXTENDED: u8 = 0xE0;
const BREAK: u8 = 0x80;

/// The decoder's state: which shift keys are down, Caps Lock, and a pending 0xE0 prefix.
#[derive(Clone, Copy, Debug, Default)]
pub struct Decoder {
    left_shift: bool,
    right_shift: bool,
    caps: bool,
    extended: bool,
}

impl Decoder {
    /// A decoder with no key down (usable in a `static`).
    pub const DEFAULT: Decoder =
        Decoder { left_shift: false, right_shift: false, caps: false, extended: false };

    /// Takes one byte from the keyboard; returns the byte the key types, if any.
    pub fn feed(&mut self, code: u8) -> Option<u8> {
        if code == EXTENDED {
            self.extended = true;
            return None;
        }
        let extended = core::mem::take(&mut self.extended);
        let released = code & BREAK != 0;
        let key = code & !BREAK;
        if extended {
            // Of the extended keys only the keypad's Enter types something.
            return (key == ENTER && !released).then_some(b'\r');
        }
        match key {
            LEFT_SHIFT => self.left_shift = !released,
            RIGHT_SHIFT => self.right_shift = !released,
            CAPS_LOCK if !released => self.caps = !self.caps,
            _ => {}
        }
        if released {
            return None;
        }
        let (plain, shifted) = *KEYS.get(usize::from(key))?;
        let shift = self.left_shift || self.right_shift;
        let byte = if plain.is_ascii_lowercase() {
            if shift != self.caps {
                shifted
            } else {
                plain
            }
        } else if shift {
            shifted
        } else {
            plain
        };
        (byte != 0).then_some(byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Make then break codes for each key of `keys`, with Left Shift around `shifted` ones.
    fn typed(codes: &[u8]) -> Vec<u8> {
        let mut d = Decoder::default();
        codes.iter().filter_map(|&c| d.feed(c)).collect()
    }

    #[test]
    fn a_command_typed_on_the_keyboard_reads_as_on_the_serial_line() {
        // "status hello" Enter: s t a t u s space h e l l o Enter, each make then break.
        let keys = [0x1F, 0x14, 0x1E, 0x14, 0x16, 0x1F, 0x39, 0x23, 0x12, 0x26, 0x26, 0x18, 0x1C];
        let codes: Vec<u8> = keys.iter().flat_map(|&k| [k, k | 0x80]).collect();
        assert_eq!(typed(&codes), b"status hello\r");
    }

    #[test]
    fn shift_and_caps_lock() {
        // Shift down, '1', 'a', Shift up, 'a'; Caps Lock, 'a', Shift+'a', '1'.
        let codes = [
            0x2A, 0x02, 0x82, 0x1E, 0x9E, 0xAA, 0x1E, 0x9E, 0x3A, 0xBA, 0x1E, 0x36, 0x1E, 0xB6,
            0x02,
        ];
        assert_eq!(typed(&codes), b"!Aa".iter().chain(b"Aa1").copied().collect::<Vec<u8>>());
    }

    #[test]
    fn backspace_keypad_enter_and_ignored_keys() {
        // Backspace; keypad Enter (E0 1C); right arrow (E0 4D) and its break; F1; Escape.
        let codes = [0x0E, 0x8E, 0xE0, 0x1C, 0xE0, 0x9C, 0xE0, 0x4D, 0xE0, 0xCD, 0x3B, 0xBB, 0x01];
        assert_eq!(typed(&codes), [0x7F, b'\r']);
    }

    #[test]
    fn any_byte_sequence_is_taken_without_a_panic() {
        let mut d = Decoder::default();
        for a in 0..=255u8 {
            for b in [0u8, 0x80, 0xE0, 0xFF, a] {
                let _ = d.feed(a);
                let _ = d.feed(b);
            }
        }
    }
}
