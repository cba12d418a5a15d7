//! The synthetic services the commit and status benchmarks install: N services × K
//! backends in benchmarking address ranges (nothing is sent to them).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use natlb::model::{
    Backend, Conntrack, Daemon, HashFields, Health, HealthKind, Model, OnAllDown, OnBackendDown,
    Protocol, Scheduler, Service, Snat, Vip,
};

pub const TABLE: &str = "natlb";

/// VIP of service `i`: 198.18.a.b (a < 256, b in 1..=200), port 80 and up beyond 51,200.
pub fn vip_of(i: usize) -> SocketAddr {
    let host = i % (256 * 200);
    let addr = Ipv4Addr::new(198, 18, (host / 200) as u8, (host % 200 + 1) as u8);
    SocketAddr::new(IpAddr::V4(addr), 80 + (i / (256 * 200)) as u16)
}

/// Backend `k` of service `i`: 198.19.(i mod 256).(k+1), port 8000 + (i / 256) mod 50,000.
pub fn backend_of(i: usize, k: usize) -> SocketAddr {
    let addr = Ipv4Addr::new(198, 19, (i % 256) as u8, (k + 1) as u8);
    SocketAddr::new(IpAddr::V4(addr), 8000 + ((i / 256) % 50_000) as u16)
}

pub fn service_name(i: usize) -> String {
    format!("svc{i}")
}

pub fn build_model(services: usize, backends: usize, scheduler: Scheduler) -> Model {
    Model {
        daemon: Daemon {
            table: TABLE.into(),
            control_socket: "/run/natlb-bench/control.sock".into(),
            control_group: None,
            state_dir: "/tmp/natlb-bench-state".into(),
            metrics: None,
            keep_rules_on_exit: true,
            hash_seed: 0,
            hairpin_mark: 0x0010_0000,
            least_conn_interval: Duration::from_secs(1),
            sticky_read_wait: Duration::from_millis(3),
        },
        conntrack: Conntrack::default(),
        sysctl: Default::default(),
        services: (0..services)
            .map(|i| {
                let vip = vip_of(i);
                Service {
                    name: service_name(i),
                    vip: Vip {
                        addr: vip.ip(),
                        protocol: Protocol::Tcp,
                        port: vip.port(),
                    },
                    scheduler,
                    hash: HashFields::Address,
                    persistence: None,
                    snat: Snat::Masquerade,
                    on_all_down: OnAllDown::Reject,
                    on_backend_down: OnBackendDown::Keep,
                    health: Health {
                        kind: HealthKind::Tcp,
                        interval: Duration::from_secs(2),
                        fast_interval: Duration::from_millis(500),
                        timeout: Duration::from_secs(2),
                        rise: 2,
                        fall: 3,
                    },
                    backends: (0..backends)
                        .map(|k| Backend {
                            address: backend_of(i, k),
                            weight: 1,
                            backup: false,
                            health_port: None,
                        })
                        .collect(),
                }
            })
            .collect(),
        egress: vec![],
    }
}
