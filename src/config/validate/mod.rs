//! DTO → [`Model`]: every semantic rule, every error collected.
//!
//! Each check reports into [`Diagnostics`] and yields `None` for what it could not build, so one
//! bad value never hides another: the model is assembled only at the end, and only if nothing
//! was reported. Checks point at the offending value, or at the table header when a required key
//! is missing.

mod daemon;
mod egress;
mod service;

pub(super) use daemon::DEFAULT_CONTROL_SOCKET;

use std::collections::HashMap;
use std::hash::Hash;
use std::ops::Range;
use std::time::Duration;

use serde_spanned::Spanned;

use super::dto::{ConfigDto, DurationText};
use super::duration::parse_duration;
use super::error::Diagnostics;
use super::suggest::unknown_keyword;
use crate::model::Model;

pub(super) fn validate(dto: &ConfigDto, d: &mut Diagnostics<'_>) -> Option<Model> {
    let daemon = daemon::daemon(&dto.daemon, d);
    let conntrack = daemon::conntrack(&dto.conntrack, d);
    let sysctl = daemon::sysctl(&dto.sysctl, &dto.conntrack, d);
    let services = service::services(&dto.services, d);
    let egress = egress::egress_rules(&dto.egress, d);
    Some(Model {
        daemon: daemon?,
        conntrack: conntrack?,
        sysctl: sysctl?,
        services: services?,
        egress: egress?,
    })
}

/// A keyword value (`protocol = "tcp"`): the matching option, `default` when absent.
fn keyword<T: Copy>(
    value: &Option<Spanned<String>>,
    what: &str,
    options: &[(&str, T)],
    default: T,
    d: &mut Diagnostics<'_>,
) -> Option<T> {
    let Some(value) = value else {
        return Some(default);
    };
    let word = value.get_ref().as_str();
    if let Some((_, v)) = options.iter().find(|(name, _)| *name == word) {
        return Some(*v);
    }
    let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
    d.error(value.span(), unknown_keyword(what, word, &names));
    None
}

/// An optional duration: `Some(None)` when absent, `None` when invalid (reported).
fn duration(
    value: &Option<Spanned<DurationText>>,
    what: &str,
    d: &mut Diagnostics<'_>,
) -> Option<Option<Duration>> {
    duration_with(value, what, d, parse_duration)
}

/// [`duration`] with a parser of the caller's choosing.
fn duration_with(
    value: &Option<Spanned<DurationText>>,
    what: &str,
    d: &mut Diagnostics<'_>,
    parse: fn(&str) -> Result<Duration, String>,
) -> Option<Option<Duration>> {
    let Some(value) = value else {
        return Some(None);
    };
    match parse(&value.get_ref().0) {
        Ok(v) => Some(Some(v)),
        Err(e) => {
            d.error(value.span(), format!("{what}: {e}"));
            None
        }
    }
}

/// Service and egress names appear in nft comments, set names and on the command line
/// (`natlb drain web …`), so they are kept to characters that need no quoting anywhere.
fn check_name(kind: &str, name: &Spanned<String>, d: &mut Diagnostics<'_>) -> Option<String> {
    let text = name.get_ref();
    let len = text.chars().count();
    let message = if text.is_empty() {
        Some(format!(
            "{kind} name is empty; use 1 to 64 letters, digits, `_`, `.` or `-`"
        ))
    } else if len > 64 {
        Some(format!(
            "{kind} name `{text}` is {len} characters long; use at most 64"
        ))
    } else {
        text.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .map(|bad| {
                format!(
                    "{kind} name `{text}` contains {bad:?}; use only letters, digits, `_`, `.` \
                     and `-`"
                )
            })
    };
    match message {
        Some(m) => {
            d.error(name.span(), m);
            None
        }
        None => Some(text.clone()),
    }
}

/// A required key: reports `message` at the table header when it is absent.
fn required<'v, T>(
    value: &'v Option<Spanned<T>>,
    header: &Range<usize>,
    message: impl FnOnce() -> String,
    d: &mut Diagnostics<'_>,
) -> Option<&'v Spanned<T>> {
    if value.is_none() {
        d.error(header.clone(), message());
    }
    value.as_ref()
}

/// Remembers where each key was first seen (and a label for it, such as the service's name), to
/// report a repeat together with the line of the original.
struct FirstSeen<K> {
    first: HashMap<K, (usize, String)>,
}

impl<K: Eq + Hash> FirstSeen<K> {
    fn new() -> Self {
        FirstSeen {
            first: HashMap::new(),
        }
    }

    /// `None` the first time `key` is seen; afterwards the line and label of the first sighting.
    fn repeat(
        &mut self,
        key: K,
        span: &Range<usize>,
        label: &str,
        d: &Diagnostics<'_>,
    ) -> Option<(usize, String)> {
        match self.first.get(&key) {
            Some((offset, label)) => Some((d.line(*offset), label.clone())),
            None => {
                self.first.insert(key, (span.start, label.to_owned()));
                None
            }
        }
    }
}
