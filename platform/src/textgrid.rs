//! A text console's logic: the cursor (which cell the next character goes to, and when the
//! screen must scroll) and the screen of text behind it.
//!
//! The framebuffer console (`kernel/src/fbcon.rs`) draws pixels; this module decides what.
//! [`Cursor`] alone turns characters into drawing steps; [`Screen`] keeps the text itself and
//! what was last drawn, so the renderer can draw late, rarely, and only the cells that changed.
//!
//! Scrolling jumps by `scroll_rows` rows at a time (chosen at [`Cursor::new`]). A renderer that
//! scrolls by copying pixels must *read* video memory, which is uncached on real machines and
//! can be slow; jumping by several rows divides the number of those copies.
//!
//! Rules, like a VT100 with auto-wrap on:
//! - `'\n'` goes to the start of the next row; on the last row it asks for a scroll of
//!   `scroll_rows` rows and goes to the first row the scroll freed.
//! - `'\r'` goes to the start of the row.
//! - `'\t'` is drawn as a space; other control characters and anything outside printable ASCII
//!   are drawn as `'?'` (the console's font has only ASCII).
//! - Wrapping is deferred: a character in the last column leaves the cursor *past* the edge,
//!   and only the next printable character moves to the next row. So a line exactly as wide as
//!   the screen followed by `'\n'` does not leave an empty row.
//!
//! # Invariants
//! `cols > 0`, `rows > 0`, `1 <= scroll_rows <= rows`, `row < rows`, `col <= cols`
//! (`col == cols` means a wrap is pending).
//! Every [`Step::draw`] names a cell inside the grid.

use alloc::vec::Vec;

/// What the renderer must do for one character, in this order: scroll, then draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Move every row up by this many rows and blank that many rows at the bottom (0: none).
    pub scroll: usize,
    /// Draw this glyph in this cell.
    pub draw: Option<Cell>,
}

/// A glyph at a cell; `byte` is always printable ASCII (`b' '..=b'~'`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub col: usize,
    pub row: usize,
    pub byte: u8,
}

/// A cursor on a `cols` x `rows` grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    cols: usize,
    rows: usize,
    scroll_rows: usize,
    col: usize,
    row: usize,
}

/// The glyph drawn for `c`: itself if printable ASCII, a space for a tab, `'?'` otherwise.
pub fn glyph_for(c: char) -> u8 {
    match c {
        ' '..='~' => c as u8,
        '\t' => b' ',
        _ => b'?',
    }
}

impl Cursor {
    /// A cursor at the top left that scrolls by `scroll_rows` rows (clamped to `1..=rows`);
    /// `None` if the grid has no cells (a screen too small for one character).
    pub fn new(cols: usize, rows: usize, scroll_rows: usize) -> Option<Self> {
        let scroll_rows = scroll_rows.clamp(1, rows.max(1));
        (cols > 0 && rows > 0).then_some(Self { cols, rows, scroll_rows, col: 0, row: 0 })
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// (column, row) of the next character; the column equals `cols` while a wrap is pending.
    pub fn position(&self) -> (usize, usize) {
        (self.col, self.row)
    }

    /// Advances over `c` and says what to draw.
    pub fn put(&mut self, c: char) -> Step {
        match c {
            '\n' => Step { scroll: self.newline(), draw: None },
            '\r' => {
                self.col = 0;
                Step { scroll: 0, draw: None }
            }
            _ => {
                let scroll = if self.col >= self.cols { self.newline() } else { 0 };
                let cell = Cell { col: self.col, row: self.row, byte: glyph_for(c) };
                self.col += 1;
                Step { scroll, draw: Some(cell) }
            }
        }
    }

    /// Moves to the start of the next row; returns how many rows the grid must scroll first.
    fn newline(&mut self) -> usize {
        self.col = 0;
        if self.row + 1 < self.rows {
            self.row += 1;
            0
        } else {
            self.row = self.rows - self.scroll_rows;
            self.scroll_rows
        }
    }
}

/// A screen of text kept in memory: what a console renderer draws, when it chooses to.
/// Writing costs a few memory stores per character. The screen also remembers what the
/// renderer last drew in each cell, so [`Screen::draw_changes`] hands out only the cells whose
/// glyph or ink differ from what is on display. Scrolling moves the text, not the record of
/// what is drawn, so after a scroll most cells differ and are drawn again.
#[derive(Clone, Debug)]
pub struct Screen {
    cursor: Cursor,
    /// `cols * rows` (glyph byte, ink) pairs, row after row; blank cells hold a space.
    cells: Vec<(u8, u8)>,
    /// What the renderer drew last in each cell (a new screen is blank, as the renderer's
    /// cleared display is).
    drawn: Vec<(u8, u8)>,
}

/// A blank cell: a space in ink 0.
const BLANK: (u8, u8) = (b' ', 0);

impl Screen {
    /// A blank `cols` x `rows` screen that scrolls one row at a time; `None` if it has no cells.
    pub fn new(cols: usize, rows: usize) -> Option<Self> {
        let cursor = Cursor::new(cols, rows, 1)?;
        let cells = alloc::vec![BLANK; cols.checked_mul(rows)?];
        Some(Screen { cursor, drawn: cells.clone(), cells })
    }

    pub fn cols(&self) -> usize {
        self.cursor.cols()
    }

    pub fn rows(&self) -> usize {
        self.cursor.rows()
    }

    /// Writes `c` in `ink` at the cursor.
    pub fn put(&mut self, c: char, ink: u8) {
        let Step { scroll, draw } = self.cursor.put(c);
        let cols = self.cursor.cols();
        if scroll > 0 {
            let moved = scroll.saturating_mul(cols).min(self.cells.len());
            self.cells.copy_within(moved.., 0);
            let len = self.cells.len();
            self.cells[len - moved..].fill(BLANK);
        }
        if let Some(cell) = draw {
            if let Some(slot) = self.cells.get_mut(cell.row * cols + cell.col) {
                *slot = (cell.byte, ink);
            }
        }
    }

    /// Replaces row `row` with `text` in `ink` (cut at the width, blanks after it), without
    /// moving the cursor: for fixed lines such as a status panel. A row past the last is
    /// ignored.
    pub fn set_row(&mut self, row: usize, text: &str, ink: u8) {
        let cols = self.cursor.cols();
        let Some(cells) = self.cells.get_mut(row * cols..(row + 1) * cols) else { return };
        let mut chars = text.chars();
        for cell in cells {
            *cell = match chars.next() {
                Some(c) => (glyph_for(c), ink),
                None => BLANK,
            };
        }
    }

    /// Row `row`'s cells (empty past the last row).
    pub fn row(&self, row: usize) -> &[(u8, u8)] {
        let cols = self.cursor.cols();
        self.cells.get(row * cols..(row + 1) * cols).unwrap_or(&[])
    }

    /// Calls `draw(col, row, byte, ink)` for every cell that differs from what was drawn
    /// last, and records it as drawn. Returns how many cells that was.
    pub fn draw_changes(&mut self, mut draw: impl FnMut(usize, usize, u8, u8)) -> usize {
        let cols = self.cursor.cols();
        let mut n = 0;
        for (i, (cell, drawn)) in self.cells.iter().zip(self.drawn.iter_mut()).enumerate() {
            if cell != drawn {
                draw(i % cols, i / cols, cell.0, cell.1);
                *drawn = *cell;
                n += 1;
            }
        }
        n
    }

    /// Forgets what was drawn (the display was cleared or overwritten): the next
    /// [`Screen::draw_changes`] draws every cell that is not blank.
    pub fn forget_drawn(&mut self) {
        self.drawn.fill(BLANK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_row_replaces_one_row_and_keeps_the_cursor() {
        let mut s = Screen::new(5, 2).unwrap();
        s.put('a', 0);
        s.set_row(1, "hello world", 1);
        let text: Vec<u8> = s.row(1).iter().map(|c| c.0).collect();
        assert_eq!(&text, b"hello");
        assert!(s.row(1).iter().all(|c| c.1 == 1));
        s.set_row(1, "hi\u{e9}", 0);
        let text: Vec<u8> = s.row(1).iter().map(|c| c.0).collect();
        assert_eq!(&text, b"hi?  ", "shorter text blanks the rest; non-ASCII is '?'");
        s.set_row(7, "ignored", 0);
        s.put('b', 0);
        assert_eq!(s.row(0)[..2], [(b'a', 0), (b'b', 0)], "the cursor did not move");
    }

    #[test]
    fn a_screen_keeps_text_and_hands_out_only_changed_cells() {
        let changes = |s: &mut Screen| {
            let mut v = Vec::new();
            s.draw_changes(|c, r, b, i| v.push((c, r, b, i)));
            v
        };
        let mut s = Screen::new(4, 2).unwrap();
        assert!(changes(&mut s).is_empty(), "a new screen is blank, like the cleared display");
        for c in "ab\ncd".chars() {
            s.put(c, 1);
        }
        assert_eq!(s.row(0), [(b'a', 1), (b'b', 1), (b' ', 0), (b' ', 0)]);
        assert_eq!(
            changes(&mut s),
            [(0, 0, b'a', 1), (1, 0, b'b', 1), (0, 1, b'c', 1), (1, 1, b'd', 1)]
        );
        assert!(changes(&mut s).is_empty(), "drawn cells are not handed out again");
        s.put('e', 1);
        assert_eq!(changes(&mut s), [(2, 1, b'e', 1)], "one new character, one cell");
        s.put('\n', 0);
        s.put('f', 2);
        assert_eq!(s.row(0), [(b'c', 1), (b'd', 1), (b'e', 1), (b' ', 0)]);
        assert_eq!(s.row(1), [(b'f', 2), (b' ', 0), (b' ', 0), (b' ', 0)]);
        // The scroll moved text: every cell whose content differs from the display is drawn,
        // including the blanks where text was.
        assert_eq!(
            changes(&mut s),
            [
                (0, 0, b'c', 1),
                (1, 0, b'd', 1),
                (2, 0, b'e', 1),
                (0, 1, b'f', 2),
                (1, 1, b' ', 0),
                (2, 1, b' ', 0)
            ]
        );
        s.forget_drawn();
        assert_eq!(changes(&mut s).len(), 4, "after forgetting, every non-blank cell");
        assert!(s.row(2).is_empty());
        assert!(Screen::new(0, 3).is_none());
    }

    fn run(cur: &mut Cursor, s: &str) -> Vec<Step> {
        s.chars().map(|c| cur.put(c)).collect()
    }

    fn draw(col: usize, row: usize, byte: u8) -> Step {
        Step { scroll: 0, draw: Some(Cell { col, row, byte }) }
    }

    #[test]
    fn empty_grid_has_no_cursor() {
        assert_eq!(Cursor::new(0, 5, 1), None);
        assert_eq!(Cursor::new(5, 0, 1), None);
    }

    #[test]
    fn writes_left_to_right_and_newline_starts_next_row() {
        let mut cur = Cursor::new(10, 3, 1).unwrap();
        let steps = run(&mut cur, "ab\nc");
        assert_eq!(steps[0], draw(0, 0, b'a'));
        assert_eq!(steps[1], draw(1, 0, b'b'));
        assert_eq!(steps[2], Step { scroll: 0, draw: None });
        assert_eq!(steps[3], draw(0, 1, b'c'));
        assert_eq!(cur.position(), (1, 1));
    }

    #[test]
    fn wrap_is_deferred_until_the_next_printable_character() {
        let mut cur = Cursor::new(3, 3, 1).unwrap();
        run(&mut cur, "abc");
        assert_eq!(cur.position(), (3, 0));
        assert_eq!(cur.put('d'), draw(0, 1, b'd'));
        // A full row followed by '\n' leaves no empty row.
        let mut cur = Cursor::new(3, 3, 1).unwrap();
        run(&mut cur, "abc\nd");
        assert_eq!(cur.position(), (1, 1));
    }

    #[test]
    fn newline_on_last_row_scrolls_and_stays_on_last_row() {
        let mut cur = Cursor::new(4, 2, 1).unwrap();
        assert_eq!(run(&mut cur, "a\nb\n")[3], Step { scroll: 1, draw: None });
        assert_eq!(cur.position(), (0, 1));
        assert_eq!(cur.put('c'), draw(0, 1, b'c'));
    }

    #[test]
    fn jump_scroll_frees_several_rows_and_continues_on_the_first() {
        let mut cur = Cursor::new(4, 8, 3).unwrap();
        let steps = run(&mut cur, "1\n2\n3\n4\n5\n6\n7\n8\n9");
        assert_eq!(steps[15], Step { scroll: 3, draw: None });
        assert_eq!(steps[16], draw(0, 5, b'9'));
    }

    #[test]
    fn scroll_rows_is_clamped_to_the_grid() {
        let mut cur = Cursor::new(4, 2, 99).unwrap();
        assert_eq!(run(&mut cur, "\n\n")[1], Step { scroll: 2, draw: None });
        assert_eq!(cur.position(), (0, 0));
        let mut cur = Cursor::new(4, 1, 0).unwrap();
        assert_eq!(cur.put('\n'), Step { scroll: 1, draw: None });
    }

    #[test]
    fn wrapping_off_the_last_row_scrolls_before_drawing() {
        let mut cur = Cursor::new(2, 1, 1).unwrap();
        run(&mut cur, "ab");
        let step = cur.put('c');
        assert_eq!(step, Step { scroll: 1, draw: Some(Cell { col: 0, row: 0, byte: b'c' }) });
    }

    #[test]
    fn carriage_return_goes_to_column_zero() {
        let mut cur = Cursor::new(5, 2, 1).unwrap();
        run(&mut cur, "abc\rx");
        assert_eq!(cur.position(), (1, 0));
    }

    #[test]
    fn non_ascii_and_controls_become_question_marks() {
        assert_eq!(glyph_for('é'), b'?');
        assert_eq!(glyph_for('\u{1b}'), b'?');
        assert_eq!(glyph_for('\u{7f}'), b'?');
        assert_eq!(glyph_for('\t'), b' ');
        assert_eq!(glyph_for('~'), b'~');
    }

    #[test]
    fn every_draw_and_scroll_stays_inside_the_grid() {
        let text = "héllo\twörld\n\n\r1234567890abcdefghij\nxyz\u{0}\u{1f600}\n\n\nend";
        for cols in 1..6 {
            for rows in 1..5 {
                for jump in 0..6 {
                    let mut cur = Cursor::new(cols, rows, jump).unwrap();
                    for step in run(&mut cur, text) {
                        assert!(step.scroll <= rows);
                        if let Some(c) = step.draw {
                            assert!(c.col < cols && c.row < rows, "{c:?} on {cols}x{rows}");
                            assert!((b' '..=b'~').contains(&c.byte));
                        }
                    }
                    let (col, row) = cur.position();
                    assert!(col <= cols && row < rows);
                }
            }
        }
    }
}
