//! A text console on the boot framebuffer, so that a machine without a serial port shows the
//! manager's log and, above all, a panic's message (which stays on screen: the manager halts).
//!
//! Design:
//! - The framebuffer is the one the bootloader set up (VBE on BIOS, GOP on UEFI) and describes
//!   in `BootInfo::framebuffer`; [`init`] takes it, clears it and keeps it in a `spin::Mutex`.
//! - Where each character goes (wrapping, newlines, when to scroll) is decided by the pure,
//!   host-tested [`platform::textgrid::Cursor`]; this module only moves pixels.
//! - Glyphs come from `noto-sans-mono-bitmap` (16 px, the font the bootloader's own logger
//!   uses). Its pixels are intensities, drawn as a foreground colour scaled over black.
//! - Scrolling copies whole pixel rows up with `copy_within` and blanks the freed rows. It jumps
//!   by a quarter of the screen at a time: the copy *reads* video memory, which real machines
//!   map uncached or write-combining (slow to read), so fewer, larger scrolls cost far less.
//! - No heap, no interrupts: [`init`] may run first thing in `kernel_main`.
//!
//! Limits: printable ASCII only (anything else is drawn as `?`, a tab as a space); two colours,
//! normal and error ([`write_error_str`]); pixel formats RGB and BGR with 3 or 4 bytes per
//! pixel and 8-bit grayscale with 1 to 4 (grayscale shows both colours alike). Any other format
//! or an inconsistent layout means no console: every write is then silently dropped.
//! Writers never block and never panic: if the console is busy the text is dropped (serial
//! still has it), and the panic handler uses [`emergency_write_str`], which takes the console
//! even from the code it interrupted.

use core::fmt;

use bootloader_api::info::{FrameBuffer, FrameBufferInfo, PixelFormat};
use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};
use platform::textgrid::{Cursor, Step};
use spin::Mutex;

const FONT_WEIGHT: FontWeight = FontWeight::Regular;
const FONT_SIZE: RasterHeight = RasterHeight::Size16;
const GLYPH_WIDTH_PX: usize = get_raster_width(FONT_WEIGHT, FONT_SIZE);
const LINE_HEIGHT_PX: usize = FONT_SIZE.val();
/// Blank border around the text (some monitors and TVs crop the edges of the picture).
const MARGIN_PX: usize = 8;
/// Scrolling frees `rows / SCROLL_DIVISOR` rows at a time (at least one).
const SCROLL_DIVISOR: usize = 4;
/// Foreground colours as (red, green, blue).
const NORMAL_RGB: [u8; 3] = [0xd0, 0xd0, 0xd0];
const ERROR_RGB: [u8; 3] = [0xff, 0x50, 0x50];

#[derive(Clone, Copy)]
enum Ink {
    Normal,
    Error,
}

#[derive(Clone, Copy)]
enum Format {
    Rgb,
    Bgr,
    Gray,
}

struct Console {
    pixels: &'static mut [u8],
    format: Format,
    bytes_per_pixel: usize,
    stride_bytes: usize,
    cursor: Cursor,
}

static CONSOLE: Mutex<Option<Console>> = Mutex::new(None);

/// Takes the framebuffer, clears it and makes it the console. Call once; a later call replaces
/// the console. With an unsupported format or layout there is no console (writes are dropped).
///
/// The caller takes the framebuffer out of the boot info, which moves it out for good:
/// `if let Some(fb) = boot_info.framebuffer.take() { fbcon::init(fb) }`. (Taking it by value
/// rather than `boot_info.framebuffer.as_mut()` keeps `boot_info` usable afterwards.)
pub fn init(fb: FrameBuffer) {
    let info = fb.info();
    let console = Console::new(fb.into_buffer(), info);
    if let Some(mut slot) = CONSOLE.try_lock() {
        *slot = console;
    }
}

/// Writes `s` in the normal colour; drops it if the console is busy or absent.
pub fn write_str(s: &str) {
    if let Some(c) = CONSOLE.try_lock().as_mut().and_then(|g| g.as_mut()) {
        c.write(s, Ink::Normal);
    }
}

/// Writes `s` in the error colour; drops it if the console is busy or absent.
#[allow(dead_code, reason = "for callers that report a failure on screen, e.g. the supervisor")]
pub fn write_error_str(s: &str) {
    if let Some(c) = CONSOLE.try_lock().as_mut().and_then(|g| g.as_mut()) {
        c.write(s, Ink::Error);
    }
}

/// Writes `s` in the error colour even if the console is locked. Only for the panic (and
/// CPU exception) handlers, which never return to the code they interrupted.
pub fn emergency_write_str(s: &str) {
    if CONSOLE.is_locked() {
        // SAFETY: only the panic and exception handlers call this, and the CPU running them is
        // the only one that runs manager code (the other CPUs run instance kernels, which never
        // touch this static). So the lock's holder is the code this CPU was running when it
        // failed, and it never resumes: the handlers halt. At worst a half-drawn glyph or
        // scroll stays on screen; the cursor is always valid, so drawing from it is sound.
        unsafe { CONSOLE.force_unlock() };
    }
    if let Some(c) = CONSOLE.try_lock().as_mut().and_then(|g| g.as_mut()) {
        c.write(s, Ink::Error);
    }
}

/// [`write_str`] for formatted text (to mirror `serial::print`).
pub fn write_fmt(args: fmt::Arguments) {
    let _ = fmt::write(&mut Pen(write_str), args);
}

/// [`emergency_write_str`] for formatted text (to mirror `serial::print_emergency`).
pub fn emergency_write_fmt(args: fmt::Arguments) {
    let _ = fmt::write(&mut Pen(emergency_write_str), args);
}

/// Lets `core::fmt` write through one of the functions above, a piece at a time.
struct Pen(fn(&str));

impl fmt::Write for Pen {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        (self.0)(s);
        Ok(())
    }
}

impl Console {
    /// Checks the layout against the buffer and clears the screen; `None` if unusable.
    fn new(pixels: &'static mut [u8], info: FrameBufferInfo) -> Option<Self> {
        let bpp = info.bytes_per_pixel;
        let format = match info.pixel_format {
            PixelFormat::Rgb if (3..=4).contains(&bpp) => Format::Rgb,
            PixelFormat::Bgr if (3..=4).contains(&bpp) => Format::Bgr,
            PixelFormat::U8 if (1..=4).contains(&bpp) => Format::Gray,
            _ => return None,
        };
        let stride_bytes = info.stride.checked_mul(bpp)?;
        let needed = stride_bytes.checked_mul(info.height)?;
        if info.stride < info.width || needed > pixels.len() {
            return None;
        }
        let cols = info.width.saturating_sub(2 * MARGIN_PX) / GLYPH_WIDTH_PX;
        let rows = info.height.saturating_sub(2 * MARGIN_PX) / LINE_HEIGHT_PX;
        let cursor = Cursor::new(cols, rows, rows / SCROLL_DIVISOR)?;
        pixels.fill(0);
        Some(Self { pixels, format, bytes_per_pixel: bpp, stride_bytes, cursor })
    }

    fn write(&mut self, s: &str, ink: Ink) {
        for c in s.chars() {
            let Step { scroll, draw } = self.cursor.put(c);
            if scroll > 0 {
                self.scroll(scroll);
            }
            if let Some(cell) = draw {
                self.draw_glyph(cell.col, cell.row, cell.byte, ink);
            }
        }
    }

    /// Byte offset of text row `row`'s first pixel row.
    fn row_offset(&self, row: usize) -> usize {
        (MARGIN_PX + row * LINE_HEIGHT_PX) * self.stride_bytes
    }

    /// Moves text rows `n..rows` up to `0..rows - n` and blanks the last `n` rows.
    fn scroll(&mut self, n: usize) {
        let rows = self.cursor.rows();
        let (top, from, end) = (self.row_offset(0), self.row_offset(n), self.row_offset(rows));
        // `Console::new` checked that the whole grid, margins included, fits in `pixels`.
        if n <= rows && end <= self.pixels.len() {
            self.pixels.copy_within(from..end, top);
            let freed = self.row_offset(rows - n);
            if let Some(bottom) = self.pixels.get_mut(freed..end) {
                bottom.fill(0);
            }
        }
    }

    fn draw_glyph(&mut self, col: usize, row: usize, byte: u8, ink: Ink) {
        let Some(glyph) = get_raster(char::from(byte), FONT_WEIGHT, FONT_SIZE) else { return };
        let bpp = self.bytes_per_pixel;
        let x_bytes = (MARGIN_PX + col * GLYPH_WIDTH_PX) * bpp;
        let mut line = [0u8; GLYPH_WIDTH_PX * 4];
        for (y, intensities) in glyph.raster().iter().enumerate() {
            for (px, &i) in line.chunks_exact_mut(bpp).zip(intensities.iter()) {
                self.format.encode(ink, i, px);
            }
            let start = self.row_offset(row) + y * self.stride_bytes + x_bytes;
            let len = GLYPH_WIDTH_PX * bpp;
            if let Some(dst) = self.pixels.get_mut(start..start + len) {
                dst.copy_from_slice(&line[..len]);
            }
        }
    }
}

impl Format {
    /// Writes one pixel of `ink` at `intensity` (0 = background) into `px`
    /// (`bytes_per_pixel` bytes; a fourth byte is padding and stays 0).
    fn encode(self, ink: Ink, intensity: u8, px: &mut [u8]) {
        let [r, g, b] = match ink {
            Ink::Normal => NORMAL_RGB,
            Ink::Error => ERROR_RGB,
        };
        let scale = |c: u8| (u16::from(c) * u16::from(intensity) / 255) as u8;
        let bytes = match self {
            Format::Rgb => [scale(r), scale(g), scale(b)],
            Format::Bgr => [scale(b), scale(g), scale(r)],
            Format::Gray => [intensity, 0, 0],
        };
        for (dst, src) in px.iter_mut().zip(bytes) {
            *dst = src;
        }
    }
}
