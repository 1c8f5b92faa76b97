//! Whitespace-separated annotation text files: line numbering, CRLF, and typed fields.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{DataError, Result};

/// A text file split into numbered, non-blank lines.
pub(crate) struct TextFile {
    pub(crate) path: PathBuf,
    lines: Vec<(usize, String)>,
}

impl TextFile {
    /// Reads the file; a missing file is a [`DataError::NotFound`] naming `what` it should be.
    pub(crate) fn read(path: &Path, what: &str) -> Result<Self> {
        if !path.exists() {
            return Err(DataError::NotFound { path: path.to_path_buf(), what: what.to_string() });
        }
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count();
            DataError::malformed(path, line, "not valid UTF-8")
        })?;
        let lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r').trim().to_string())).filter(|(_, l)| !l.is_empty()).collect();
        Ok(TextFile { path: path.to_path_buf(), lines })
    }

    /// Reads the file if it exists.
    pub(crate) fn read_optional(path: &Path, what: &str) -> Result<Option<Self>> {
        if path.exists() { Self::read(path, what).map(Some) } else { Ok(None) }
    }

    /// The numbered lines.
    pub(crate) fn lines(&self) -> impl Iterator<Item = Line<'_>> {
        self.lines.iter().map(move |(n, text)| Line { path: &self.path, number: *n, text })
    }
}

/// One line of an annotation file.
#[derive(Clone, Copy)]
pub(crate) struct Line<'a> {
    pub(crate) path: &'a Path,
    pub(crate) number: usize,
    pub(crate) text: &'a str,
}

impl<'a> Line<'a> {
    /// An error at this line.
    pub(crate) fn error(&self, message: impl Into<String>) -> DataError {
        DataError::malformed(self.path, self.number, message)
    }

    /// Exactly `n` whitespace-separated fields.
    pub(crate) fn fields(&self, n: usize, form: &str) -> Result<Vec<&'a str>> {
        let f: Vec<&str> = self.text.split_whitespace().collect();
        if f.len() != n {
            return Err(self.error(format!("expected {n} fields '{form}', found {}", f.len())));
        }
        Ok(f)
    }

    /// The first field and the rest of the line (the rest may contain spaces).
    pub(crate) fn head_rest(&self, form: &str) -> Result<(&'a str, &'a str)> {
        match self.text.split_once(char::is_whitespace) {
            Some((h, r)) if !r.trim().is_empty() => Ok((h, r.trim())),
            _ => Err(self.error(format!("expected '{form}'"))),
        }
    }

    /// Parses one field, naming it in the error.
    pub(crate) fn parse<T: FromStr>(&self, field: &str, name: &str) -> Result<T> {
        field.parse().map_err(|_| self.error(format!("{name} '{field}' is not a valid {}", std::any::type_name::<T>())))
    }

    /// Parses a finite float.
    pub(crate) fn float(&self, field: &str, name: &str) -> Result<f32> {
        let v: f32 = self.parse(field, name)?;
        if !v.is_finite() {
            return Err(self.error(format!("{name} '{field}' is not finite")));
        }
        Ok(v)
    }
}
