//! The desired state: a validated, typed view of the config.
//!
//! Everything here has already passed validation (see `config`), so the rest of natlb can rely on
//! its invariants: service names and VIP keys are unique, every backend has the VIP's address
//! family, weights are in range and durations are positive.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The whole desired state of one natlb instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub daemon: Daemon,
    pub conntrack: Conntrack,
    /// Other kernel knobs, by sysctl name (`net.ipv4.ip_forward`).
    pub sysctl: BTreeMap<String, i64>,
    pub services: Vec<Service>,
    pub egress: Vec<Egress>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Daemon {
    /// Name of the one `inet` table natlb owns.
    pub table: String,
    pub control_socket: PathBuf,
    /// The group that may use the control socket too (mode 0660); `None`: root only (0600).
    pub control_group: Option<String>,
    pub state_dir: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub keep_rules_on_exit: bool,
    /// Seed of the `source-hash` scheduler's hash: gateways with the same seed (and config)
    /// send a client to the same backend.
    pub hash_seed: u32,
    /// The packet-mark bit(s) that flag a hairpin connection (a client on the network of the
    /// backend it is sent to) between DNAT and SNAT; such connections are masqueraded so the
    /// backend answers through the gateway.
    pub hairpin_mark: u32,
    /// How often `least-conn` services are re-weighted from conntrack's counts.
    pub least_conn_interval: Duration,
    /// How long a withdrawal waits for the read of the sticky map, to delete the withdrawn
    /// backend's entries in its own batch; past it, the withdrawal is committed and the entries
    /// are deleted when the read ends.
    pub sticky_read_wait: Duration,
}

/// `[conntrack]`: every knob is optional; `None` leaves the kernel's value alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Conntrack {
    /// The integer knobs, by `[conntrack]` key, in [`CONNTRACK_KNOBS`] order (the booleans
    /// `tcp_loose` and `tcp_be_liberal` as 0 or 1).
    pub knobs: BTreeMap<&'static str, u64>,
    /// natlb warns when the table is fuller than this percentage of `nf_conntrack_max`.
    pub warn_percent: u8,
    /// How often natlb looks at `nf_conntrack_count`.
    pub check_interval: Duration,
}

impl Default for Conntrack {
    fn default() -> Conntrack {
        Conntrack {
            knobs: BTreeMap::new(),
            warn_percent: 80,
            check_interval: Duration::from_secs(10),
        }
    }
}

/// The `[conntrack]` knobs: key, the sysctl it sets, and whether it is a boolean.
pub const CONNTRACK_KNOBS: [(&str, &str, bool); 11] = [
    ("max", "net.netfilter.nf_conntrack_max", false),
    ("buckets", "net.netfilter.nf_conntrack_buckets", false),
    (
        "tcp_timeout_established",
        "net.netfilter.nf_conntrack_tcp_timeout_established",
        false,
    ),
    (
        "tcp_timeout_time_wait",
        "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
        false,
    ),
    (
        "tcp_timeout_close_wait",
        "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
        false,
    ),
    (
        "udp_timeout",
        "net.netfilter.nf_conntrack_udp_timeout",
        false,
    ),
    (
        "udp_timeout_stream",
        "net.netfilter.nf_conntrack_udp_timeout_stream",
        false,
    ),
    (
        "icmp_timeout",
        "net.netfilter.nf_conntrack_icmp_timeout",
        false,
    ),
    (
        "generic_timeout",
        "net.netfilter.nf_conntrack_generic_timeout",
        false,
    ),
    ("tcp_loose", "net.netfilter.nf_conntrack_tcp_loose", true),
    (
        "tcp_be_liberal",
        "net.netfilter.nf_conntrack_tcp_be_liberal",
        true,
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IANA protocol number, as `meta l4proto` sees it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    Weighted,
    RoundRobin,
    SourceHash,
    LeastConn,
}

impl Scheduler {
    /// The name the config uses.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Weighted => "weighted",
            Scheduler::RoundRobin => "round-robin",
            Scheduler::SourceHash => "source-hash",
            Scheduler::LeastConn => "least-conn",
        }
    }
}

/// What the `source-hash` scheduler hashes to pick a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum HashFields {
    /// The client's address: every connection of a client goes to the same backend.
    #[default]
    Address,
    /// The client's address and source port: spreads one client's connections, keeps each
    /// connection's packets together (what matters for UDP without conntrack state).
    AddressPort,
}

impl HashFields {
    /// The name the config uses.
    pub fn name(self) -> &'static str {
        match self {
            HashFields::Address => "address",
            HashFields::AddressPort => "address-port",
        }
    }
}

/// Source NAT applied to load-balanced traffic on its way to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snat {
    /// Rewrite the client address to the gateway's address on the backend-facing interface.
    Masquerade,
    /// Keep the client address (backends must route replies through the gateway).
    None,
    /// Rewrite the client address to this address.
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAllDown {
    Reject,
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    /// Up when a TCP connection to the backend (or its health port) is accepted.
    Tcp,
    /// Up when `GET path` answers with a status in `expect_status`.
    Http {
        path: String,
        /// The Host header; the backend's `IP:port` when not set.
        host: Option<String>,
        /// Accepted status codes, as inclusive ranges (default 200-399).
        expect_status: Vec<(u16, u16)>,
    },
    /// Up when a datagram with `payload` gets any reply; an ICMP unreachable means down.
    Udp { payload: Vec<u8> },
    /// Up when `command` (argv, no shell) exits 0 before the timeout; it gets the backend's
    /// address in `NATLB_BACKEND_IP`, `NATLB_BACKEND_PORT` and the service in `NATLB_SERVICE`.
    Exec { command: Vec<String> },
    /// No probe: the backend is always up.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub kind: HealthKind,
    pub interval: Duration,
    /// The interval while a backend is changing state (between the first differing result and
    /// `rise`/`fall` of them), so that a decision comes sooner.
    pub fast_interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// What happens to a backend's established connections when it goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendDown {
    /// They stay; only new connections avoid the backend.
    Keep,
    /// Its conntrack entries are deleted, so UDP flows move at once and TCP clients reconnect.
    Reset,
}

/// The key the data plane classifies a service's packets by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vip {
    pub addr: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub vip: Vip,
    pub scheduler: Scheduler,
    /// What `source-hash` hashes; ignored by the other schedulers.
    pub hash: HashFields,
    pub persistence: Option<Duration>,
    pub snat: Snat,
    pub on_all_down: OnAllDown,
    pub on_backend_down: OnBackendDown,
    pub health: Health,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Address and port; the port defaults to the VIP's port.
    pub address: SocketAddr,
    /// Share of traffic relative to the service's other backends; 0 = drained.
    pub weight: u32,
    /// Used only while no primary (non-backup) backend is up.
    pub backup: bool,
    /// The port probes go to, when not the backend's own.
    pub health_port: Option<u16>,
}

/// Source NAT for traffic of internal networks leaving the gateway (`[[egress]]`). natlb
/// renders each egress as a few rules of the `egress` chain (`render::egress`).
#[derive(Debug, Clone, PartialEq)]
pub struct Egress {
    pub name: String,
    pub source: Vec<IpNet>,
    /// Only traffic to these prefixes is translated; empty: traffic to anywhere.
    pub destination: Vec<IpNet>,
    /// Traffic to these prefixes leaves untranslated, even when `destination` covers it.
    pub exclude_destination: Vec<IpNet>,
    /// An interface name, or a prefix of names ending in `*` (`eth*`).
    pub out_interface: String,
    pub snat: EgressSnat,
    /// The source ports TCP and UDP connections may be given (first, last).
    pub ports: Option<(u16, u16)>,
    /// A client keeps one address of a range for all its connections.
    pub persistent: bool,
    /// Source ports are picked at random, not kept or searched from the original one.
    pub fully_random: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EgressSnat {
    /// The address of the interface the packet leaves by.
    Masquerade,
    /// Addresses or ranges: each takes an equal share of the clients (by a hash of the client
    /// address), and a range spreads its share across its addresses.
    To(Vec<AddrRange>),
}

/// An inclusive range of addresses of one family; `first == last` for a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl std::fmt::Display for AddrRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// An address prefix (`10.0.0.0/16`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The largest weight a backend may have; keeps slot arithmetic in `u32` without overflow.
pub const MAX_WEIGHT: u32 = 10_000;

/// The persistence durations natlb offers, as nft writes them, with their length in seconds.
/// The `update` that remembers a client holds its timeout as a constant, so each duration is a
/// rule of the fixed layout (`render::layout`) and a service picks one by joining its set:
/// changing a service's persistence stays an element delta.
pub const PERSISTENCE: [(&str, u64); 16] = [
    ("10s", 10),
    ("30s", 30),
    ("1m", 60),
    ("2m", 120),
    ("5m", 300),
    ("10m", 600),
    ("15m", 900),
    ("20m", 1200),
    ("30m", 1800),
    ("45m", 2700),
    ("1h", 3600),
    ("2h", 7200),
    ("4h", 14400),
    ("8h", 28800),
    ("12h", 43200),
    ("1d", 86400),
];

/// The label of a persistence duration natlb offers, or `None`.
pub fn persistence_label(d: std::time::Duration) -> Option<&'static str> {
    PERSISTENCE
        .iter()
        .find(|(_, secs)| d == std::time::Duration::from_secs(*secs))
        .map(|(label, _)| *label)
}
