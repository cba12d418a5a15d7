//! Config errors and the collector that turns byte spans into `FILE:LINE:COL` positions.
//!
//! Every stage of config loading reports into one [`Diagnostics`] instead of returning early, so
//! `natlb check` can show the operator every problem in one run rather than one per edit.

use std::fmt;
use std::ops::Range;

/// One problem in a config file, at a 1-based line and column (columns count characters, not
/// bytes, so they match what an editor shows). Line 0 means the problem concerns the whole file
/// (it could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // No position to give (the file could not be read at all).
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.col, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config file, in file order. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
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

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// An error about the file as a whole (e.g. it cannot be read).
    pub(super) fn whole_file(file: &str, message: String) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            line: 0,
            col: 0,
            message,
        }])
    }
}

/// Collects errors for one file, positioned by byte spans into its text.
pub(super) struct Diagnostics<'a> {
    file: &'a str,
    text: &'a str,
    /// Byte offset at which each line starts; `line_starts[0] == 0`.
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl<'a> Diagnostics<'a> {
    pub(super) fn new(file: &'a str, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Diagnostics {
            file,
            text,
            line_starts,
            errors: Vec::new(),
        }
    }

    /// Reports `message` at the start of `span`.
    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = self.position(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            col,
            message: message.into(),
        });
    }

    /// 1-based line of a byte offset, for messages such as "first defined on line 12".
    pub(super) fn line(&self, offset: usize) -> usize {
        self.position(offset).0
    }

    /// The source text a span covers (for messages quoting what the operator wrote).
    pub(super) fn text(&self, span: Range<usize>) -> &'a str {
        self.text.get(span).unwrap_or("")
    }

    /// 1-based (line, column) of a byte offset; the column counts characters.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        // Spans come from the TOML parser and sit on character boundaries; this only guards
        // against a stray offset landing inside a multi-byte character.
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line - 1];
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }

    /// The collected errors in file order (stable, so errors at one position keep the order in
    /// which they were found), or `Ok(value)` when there are none.
    pub(super) fn finish<T>(mut self, value: Option<T>) -> Result<T, ConfigErrors> {
        self.errors.sort_by_key(|e| (e.line, e.col));
        match value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ if !self.errors.is_empty() => Err(ConfigErrors(self.errors)),
            // Validation yields no value only after reporting why; guard the invariant anyway
            // rather than panic in the daemon.
            _ => Err(ConfigErrors::whole_file(
                self.file,
                "internal error: validation failed without reporting a reason".to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let d = Diagnostics::new("f", "ab\n\"é\" = 1\r\nx");
        assert_eq!(d.position(0), (1, 1));
        assert_eq!(d.position(2), (1, 3)); // the newline itself
        assert_eq!(d.position(3), (2, 1));
        // `é` is two bytes but one column.
        assert_eq!(d.position(7), (2, 4));
        assert_eq!(d.position(13), (3, 1));
        // Past the end clamps to the end.
        assert_eq!(d.position(100), (3, 2));
        // Inside a multi-byte character: backs up to its start.
        assert_eq!(d.position(5), (2, 2));
    }

    #[test]
    fn display_formats() {
        let e = ConfigError {
            file: "a.toml".into(),
            line: 3,
            col: 7,
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "a.toml:3:7: bad");
        let whole = ConfigErrors::whole_file("a.toml", "cannot read: gone".into());
        assert_eq!(whole.to_string(), "a.toml: cannot read: gone");
        let two = ConfigErrors(vec![e.clone(), e]);
        assert_eq!(two.to_string(), "a.toml:3:7: bad\na.toml:3:7: bad");
    }

    #[test]
    fn finish_sorts_by_position() {
        let mut d = Diagnostics::new("f", "a\nb\nc\n");
        d.error(4..5, "third");
        d.error(0..1, "first");
        d.error(2..3, "second");
        let errs = d.finish::<()>(None).unwrap_err();
        let msgs: Vec<_> = errs.0.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(msgs, ["first", "second", "third"]);
    }
}
