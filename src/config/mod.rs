//! Config file: parse (TOML) and validate into a [`crate::model::Model`].
//!
//! Loading runs in stages, each reporting into one error list so that `natlb check` shows every
//! problem in a single run:
//!
//! 1. TOML syntax (`toml::de::DeTable`, which keeps the byte span of every key and value);
//!    a syntax error stops here, since a half-parsed document would only produce misleading
//!    follow-up errors.
//! 2. `schema`: every unknown key, with a hint, removed from the document.
//! 3. `dto`: serde DTOs, one section at a time, which fix the TOML types.
//! 4. `validate`: DTO → model, every semantic rule.
//!
//! Errors carry `FILE:LINE:COL` (1-based, columns in characters) of the offending key or value.

mod addr;
mod dto;
mod duration;
mod error;
mod schema;
mod suggest;
mod validate;

use std::path::Path;

use toml::de::DeTable;

pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors};

use crate::model::Model;
use error::Diagnostics;

/// Reads and validates the config file at `path`. Errors name the file as `path` displays.
pub fn load(path: &Path) -> Result<Model, ConfigErrors> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigErrors::whole_file(&file, format!("cannot read: {e}")))?;
    match String::from_utf8(bytes) {
        Ok(text) => parse(&file, &text),
        Err(e) => {
            // Point at the first bad byte; the text before it is valid and gives the position.
            let valid_up_to = e.utf8_error().valid_up_to();
            let bytes = e.into_bytes();
            let text = std::str::from_utf8(&bytes[..valid_up_to]).unwrap_or_default();
            let mut d = Diagnostics::new(&file, text);
            d.error(
                valid_up_to..valid_up_to,
                "the file is not valid UTF-8; save it as UTF-8",
            );
            d.finish(None)
        }
    }
}

/// The control socket the config at `path` names (or the default), read leniently: runtime
/// commands (`natlb status`, `natlb drain`) must find the daemon even while the file holds an
/// edit that does not validate yet. `Err` when the file cannot be read or is not TOML.
pub fn control_socket(path: &Path) -> Result<std::path::PathBuf, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text)
        .map_err(|e| format!("{}: not TOML: {}", path.display(), e.message()))?;
    let named = doc
        .get("daemon")
        .and_then(|d| d.get("control_socket"))
        .and_then(|s| s.as_str());
    Ok(std::path::PathBuf::from(
        named.unwrap_or(validate::DEFAULT_CONTROL_SOCKET),
    ))
}

/// Validates config `text`; `file_name` is only used to label errors.
pub fn parse(file_name: &str, text: &str) -> Result<Model, ConfigErrors> {
    let mut d = Diagnostics::new(file_name, text);

    // Only the earliest syntax error is reported: the parser recovers and goes on, but what it
    // finds after a broken line (an unclosed array or string swallows the lines below) is
    // mostly echoes of that first error, and a list of echoes hides the one real mistake.
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    let first = syntax_errors
        .iter()
        .min_by_key(|e| e.span().map_or(0, |s| s.start));
    if let Some(e) = first {
        let span = e.span().unwrap_or(0..0);
        let message = syntax_message(e.message(), d.text(span.clone()));
        d.error(span, message);
        return d.finish(None);
    }
    let mut doc = doc.into_inner();

    schema::check(&mut doc, &mut d);
    let dto = dto::read(doc, &mut d);
    let model = validate::validate(&dto, &mut d);
    d.finish(model)
}

/// The parser's messages, made to say which key and what to do where they do not.
fn syntax_message(message: &str, at: &str) -> String {
    let message = format!("TOML syntax: {message}");
    if message.ends_with("duplicate key") {
        format!("{message} `{at}`; each key (and each [table]) may appear once, remove one")
    } else if message.contains("invalid float") || message.contains("invalid boolean") {
        // An unquoted word such as `natlb` or `1.2.3.4:80` reads as a failed number or boolean;
        // the parser's "expected `nan`" does not tell the operator the real fix.
        format!("{message} (text values must be in double quotes)")
    } else {
        message
    }
}

#[cfg(test)]
mod tests;
