//! Machine-readable lines for the host's run report.
//!
//! The manager tells the host what it found and did by printing lines of the form
//! `REPORT {"section":"boot",...}` on the serial console, next to the human-readable log.
//! The host runner (`tests/`) collects every such line into the run report JSON. Each line is
//! one self-contained JSON object, so a truncated log loses lines, never the whole report.

use core::fmt::{self, Write};

/// Prefix the host looks for (one source with the host: `bootproto::report`).
pub use bootproto::report::PREFIX as REPORT_PREFIX;

/// Builds one JSON object and prints it as a single report line.
pub struct Line {
    buf: alloc::string::String,
    first: bool,
}

impl Line {
    pub fn new(section: &str) -> Self {
        let mut l = Line::object();
        l.str("section", section);
        l
    }

    /// A plain JSON object, to nest inside a line with [`Line::raw`].
    pub fn object() -> Self {
        let mut l = Line { buf: alloc::string::String::with_capacity(128), first: true };
        l.buf.push('{');
        l
    }

    /// Closes the object and returns its text.
    pub fn finish(&mut self) -> alloc::string::String {
        self.buf.push('}');
        core::mem::take(&mut self.buf)
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.buf.push(',');
        }
        self.first = false;
        write_json_str(&mut self.buf, key);
        self.buf.push(':');
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        write_json_str(&mut self.buf, value);
        self
    }

    pub fn num(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        let _ = write!(self.buf, "{value}");
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.buf.push_str(if value { "true" } else { "false" });
        self
    }

    /// Inserts `value` verbatim; it must already be valid JSON (e.g. from another `Line`).
    pub fn raw(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.buf.push_str(value);
        self
    }

    pub fn emit(&mut self) {
        self.buf.push('}');
        crate::serial::print_serial_only(format_args!("{REPORT_PREFIX}{}\n", self.buf));
    }
}

/// Builds a JSON array from items that are already JSON (objects from [`Line::finish`]).
pub struct Array {
    buf: alloc::string::String,
}

impl Array {
    pub fn new() -> Self {
        Array { buf: alloc::string::String::from("[") }
    }

    pub fn push(&mut self, item: &str) {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        self.buf.push_str(item);
    }

    pub fn finish(mut self) -> alloc::string::String {
        self.buf.push(']');
        self.buf
    }
}

/// A JSON array of numbers.
pub fn numbers(values: impl Iterator<Item = u64>) -> alloc::string::String {
    let mut a = Array::new();
    for v in values {
        a.push(&fmt_string(format_args!("{v}")));
    }
    a.finish()
}

fn write_json_str(out: &mut alloc::string::String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Formats into a string (for values built from `Display` impls).
pub fn fmt_string(args: fmt::Arguments) -> alloc::string::String {
    let mut s = alloc::string::String::new();
    let _ = s.write_fmt(args);
    s
}
