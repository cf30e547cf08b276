//! Reading the manager's framebuffer console back from a QEMU screenshot: each text cell is
//! matched against the glyphs of the font the console draws with (`noto-sans-mono-bitmap`,
//! 16 px, as `kernel/src/fbcon.rs`), so a test can assert on the words on screen.

use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};

use crate::qemu::Picture;

/// `kernel/src/fbcon.rs`: the blank border and the cell size.
const MARGIN_PX: usize = 8;
const SIZE: RasterHeight = RasterHeight::Size16;
const WEIGHT: FontWeight = FontWeight::Regular;

/// A glyph's ink as a bit per pixel (intensity above half).
fn glyph_mask(c: char) -> Vec<bool> {
    get_raster(c, WEIGHT, SIZE)
        .map(|r| r.raster().iter().flat_map(|row| row.iter().map(|&v| v > 127)).collect())
        .unwrap_or_default()
}

/// The text of every row of the screen, trailing blanks removed. A cell whose pixels are all
/// dark is a space; any other is the printable ASCII glyph that differs from it in the fewest
/// pixels.
pub fn read_text(pic: &Picture) -> Vec<String> {
    let w = get_raster_width(WEIGHT, SIZE);
    let h = SIZE.val();
    let cols = pic.width.saturating_sub(2 * MARGIN_PX) / w;
    let rows = pic.height.saturating_sub(2 * MARGIN_PX) / h;
    let glyphs: Vec<(char, Vec<bool>)> =
        (b'!'..=b'~').map(|b| (b as char, glyph_mask(b as char))).collect();
    let mut lines = Vec::with_capacity(rows);
    for row in 0..rows {
        let mut line = String::with_capacity(cols);
        for col in 0..cols {
            let (x0, y0) = (MARGIN_PX + col * w, MARGIN_PX + row * h);
            let mut values = Vec::with_capacity(w * h);
            for y in y0..y0 + h {
                for x in x0..x0 + w {
                    let (r, g, b) = pic.pixel(x, y);
                    values.push(r.max(g).max(b));
                }
            }
            let peak = values.iter().copied().max().unwrap_or(0);
            if peak < 40 {
                line.push(' ');
                continue;
            }
            let cell: Vec<bool> =
                values.iter().map(|&v| u16::from(v) * 2 > u16::from(peak)).collect();
            let best = glyphs
                .iter()
                .min_by_key(|(_, m)| m.iter().zip(&cell).filter(|(a, b)| a != b).count())
                .map_or('?', |(c, _)| *c);
            line.push(best);
        }
        lines.push(line.trim_end().to_string());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws `text` the way the console does (normal ink, 0xd0 grey) into a picture.
    fn draw(lines: &[&str], width: usize, height: usize) -> Picture {
        let w = get_raster_width(WEIGHT, SIZE);
        let mut rgb = vec![0u8; width * height * 3];
        for (row, text) in lines.iter().enumerate() {
            for (col, c) in text.chars().enumerate() {
                let Some(r) = get_raster(c, WEIGHT, SIZE) else { continue };
                for (y, line) in r.raster().iter().enumerate() {
                    for (x, &v) in line.iter().enumerate() {
                        let px = MARGIN_PX + col * w + x;
                        let py = MARGIN_PX + row * SIZE.val() + y;
                        let i = (py * width + px) * 3;
                        let ink = (0xd0 * u16::from(v) / 255) as u8;
                        rgb[i..i + 3].copy_from_slice(&[ink, ink, ink]);
                    }
                }
            }
        }
        Picture { width, height, rgb }
    }

    #[test]
    fn text_drawn_like_the_console_reads_back() {
        let lines = [
            "instance     cpus  state",
            "hello        1     running   0.3 s",
            "mk> status hello",
            "  image: boot bundle file 'hello', 819944 bytes",
        ];
        let text = read_text(&draw(&lines, 640, 200));
        for (got, want) in text.iter().zip(lines) {
            assert_eq!(got, want);
        }
        assert!(text[lines.len()..].iter().all(|l| l.is_empty()));
    }
}
