//! Render: a pure function from the desired state (and each backend's health) to the
//! description of natlb's table. No I/O here; `nft` installs what this returns.

pub mod egress;
pub mod layout;
pub mod maglev;
pub mod ruleset;
pub mod script;
pub mod slots;

use std::collections::BTreeMap;

use crate::model::{Backend, Model, Service, Snat};
use layout::Pick;
use ruleset::{Entry, Family, Ruleset, Value};

/// Renders the table for `model`, where `is_up(service, backend)` tells whether a backend may
/// take new connections (its probe passes and it is not administratively down).
pub fn render(model: &Model, is_up: impl Fn(&Service, &Backend) -> bool) -> Ruleset {
    let mut elements: ruleset::Elements = layout::sets()
        .into_iter()
        .map(|s| (s.name, BTreeMap::new()))
        .collect();
    let seed = model.daemon.hash_seed;
    for service in &model.services {
        add_service_elements(service, seed, &is_up, &mut elements);
    }
    Ruleset {
        table: model.daemon.table.clone(),
        comment: layout::table_comment(seed),
        hash_seed: seed,
        hairpin_mark: model.daemon.hairpin_mark,
        sets: layout::sets(),
        chains: layout::chains(seed, model.daemon.hairpin_mark),
        egress: egress::rules(&model.egress, seed),
        elements,
    }
}

/// The backends that get new connections: the primaries that are up, or, while none is, the
/// backups that are up. Returns their positions in `service.backends`.
pub fn active_backends(
    service: &Service,
    is_up: impl Fn(&Service, &Backend) -> bool,
) -> Vec<usize> {
    let up = |backup: bool| -> Vec<usize> {
        service
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.backup == backup && b.weight > 0 && is_up(service, b))
            .map(|(i, _)| i)
            .collect()
    };
    let primaries = up(false);
    if primaries.is_empty() {
        up(true)
    } else {
        primaries
    }
}

/// The elements one service contributes, by set. Services never share a key (their VIPs are
/// unique), so a change to one service is the difference between two of these: O(service),
/// whatever the number of services. `seed` is the daemon's `hash_seed`.
pub fn service_elements(
    service: &Service,
    seed: u32,
    is_up: impl Fn(&Service, &Backend) -> bool,
) -> ruleset::Elements {
    let mut out = ruleset::Elements::new();
    add_service_elements(service, seed, &is_up, &mut out);
    out
}

/// The slot table of a service: its size and, for each slot, a position in `service.backends`.
/// `None` when no backend takes new connections.
fn slot_table(service: &Service, seed: u32, active: &[usize]) -> Option<(u32, Vec<usize>)> {
    if active.is_empty() {
        return None;
    }
    match Pick::of(service) {
        Pick::Random | Pick::Counter => {
            let weights: Vec<u32> = active.iter().map(|&i| service.backends[i].weight).collect();
            let table = slots::weighted(&weights)?;
            let slots = table.slots.iter().map(|&pos| active[pos]).collect();
            Some((table.size(), slots))
        }
        Pick::Hash(_) => {
            // The size follows every backend the service has, up or not: a withdrawal must not
            // change it, or every client would move.
            let all: Vec<u32> = service.backends.iter().map(|b| b.weight.max(1)).collect();
            let size = maglev::size_for(&all);
            let fill = |members: &[usize]| -> Vec<usize> {
                let ids: Vec<String> = members
                    .iter()
                    .map(|&i| service.backends[i].address.to_string())
                    .collect();
                let m: Vec<maglev::Member> = ids
                    .iter()
                    .zip(members)
                    .map(|(id, &i)| maglev::Member {
                        id: id.as_bytes(),
                        weight: service.backends[i].weight,
                    })
                    .collect();
                maglev::table(&m, size, u64::from(seed))
                    .into_iter()
                    .map(|k| members[k])
                    .collect()
            };
            // Home: the table of every primary that takes traffic when healthy. A slot whose
            // home backend is up stays with it, so a withdrawal moves only the withdrawn
            // backend's clients, and a restore brings exactly them back; the other slots go
            // to the backends that are up, as Maglev fills a table of those alone.
            let primaries: Vec<usize> = (0..service.backends.len())
                .filter(|&i| !service.backends[i].backup && service.backends[i].weight > 0)
                .collect();
            let home = if primaries.is_empty() {
                vec![]
            } else {
                fill(&primaries)
            };
            let mut is_active = vec![false; service.backends.len()];
            for &i in active {
                is_active[i] = true;
            }
            // All home backends up (the usual case): the home table is the answer, and the
            // table of the up backends is not needed.
            let slots = if !home.is_empty() && home.iter().all(|&h| is_active[h]) {
                home
            } else if home.is_empty() {
                fill(active)
            } else {
                let up = fill(active);
                home.iter()
                    .zip(&up)
                    .map(|(&h, &u)| if is_active[h] { h } else { u })
                    .collect()
            };
            Some((size, slots))
        }
    }
}

fn add_service_elements(
    service: &Service,
    seed: u32,
    is_up: &impl Fn(&Service, &Backend) -> bool,
    elements: &mut ruleset::Elements,
) {
    let vip = &service.vip;
    let family = Family::of(&vip.addr);
    let vip_key = vec![
        Value::Addr(vip.addr),
        Value::Proto(vip.protocol),
        Value::Port(vip.port),
    ];
    let mut put = |set: String, key: Vec<Value>, data: Vec<Value>, comment: String| {
        elements
            .entry(set)
            .or_default()
            .insert(key, Entry { data, comment });
    };

    put(
        layout::vips_set_name(family),
        vip_key.clone(),
        vec![],
        service.name.clone(),
    );
    let pick = Pick::of(service);
    put(
        layout::pick_set_name(family, pick),
        vip_key.clone(),
        vec![],
        service.name.clone(),
    );

    if let Some(label) = service.persistence.and_then(layout::persistence_label) {
        put(
            layout::persistent_set_name(family),
            vip_key.clone(),
            vec![],
            service.name.clone(),
        );
        put(
            layout::persist_set_name(family, label),
            vip_key.clone(),
            vec![],
            service.name.clone(),
        );
    }

    let active = active_backends(service, is_up);
    if let Some((size, slots)) = slot_table(service, seed, &active) {
        put(
            layout::class_set_name(family, pick, size),
            vip_key.clone(),
            vec![],
            service.name.clone(),
        );
        if service.persistence.is_some() {
            let mut held = slots.clone();
            held.sort_unstable();
            held.dedup();
            for pos in held {
                let backend = &service.backends[pos];
                let mut key = vip_key.clone();
                key.extend([
                    Value::Addr(backend.address.ip()),
                    Value::Port(backend.address.port()),
                ]);
                put(
                    layout::eligible_set_name(family),
                    key,
                    vec![],
                    format!("{} {}", service.name, backend.address),
                );
            }
        }
        for (slot, &pos) in slots.iter().enumerate() {
            let backend = &service.backends[pos];
            let mut key = vip_key.clone();
            key.push(Value::Int(slot as u32));
            put(
                layout::slots_map_name(family),
                key,
                vec![
                    Value::Addr(backend.address.ip()),
                    Value::Port(backend.address.port()),
                ],
                format!("{} {}", service.name, backend.address),
            );
        }
    } else {
        // No backend up: new connections fail at once instead of going nowhere.
        put(
            layout::all_down_set_name(family, service.on_all_down),
            vip_key.clone(),
            vec![],
            service.name.clone(),
        );
    }

    match service.snat {
        Snat::Masquerade => put(
            layout::snat_masq_set_name(family),
            vip_key,
            vec![],
            service.name.clone(),
        ),
        Snat::Address(addr) => put(
            layout::snat_addr_map_name(family),
            vip_key,
            vec![Value::Addr(addr)],
            service.name.clone(),
        ),
        Snat::None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::ruleset::Value;

    fn model(scheduler: &str, seed: u32) -> Model {
        let mut text = format!(
            "[daemon]\nhash_seed = {seed}\n[[service]]\nname = \"s\"\nlisten = \"203.0.113.1:80\"\n\
             scheduler = \"{scheduler}\"\n"
        );
        for i in 1..=5 {
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"192.0.2.{i}:80\"\n"
            ));
        }
        crate::config::parse("t.toml", &text).unwrap()
    }

    /// Slot number -> backend address, from the slots map.
    fn slots(m: &Model, down: Option<&str>) -> BTreeMap<u32, String> {
        let e = service_elements(&m.services[0], m.daemon.hash_seed, |_, b| {
            Some(b.address.to_string().as_str()) != down
        });
        e["slots4"]
            .iter()
            .map(|(k, v)| {
                let Value::Int(slot) = k[3] else {
                    panic!("{k:?}")
                };
                (slot, format!("{}:{}", v.data[0], v.data[1]))
            })
            .collect()
    }

    #[test]
    fn source_hash_withdrawal_moves_only_the_withdrawn_backends_slots() {
        let m = model("source-hash", 7);
        let all = slots(&m, None);
        let down = "192.0.2.3:80";
        let without = slots(&m, Some(down));
        assert_eq!(all.len(), without.len());
        let mut moved = BTreeMap::new();
        for (slot, owner) in &all {
            if owner == down {
                assert_ne!(&without[slot], down);
                *moved.entry(without[slot].clone()).or_insert(0) += 1;
            } else {
                assert_eq!(&without[slot], owner, "slot {slot} moved");
            }
        }
        // The withdrawn backend's slots are spread over the others, not dumped on one.
        assert!(moved.len() >= 3, "{moved:?}");
    }

    #[test]
    fn source_hash_tables_depend_on_the_seed_only() {
        assert_eq!(
            slots(&model("source-hash", 7), None),
            slots(&model("source-hash", 7), None)
        );
        assert_ne!(
            slots(&model("source-hash", 7), None),
            slots(&model("source-hash", 8), None)
        );
    }

    #[test]
    fn each_scheduler_has_its_own_class_set() {
        for (scheduler, set) in [
            ("weighted", "svc4_mod5"),
            ("round-robin", "svc4_rr5"),
            ("source-hash", "svc4_hash61"),
        ] {
            let m = model(scheduler, 0);
            let e = service_elements(&m.services[0], 0, |_, _| true);
            assert!(e.contains_key(set), "{scheduler}: {:?}", e.keys());
        }
    }
}
