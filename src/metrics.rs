//! Prometheus metrics, served at `daemon.metrics` (OpenMetrics text, Prometheus' own scrape
//! format). Events (probes, state transitions, batches, reloads) are counted as they happen;
//! the per-backend figures are read from a status snapshot at each scrape, so a scrape shows
//! exactly what `natlb status` would.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::control::api::Status;
use crate::health::engine::{BackendKey, Observer};
use crate::health::probe::Outcome;
use crate::health::{ProbeLog, State};

/// Why natlb sent a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Start,
    Health,
    Admin,
    Reload,
    LeastConn,
    Sticky,
}

impl Reason {
    const ALL: [Reason; 6] = [
        Reason::Start,
        Reason::Health,
        Reason::Admin,
        Reason::Reload,
        Reason::LeastConn,
        Reason::Sticky,
    ];

    fn label(self) -> &'static str {
        match self {
            Reason::Start => "start",
            Reason::Health => "health",
            Reason::Admin => "admin",
            Reason::Reload => "reload",
            Reason::LeastConn => "least_conn",
            Reason::Sticky => "sticky",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    service: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    service: String,
    backend: String,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    service: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// Probes take from well under a millisecond (a refused connect) to their timeout.
fn probe_buckets() -> Histogram {
    Histogram::new(DECADES.into_iter().skip(2))
}

/// A batch takes from a tenth of a millisecond (one element) to seconds (a whole big table).
fn batch_buckets() -> Histogram {
    Histogram::new(DECADES)
}

/// 1-2.5-5 steps from 0.1 ms to 10 s: round numbers in the exposition.
const DECADES: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The event counters; shared by the daemon, the probe thread and the metrics server.
pub struct Metrics {
    probes: Family<ProbeLabels, Counter>,
    probe_duration: HistogramFamily<ServiceLabels>,
    transitions: Family<TransitionLabels, Counter>,
    batches: Family<ReasonLabels, Counter>,
    batch_errors: Family<ReasonLabels, Counter>,
    batch_duration: HistogramFamily<ReasonLabels>,
    reloads: Family<ResultLabels, Counter>,
    /// Last probe results for `natlb status`, kept here because both see every probe.
    pub probe_log: ProbeLog,
}

impl Default for Metrics {
    /// Every series of a known label value starts at 0, so that `rate()` and the dashboard
    /// see the first event, and an alert on errors has a series before the first error.
    fn default() -> Metrics {
        let m = Metrics {
            probes: Family::default(),
            probe_duration: Family::new_with_constructor(probe_buckets),
            transitions: Family::default(),
            batches: Family::default(),
            batch_errors: Family::default(),
            batch_duration: Family::new_with_constructor(batch_buckets),
            reloads: Family::default(),
            probe_log: ProbeLog::default(),
        };
        for reason in Reason::ALL {
            let labels = ReasonLabels {
                reason: reason.label(),
            };
            let _ = m.batches.get_or_create(&labels);
            let _ = m.batch_errors.get_or_create(&labels);
        }
        for result in ["ok", "error"] {
            let _ = m.reloads.get_or_create(&ResultLabels { result });
        }
        m
    }
}

impl Observer for Metrics {
    fn probed(&self, key: &BackendKey, outcome: &Outcome) {
        self.probe_log.record(key, outcome);
        let result = if outcome.ok { "ok" } else { "fail" };
        self.probes
            .get_or_create(&ProbeLabels {
                service: key.service.clone(),
                result,
            })
            .inc();
        self.probe_duration
            .get_or_create(&ServiceLabels {
                service: key.service.clone(),
            })
            .observe(outcome.latency.as_secs_f64());
    }
}

impl Metrics {
    pub fn shared() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// A batch natlb sent: how long it took (encode and kernel), or that it failed.
    pub fn batch(&self, reason: Reason, took: Option<std::time::Duration>) {
        let labels = ReasonLabels {
            reason: reason.label(),
        };
        match took {
            Some(d) => {
                self.batches.get_or_create(&labels).inc();
                self.batch_duration
                    .get_or_create(&labels)
                    .observe(d.as_secs_f64());
            }
            None => {
                self.batch_errors.get_or_create(&labels).inc();
            }
        }
    }

    pub fn transition(&self, key: &BackendKey, to: State) {
        let to = match to {
            State::Up => "up",
            State::Down => "down",
            State::Unknown => return,
        };
        self.transitions
            .get_or_create(&TransitionLabels {
                service: key.service.clone(),
                backend: key.backend.to_string(),
                to,
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// The whole exposition: the event counters and the figures of `status`.
    pub fn encode(&self, status: &Status) -> String {
        let mut r = Registry::with_prefix("natlb");
        r.register(
            "build",
            "natlb's version",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        self.register_events(&mut r);
        register_status(&mut r, status);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r)
            .expect("writing to a String cannot fail");
        out
    }

    fn register_events(&self, r: &mut Registry) {
        r.register(
            "probes",
            "Probes run, by service and result (ok, fail)",
            self.probes.clone(),
        );
        r.register_with_unit(
            "probe_duration",
            "How long probes took, by service",
            Unit::Seconds,
            self.probe_duration.clone(),
        );
        r.register(
            "backend_transitions",
            "Backend state changes decided by the probes, by the state changed to (up, down)",
            self.transitions.clone(),
        );
        r.register(
            "reconcile_batches",
            "Netlink batches committed, by reason (start, health, admin, reload, least_conn, sticky)",
            self.batches.clone(),
        );
        r.register(
            "reconcile_errors",
            "Netlink batches the kernel refused or natlb could not send, by reason",
            self.batch_errors.clone(),
        );
        r.register_with_unit(
            "reconcile_duration",
            "How long a batch took to encode and commit, by reason",
            Unit::Seconds,
            self.batch_duration.clone(),
        );
        r.register(
            "reloads",
            "Config reloads, by result (ok, error: the running ruleset stayed as it was)",
            self.reloads.clone(),
        );
    }
}

fn gauge(value: i64) -> Gauge {
    let g = Gauge::default();
    g.set(value);
    g
}

/// The figures of a status snapshot, as gauges and counters.
fn register_status(r: &mut Registry, status: &Status) {
    if let Some(c) = status.conntrack {
        r.register(
            "conntrack_entries",
            "Entries in the kernel's conntrack table",
            gauge(c.count as i64),
        );
        r.register(
            "conntrack_max",
            "Size of the kernel's conntrack table (nf_conntrack_max)",
            gauge(c.max as i64),
        );
    }
    let backend = || Family::<BackendLabels, Gauge>::default();
    let backend_counter = || Family::<BackendLabels, Counter>::default();
    let service = || Family::<ServiceLabels, Gauge>::default();
    let service_counter = || Family::<ServiceLabels, Counter>::default();
    let (up, drained, weight, effective, slots, conns) = (
        backend(),
        backend(),
        backend(),
        backend(),
        backend(),
        backend(),
    );
    let (packets, bytes) = (backend_counter(), backend_counter());
    let (s_slots, s_conns) = (service(), service());
    let (s_packets, s_bytes) = (service_counter(), service_counter());
    for s in &status.services {
        let sl = ServiceLabels {
            service: s.name.clone(),
        };
        s_slots.get_or_create(&sl).set(i64::from(s.slots));
        if let Some(c) = s.connections {
            s_conns.get_or_create(&sl).set(c as i64);
        }
        if let (Some(p), Some(b)) = (s.packets, s.bytes) {
            s_packets.get_or_create(&sl).inc_by(p);
            s_bytes.get_or_create(&sl).inc_by(b);
        }
        for b in &s.backends {
            let l = BackendLabels {
                service: s.name.clone(),
                backend: b.address.clone(),
            };
            up.get_or_create(&l).set(i64::from(matches!(
                b.health.as_str(),
                "up" | "unknown" | "unprobed"
            )));
            drained
                .get_or_create(&l)
                .set(i64::from(b.admin == "drained"));
            weight
                .get_or_create(&l)
                .set(i64::from(b.admin_weight.unwrap_or(b.weight)));
            effective
                .get_or_create(&l)
                .set(i64::from(b.effective_weight));
            slots.get_or_create(&l).set(i64::from(b.slots));
            if let Some(c) = b.connections {
                conns.get_or_create(&l).set(c as i64);
            }
            if let (Some(p), Some(by)) = (b.packets, b.bytes) {
                packets.get_or_create(&l).inc_by(p);
                bytes.get_or_create(&l).inc_by(by);
            }
        }
    }
    r.register(
        "backend_up",
        "1 while the backend's probe passes (or it is not probed, or not yet probed), 0 while it is down",
        up,
    );
    r.register(
        "backend_drained",
        "1 while an operator has drained the backend (natlb drain)",
        drained,
    );
    r.register(
        "backend_weight",
        "The backend's weight: the config's, or the one natlb weight set",
        weight,
    );
    r.register(
        "backend_effective_weight",
        "The weight installed now: 0 while the backend takes no new connections",
        effective,
    );
    r.register(
        "backend_slots",
        "Slots of the service's slot table the backend holds (its share of new connections)",
        slots,
    );
    r.register(
        "backend_connections",
        "Live connections through the VIP to the backend (conntrack)",
        conns,
    );
    r.register(
        "backend_packets",
        "First packets of new connections sent to the backend by its slots (the slot map's counters)",
        packets,
    );
    r.register("backend_bytes", "Bytes of those first packets", bytes);
    r.register(
        "service_slots",
        "Size of the service's slot table (0 while no backend takes new connections)",
        s_slots,
    );
    r.register(
        "service_connections",
        "Live connections through the service's VIP (conntrack)",
        s_conns,
    );
    r.register(
        "service_packets",
        "First packets of the service's new connections (the slot map's counters)",
        s_packets,
    );
    r.register("service_bytes", "Bytes of those first packets", s_bytes);
}
