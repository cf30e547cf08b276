//! Fuzz target: the control shell's line editor and parser take any bytes a serial line can
//! carry without panicking, and never hold more than `MAX_LINE` bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use platform::shell::{parse, Edit, LineEditor, MAX_LINE};

fuzz_target!(|data: &[u8]| {
    let mut editor = LineEditor::default();
    for &b in data {
        if let Edit::Line(Ok(line)) = editor.feed(b) {
            assert!(line.len() <= MAX_LINE);
            let _ = parse(&line);
        }
        assert!(editor.current().len() <= MAX_LINE);
    }
    let _ = parse(&String::from_utf8_lossy(data));
});
