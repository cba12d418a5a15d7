//! The board: what the daemon believes about every probed backend, fed by the engine's reports.
//! Render asks it whether a backend is up.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use super::engine::BackendKey;
use super::state::State;
use crate::model::{Backend, HealthKind, Model, Service};

#[derive(Debug, Clone, Default)]
pub struct Board {
    /// By service name, then backend address; absent means unknown.
    states: HashMap<String, HashMap<SocketAddr, State>>,
}

impl Board {
    /// A board holding `saved` states, for the backends `model` still probes.
    pub fn new(saved: &BTreeMap<BackendKey, State>, model: &Model) -> Board {
        let mut b = Board::default();
        for (k, s) in saved {
            b.set(k, *s);
        }
        b.retain(model);
        b
    }

    pub fn state(&self, service: &str, backend: SocketAddr) -> State {
        self.states
            .get(service)
            .and_then(|m| m.get(&backend))
            .copied()
            .unwrap_or(State::Unknown)
    }

    /// Whether `backend` may take new connections: not probed, or not known to be down.
    pub fn is_up(&self, service: &Service, backend: &Backend) -> bool {
        service.health.kind == HealthKind::None
            || self.state(&service.name, backend.address) != State::Down
    }

    pub fn set(&mut self, key: &BackendKey, state: State) {
        self.states
            .entry(key.service.clone())
            .or_default()
            .insert(key.backend, state);
    }

    /// Forgets backends that `model` no longer has or no longer probes.
    pub fn retain(&mut self, model: &Model) {
        let probed: HashMap<&str, &Service> = model
            .services
            .iter()
            .filter(|s| s.health.kind != HealthKind::None)
            .map(|s| (s.name.as_str(), s))
            .collect();
        self.states.retain(|name, backends| {
            let Some(s) = probed.get(name.as_str()) else {
                return false;
            };
            backends.retain(|addr, _| s.backends.iter().any(|b| b.address == *addr));
            !backends.is_empty()
        });
    }

    pub fn snapshot(&self) -> BTreeMap<BackendKey, State> {
        self.states
            .iter()
            .flat_map(|(service, m)| {
                m.iter().map(move |(backend, s)| {
                    (
                        BackendKey {
                            service: service.clone(),
                            backend: *backend,
                        },
                        *s,
                    )
                })
            })
            .collect()
    }
}
