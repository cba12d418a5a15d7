//! Render: a pure function from the desired state (and each backend's health) to the
//! description of natlb's table. No I/O here; `nft` installs what this returns.

pub mod layout;
pub mod ruleset;
pub mod script;
pub mod slots;

use std::collections::BTreeMap;

use crate::model::{Backend, Model, Service, Snat};
use ruleset::{Entry, Family, Ruleset, Value};

/// Renders the table for `model`, where `is_up(service, backend)` tells whether a backend may
/// take new connections (its probe passes and it is not administratively down).
pub fn render(model: &Model, is_up: impl Fn(&Service, &Backend) -> bool) -> Ruleset {
    let mut elements: ruleset::Elements = layout::sets()
        .into_iter()
        .map(|s| (s.name, BTreeMap::new()))
        .collect();
    for service in &model.services {
        add_service_elements(service, &is_up, &mut elements);
    }
    Ruleset {
        table: model.daemon.table.clone(),
        comment: layout::table_comment(),
        sets: layout::sets(),
        chains: layout::chains(),
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
/// whatever the number of services.
pub fn service_elements(
    service: &Service,
    is_up: impl Fn(&Service, &Backend) -> bool,
) -> ruleset::Elements {
    let mut out = ruleset::Elements::new();
    add_service_elements(service, &is_up, &mut out);
    out
}

fn add_service_elements(
    service: &Service,
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

    let active = active_backends(service, is_up);
    let weights: Vec<u32> = active.iter().map(|&i| service.backends[i].weight).collect();
    if let Some(table) = slots::weighted(&weights) {
        put(
            layout::class_set_name(family, table.size()),
            vip_key.clone(),
            vec![],
            service.name.clone(),
        );
        for (slot, &pos) in table.slots.iter().enumerate() {
            let backend = &service.backends[active[pos]];
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
