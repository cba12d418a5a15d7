//! Reconcile: what batch turns the installed table into the desired one. Pure: the daemon
//! sends what this returns.

use crate::nft::{Change, Installed, SetDelta};
use std::collections::BTreeSet;

use crate::render::ruleset::{Elements, Ruleset};

/// How to get from what is installed to what is desired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Already as desired.
    Nothing,
    /// Replace the whole table in one batch (no table yet, or one natlb cannot adopt).
    Replace { reason: String },
    /// Element deltas, and the egress chain rewritten if `egress`: the cost grows with what
    /// changed.
    Deltas { deltas: Vec<SetDelta>, egress: bool },
    /// Touch nothing: the table under natlb's name is not natlb's.
    Refuse { reason: String },
}

impl Plan {
    /// The batch for this plan; `old_table` names a table to remove as well (a renamed table).
    pub fn changes<'a>(
        &'a self,
        desired: &'a Ruleset,
        old_table: Option<&'a str>,
    ) -> Vec<Change<'a>> {
        let mut out = Vec::new();
        if let Plan::Refuse { .. } = self {
            return out;
        }
        if let Some(old) = old_table.filter(|&t| t != desired.table) {
            out.push(Change::DropTable(old));
        }
        match self {
            Plan::Nothing | Plan::Refuse { .. } => {}
            Plan::Replace { .. } => {
                out.push(Change::DropTable(&desired.table));
                out.push(Change::CreateTable(desired));
            }
            Plan::Deltas { deltas, egress } => {
                if *egress {
                    out.push(Change::Egress(desired));
                }
                out.push(Change::Elements {
                    table: &desired.table,
                    deltas,
                })
            }
        }
        out
    }
}

/// The plan at start-up, from what the kernel holds.
pub fn adopt(installed: &Installed, desired: &Ruleset) -> Plan {
    match installed {
        Installed::Absent => Plan::Replace {
            reason: format!("table inet {} does not exist yet", desired.table),
        },
        Installed::NotNatlb { comment } => Plan::Refuse {
            reason: format!(
                "table inet {} exists and natlb did not create it (its comment is {comment:?}); \
                 natlb never changes another table: set daemon.table to another name, or \
                 delete that table yourself if it is an old natlb's",
                desired.table
            ),
        },
        Installed::Foreign { reason } => Plan::Replace {
            reason: format!("table inet {} cannot be adopted: {reason}", desired.table),
        },
        Installed::Ours(current) => plan(current, desired),
        // The egress chain holds other rules than the config's: written again.
        Installed::OursOtherEgress(current) => match plan(current, desired) {
            Plan::Nothing => Plan::Deltas {
                deltas: vec![],
                egress: true,
            },
            Plan::Deltas { deltas, .. } => Plan::Deltas {
                deltas,
                egress: true,
            },
            other => other,
        },
    }
}

/// The plan from one known ruleset to another.
pub fn plan(current: &Ruleset, desired: &Ruleset) -> Plan {
    if current.table != desired.table {
        return Plan::Replace {
            reason: format!("the table is now inet {}", desired.table),
        };
    }
    if current.comment != desired.comment
        || current.sets != desired.sets
        || current.chains != desired.chains
    {
        return Plan::Replace {
            reason: "the table layout changed".into(),
        };
    }
    let deltas = diff(current, desired);
    let egress = current.egress != desired.egress;
    if deltas.is_empty() && !egress {
        Plan::Nothing
    } else {
        Plan::Deltas { deltas, egress }
    }
}

/// Element deltas per set between two rulesets of the same layout.
pub fn diff(current: &Ruleset, desired: &Ruleset) -> Vec<SetDelta> {
    diff_elements(&current.elements, &desired.elements)
}

/// Element deltas per set between two element collections: whole tables, or the elements of
/// one service before and after a change ([`crate::render::service_elements`]). A changed
/// element (same key, new value or comment) is removed and added again: the kernel refuses to
/// overwrite an element's value in place.
pub fn diff_elements(current: &Elements, desired: &Elements) -> Vec<SetDelta> {
    let empty = Default::default();
    let sets: BTreeSet<&String> = current.keys().chain(desired.keys()).collect();
    let mut out = Vec::new();
    for set in sets {
        let cur = current.get(set).unwrap_or(&empty);
        let want = desired.get(set).unwrap_or(&empty);
        let mut d = SetDelta {
            set: set.clone(),
            ..Default::default()
        };
        for (key, entry) in cur {
            match want.get(key) {
                Some(w) if w == entry => {}
                Some(w) => {
                    d.remove.push(key.clone());
                    d.add.push((key.clone(), w.clone()));
                }
                None => d.remove.push(key.clone()),
            }
        }
        for (key, entry) in want {
            if !cur.contains_key(key) {
                d.add.push((key.clone(), entry.clone()));
            }
        }
        if !d.remove.is_empty() || !d.add.is_empty() {
            out.push(d);
        }
    }
    out
}

/// Updates natlb's record of the installed table after a committed batch of deltas.
pub fn apply_deltas(rs: &mut Ruleset, deltas: &[SetDelta]) {
    for d in deltas {
        let set = rs.elements.entry(d.set.clone()).or_default();
        for key in &d.remove {
            set.remove(key);
        }
        for (key, entry) in &d.add {
            set.insert(key.clone(), entry.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::ruleset::{Entry, Value};

    fn rs_with(elements: &[(&str, u32, &str)]) -> Ruleset {
        let mut rs = Ruleset {
            table: "natlb".into(),
            comment: "c".into(),
            hash_seed: 0,
            hairpin_mark: 1,
            sets: crate::render::layout::sets(),
            chains: vec![],
            egress: vec![],
            elements: Default::default(),
        };
        for (set, k, comment) in elements {
            rs.elements.entry(set.to_string()).or_default().insert(
                vec![Value::Int(*k)],
                Entry {
                    data: vec![],
                    comment: comment.to_string(),
                },
            );
        }
        rs
    }

    #[test]
    fn identical_is_nothing() {
        let a = rs_with(&[("slots4", 1, "a")]);
        assert_eq!(plan(&a, &a.clone()), Plan::Nothing);
    }

    #[test]
    fn deltas_only_touch_what_changed() {
        let a = rs_with(&[
            ("slots4", 1, "a"),
            ("slots4", 2, "b"),
            ("svc4_mod2", 7, "x"),
        ]);
        let b = rs_with(&[
            ("slots4", 1, "a"),
            ("slots4", 2, "B"),
            ("slots4", 3, "c"),
            ("svc4_mod2", 7, "x"),
        ]);
        let Plan::Deltas { deltas: d, egress } = plan(&a, &b) else {
            panic!()
        };
        assert!(!egress);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].set, "slots4");
        assert_eq!(d[0].remove, vec![vec![Value::Int(2)]]);
        assert_eq!(d[0].add.len(), 2);
    }

    #[test]
    fn one_service_diff_patches_the_whole_table() {
        use crate::render::{render, service_elements};
        let model = crate::config::parse(
            "t.toml",
            "[[service]]\nname = \"a\"\nlisten = \"203.0.113.1:80\"\n\
             [[service.backend]]\naddress = \"192.0.2.1\"\n[[service.backend]]\naddress = \"192.0.2.2\"\n\
             [[service.backend]]\naddress = \"192.0.2.3\"\n\
             [[service]]\nname = \"b\"\nlisten = \"203.0.113.2:80\"\n\
             [[service.backend]]\naddress = \"192.0.2.1\"\n",
        )
        .unwrap();
        let all_up = render(&model, |_, _| true);
        let down = |_: &crate::model::Service, b: &crate::model::Backend| {
            b.address.ip() != "192.0.2.2".parse::<std::net::IpAddr>().unwrap()
        };
        let svc = &model.services[0];
        let deltas = diff_elements(
            &service_elements(svc, 0, |_, _| true),
            &service_elements(svc, 0, down),
        );
        let mut patched = all_up.clone();
        apply_deltas(&mut patched, &deltas);
        // Patching with one service's delta gives exactly the full render, and the delta
        // equals the full diff.
        assert_eq!(patched, render(&model, down));
        assert_eq!(deltas, diff(&all_up, &render(&model, down)));
    }

    #[test]
    fn layout_or_name_change_replaces() {
        let a = rs_with(&[]);
        let mut b = a.clone();
        b.comment = "other".into();
        assert!(matches!(plan(&a, &b), Plan::Replace { .. }));
        let mut c = a.clone();
        c.table = "other".into();
        assert!(matches!(plan(&a, &c), Plan::Replace { .. }));
        assert!(matches!(
            adopt(&Installed::Absent, &a),
            Plan::Replace { .. }
        ));
    }
}
