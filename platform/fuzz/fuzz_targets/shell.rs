//! Fuzz target: the control shell's line editor and parser take any bytes a serial line can
//! carry without panicking, and never hold more than `MAX_LINE` bytes (`MAX_DATA_LINE` for an
//! image transfer's data lines, which are decoded too).

#![no_main]

use libfuzzer_sys::fuzz_target;
use platform::shell::{parse, Edit, LineEditor, MAX_LINE};
use platform::transfer::{parse_data_line, DataLine, CHUNK, MAX_DATA_LINE};

fuzz_target!(|data: &[u8]| {
    let mut editor = LineEditor::default();
    for &b in data {
        match editor.feed(b) {
            Edit::Line(Ok(line)) => {
                assert!(line.len() <= MAX_LINE);
                let _ = parse(&line);
            }
            Edit::Data(Ok(line)) => {
                assert!(line.len() <= MAX_DATA_LINE);
                let mut chunk = [0u8; CHUNK];
                if let Ok(DataLine::Chunk { len, .. }) = parse_data_line(&line, &mut chunk) {
                    assert!(len <= CHUNK);
                }
            }
            _ => {}
        }
        assert!(editor.current().len() <= MAX_LINE);
    }
    let _ = parse(&String::from_utf8_lossy(data));
});
