//! Persistence: which of the kernel's sticky entries (client . service -> backend) a change
//! must delete. Pure; the daemon reads the entries, asks here, and deletes the answer in the
//! same batch as the change.
//!
//! An entry must go when its backend no longer takes new connections of its service (withdrawn,
//! drained, a backup whose primaries are back, removed from the config), or when its service no
//! longer has persistence: the nat chains send a remembered client to its backend before any
//! slot is picked, so a stale entry would keep sending that client where natlb no longer sends
//! anyone.

use std::collections::{BTreeSet, HashMap};

use crate::model::Service;
use crate::nft::KernelEntry;
use crate::render::layout;
use crate::render::ruleset::{Elements, Family, Value};

/// The key of a service in natlb's sets: VIP . protocol . port.
pub type VipKey = Vec<Value>;

/// What may stay for the services a change touches: per VIP, the backends (address . port)
/// that hold its slots, or `None` when none of its entries may stay.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keep {
    per_vip: HashMap<VipKey, Option<BTreeSet<Vec<Value>>>>,
    /// Start-up and reload: the whole config is in `per_vip`, so entries of any other VIP go too.
    everything: bool,
}

impl Keep {
    /// For a change to some services only (a health decision, a re-weighting): entries of
    /// other services are left alone.
    pub fn services() -> Keep {
        Keep::default()
    }

    /// For a new config: entries of services that are not in it (or lost persistence) go.
    pub fn whole_config() -> Keep {
        Keep {
            everything: true,
            ..Keep::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.per_vip.is_empty() && !self.everything
    }

    /// Adds `service` as the change leaves it, whose elements (all of them, or its own from
    /// [`crate::render::service_elements`]) are `elements`. `had_persistence`: it had it before
    /// the change. A service that has no persistence before or after is not natlb's concern
    /// here and costs nothing.
    pub fn add(&mut self, service: &Service, elements: &Elements, had_persistence: bool) {
        let family = Family::of(&service.vip.addr);
        if !layout::PERSISTENCE_FAMILIES.contains(&family) {
            return;
        }
        let vip = vip_key(service);
        if service.persistence.is_none() {
            if had_persistence || self.everything {
                self.per_vip.insert(vip, None);
            }
            return;
        }
        let backends = elements
            .get(&layout::slots_map_name(family))
            .map(|slots| {
                slots
                    .iter()
                    .filter(|(key, _)| key.starts_with(&vip))
                    .map(|(_, entry)| entry.data.clone())
                    .collect()
            })
            .unwrap_or_default();
        self.per_vip.insert(vip, Some(backends));
    }

    /// Adds `service` for a change from `before` to `after` (its own elements) only if the
    /// change took new connections away from one of its backends: a restore or a re-weighting
    /// that keeps every backend in the table leaves every entry valid, and costs no read.
    pub fn add_if_withdrawn(&mut self, service: &Service, before: &Elements, after: &Elements) {
        if service.persistence.is_none() {
            return;
        }
        let family = Family::of(&service.vip.addr);
        let backends = |e: &Elements| -> BTreeSet<Vec<Value>> {
            e.get(&layout::slots_map_name(family))
                .map(|slots| slots.values().map(|entry| entry.data.clone()).collect())
                .unwrap_or_default()
        };
        if !backends(before).is_subset(&backends(after)) {
            self.add(service, after, true);
        }
    }

    /// Of `entries` (key: client . VIP . protocol . port; data: backend address . port), the
    /// keys to delete.
    pub fn stale(&self, entries: &[KernelEntry]) -> Vec<Vec<Value>> {
        entries
            .iter()
            .filter(|(key, data)| {
                let vip = key.get(1..).unwrap_or_default();
                match self.per_vip.get(vip) {
                    Some(Some(backends)) => !backends.contains(data),
                    Some(None) => true,
                    None => self.everything,
                }
            })
            .map(|(key, _)| key.clone())
            .collect()
    }
}

pub fn vip_key(service: &Service) -> VipKey {
    vec![
        Value::Addr(service.vip.addr),
        Value::Proto(service.vip.protocol),
        Value::Port(service.vip.port),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
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
                 [[service.backend]]\naddress = \"192.0.2.1:8080\"\n"
            ),
        )
        .unwrap()
    }

    fn entry(client: &str, vip: &str, backend: &str) -> (Vec<Value>, Vec<Value>) {
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

    #[test]
    fn a_withdrawn_backend_loses_its_clients_and_only_them() {
        let m = model("persistence = \"5m\"");
        let a = &m.services[0];
        let down =
            |_: &Service, b: &crate::model::Backend| b.address.to_string() != "192.0.2.2:8080";
        let mut keep = Keep::services();
        keep.add(a, &service_elements(a, 0, down), true);
        let entries = [
            entry("198.51.100.1", "203.0.113.1", "192.0.2.1"),
            entry("198.51.100.2", "203.0.113.1", "192.0.2.2"),
            // Service b's entry to the same backend address: b is untouched.
            entry("198.51.100.2", "203.0.113.2", "192.0.2.2"),
        ];
        assert_eq!(keep.stale(&entries), vec![entries[1].0.clone()]);
    }

    #[test]
    fn a_restore_needs_no_look() {
        let m = model("persistence = \"5m\"");
        let a = &m.services[0];
        let down =
            |_: &Service, b: &crate::model::Backend| b.address.to_string() != "192.0.2.2:8080";
        let (up, without) = (
            service_elements(a, 0, |_, _| true),
            service_elements(a, 0, down),
        );
        let mut keep = Keep::services();
        keep.add_if_withdrawn(a, &without, &up);
        assert!(keep.is_empty(), "a restore read the sticky map");
        keep.add_if_withdrawn(a, &up, &without);
        assert!(!keep.is_empty(), "a withdrawal did not");
    }

    #[test]
    fn losing_persistence_or_the_service_forgets_its_clients() {
        let m = model("");
        let a = &m.services[0];
        let entries = [
            entry("198.51.100.1", "203.0.113.1", "192.0.2.1"),
            entry("198.51.100.1", "203.0.113.2", "192.0.2.1"),
            entry("198.51.100.1", "203.0.113.9", "192.0.2.1"),
        ];
        // A health change of a service that never had persistence needs no look at all.
        let mut keep = Keep::services();
        keep.add(a, &service_elements(a, 0, |_, _| true), false);
        assert!(keep.is_empty());
        // It had persistence before this reload: all its entries go.
        keep.add(a, &service_elements(a, 0, |_, _| true), true);
        assert_eq!(keep.stale(&entries), vec![entries[0].0.clone()]);
        // A whole new config: a, without persistence now, and 203.0.113.9, gone, lose their
        // entries; b keeps its own.
        let all = render(&m, |_, _| true);
        let mut keep = Keep::whole_config();
        for s in &m.services {
            keep.add(s, &all.elements, false);
        }
        assert_eq!(
            keep.stale(&entries),
            vec![entries[0].0.clone(), entries[2].0.clone()]
        );
    }
}
