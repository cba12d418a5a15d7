//! The pre-pass: every unknown key in the document, at once.
//!
//! serde's `deny_unknown_fields` stops at the first unknown key, so an operator with three typos
//! would need three runs of `natlb check` to find them. This pass walks the parsed document
//! against a small table of known keys, reports every key it does not know (with a hint), and
//! removes it so deserialization can go on and find the remaining, semantic errors.
//!
//! The key lists here must match the DTOs in `dto.rs`; the DTOs keep `deny_unknown_fields` as a
//! backstop, and the tests parse a config that uses every key.

use toml::de::{DeTable, DeValue};

use super::error::Diagnostics;
use super::suggest::did_you_mean;

/// What the value of a known key must look like, as far as this pass cares: it descends into
/// tables to check their keys and leaves value types to serde.
enum Shape {
    /// A string, number, boolean or array of those; serde checks which.
    Value,
    /// A table (`[daemon]`).
    Table(&'static Table),
    /// An array of tables (`[[service]]`).
    Tables(&'static Table),
    /// `[sysctl]`: any key, each a single value.
    Sysctl,
}

struct Table {
    /// How the operator writes this table, for messages.
    name: &'static str,
    keys: &'static [(&'static str, Shape)],
}

static ROOT: Table = Table {
    name: "the top level",
    keys: &[
        ("daemon", Shape::Table(&DAEMON)),
        ("conntrack", Shape::Table(&CONNTRACK)),
        ("sysctl", Shape::Sysctl),
        ("service", Shape::Tables(&SERVICE)),
        ("egress", Shape::Tables(&EGRESS)),
    ],
};

static DAEMON: Table = Table {
    name: "[daemon]",
    keys: &[
        ("table", Shape::Value),
        ("control_socket", Shape::Value),
        ("control_group", Shape::Value),
        ("state_dir", Shape::Value),
        ("metrics", Shape::Value),
        ("keep_rules_on_exit", Shape::Value),
        ("hash_seed", Shape::Value),
        ("hairpin_mark", Shape::Value),
        ("least_conn_interval", Shape::Value),
        ("sticky_read_wait", Shape::Value),
    ],
};

static CONNTRACK: Table = Table {
    name: "[conntrack]",
    keys: &[
        ("max", Shape::Value),
        ("buckets", Shape::Value),
        ("tcp_timeout_established", Shape::Value),
        ("tcp_timeout_time_wait", Shape::Value),
        ("tcp_timeout_close_wait", Shape::Value),
        ("udp_timeout", Shape::Value),
        ("udp_timeout_stream", Shape::Value),
        ("icmp_timeout", Shape::Value),
        ("generic_timeout", Shape::Value),
        ("tcp_loose", Shape::Value),
        ("tcp_be_liberal", Shape::Value),
        ("warn_percent", Shape::Value),
        ("check_interval", Shape::Value),
    ],
};

static SERVICE: Table = Table {
    name: "[[service]]",
    keys: &[
        ("name", Shape::Value),
        ("listen", Shape::Value),
        ("protocol", Shape::Value),
        ("scheduler", Shape::Value),
        ("hash", Shape::Value),
        ("persistence", Shape::Value),
        ("snat", Shape::Value),
        ("on_all_down", Shape::Value),
        ("on_backend_down", Shape::Value),
        ("health", Shape::Table(&HEALTH)),
        ("backend", Shape::Tables(&BACKEND)),
    ],
};

static HEALTH: Table = Table {
    name: "[service.health]",
    keys: &[
        ("type", Shape::Value),
        ("path", Shape::Value),
        ("host", Shape::Value),
        ("expect_status", Shape::Value),
        ("payload", Shape::Value),
        ("command", Shape::Value),
        ("interval", Shape::Value),
        ("fast_interval", Shape::Value),
        ("timeout", Shape::Value),
        ("rise", Shape::Value),
        ("fall", Shape::Value),
    ],
};

static BACKEND: Table = Table {
    name: "[[service.backend]]",
    keys: &[
        ("address", Shape::Value),
        ("weight", Shape::Value),
        ("backup", Shape::Value),
        ("health_port", Shape::Value),
    ],
};

static EGRESS: Table = Table {
    name: "[[egress]]",
    keys: &[
        ("name", Shape::Value),
        ("source", Shape::Value),
        ("destination", Shape::Value),
        ("exclude_destination", Shape::Value),
        ("out_interface", Shape::Value),
        ("snat", Shape::Value),
        ("ports", Shape::Value),
        ("persistent", Shape::Value),
        ("fully_random", Shape::Value),
    ],
};

/// Reports every unknown or misshapen key in the document and removes it, leaving a document
/// whose keys the DTOs all know.
pub(super) fn check(doc: &mut DeTable<'_>, diags: &mut Diagnostics<'_>) {
    check_table(doc, &ROOT, diags);
}

fn check_table(table: &mut DeTable<'_>, schema: &Table, diags: &mut Diagnostics<'_>) {
    let known: Vec<&str> = schema.keys.iter().map(|(k, _)| *k).collect();
    let mut remove = Vec::new();
    for (key, value) in table.iter_mut() {
        let name = key.get_ref().as_ref();
        let Some((_, shape)) = schema.keys.iter().find(|(k, _)| *k == name) else {
            diags.error(key.span(), unknown_key(name, schema, &known));
            remove.push(name.to_owned());
            continue;
        };
        let span = value.span();
        let keep = match (shape, value.get_mut()) {
            (Shape::Value, _) => true,
            (Shape::Table(inner), DeValue::Table(t)) => {
                check_table(t, inner, diags);
                true
            }
            (Shape::Tables(inner), DeValue::Array(items)) => {
                for item in items.iter_mut() {
                    if let DeValue::Table(t) = item.get_mut() {
                        check_table(t, inner, diags);
                    }
                    // Non-table items are left to serde, which names the expected type.
                }
                true
            }
            (Shape::Sysctl, DeValue::Table(t)) => {
                check_sysctl(t, diags);
                true
            }
            (Shape::Table(inner), _) | (Shape::Tables(inner), _) => {
                // `[service]` instead of `[[service]]` (or the reverse) is an easy slip; serde
                // would only say "expected a sequence", so say how to write it.
                let message = match shape {
                    Shape::Tables(_) => format!(
                        "`{name}` must be an array of tables: write each one under its own \
                         {} header (double brackets)",
                        inner.name
                    ),
                    _ => format!(
                        "`{name}` must be a table: write {} on its own line with its keys below",
                        inner.name
                    ),
                };
                diags.error(span, message);
                false
            }
            (Shape::Sysctl, _) => {
                diags.error(
                    span,
                    "`sysctl` must be a table: write [sysctl] on its own line with \
                     \"name\" = value lines below",
                );
                false
            }
        };
        if !keep {
            remove.push(name.to_owned());
        }
    }
    for name in remove {
        table.remove(name.as_str());
    }
}

fn unknown_key(name: &str, schema: &Table, known: &[&str]) -> String {
    let hint = match did_you_mean(name, known) {
        Some(guess) => format!("; did you mean `{guess}`?"),
        None => String::new(),
    };
    format!(
        "unknown key `{name}` in {}{hint} (valid keys: {})",
        schema.name,
        known.join(", ")
    )
}

/// Sysctl names contain dots, so unquoted they become nested tables:
/// `net.ipv4.ip_forward = 1` means `net = { ipv4 = { ip_forward = 1 } }`. Say how to quote it.
fn check_sysctl(table: &mut DeTable<'_>, diags: &mut Diagnostics<'_>) {
    let mut remove = Vec::new();
    for (key, value) in table.iter() {
        if let DeValue::Table(nested) = value.get_ref() {
            let mut names = Vec::new();
            dotted_names(key.get_ref(), nested, &mut names);
            let example = match names.first() {
                Some((name, value)) => format!("\"{name}\" = {value}"),
                None => format!("\"{}\" = 1", key.get_ref()),
            };
            diags.error(
                key.span(),
                format!("sysctl names contain dots and must be quoted: write {example}"),
            );
            remove.push(key.get_ref().to_string());
        }
    }
    for name in remove {
        table.remove(name.as_str());
    }
}

/// Every `a.b.c` = value leaf under a nested sysctl table, to quote back to the operator.
fn dotted_names(prefix: &str, table: &DeTable<'_>, out: &mut Vec<(String, String)>) {
    for (key, value) in table.iter() {
        let name = format!("{prefix}.{}", key.get_ref());
        match value.get_ref() {
            DeValue::Table(nested) => dotted_names(&name, nested, out),
            DeValue::Integer(i) => out.push((name, i.as_str().to_owned())),
            _ => out.push((name, "1".to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let mut diags = Diagnostics::new("f.toml", text);
        let mut doc = DeTable::parse(text).unwrap().into_inner();
        check(&mut doc, &mut diags);
        match diags.finish(Some(())) {
            Ok(()) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn known_keys_pass() {
        let text = r#"
[daemon]
table = "t"
[sysctl]
"net.ipv4.ip_forward" = 1
[[service]]
name = "a"
health = { type = "tcp" }
[[service.backend]]
address = "1.2.3.4"
[[egress]]
name = "e"
"#;
        assert_eq!(errors(text), Vec::<String>::new());
    }

    #[test]
    fn every_unknown_key_is_reported_with_a_hint() {
        let text = r#"[daemon]
tabel = "t"
[[service]]
name = "a"
protcol = "tcp"
colour = "red"
[service.health]
intervall = "1s"
[[service.backend]]
adress = "1.2.3.4"
[deamon]
"#;
        assert_eq!(
            errors(text),
            [
                "f.toml:2:1: unknown key `tabel` in [daemon]; did you mean `table`? (valid keys: \
                 table, control_socket, control_group, state_dir, metrics, keep_rules_on_exit, hash_seed, hairpin_mark, least_conn_interval, sticky_read_wait)",
                "f.toml:5:1: unknown key `protcol` in [[service]]; did you mean `protocol`? \
                 (valid keys: name, listen, protocol, scheduler, hash, persistence, snat, \
                 on_all_down, on_backend_down, health, backend)",
                "f.toml:6:1: unknown key `colour` in [[service]] (valid keys: name, listen, \
                 protocol, scheduler, hash, persistence, snat, on_all_down, on_backend_down, health, \
                 backend)",
                "f.toml:8:1: unknown key `intervall` in [service.health]; did you mean \
                 `interval`? (valid keys: type, path, host, expect_status, payload, command, \
                 interval, fast_interval, timeout, rise, fall)",
                "f.toml:10:1: unknown key `adress` in [[service.backend]]; did you mean \
                 `address`? (valid keys: address, weight, backup, health_port)",
                "f.toml:11:2: unknown key `deamon` in the top level; did you mean `daemon`? \
                 (valid keys: daemon, conntrack, sysctl, service, egress)",
            ]
        );
    }

    #[test]
    fn unknown_keys_are_removed() {
        let text = "[daemon]\nbogus = 1\ntable = \"t\"\n";
        let mut diags = Diagnostics::new("f.toml", text);
        let mut doc = DeTable::parse(text).unwrap().into_inner();
        check(&mut doc, &mut diags);
        let daemon = doc.get("daemon").unwrap().get_ref().as_table().unwrap();
        assert!(daemon.get("bogus").is_none());
        assert!(daemon.get("table").is_some());
    }

    #[test]
    fn single_brackets_for_an_array_of_tables() {
        assert_eq!(
            errors("[service]\nname = \"a\"\n"),
            [
                "f.toml:1:1: `service` must be an array of tables: write each one under its own \
              [[service]] header (double brackets)"
            ]
        );
        assert_eq!(
            errors("daemon = 1\n"),
            [
                "f.toml:1:10: `daemon` must be a table: write [daemon] on its own line with its \
              keys below"
            ]
        );
    }

    #[test]
    fn unquoted_sysctl_names() {
        assert_eq!(
            errors("[sysctl]\nnet.ipv4.ip_forward = 1\n"),
            [
                "f.toml:2:1: sysctl names contain dots and must be quoted: write \
              \"net.ipv4.ip_forward\" = 1"
            ]
        );
    }
}
