//! Persistence: which of the kernel's sticky entries (client . service -> backend) must go.
//! Pure; the daemon reads the entries (`sticky_reader`), asks here, and deletes the answer.
//!
//! An entry must go when its service . backend pair is not in the eligible set: the backend no
//! longer takes new connections of its service (withdrawn, drained, a backup whose primaries are
//! back, removed from the config), or the service lost its persistence or is gone. The remember
//! chain's guard already refuses to follow such an entry (it drops the new connection's first
//! packet and deletes the entry), so natlb's deletion is what spares each of those clients a
//! retransmission, not what keeps them off the backend.

use std::collections::{BTreeMap, BTreeSet};

use crate::nft::{KernelEntry, SetDelta};
use crate::render::layout;
use crate::render::ruleset::{Entry, Ruleset, Value};

/// The service . backend pairs (VIP . protocol . port . address . port) that take new
/// connections in some state of the ruleset: the elements of its eligible sets, seen through
/// the deltas of a change not applied yet. Borrows rather than copies, so that a change costs
/// what it changes, not what the table holds.
pub struct Eligible<'a> {
    sets: Vec<&'a BTreeMap<Vec<Value>, Entry>>,
    removed: BTreeSet<&'a [Value]>,
    added: BTreeSet<&'a [Value]>,
}

impl<'a> Eligible<'a> {
    /// The eligible pairs of `rs`.
    pub fn of(rs: &'a Ruleset) -> Eligible<'a> {
        Eligible {
            sets: eligible_set_names()
                .filter_map(|name| rs.elements.get(&name))
                .collect(),
            removed: BTreeSet::new(),
            added: BTreeSet::new(),
        }
    }

    /// The eligible pairs of `rs` once `deltas` are applied.
    pub fn after(rs: &'a Ruleset, deltas: &'a [SetDelta]) -> Eligible<'a> {
        let mut out = Eligible::of(rs);
        let names: Vec<String> = eligible_set_names().collect();
        for d in deltas.iter().filter(|d| names.contains(&d.set)) {
            for key in &d.remove {
                out.added.remove(key.as_slice());
                out.removed.insert(key);
            }
            for (key, _) in &d.add {
                out.removed.remove(key.as_slice());
                out.added.insert(key);
            }
        }
        out
    }

    pub fn contains(&self, pair: &[Value]) -> bool {
        self.added.contains(pair)
            || (!self.removed.contains(pair) && self.sets.iter().any(|s| s.contains_key(pair)))
    }

    /// Whether some pair eligible in `before` is not any more: then entries may have become
    /// stale, and the sticky map is worth reading (a reload).
    pub fn takes_away_from(&self, before: &Ruleset) -> bool {
        Eligible::of(before)
            .sets
            .iter()
            .any(|s| s.keys().any(|k| !self.contains(k)))
    }
}

/// Whether `deltas` take new connections away from some backend of a service with persistence
/// (or persistence from a service): only then can entries have become stale, and only then is
/// the map worth reading. A restore or a re-weighting that keeps every backend costs no read.
pub fn takes_away(deltas: &[SetDelta]) -> bool {
    let names: Vec<String> = eligible_set_names().collect();
    deltas
        .iter()
        .any(|d| names.contains(&d.set) && !d.remove.is_empty())
}

/// Of `entries` (key: client . VIP . protocol . port; data: backend address . port), the keys
/// whose service . backend pair is not `eligible`.
pub fn stale(entries: &[KernelEntry], eligible: &Eligible<'_>) -> Vec<Vec<Value>> {
    let mut pair = Vec::new();
    entries
        .iter()
        .filter(|(key, data)| {
            pair.clear();
            pair.extend(key.iter().skip(1).cloned());
            pair.extend(data.iter().cloned());
            !eligible.contains(&pair)
        })
        .map(|(key, _)| key.clone())
        .collect()
}

fn eligible_set_names() -> impl Iterator<Item = String> {
    layout::PERSISTENCE_FAMILIES
        .into_iter()
        .map(layout::eligible_set_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, Service};
    use crate::reconcile::diff_elements;
    use crate::render::{render, service_elements};
    use std::net::IpAddr;

    fn model(persistence: &str) -> crate::model::Model {
        crate::config::parse(
            "t.toml",
            &format!(
                "[[service]]\nname = \"a\"\nlisten = \"203.0.113.1:80\"\n{persistence}\n\
                 [[service.backend]]\naddress = \"192.0.2.1:8080\"\n\
                 [[service.backend]]\naddress = \"192.0.2.2:8080\"\n\
                 [[service]]\nname = \"b\"\nlisten = \"203.0.113.2:80\"\npersistence = \"1m\"\n\
                 [[service.backend]]\naddress = \"192.0.2.2:8080\"\n"
            ),
        )
        .unwrap()
    }

    fn entry(client: &str, vip: &str, backend: &str) -> KernelEntry {
        let ip = |s: &str| Value::Addr(s.parse::<IpAddr>().unwrap());
        (
            vec![
                ip(client),
                ip(vip),
                Value::Proto(crate::model::Protocol::Tcp),
                Value::Port(80),
            ],
            vec![ip(backend), Value::Port(8080)],
        )
    }

    fn second_down(_: &Service, b: &Backend) -> bool {
        b.address.to_string() != "192.0.2.2:8080"
    }

    #[test]
    fn a_withdrawn_backend_loses_its_clients_and_only_them() {
        let m = model("persistence = \"5m\"");
        let all_up = render(&m, |_, _| true);
        let a = &m.services[0];
        let deltas = diff_elements(
            &service_elements(a, 0, |_, _| true),
            &service_elements(a, 0, second_down),
        );
        assert!(takes_away(&deltas));
        let entries = [
            entry("198.51.100.1", "203.0.113.1", "192.0.2.1"),
            entry("198.51.100.2", "203.0.113.1", "192.0.2.2"),
            // Service b's entry to the same backend address: b is untouched.
            entry("198.51.100.2", "203.0.113.2", "192.0.2.2"),
        ];
        assert!(stale(&entries, &Eligible::of(&all_up)).is_empty());
        let after = Eligible::after(&all_up, &deltas);
        assert_eq!(stale(&entries, &after), vec![entries[1].0.clone()]);
    }

    #[test]
    fn a_restore_needs_no_look() {
        let m = model("persistence = \"5m\"");
        let a = &m.services[0];
        let restore = diff_elements(
            &service_elements(a, 0, second_down),
            &service_elements(a, 0, |_, _| true),
        );
        assert!(!takes_away(&restore), "a restore read the sticky map");
        // Without persistence nothing is eligible, so a withdrawal needs no look either.
        let m = model("");
        let a = &m.services[0];
        let withdrawal = diff_elements(
            &service_elements(a, 0, |_, _| true),
            &service_elements(a, 0, second_down),
        );
        assert!(!takes_away(&withdrawal));
    }

    #[test]
    fn losing_persistence_or_the_service_forgets_its_clients() {
        let m = model("");
        let entries = [
            entry("198.51.100.1", "203.0.113.1", "192.0.2.1"),
            entry("198.51.100.1", "203.0.113.2", "192.0.2.2"),
            entry("198.51.100.1", "203.0.113.9", "192.0.2.1"),
        ];
        // a, without persistence now, and 203.0.113.9, gone, lose their entries; b keeps its
        // own.
        let before = render(&model("persistence = \"5m\""), |_, _| true);
        let after = render(&m, |_, _| true);
        let now = Eligible::of(&after);
        assert!(now.takes_away_from(&before));
        assert!(!Eligible::of(&before).takes_away_from(&before));
        assert_eq!(
            stale(&entries, &now),
            vec![entries[0].0.clone(), entries[2].0.clone()]
        );
    }
}
