//! The config file as written: serde DTOs, one per TOML table, read section by section.
//!
//! DTOs only fix the TOML types (string, integer, boolean, array). Everything with rules —
//! addresses, keywords, durations, ranges, required keys — stays a (spanned) string or integer
//! here and is checked in `validate`, which can then report every problem with its position
//! instead of serde stopping at the first. Values are `Spanned` where validation may need to
//! point at them.
//!
//! Each section (`[daemon]`, `[conntrack]`, `[sysctl]`, each `[[service]]`, each `[[egress]]`)
//! is deserialized on its own, so a type error in one service does not hide the errors in the
//! others.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::error::Diagnostics;

/// The whole file; sections that failed to deserialize are absent (their error is reported).
#[derive(Debug, Default)]
pub(super) struct ConfigDto {
    pub daemon: DaemonDto,
    pub conntrack: ConntrackDto,
    pub sysctl: BTreeMap<Spanned<String>, Spanned<i64>>,
    pub services: Vec<Spanned<ServiceDto>>,
    pub egress: Vec<Spanned<EgressDto>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DaemonDto {
    pub table: Option<Spanned<String>>,
    pub control_socket: Option<Spanned<String>>,
    pub control_group: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub metrics: Option<Spanned<String>>,
    pub keep_rules_on_exit: Option<bool>,
    pub hash_seed: Option<Spanned<i64>>,
    pub hairpin_mark: Option<Spanned<i64>>,
    pub least_conn_interval: Option<Spanned<DurationText>>,
    pub sticky_read_wait: Option<Spanned<DurationText>>,
}

/// Integers are `i64` (TOML's integer type) rather than `u64`, so that a negative value reaches
/// validation and gets a "must be positive" message with the others instead of a serde error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConntrackDto {
    pub max: Option<Spanned<i64>>,
    pub buckets: Option<Spanned<i64>>,
    pub tcp_timeout_established: Option<Spanned<i64>>,
    pub tcp_timeout_time_wait: Option<Spanned<i64>>,
    pub tcp_timeout_close_wait: Option<Spanned<i64>>,
    pub udp_timeout: Option<Spanned<i64>>,
    pub udp_timeout_stream: Option<Spanned<i64>>,
    pub icmp_timeout: Option<Spanned<i64>>,
    pub generic_timeout: Option<Spanned<i64>>,
    pub tcp_loose: Option<bool>,
    pub tcp_be_liberal: Option<bool>,
    pub warn_percent: Option<Spanned<i64>>,
    pub check_interval: Option<Spanned<DurationText>>,
}

/// Required keys are `Option` too: validation reports a missing one with a message that says
/// what to add, pointing at the table it belongs in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceDto {
    pub name: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub scheduler: Option<Spanned<String>>,
    pub hash: Option<Spanned<String>>,
    pub persistence: Option<Spanned<DurationText>>,
    pub snat: Option<Spanned<String>>,
    pub on_all_down: Option<Spanned<String>>,
    pub on_backend_down: Option<Spanned<String>>,
    pub health: Option<HealthDto>,
    pub backend: Option<Vec<Spanned<BackendDto>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthDto {
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<StatusText>>,
    pub payload: Option<Spanned<String>>,
    pub command: Option<Spanned<Argv>>,
    pub interval: Option<Spanned<DurationText>>,
    pub fast_interval: Option<Spanned<DurationText>>,
    pub timeout: Option<Spanned<DurationText>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendDto {
    pub address: Option<Spanned<String>>,
    pub weight: Option<Spanned<i64>>,
    pub backup: Option<bool>,
    pub health_port: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EgressDto {
    pub name: Option<Spanned<String>>,
    pub source: Option<Spanned<Vec<Spanned<String>>>>,
    pub destination: Option<Spanned<Vec<Spanned<String>>>>,
    pub exclude_destination: Option<Spanned<Vec<Spanned<String>>>>,
    pub out_interface: Option<Spanned<String>>,
    pub snat: Option<Spanned<EgressSnatDto>>,
    pub ports: Option<Spanned<String>>,
    pub persistent: Option<Spanned<bool>>,
    pub fully_random: Option<bool>,
}

/// `snat` of an egress rule: one string (`"masquerade"`, or a single address or range) or a list
/// of addresses and ranges.
#[derive(Debug)]
pub(super) enum EgressSnatDto {
    One(String),
    List(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for EgressSnatDto {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A hand-written visitor rather than `#[serde(untagged)]`, whose error ("did not match
        // any variant") would not say what to write.
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EgressSnatDto;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"masquerade\" or a list of addresses and ranges")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(EgressSnatDto::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(EgressSnatDto::List(items))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string that validation parses further (a duration); only its expected-type message differs
/// from `String`, so that `interval = 2` says how to write a duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DurationText(pub String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string with a unit, such as \"2s\" or \"500ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(DurationText(v.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

/// `expect_status`: a string that validation parses into status ranges; its own type only for the
/// expected-type message, so that `expect_status = 200` says to quote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StatusText(pub String);

impl<'de> Deserialize<'de> for StatusText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StatusText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a string of status codes and ranges, such as \"200-399\" or \"200,204\"",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StatusText(v.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

/// `command` of an exec probe: the program and its arguments, each spanned so validation can
/// point at the one that is wrong. A hand-written visitor so that `command = "/bin/check"` says
/// an array is expected and what goes in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Argv(pub Vec<Spanned<String>>);

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Argv;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an array of strings, the program and its arguments, such as \
                     [\"/usr/local/bin/check\", \"--quick\"]",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Argv(items))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Deserializes each section of a document that has passed the schema pre-pass. A section that
/// fails is reported and left out (its defaults take its place; the caller will not produce a
/// model anyway because an error was reported).
pub(super) fn read(mut doc: DeTable<'_>, diags: &mut Diagnostics<'_>) -> ConfigDto {
    let mut dto = ConfigDto::default();
    if let Some(v) = doc.remove("daemon") {
        dto.daemon = section(v, None, diags).unwrap_or_default();
    }
    if let Some(v) = doc.remove("conntrack") {
        dto.conntrack = section(v, None, diags).unwrap_or_default();
    }
    if let Some(v) = doc.remove("sysctl") {
        dto.sysctl = sysctl(v, diags);
    }
    if let Some(v) = doc.remove("service") {
        dto.services = elements(v, diags);
    }
    if let Some(v) = doc.remove("egress") {
        dto.egress = elements(v, diags);
    }
    dto
}

/// Each element of an array of tables, deserialized on its own, with the span of its header.
fn elements<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    diags: &mut Diagnostics<'_>,
) -> Vec<Spanned<T>> {
    match value.into_inner() {
        DeValue::Array(items) => items
            .into_iter()
            .filter_map(|item| {
                let span = item.span();
                section(item, None, diags).map(|v| Spanned::new(span, v))
            })
            .collect(),
        // The schema pass has already reported and removed non-arrays.
        _ => Vec::new(),
    }
}

/// `[sysctl]` entry by entry: its keys are free-form, so each is its own section and every bad
/// value is reported.
fn sysctl(
    value: Spanned<DeValue<'_>>,
    diags: &mut Diagnostics<'_>,
) -> BTreeMap<Spanned<String>, Spanned<i64>> {
    match value.into_inner() {
        DeValue::Table(table) => table
            .into_iter()
            .filter_map(|(key, value)| {
                let name = key.get_ref().to_string();
                let value = section(value, Some(&name), diags)?;
                Some((Spanned::new(key.span(), name), value))
            })
            .collect(),
        // The schema pass has already reported and removed non-tables.
        _ => BTreeMap::new(),
    }
}

/// Deserializes one section; `name` names the key holding `value` when it is a single value.
fn section<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    name: Option<&str>,
    diags: &mut Diagnostics<'_>,
) -> Option<T> {
    let whole = value.span();
    // Kept to name the key whose value serde rejected: its messages say what was wrong with a
    // value but not which key held it.
    let copy = value.clone();
    match T::deserialize(ValueDeserializer::from(value)) {
        Ok(v) => Some(v),
        Err(e) => {
            let span = e.span().unwrap_or(whole);
            let message = plain_types(e.message());
            let message = match key_at(&copy, &span).or(name.map(str::to_owned)) {
                Some(key) => format!("`{key}`: {message}"),
                None => message,
            };
            diags.error(span, message);
            None
        }
    }
}

/// The dotted path of the key whose value (or an item of whose array value) has exactly `span`,
/// searching below `value`.
fn key_at(value: &Spanned<DeValue<'_>>, span: &std::ops::Range<usize>) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(t) => t.iter().find_map(|(k, v)| {
            let item_of_array = match v.get_ref() {
                DeValue::Array(items) => items.iter().any(|item| item.span() == *span),
                _ => false,
            };
            if v.span() == *span || item_of_array {
                Some(k.get_ref().to_string())
            } else {
                key_at(v, span).map(|inner| format!("{}.{inner}", k.get_ref()))
            }
        }),
        DeValue::Array(items) => items.iter().find_map(|item| key_at(item, span)),
        _ => None,
    }
}

/// serde names Rust types (`i64`, "a sequence", "struct ServiceDto"); the operator knows TOML's.
fn plain_types(message: &str) -> String {
    const STRUCT: &str = "expected struct ";
    let mut message = message.to_owned();
    if let Some(start) = message.find(STRUCT) {
        let name = start + STRUCT.len();
        let end = message[name..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(message.len(), |i| name + i);
        message.replace_range(start..end, "expected a table");
    }
    message
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array")
        .replace("invalid type: map", "invalid type: table")
        .replace("invalid type: sequence", "invalid type: array")
        .replace("invalid type: floating point", "invalid type: float")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> (ConfigDto, Vec<String>) {
        let mut diags = Diagnostics::new("f.toml", text);
        let doc = DeTable::parse(text).unwrap().into_inner();
        let dto = read(doc, &mut diags);
        let errors = match diags.finish(Some(())) {
            Ok(()) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        };
        (dto, errors)
    }

    #[test]
    fn type_errors_name_the_key_and_spare_other_sections() {
        let text = r#"[daemon]
keep_rules_on_exit = "yes"

[[service]]
name = "a"
[[service.backend]]
address = "1.2.3.4"
weight = "3"

[[service]]
name = "b"

[service.health]
interval = 2
"#;
        let (dto, errors) = read_text(text);
        assert_eq!(
            errors,
            [
                "f.toml:2:22: `keep_rules_on_exit`: invalid type: string \"yes\", expected a \
                 boolean",
                "f.toml:8:10: `backend.weight`: invalid type: string \"3\", expected an integer",
                "f.toml:14:12: `health.interval`: invalid type: integer `2`, expected a duration \
                 string with a unit, such as \"2s\" or \"500ms\"",
            ]
        );
        // Both services failed; nothing else was lost.
        assert!(dto.services.is_empty());
    }

    #[test]
    fn every_bad_sysctl_value_and_array_item_is_reported() {
        let text = "service = [1]\n[sysctl]\n\"net.x\" = \"1\"\n\"net.y\" = 1.5\n\"net.z\" = 1\n";
        let (dto, errors) = read_text(text);
        assert_eq!(
            errors,
            [
                "f.toml:1:12: invalid type: integer `1`, expected a table",
                "f.toml:3:11: `net.x`: invalid type: string \"1\", expected an integer",
                "f.toml:4:11: `net.y`: invalid type: float `1.5`, expected an integer",
            ]
        );
        assert_eq!(dto.sysctl.len(), 1);
    }

    #[test]
    fn egress_snat_forms() {
        let text = r#"
[[egress]]
snat = "masquerade"
[[egress]]
snat = ["203.0.113.1", "203.0.113.5-203.0.113.9"]
[[egress]]
snat = 5
"#;
        let (dto, errors) = read_text(text);
        assert_eq!(dto.egress.len(), 2);
        assert!(matches!(
            dto.egress[0].get_ref().snat.as_ref().unwrap().get_ref(),
            EgressSnatDto::One(s) if s == "masquerade"
        ));
        assert!(matches!(
            dto.egress[1].get_ref().snat.as_ref().unwrap().get_ref(),
            EgressSnatDto::List(l) if l.len() == 2
        ));
        assert_eq!(
            errors,
            [
                "f.toml:7:8: `snat`: invalid type: integer `5`, expected \"masquerade\" or a list \
              of addresses and ranges"
            ]
        );
    }
}
