//! Prints a [`Ruleset`] as an nft script, from the template in `nft-templates/`.

use std::fmt::Write;

use super::layout::{PERSISTENCE, SLOT_CLASSES, TEMPLATE};
use super::maglev;
use super::ruleset::{Ruleset, Value};

/// Elements per `add element` statement: keeps each statement (and nft's memory) moderate.
const ELEMENTS_PER_STATEMENT: usize = 4096;

/// The ruleset as a script that `nft -f` loads. It creates the table, deletes it (so that loading
/// it over an existing table replaces it atomically) and creates it again with all content.
pub fn to_script(rs: &Ruleset) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Rendered by natlb {}. Load with `nft -f`.\n\
         # Replaces table inet {} as a whole, in one transaction.\n\
         table inet {}\ndelete table inet {}",
        env!("CARGO_PKG_VERSION"),
        rs.table,
        rs.table,
        rs.table
    );
    let egress: Vec<String> = rs.egress.iter().map(|r| r.text()).collect();
    out.push_str(&expand_template(
        &rs.table,
        &rs.comment,
        rs.hash_seed,
        rs.hairpin_mark,
        &egress,
    ));
    for (set, elements) in &rs.elements {
        let entries: Vec<_> = elements.iter().collect();
        for chunk in entries.chunks(ELEMENTS_PER_STATEMENT) {
            let _ = writeln!(out, "add element inet {} {} {{", rs.table, set);
            for (i, (key, entry)) in chunk.iter().enumerate() {
                let sep = if i + 1 == chunk.len() { "" } else { "," };
                let data = if entry.data.is_empty() {
                    String::new()
                } else {
                    format!(" : {}", join(&entry.data))
                };
                let _ = writeln!(
                    out,
                    "\t{} comment \"{}\"{}{}",
                    join(key),
                    entry.comment,
                    data,
                    sep
                );
            }
            out.push_str("}\n");
        }
    }
    out
}

/// The template with its placeholders filled: the table's declarations, sets and rules, with
/// `egress` (rules in nft syntax) in place of `{egress}`.
pub fn expand_template(
    table: &str,
    comment: &str,
    seed: u32,
    hairpin_mark: u32,
    egress: &[String],
) -> String {
    let mut out = String::new();
    // The template's opening comment explains the template (its placeholders) to its readers,
    // not the rendered script to the operator: skip it.
    let body = TEMPLATE
        .lines()
        .skip_while(|l| l.starts_with('#') || l.trim().is_empty());
    for line in body {
        if let Some(indent) = line.strip_suffix("{egress}") {
            for rule in egress {
                out.push_str(indent);
                out.push_str(rule);
                out.push('\n');
            }
            continue;
        }
        let line = line
            .replace("{table}", table)
            .replace("{comment}", comment)
            .replace("{seed}", &format!("{seed:#x}"))
            .replace("{hairpin_mark}", &format!("{hairpin_mark:#010x}"));
        if line.contains("{P}") {
            for (label, _) in PERSISTENCE {
                out.push_str(&line.replace("{P}", label));
                out.push('\n');
            }
            continue;
        }
        let sizes: &[u32] = if line.contains("{T}") {
            &SLOT_CLASSES
        } else if line.contains("{M}") {
            &maglev::SIZES
        } else {
            out.push_str(&line);
            out.push('\n');
            continue;
        };
        for t in sizes {
            let t = t.to_string();
            out.push_str(&line.replace("{T}", &t).replace("{M}", &t));
            out.push('\n');
        }
    }
    out
}

fn join(values: &[Value]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(" . ")
}
