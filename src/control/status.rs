//! The status document from the daemon's own state: config, admin state, probes and the
//! installed table. Pure; the figures only the kernel knows (connections, counters, conntrack
//! fill) are added by [`super::figures`], off the daemon's loop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use super::api::{BackendStatus, ProbeResult, STATUS_SCHEMA, ServiceStatus, Status, rfc3339};
use crate::admin::AdminState;
use crate::health::{BackendKey, Board, ProbeLog, State};
use crate::model::{HealthKind, Model, Service};
use crate::render::ruleset::{Family, Ruleset, SetSpec, Value};
use crate::render::{self, layout};

/// A status document and what reading the kernel's figures for it takes.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: Status,
    /// Per service, in `status.services` order: its VIP, protocol number and backends.
    pub keys: Vec<ServiceKey>,
    pub table: String,
    /// The slot maps, whose element counters count each backend's new connections.
    pub slot_maps: Vec<SetSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceKey {
    pub vip: SocketAddr,
    pub protocol: u8,
    pub backends: Vec<SocketAddr>,
}

/// What the daemon knows, for one capture.
pub struct Inputs<'a> {
    /// The config as loaded (the configured weights).
    pub config: &'a Model,
    /// The model as installed: operators' weights, `least-conn` services' effective weights
    /// (a copy the daemon makes anyway: the capture keeps it).
    pub installed_model: Model,
    pub board: &'a Board,
    pub admin: &'a AdminState,
    pub installed: &'a Ruleset,
}

/// A copy of what a snapshot needs, taken on the daemon's loop: only copies and one count of
/// the installed slots, so that the loop pays as little as it can. The snapshot (strings for
/// every backend, probe results) is made from it on another thread.
pub struct Capture {
    config: Model,
    installed_model: Model,
    board: Board,
    admin: AdminState,
    /// Per service: slots held by each backend address.
    slots: Vec<BTreeMap<SocketAddr, u32>>,
    table: String,
    slot_maps: Vec<SetSpec>,
}

pub fn capture(inputs: Inputs<'_>) -> Capture {
    let slots = inputs
        .installed_model
        .services
        .iter()
        .map(|s| slot_counts(inputs.installed, s))
        .collect();
    Capture {
        config: inputs.config.clone(),
        installed_model: inputs.installed_model,
        board: inputs.board.clone(),
        admin: inputs.admin.clone(),
        slots,
        table: inputs.installed.table.clone(),
        slot_maps: [Family::V4, Family::V6]
            .into_iter()
            .filter_map(|f| inputs.installed.set(&layout::slots_map_name(f)).cloned())
            .collect(),
    }
}

/// The status document of a capture (without the kernel's figures).
pub fn snapshot(c: &Capture, probes: &ProbeLog) -> Snapshot {
    let mut services = Vec::with_capacity(c.installed_model.services.len());
    let mut keys = Vec::with_capacity(services.capacity());
    for (i, s) in c.installed_model.services.iter().enumerate() {
        services.push(service_status(
            c,
            probes,
            &c.config.services[i],
            s,
            &c.slots[i],
        ));
        keys.push(ServiceKey {
            vip: SocketAddr::new(s.vip.addr, s.vip.port),
            protocol: s.vip.protocol.number(),
            backends: s.backends.iter().map(|b| b.address).collect(),
        });
    }
    Snapshot {
        status: Status {
            schema: STATUS_SCHEMA,
            version: env!("CARGO_PKG_VERSION").to_string(),
            table: c.table.clone(),
            time: rfc3339(SystemTime::now()),
            conntrack: None,
            services,
            errors: vec![],
        },
        keys,
        table: c.table.clone(),
        slot_maps: c.slot_maps.clone(),
    }
}

/// How many slots of `service`'s table each backend holds in `installed`, by address.
fn slot_counts(installed: &Ruleset, service: &Service) -> BTreeMap<SocketAddr, u32> {
    let family = Family::of(&service.vip.addr);
    let prefix = vec![
        Value::Addr(service.vip.addr),
        Value::Proto(service.vip.protocol),
        Value::Port(service.vip.port),
    ];
    let mut out = BTreeMap::new();
    let Some(slots) = installed.elements.get(&layout::slots_map_name(family)) else {
        return out;
    };
    // Keys sort by their values in order, so a service's slots are one run from its prefix.
    for (key, entry) in slots.range(prefix.clone()..) {
        if !key.starts_with(&prefix) {
            break;
        }
        if let [Value::Addr(a), Value::Port(p)] = entry.data.as_slice() {
            *out.entry(SocketAddr::new(*a, *p)).or_insert(0) += 1;
        }
    }
    out
}

fn service_status(
    c: &Capture,
    probes: &ProbeLog,
    configured: &Service,
    s: &Service,
    slots: &BTreeMap<SocketAddr, u32>,
) -> ServiceStatus {
    let (board, admin) = (&c.board, &c.admin);
    let active = render::active_backends(s, |s, b| board.is_up(s, b) && !admin.is_drained(s, b));
    let size: u32 = slots.values().sum();
    let backends = s
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let key = BackendKey {
                service: s.name.clone(),
                backend: b.address,
            };
            let health = if s.health.kind == HealthKind::None {
                "unprobed"
            } else {
                match board.state(&s.name, b.address) {
                    State::Up => "up",
                    State::Down => "down",
                    State::Unknown => "unknown",
                }
            };
            let a = admin.get(&s.name, b.address);
            let held = slots.get(&b.address).copied().unwrap_or(0);
            BackendStatus {
                address: b.address.to_string(),
                backup: b.backup,
                health: health.to_string(),
                last_probe: probes.get(&key).map(|p| ProbeResult {
                    ok: p.ok,
                    detail: p.detail,
                    time: rfc3339(p.at),
                    latency_ms: p.latency.as_secs_f64() * 1e3,
                }),
                admin: if a.drained { "drained" } else { "enabled" }.to_string(),
                weight: configured.backends[i].weight,
                admin_weight: a.weight,
                effective_weight: if active.contains(&i) { b.weight } else { 0 },
                slots: held,
                share: if size == 0 {
                    0.0
                } else {
                    f64::from(held) / f64::from(size)
                },
                connections: None,
                packets: None,
                bytes: None,
            }
        })
        .collect();
    ServiceStatus {
        name: s.name.clone(),
        listen: SocketAddr::new(s.vip.addr, s.vip.port).to_string(),
        protocol: s.vip.protocol.name().to_string(),
        scheduler: s.scheduler.name().to_string(),
        slots: size,
        connections: None,
        packets: None,
        bytes: None,
        backends,
    }
}
