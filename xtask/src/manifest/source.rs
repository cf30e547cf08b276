//! The manifest's text and the errors found in it: byte spans become `file:line:column`.
//!
//! Every check pushes its problem into a [`Source`] with the span it is about; [`Source::finish`]
//! sorts them into file order, so [`ManifestErrors`] reads top to bottom whatever order the
//! checks ran in. Lines and columns are 1-based, and columns count characters, not bytes.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem, located in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based line and column (in characters), when the problem has a place in the file.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, column)) => {
                write!(f, "{}:{line}:{column}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in a manifest, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// The manifest text, for turning byte offsets into places and collecting errors.
pub(super) struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<(usize, ManifestError)>,
}

impl<'a> Source<'a> {
    pub(super) fn new(path: &'a Path, text: &'a str) -> Self {
        Source { path, text, errors: Vec::new() }
    }

    /// 1-based line and column (in characters) of byte `offset`.
    pub(super) fn place(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, column)
    }

    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let at = Some(self.place(span.start));
        let message = message.into();
        self.errors.push((span.start, ManifestError { file: self.path.into(), at, message }));
    }

    /// How many errors have been reported so far.
    pub(super) fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub(super) fn finish(mut self) -> ManifestErrors {
        self.errors.sort_by_key(|(offset, _)| *offset);
        ManifestErrors(self.errors.into_iter().map(|(_, e)| e).collect())
    }
}
