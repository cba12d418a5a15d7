//! Admin state: what operators decided at run time with `natlb drain`, `natlb enable` and
//! `natlb weight`, on top of the config.
//!
//! - A drained backend takes no new connections (its slots go to the others, its sticky
//!   clients are forgotten), and its established connections continue: conntrack keeps them
//!   translated, and unlike a failed probe a drain never resets them. Its slots move the way a
//!   withdrawn backend's do, so a drain moves only its own clients, whatever the scheduler.
//! - A weight set at run time replaces the config's weight until `natlb weight` sets another
//!   (setting the config's weight again clears the override).
//!
//! The state is kept in `state_dir/admin.json`, replaced atomically at every change, so it
//! survives restarts and reloads. A backend removed from the config loses its state.
//! Pure, apart from [`AdminState::load`] and [`AdminState::save`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::health::BackendKey;
use crate::model::{Backend, Model, Service};

pub const FILE_NAME: &str = "admin.json";

/// One backend's admin state; the default is "as configured".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Admin {
    pub drained: bool,
    /// Replaces the configured weight.
    pub weight: Option<u32>,
}

/// What an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminChange {
    Drain,
    Enable,
    Weight(u32),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminState {
    /// Only backends whose state differs from the default.
    by_backend: BTreeMap<BackendKey, Admin>,
}

/// The file's form: a list, so that it reads well and new fields can be added.
#[derive(Serialize, Deserialize)]
struct FileDto {
    backends: Vec<EntryDto>,
}

#[derive(Serialize, Deserialize)]
struct EntryDto {
    service: String,
    backend: SocketAddr,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    drained: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight: Option<u32>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

impl AdminState {
    /// Reads `state_dir/admin.json`; a missing file is an empty state.
    pub fn load(state_dir: &Path) -> Result<AdminState, String> {
        let text = match std::fs::read_to_string(path(state_dir)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AdminState::default());
            }
            Err(e) => return Err(e.to_string()),
        };
        let dto: FileDto = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let mut state = AdminState::default();
        for e in dto.backends {
            let key = BackendKey {
                service: e.service,
                backend: e.backend,
            };
            state.set(
                key,
                Admin {
                    drained: e.drained,
                    weight: e.weight,
                },
            );
        }
        Ok(state)
    }

    /// Writes `state_dir/admin.json` atomically (temporary file, fsync, rename).
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let dto = FileDto {
            backends: self
                .by_backend
                .iter()
                .map(|(k, a)| EntryDto {
                    service: k.service.clone(),
                    backend: k.backend,
                    drained: a.drained,
                    weight: a.weight,
                })
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&dto).expect("plain data serializes");
        text.push('\n');
        crate::state_dir::write_atomic(state_dir, FILE_NAME, text.as_bytes())
    }

    pub fn get(&self, service: &str, backend: SocketAddr) -> Admin {
        self.by_backend
            .get(&BackendKey {
                service: service.to_string(),
                backend,
            })
            .copied()
            .unwrap_or_default()
    }

    pub fn is_drained(&self, service: &Service, backend: &Backend) -> bool {
        // Most gateways drain nothing: skip building a key.
        !self.by_backend.is_empty() && self.get(&service.name, backend.address).drained
    }

    pub fn set(&mut self, key: BackendKey, admin: Admin) {
        if admin == Admin::default() {
            self.by_backend.remove(&key);
        } else {
            self.by_backend.insert(key, admin);
        }
    }

    /// The state `change` leaves for a backend whose configured weight is `configured`.
    pub fn changed(current: Admin, change: AdminChange, configured: u32) -> Admin {
        match change {
            AdminChange::Drain => Admin {
                drained: true,
                ..current
            },
            AdminChange::Enable => Admin {
                drained: false,
                ..current
            },
            AdminChange::Weight(w) => Admin {
                weight: (w != configured).then_some(w),
                ..current
            },
        }
    }

    /// Forgets backends `config` no longer has (returned) and weight overrides equal to the
    /// config's weight (a config that caught up with the operator).
    pub fn retain(&mut self, config: &Model) -> Vec<BackendKey> {
        let weights: HashMap<(&str, SocketAddr), u32> = config
            .services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(|b| ((s.name.as_str(), b.address), b.weight))
            })
            .collect();
        let mut gone = Vec::new();
        self.by_backend.retain(|k, a| {
            let Some(&configured) = weights.get(&(k.service.as_str(), k.backend)) else {
                gone.push(k.clone());
                return false;
            };
            if a.weight == Some(configured) {
                a.weight = None;
            }
            *a != Admin::default()
        });
        gone
    }

    /// `config` with the weights operators set; drains are not weights (see
    /// [`AdminState::is_drained`]), so that a drain moves only the drained backend's clients.
    pub fn apply(&self, config: &Model) -> Model {
        let mut model = config.clone();
        if self.by_backend.values().all(|a| a.weight.is_none()) {
            return model;
        }
        for s in &mut model.services {
            for b in &mut s.backends {
                if let Some(w) = self.get(&s.name, b.address).weight {
                    b.weight = w;
                }
            }
        }
        model
    }

    pub fn len(&self) -> usize {
        self.by_backend.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_backend.is_empty()
    }
}

/// Finds a backend of `service` by what an operator typed: its address with port, or only its
/// IP address when exactly one backend of the service has it.
pub fn find_backend(service: &Service, text: &str) -> Result<usize, String> {
    let list = || {
        service
            .backends
            .iter()
            .map(|b| b.address.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return service
            .backends
            .iter()
            .position(|b| b.address == addr)
            .ok_or_else(|| {
                format!(
                    "service {} has no backend {addr}; its backends are {}",
                    service.name,
                    list()
                )
            });
    }
    let ip: std::net::IpAddr = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| {
            format!(
                "\"{text}\" is not a backend address; write it as in the config, e.g. \
                 10.0.1.11:8080 or [fd00::11]:8080 (service {}'s backends are {})",
                service.name,
                list()
            )
        })?;
    let matches: Vec<usize> = (0..service.backends.len())
        .filter(|&i| service.backends[i].address.ip() == ip)
        .collect();
    match matches.as_slice() {
        [i] => Ok(*i),
        [] => Err(format!(
            "service {} has no backend at {ip}; its backends are {}",
            service.name,
            list()
        )),
        _ => Err(format!(
            "service {} has several backends at {ip}; name one with its port: {}",
            service.name,
            list()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        crate::config::parse(
            "t.toml",
            r#"
[[service]]
name = "web"
listen = "198.51.100.10:80"
[[service.backend]]
address = "10.0.1.11:8080"
weight = 3
[[service.backend]]
address = "10.0.1.12:8080"
[[service.backend]]
address = "10.0.1.12:9090"
"#,
        )
        .unwrap()
    }

    fn key(s: &str, b: &str) -> BackendKey {
        BackendKey {
            service: s.into(),
            backend: b.parse().unwrap(),
        }
    }

    #[test]
    fn changes_weights_and_drains() {
        let config = model();
        let mut st = AdminState::default();
        let a = AdminState::changed(Admin::default(), AdminChange::Drain, 3);
        assert_eq!(
            a,
            Admin {
                drained: true,
                weight: None
            }
        );
        st.set(key("web", "10.0.1.11:8080"), a);
        let w = AdminState::changed(Admin::default(), AdminChange::Weight(7), 1);
        st.set(key("web", "10.0.1.12:8080"), w);
        let m = st.apply(&config);
        assert_eq!(
            m.services[0].backends[0].weight, 3,
            "a drain is not a weight"
        );
        assert_eq!(m.services[0].backends[1].weight, 7);
        assert!(st.is_drained(&m.services[0], &m.services[0].backends[0]));
        assert!(!st.is_drained(&m.services[0], &m.services[0].backends[1]));
        // Enable keeps the weight; the configured weight clears the override.
        let e = AdminState::changed(a, AdminChange::Enable, 3);
        assert_eq!(e, Admin::default());
        let back = AdminState::changed(w, AdminChange::Weight(1), 1);
        assert_eq!(back, Admin::default());
        st.set(key("web", "10.0.1.12:8080"), back);
        assert_eq!(st.len(), 1, "default states are not kept");
    }

    #[test]
    fn survives_a_save_and_forgets_removed_backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = AdminState::default();
        st.set(
            key("web", "10.0.1.11:8080"),
            Admin {
                drained: true,
                weight: Some(5),
            },
        );
        st.set(
            key("gone", "10.0.9.9:80"),
            Admin {
                drained: true,
                weight: None,
            },
        );
        st.save(dir.path()).unwrap();
        let mut back = AdminState::load(dir.path()).unwrap();
        assert_eq!(back, st);
        assert_eq!(back.retain(&model()), vec![key("gone", "10.0.9.9:80")]);
        assert_eq!(back.len(), 1);
        // A config that caught up with an override drops it.
        back.set(
            key("web", "10.0.1.12:8080"),
            Admin {
                drained: false,
                weight: Some(1),
            },
        );
        back.retain(&model());
        assert_eq!(back.len(), 1);
        assert_eq!(
            back.get("web", "10.0.1.11:8080".parse().unwrap()).weight,
            Some(5)
        );
        assert_eq!(
            AdminState::load(&dir.path().join("missing")).unwrap(),
            AdminState::default()
        );
        std::fs::write(path(dir.path()), "{").unwrap();
        assert!(AdminState::load(dir.path()).is_err());
    }

    #[test]
    fn finds_backends_by_what_operators_type() {
        let m = model();
        let s = &m.services[0];
        assert_eq!(find_backend(s, "10.0.1.11:8080"), Ok(0));
        assert_eq!(find_backend(s, "10.0.1.11"), Ok(0));
        assert!(
            find_backend(s, "10.0.1.12")
                .unwrap_err()
                .contains("several backends at 10.0.1.12")
        );
        assert!(
            find_backend(s, "10.0.1.13:80")
                .unwrap_err()
                .contains("its backends are 10.0.1.11:8080, 10.0.1.12:8080, 10.0.1.12:9090")
        );
        assert!(
            find_backend(s, "web1")
                .unwrap_err()
                .contains("not a backend address")
        );
    }
}
