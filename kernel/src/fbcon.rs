//! A text console on the boot framebuffer, so that a machine without a serial port shows the
//! manager's log and, above all, a panic's message (which stays on screen: the manager halts).
//!
//! Design:
//! - The framebuffer is the one the bootloader set up (VBE on BIOS, GOP on UEFI) and describes
//!   in `BootInfo::framebuffer`; [`init`] takes it, clears it and keeps it in a `spin::Mutex`.
//! - Text goes into an in-memory screen ([`platform::textgrid::Screen`], host-tested): writing
//!   costs a few stores per character, and scrolling moves cells, not pixels. The pixels are
//!   drawn by [`flush`], only for cells that differ from what is on display, from
//!   [`flush_if_due`] (called on every write and while the manager waits) and at once on a
//!   panic. A drawing is due [`FLUSH_EVERY_US`] after the last one, or later if the last one
//!   was slow: drawing takes at most a tenth of the manager's time ([`MAX_DRAW_SHARE`]). So
//!   the log's volume does not decide the manager's speed: under QEMU with 255 vCPUs a full
//!   screen took 180 ms to draw, and drawing every line of a 254-instance boot cost seconds.
//! - Glyphs come from `noto-sans-mono-bitmap` (16 px, the font the bootloader's own logger
//!   uses). Each printable glyph is rendered once per ink into the framebuffer's pixel format
//!   at [`init`], so drawing a cell is 16 row copies.
//!
//! Limits: printable ASCII only (anything else is drawn as `?`, a tab as a space); two colours,
//! normal and error; pixel formats RGB and BGR with 3 or 4 bytes per pixel and 8-bit grayscale
//! with 1 to 4 (grayscale shows both colours alike). Any other format or an inconsistent layout
//! means no console: every write is then silently dropped. Writers never block and never
//! panic: if the console is busy the text is dropped (serial still has it), and the panic
//! handler uses [`emergency_write_str`], which takes the console even from the code it
//! interrupted and draws at once.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use bootloader_api::info::{FrameBuffer, FrameBufferInfo, PixelFormat};
use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};
use platform::textgrid::Screen;
use spin::Mutex;

const FONT_WEIGHT: FontWeight = FontWeight::Regular;
const FONT_SIZE: RasterHeight = RasterHeight::Size16;
const GLYPH_WIDTH_PX: usize = get_raster_width(FONT_WEIGHT, FONT_SIZE);
const LINE_HEIGHT_PX: usize = FONT_SIZE.val();
/// Blank border around the text (some monitors and TVs crop the edges of the picture).
const MARGIN_PX: usize = 8;
/// Foreground colours as (red, green, blue).
const NORMAL_RGB: [u8; 3] = [0xd0, 0xd0, 0xd0];
const ERROR_RGB: [u8; 3] = [0xff, 0x50, 0x50];
/// The screen is redrawn at most this often (unless a panic forces it).
pub const FLUSH_EVERY_US: u64 = 100_000;
/// Drawing may take at most 1 / `MAX_DRAW_SHARE` of the time: after a drawing that took `d`,
/// the next waits at least `(MAX_DRAW_SHARE - 1) * d`.
pub const MAX_DRAW_SHARE: u64 = 10;
/// The glyphs rendered at init: printable ASCII.
const FIRST_GLYPH: u8 = b' ';
const GLYPHS: usize = (b'~' - b' ' + 1) as usize;

#[derive(Clone, Copy)]
enum Ink {
    Normal = 0,
    Error = 1,
}

#[derive(Clone, Copy)]
enum Format {
    Rgb,
    Bgr,
    Gray,
}

struct Console {
    pixels: &'static mut [u8],
    bytes_per_pixel: usize,
    stride_bytes: usize,
    /// The status panel's rows at the top (the last one a separator), drawn from row 0; none
    /// on a screen too small for it.
    panel: Option<Screen>,
    /// The scrolling log, drawn below the panel.
    screen: Screen,
    /// Each printable glyph in each ink, as pixel rows in the framebuffer's format:
    /// `[ink][glyph][row][GLYPH_WIDTH_PX * bytes_per_pixel]`, flattened.
    glyphs: alloc::vec::Vec<u8>,
}

static CONSOLE: Mutex<Option<Console>> = Mutex::new(None);
/// When the screen was last drawn (µs since boot).
static LAST_FLUSH_US: AtomicU64 = AtomicU64::new(0);
/// How long the last drawing took (µs).
static LAST_DRAW_US: AtomicU64 = AtomicU64::new(0);
/// How many drawings there were and how long they took in total (for the report).
static DRAWS: AtomicU64 = AtomicU64::new(0);
static DRAW_US: AtomicU64 = AtomicU64::new(0);

/// (drawings, µs spent drawing) since boot.
pub fn draw_stats() -> (u64, u64) {
    (DRAWS.load(Ordering::Relaxed), DRAW_US.load(Ordering::Relaxed))
}

/// Takes the framebuffer, clears it and makes it the console (needs the heap, for the text
/// screen). Call once; a later call replaces the console. With an unsupported format or layout
/// there is no console (writes are dropped).
///
/// The caller takes the framebuffer out of the boot info, which moves it out for good:
/// `if let Some(fb) = boot_info.framebuffer.take() { fbcon::init(fb) }`.
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
    flush_if_due();
}

/// Writes `s` in the error colour even if the console is locked, and draws at once. Only for
/// the panic (and CPU exception) handlers, which never return to the code they interrupted.
pub fn emergency_write_str(s: &str) {
    if CONSOLE.is_locked() {
        // SAFETY: only the panic and exception handlers call this, and the CPU running them is
        // the only one that runs manager code (the other CPUs run instance kernels, which never
        // touch this static). So the lock's holder is the code this CPU was running when it
        // failed, and it never resumes: the handlers halt. At worst a half-drawn row stays on
        // screen; the text screen is always consistent, so drawing from it is sound.
        unsafe { CONSOLE.force_unlock() };
    }
    if let Some(c) = CONSOLE.try_lock().as_mut().and_then(|g| g.as_mut()) {
        c.write(s, Ink::Error);
        c.draw_changes();
    }
}

/// Draws what changed, if a drawing is due (see the module docs).
pub fn flush_if_due() {
    let now = crate::time::micros_since_boot();
    let gap = FLUSH_EVERY_US.max(LAST_DRAW_US.load(Ordering::Relaxed) * (MAX_DRAW_SHARE - 1));
    if now.saturating_sub(LAST_FLUSH_US.load(Ordering::Relaxed)) >= gap {
        flush();
    }
}

/// Draws the cells that changed since the last drawing.
pub fn flush() {
    if let Some(c) = CONSOLE.try_lock().as_mut().and_then(|g| g.as_mut()) {
        let start = crate::time::micros_since_boot();
        if c.draw_changes() == 0 {
            return;
        }
        let end = crate::time::micros_since_boot();
        LAST_FLUSH_US.store(end, Ordering::Relaxed);
        LAST_DRAW_US.store(end - start, Ordering::Relaxed);
        DRAWS.fetch_add(1, Ordering::Relaxed);
        DRAW_US.fetch_add(end - start, Ordering::Relaxed);
    }
}

/// Rows of the status panel above the log (a header, instances, a separator), on screens
/// tall enough for it and 10 rows of log.
pub const PANEL_ROWS: usize = 12;

/// Shows `lines` in the status panel (at most [`PANEL_ROWS`] - 1; the rest is cut), drawn
/// with the next flush. Dropped if the console is busy or absent.
pub fn set_panel(lines: &[alloc::string::String]) {
    let mut guard = CONSOLE.try_lock();
    let Some(panel) = guard.as_mut().and_then(|g| g.as_mut()).and_then(|c| c.panel.as_mut()) else {
        return;
    };
    let rows = panel.rows();
    for r in 0..rows - 1 {
        panel.set_row(r, lines.get(r).map_or("", |l| l.as_str()), Ink::Normal as u8);
    }
    let rule = "-".repeat(panel.cols());
    panel.set_row(rows - 1, &rule, Ink::Normal as u8);
}

/// The lines the panel can show (0 without a console or a panel).
pub fn panel_rows() -> usize {
    let guard = CONSOLE.try_lock();
    let panel = guard.as_ref().and_then(|g| g.as_ref()).and_then(|c| c.panel.as_ref());
    panel.map_or(0, |p| p.rows().saturating_sub(1))
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
        // The panel only where ten rows of log remain below it.
        let panel_rows = if rows >= PANEL_ROWS + 10 { PANEL_ROWS } else { 0 };
        let panel = Screen::new(cols, panel_rows);
        let screen = Screen::new(cols, rows - panel_rows)?;
        pixels.fill(0);
        let glyph_bytes = LINE_HEIGHT_PX * GLYPH_WIDTH_PX * bpp;
        let mut glyphs = alloc::vec![0u8; 2 * GLYPHS * glyph_bytes];
        for (ink, per_ink) in
            [Ink::Normal, Ink::Error].into_iter().zip(glyphs.chunks_mut(GLYPHS * glyph_bytes))
        {
            for (g, out) in per_ink.chunks_mut(glyph_bytes).enumerate() {
                let c = char::from(FIRST_GLYPH + g as u8);
                let Some(raster) = get_raster(c, FONT_WEIGHT, FONT_SIZE) else { continue };
                let pixels_out = out.chunks_exact_mut(bpp);
                let intensities = raster.raster().iter().flat_map(|row| row.iter());
                for (px, &intensity) in pixels_out.zip(intensities) {
                    let mut p = [0u8; 4];
                    format.encode(ink, intensity, &mut p);
                    px.copy_from_slice(&p[..bpp]);
                }
            }
        }
        Some(Self { pixels, bytes_per_pixel: bpp, stride_bytes, panel, screen, glyphs })
    }

    fn write(&mut self, s: &str, ink: Ink) {
        for c in s.chars() {
            self.screen.put(c, ink as u8);
        }
    }

    /// Draws every cell that differs from what is on display; returns how many.
    fn draw_changes(&mut self) -> usize {
        let Console { pixels, bytes_per_pixel: bpp, stride_bytes, panel, screen, glyphs } = self;
        let (bpp, stride) = (*bpp, *stride_bytes);
        let log_top = panel.as_ref().map_or(0, Screen::rows);
        let mut n = 0;
        if let Some(panel) = panel.as_mut() {
            n += draw_screen(panel, 0, pixels, bpp, stride, glyphs);
        }
        n + draw_screen(screen, log_top, pixels, bpp, stride, glyphs)
    }
}

/// Draws `screen`'s changed cells with its first row at text row `top`; returns how many.
fn draw_screen(
    screen: &mut Screen,
    top_row: usize,
    pixels: &mut [u8],
    bpp: usize,
    stride: usize,
    glyphs: &[u8],
) -> usize {
    let row_bytes = GLYPH_WIDTH_PX * bpp;
    let glyph_bytes = LINE_HEIGHT_PX * row_bytes;
    screen.draw_changes(|col, row, byte, ink| {
        let row = row + top_row;
        let ink = usize::from(ink == Ink::Error as u8);
        let g = usize::from(byte.saturating_sub(FIRST_GLYPH)).min(GLYPHS - 1);
        let start = (ink * GLYPHS + g) * glyph_bytes;
        let Some(glyph) = glyphs.get(start..start + glyph_bytes) else { return };
        let x = (MARGIN_PX + col * GLYPH_WIDTH_PX) * bpp;
        let top = (MARGIN_PX + row * LINE_HEIGHT_PX) * stride;
        for (y, src) in glyph.chunks_exact(row_bytes).enumerate() {
            let at = top + y * stride + x;
            if let Some(dst) = pixels.get_mut(at..at + row_bytes) {
                copy_row(dst, src);
            }
        }
    })
}

/// Copies one glyph row (a few dozen bytes) eight bytes at a time. `copy_from_slice` would
/// call `memcpy`, whose `rep movsb` QEMU's TCG runs a byte per step: drawing a screen that way
/// took 100 times longer.
fn copy_row(dst: &mut [u8], src: &[u8]) {
    let (d8, d_rest) = dst.as_chunks_mut::<8>();
    let (s8, s_rest) = src.as_chunks::<8>();
    for (d, s) in d8.iter_mut().zip(s8) {
        *d = u64::from_ne_bytes(*s).to_ne_bytes();
    }
    for (d, s) in d_rest.iter_mut().zip(s_rest) {
        *d = *s;
    }
}

impl Format {
    /// Writes one pixel of `ink` at `intensity` (0 = background) into `px`
    /// (`bytes_per_pixel` bytes; a fourth byte is padding and stays 0).
    fn encode(self, ink: Ink, intensity: u8, px: &mut [u8; 4]) {
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
