//! End-to-end tests of `parse`/`load`: whole configs in, models or exact `FILE:LINE:COL` errors
//! out.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigErrors, load, parse};
use crate::model::*;

/// The example from spec.md, verbatim.
const SPEC_EXAMPLE: &str = r#"[daemon]
table = "natlb"                          # the one nftables table natlb owns (family inet)
control_socket = "/run/natlb/control.sock"
state_dir = "/var/lib/natlb"             # admin state that must survive restarts
metrics = "127.0.0.1:9469"               # Prometheus text format; omit to disable
keep_rules_on_exit = true                # data plane keeps forwarding while natlb is down

[conntrack]                              # written as sysctls at start, read back, reported
max = 524288                             # net.netfilter.nf_conntrack_max
buckets = 131072                         # nf_conntrack hashsize
tcp_timeout_established = 3600
tcp_timeout_time_wait = 30
udp_timeout = 30
udp_timeout_stream = 120

[sysctl]                                 # any other kernel knobs the gateway needs
"net.ipv4.ip_forward" = 1

[[service]]
name = "web"
listen = "198.51.100.10:80"             # VIP:port; IPv6 as "[2001:db8::10]:80"
protocol = "tcp"                         # tcp | udp
scheduler = "weighted"                   # weighted | round-robin | source-hash | least-conn
persistence = "30m"                      # optional: a client IP sticks to its backend while idle this long
snat = "masquerade"                      # masquerade | none | an address to SNAT to
on_all_down = "reject"                   # reject | drop, when no backend (nor backup) is up

[service.health]
type = "http"                            # tcp | http | udp | exec | none
path = "/health"                         # http: GET path; status 200-399 is up
interval = "1s"
timeout = "500ms"
rise = 2                                 # consecutive successes to come up
fall = 3                                 # consecutive failures to go down

[[service.backend]]
address = "10.0.1.11:8080"               # port defaults to the listen port
weight = 3                               # default 1; 0 = drained

[[service.backend]]
address = "10.0.1.12:8080"
backup = true                            # used only while no primary backend is up

[[egress]]                               # source NAT for traffic leaving the gateway
name = "lan"
source = ["10.0.0.0/16"]
out_interface = "eth0"
snat = "masquerade"                      # or a list of addresses/ranges to SNAT to
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ok(text: &str) -> Model {
    parse("t.toml", text).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

/// Every error as `t.toml:LINE:COL: message`.
fn errors(text: &str) -> Vec<String> {
    match parse("t.toml", text) {
        Ok(m) => panic!("expected errors, got {m:#?}"),
        Err(ConfigErrors(errors)) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// The one error a config produces.
fn error(text: &str) -> String {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    errors.into_iter().next().unwrap()
}

/// A valid one-service config with `extra` appended to the service table (before its backends).
fn service_with(extra: &str) -> String {
    format!(
        "[[service]]\nname = \"web\"\nlisten = \"198.51.100.10:80\"\n{extra}\n\
         [[service.backend]]\naddress = \"10.0.1.11:8080\"\n"
    )
}

#[test]
fn spec_example_parses_to_the_expected_model() {
    let expected = Model {
        daemon: Daemon {
            table: "natlb".into(),
            control_socket: PathBuf::from("/run/natlb/control.sock"),
            control_group: None,
            state_dir: PathBuf::from("/var/lib/natlb"),
            metrics: Some(sa("127.0.0.1:9469")),
            keep_rules_on_exit: true,
            hash_seed: 0,
            hairpin_mark: 0x0010_0000,
            least_conn_interval: Duration::from_secs(1),
            sticky_read_wait: Duration::from_millis(3),
        },
        conntrack: Conntrack {
            knobs: BTreeMap::from([
                ("max", 524288),
                ("buckets", 131072),
                ("tcp_timeout_established", 3600),
                ("tcp_timeout_time_wait", 30),
                ("udp_timeout", 30),
                ("udp_timeout_stream", 120),
            ]),
            ..Conntrack::default()
        },
        sysctl: BTreeMap::from([("net.ipv4.ip_forward".to_owned(), 1)]),
        services: vec![Service {
            name: "web".into(),
            vip: Vip {
                addr: ip("198.51.100.10"),
                protocol: Protocol::Tcp,
                port: 80,
            },
            scheduler: Scheduler::Weighted,
            hash: HashFields::Address,
            persistence: Some(Duration::from_secs(30 * 60)),
            snat: Snat::Masquerade,
            on_all_down: OnAllDown::Reject,
            on_backend_down: OnBackendDown::Keep,
            health: Health {
                kind: HealthKind::Http {
                    path: "/health".into(),
                    host: None,
                    expect_status: vec![(200, 399)],
                },
                interval: Duration::from_secs(1),
                // A quarter of the interval.
                fast_interval: Duration::from_millis(250),
                timeout: Duration::from_millis(500),
                rise: 2,
                fall: 3,
            },
            backends: vec![
                Backend {
                    address: sa("10.0.1.11:8080"),
                    weight: 3,
                    backup: false,
                    health_port: None,
                },
                Backend {
                    address: sa("10.0.1.12:8080"),
                    weight: 1,
                    backup: true,
                    health_port: None,
                },
            ],
        }],
        egress: vec![Egress {
            name: "lan".into(),
            source: vec![IpNet {
                addr: ip("10.0.0.0"),
                prefix: 16,
            }],
            destination: vec![],
            exclude_destination: vec![],
            out_interface: "eth0".into(),
            snat: EgressSnat::Masquerade,
            ports: None,
            persistent: false,
            fully_random: false,
        }],
    };
    assert_eq!(ok(SPEC_EXAMPLE), expected);
}

#[test]
fn empty_file_is_all_defaults() {
    let m = ok("");
    assert_eq!(
        m.daemon,
        Daemon {
            table: "natlb".into(),
            control_socket: PathBuf::from("/run/natlb/control.sock"),
            control_group: None,
            state_dir: PathBuf::from("/var/lib/natlb"),
            metrics: None,
            keep_rules_on_exit: true,
            hash_seed: 0,
            hairpin_mark: 0x0010_0000,
            least_conn_interval: Duration::from_secs(1),
            sticky_read_wait: Duration::from_millis(3),
        }
    );
    assert_eq!(m.conntrack, Conntrack::default());
    assert!(m.sysctl.is_empty() && m.services.is_empty() && m.egress.is_empty());
}

#[test]
fn service_defaults() {
    let m = ok(r#"
[[service]]
name = "dns"
listen = "198.51.100.53:53"

[[service.backend]]
address = "10.0.2.1"
"#);
    assert_eq!(
        m.services,
        [Service {
            name: "dns".into(),
            vip: Vip {
                addr: ip("198.51.100.53"),
                protocol: Protocol::Tcp,
                port: 53,
            },
            scheduler: Scheduler::Weighted,
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
            // The port defaults to the listen port.
            backends: vec![Backend {
                address: sa("10.0.2.1:53"),
                weight: 1,
                backup: false,
                health_port: None,
            }],
        }]
    );
}

#[test]
fn health_defaults() {
    // http without a path probes "/" with the backend's IP:PORT as Host and accepts 200-399;
    // the timeout defaults to the interval, the fast interval to a quarter of it.
    let m = ok(&service_with(
        "[service.health]\ntype = \"http\"\ninterval = \"5s\"",
    ));
    assert_eq!(
        m.services[0].health,
        Health {
            kind: HealthKind::Http {
                path: "/".into(),
                host: None,
                expect_status: vec![(200, 399)],
            },
            interval: Duration::from_secs(5),
            fast_interval: Duration::from_millis(1250),
            timeout: Duration::from_secs(5),
            rise: 2,
            fall: 3,
        }
    );
}

#[test]
fn every_keyword() {
    let m = ok(r#"
[[service]]
name = "a"
listen = "198.51.100.10:53"
protocol = "udp"
scheduler = "round-robin"
snat = "none"
on_all_down = "drop"
health = { type = "udp" }
backend = [{ address = "10.0.1.1" }]

[[service]]
name = "b"
listen = "198.51.100.10:54"
scheduler = "source-hash"
snat = "192.0.2.1"
health = { type = "exec", command = ["/usr/local/bin/check"] }
backend = [{ address = "10.0.1.1" }]

[[service]]
name = "c"
listen = "198.51.100.10:55"
scheduler = "least-conn"
health = { type = "none" }
backend = [{ address = "10.0.1.1" }]
"#);
    let s = &m.services;
    assert_eq!(s[0].vip.protocol, Protocol::Udp);
    assert_eq!(s[0].scheduler, Scheduler::RoundRobin);
    assert_eq!(s[0].snat, Snat::None);
    assert_eq!(s[0].on_all_down, OnAllDown::Drop);
    assert_eq!(s[0].health.kind, HealthKind::Udp { payload: vec![] });
    assert_eq!(s[1].scheduler, Scheduler::SourceHash);
    assert_eq!(s[1].snat, Snat::Address(ip("192.0.2.1")));
    assert_eq!(
        s[1].health.kind,
        HealthKind::Exec {
            command: vec!["/usr/local/bin/check".into()]
        }
    );
    assert_eq!(s[2].scheduler, Scheduler::LeastConn);
    assert_eq!(s[2].health.kind, HealthKind::None);
}

#[test]
fn ipv6_service() {
    let m = ok(r#"
[[service]]
name = "web6"
listen = "[2001:db8::10]:80"
snat = "2001:db8::1"
[[service.backend]]
address = "2001:db8::11"
[[service.backend]]
address = "[2001:db8::12]"
[[service.backend]]
address = "[2001:db8::13]:8080"
"#);
    let s = &m.services[0];
    assert_eq!(s.vip.addr, ip("2001:db8::10"));
    assert_eq!(s.snat, Snat::Address(ip("2001:db8::1")));
    let addrs: Vec<_> = s.backends.iter().map(|b| b.address).collect();
    assert_eq!(
        addrs,
        [
            sa("[2001:db8::11]:80"),
            sa("[2001:db8::12]:80"),
            sa("[2001:db8::13]:8080")
        ]
    );
}

#[test]
fn same_vip_different_protocol_or_port_is_fine() {
    let m = ok(r#"
[[service]]
name = "dns-udp"
listen = "198.51.100.53:53"
protocol = "udp"
backend = [{ address = "10.0.2.1" }]
[[service]]
name = "dns-tcp"
listen = "198.51.100.53:53"
backend = [{ address = "10.0.2.1" }]
"#);
    assert_eq!(m.services.len(), 2);
}

#[test]
fn egress_snat_lists_and_dual_stack() {
    let m = ok(r#"
[[egress]]
name = "lan"
source = ["10.0.0.0/16", "10.1.0.5", "fd00::/8"]
destination = ["0.0.0.0/0", "2000::/3"]
exclude_destination = ["10.0.0.0/8"]
out_interface = "wan0"
snat = ["203.0.113.5", "203.0.113.10 - 203.0.113.20", "2001:db8::5"]
ports = "1024-65535"
persistent = true
fully_random = true

[[egress]]
name = "dmz"
source = ["192.168.0.0/24"]
out_interface = "eth1"
snat = "203.0.113.7"

[[egress]]
name = "defaults"
source = ["192.168.1.0/24"]
out_interface = "eth1"
"#);
    assert_eq!(
        m.egress[0],
        Egress {
            name: "lan".into(),
            source: vec![
                IpNet {
                    addr: ip("10.0.0.0"),
                    prefix: 16
                },
                IpNet {
                    addr: ip("10.1.0.5"),
                    prefix: 32
                },
                IpNet {
                    addr: ip("fd00::"),
                    prefix: 8
                },
            ],
            destination: vec![
                IpNet {
                    addr: ip("0.0.0.0"),
                    prefix: 0
                },
                IpNet {
                    addr: ip("2000::"),
                    prefix: 3
                },
            ],
            exclude_destination: vec![IpNet {
                addr: ip("10.0.0.0"),
                prefix: 8
            }],
            out_interface: "wan0".into(),
            snat: EgressSnat::To(vec![
                range("203.0.113.5", "203.0.113.5"),
                range("203.0.113.10", "203.0.113.20"),
                range("2001:db8::5", "2001:db8::5"),
            ]),
            ports: Some((1024, 65535)),
            persistent: true,
            fully_random: true,
        }
    );
    assert_eq!(
        m.egress[1].snat,
        EgressSnat::To(vec![range("203.0.113.7", "203.0.113.7")])
    );
    assert_eq!(m.egress[2].snat, EgressSnat::Masquerade);
    assert_eq!(
        (
            m.egress[2].ports,
            m.egress[2].persistent,
            m.egress[2].fully_random
        ),
        (None, false, false)
    );
}

fn range(first: &str, last: &str) -> AddrRange {
    AddrRange {
        first: ip(first),
        last: ip(last),
    }
}

// ---- syntax and type errors ----

#[test]
fn syntax_error_has_its_position() {
    assert_eq!(
        error("[daemon]\ntable = web\n"),
        "t.toml:2:9: TOML syntax: string values must be quoted, expected literal string"
    );
    assert_eq!(
        error("[daemon]\ntable = natlb\n"),
        "t.toml:2:9: TOML syntax: invalid float, expected `nan` (text values must be in double \
         quotes)"
    );
    // Only the earliest: an unclosed string or array makes the parser stumble over every line
    // after it, and those echoes would bury the real mistake.
    assert_eq!(
        error("[daemon]\ntable = \"natlb\nx = [1,\n"),
        "t.toml:2:15: TOML syntax: invalid basic string, expected `\"`"
    );
}

#[test]
fn duplicate_key() {
    assert_eq!(
        error("[daemon]\ntable = \"a\"\ntable = \"b\"\n"),
        "t.toml:3:1: TOML syntax: duplicate key `table`; each key (and each [table]) may \
         appear once, remove one"
    );
}

#[test]
fn type_error() {
    assert_eq!(
        error(&service_with("persistence = 30")),
        "t.toml:4:15: `persistence`: invalid type: integer `30`, expected a duration string \
         with a unit, such as \"2s\" or \"500ms\""
    );
}

// ---- [daemon], [conntrack], [sysctl] ----

#[test]
fn daemon_errors() {
    let text = r#"[daemon]
table = "1natlb"
control_socket = "natlb.sock"
state_dir = ""
metrics = "127.0.0.1"
"#;
    assert_eq!(
        errors(text),
        [
            "t.toml:2:9: table name \"1natlb\" is not a valid nftables identifier; start with a \
             letter and use only letters, digits, `_` and `-`, at most 64 characters",
            "t.toml:3:18: control_socket \"natlb.sock\" is not an absolute path; write e.g. \
             \"/run/natlb/control.sock\"",
            "t.toml:4:13: state_dir \"\" is not an absolute path; write e.g. \"/var/lib/natlb\"",
            "t.toml:5:11: metrics address \"127.0.0.1\" has no port; write it as \
             \"127.0.0.1:PORT\"; e.g. \"127.0.0.1:9469\"",
        ]
    );
    let long = format!("[daemon]\ncontrol_socket = \"/{}\"\n", "s".repeat(107));
    assert!(error(&long).starts_with("t.toml:2:18: control_socket \"/sss"));
    assert!(error(&long).ends_with(
        "is 108 bytes long; a unix socket path can be at most 107, so choose a shorter one"
    ));
    let long_table = format!("[daemon]\ntable = \"{}\"\n", "t".repeat(65));
    assert!(error(&long_table).starts_with("t.toml:2:9: table name"));
    ok("[daemon]\ntable = \"my_table-2\"\nmetrics = \"[::1]:9469\"\nkeep_rules_on_exit = false\n");
}

#[test]
fn conntrack_booleans_percent_and_interval() {
    let m = ok(
        "[conntrack]\ntcp_loose = false\ntcp_be_liberal = true\nicmp_timeout = 10\n\
         warn_percent = 90\ncheck_interval = \"2s\"\n",
    );
    assert_eq!(
        m.conntrack,
        Conntrack {
            knobs: BTreeMap::from([
                ("tcp_loose", 0),
                ("tcp_be_liberal", 1),
                ("icmp_timeout", 10)
            ]),
            warn_percent: 90,
            check_interval: Duration::from_secs(2),
        }
    );
    assert_eq!(
        errors("[conntrack]\nwarn_percent = 0\n"),
        [
            "t.toml:2:16: conntrack warn_percent must be from 1 to 100 (a percentage of \
          nf_conntrack_max), not 0"
        ]
    );
    assert_eq!(
        errors(
            "[conntrack]\ntcp_loose = true\n[sysctl]\n\"net.netfilter.nf_conntrack_tcp_loose\" = 0\n"
        ),
        [
            "t.toml:4:1: sysctl \"net.netfilter.nf_conntrack_tcp_loose\" is also set by \
          `tcp_loose` in [conntrack]; set it in one place only"
        ]
    );
}

#[test]
fn conntrack_values_must_be_positive() {
    assert_eq!(
        errors("[conntrack]\nmax = 0\nudp_timeout = -5\n"),
        [
            "t.toml:2:7: conntrack max must be a positive integer, not 0; remove it to keep the \
             kernel's value",
            "t.toml:3:15: conntrack udp_timeout must be a positive integer, not -5; remove it to \
             keep the kernel's value",
        ]
    );
}

#[test]
fn sysctl_errors() {
    let text = r#"[conntrack]
max = 1000
[sysctl]
"kernel.panic" = 1
"net.netfilter.nf_conntrack_max" = 2000
"net.ipv4..x" = 1
"net.ipv4.conf.eth0/100.rp_filter" = 2
"#;
    assert_eq!(
        errors(text),
        [
            "t.toml:4:1: sysctl \"kernel.panic\" is not a network sysctl; natlb only sets names \
             under net. (e.g. \"net.ipv4.ip_forward\")",
            "t.toml:5:1: sysctl \"net.netfilter.nf_conntrack_max\" is also set by `max` in \
             [conntrack]; set it in one place only",
            "t.toml:6:1: sysctl \"net.ipv4..x\" has an empty component; write names as \
             dot-separated words, e.g. \"net.ipv4.ip_forward\"",
        ]
    );
    let m = ok("[sysctl]\n\"net.ipv4.conf.eth0/100.rp_filter\" = 2\n\"net.core.x\" = -1\n");
    assert_eq!(m.sysctl["net.ipv4.conf.eth0/100.rp_filter"], 2);
    assert_eq!(m.sysctl["net.core.x"], -1);
}

// ---- [[service]] ----

#[test]
fn duplicate_service_names_point_at_the_second() {
    let text = r#"[[service]]
name = "web"
listen = "198.51.100.10:80"
backend = [{ address = "10.0.1.11" }]

[[service]]
name = "web"
listen = "198.51.100.10:443"
backend = [{ address = "10.0.1.11" }]
"#;
    assert_eq!(
        error(text),
        "t.toml:7:8: duplicate service name `web` (first used on line 2); give each service a \
         unique name"
    );
}

#[test]
fn duplicate_vip() {
    let text = r#"[[service]]
name = "a"
listen = "198.51.100.10:80"
backend = [{ address = "10.0.1.11" }]

[[service]]
name = "b"
listen = "198.51.100.10:80"
backend = [{ address = "10.0.1.12" }]
"#;
    assert_eq!(
        error(text),
        "t.toml:8:10: tcp 198.51.100.10:80 is already the VIP of service `a` (line 3); each \
         address, protocol and port can belong to one service only"
    );
}

#[test]
fn service_name_rules() {
    assert_eq!(
        error(
            "[[service]]\nname = \"my web\"\nlisten = \"198.51.100.10:80\"\nbackend = [{ address = \"10.0.1.1\" }]\n"
        ),
        "t.toml:2:8: service name `my web` contains ' '; use only letters, digits, `_`, `.` and `-`"
    );
    assert_eq!(
        error(
            "[[service]]\nname = \"\"\nlisten = \"198.51.100.10:80\"\nbackend = [{ address = \"10.0.1.1\" }]\n"
        ),
        "t.toml:2:8: service name is empty; use 1 to 64 letters, digits, `_`, `.` or `-`"
    );
    let long = format!(
        "[[service]]\nname = \"{}\"\nlisten = \"198.51.100.10:80\"\nbackend = [{{ address = \"10.0.1.1\" }}]\n",
        "a".repeat(65)
    );
    assert!(error(&long).ends_with("is 65 characters long; use at most 64"));
    ok(
        "[[service]]\nname = \"web_v2.blue-1\"\nlisten = \"198.51.100.10:80\"\nbackend = [{ address = \"10.0.1.1\" }]\n",
    );
}

#[test]
fn missing_required_keys_point_at_the_table() {
    let text = r#"[[service]]
scheduler = "weighted"

[[service.backend]]
weight = 2
"#;
    assert_eq!(
        errors(text),
        [
            "t.toml:1:1: service has no name; add name = \"...\" (letters, digits, `_`, `.`, `-`)",
            "t.toml:1:1: this service has no listen address; add listen = \"IP:PORT\" (the VIP)",
            "t.toml:4:1: backend has no address; add address = \"IP:PORT\"",
        ]
    );
}

#[test]
fn empty_backend_list_points_at_the_name() {
    let text = "[[service]]\nname = \"web\"\nlisten = \"198.51.100.10:80\"\n";
    assert_eq!(
        error(text),
        "t.toml:2:8: service `web` has no backends; add at least one [[service.backend]] with \
         address = \"IP:PORT\""
    );
    let text = "[[service]]\nname = \"web\"\nlisten = \"198.51.100.10:80\"\nbackend = []\n";
    assert!(error(text).starts_with("t.toml:2:8: service `web` has no backends"));
}

#[test]
fn listen_errors() {
    let listen = |l: &str| {
        error(&format!(
            "[[service]]\nname = \"web\"\nlisten = \"{l}\"\nbackend = [{{ address = \"10.0.1.1:80\" }}]\n"
        ))
    };
    assert_eq!(
        listen("198.51.100.10"),
        "t.toml:3:10: listen address \"198.51.100.10\" has no port; write it as \
         \"198.51.100.10:PORT\""
    );
    assert_eq!(
        listen("198.51.100.10:0"),
        "t.toml:3:10: listen address \"198.51.100.10:0\" has port 0; use a port from 1 to 65535"
    );
    assert_eq!(
        listen("web.example.com:80"),
        "t.toml:3:10: listen address \"web.example.com:80\" is not IP:PORT (write IPv6 as \
         [addr]:port; host names are not supported)"
    );
    assert_eq!(
        listen("0.0.0.0:80"),
        "t.toml:3:10: listen address 0.0.0.0:80 is the unspecified address; listen on the \
         address clients connect to"
    );
}

#[test]
fn keyword_errors() {
    assert_eq!(
        error(&service_with("protocol = \"tpc\"")),
        "t.toml:4:12: unknown protocol `tpc`; did you mean `tcp`? (use `tcp` or `udp`)"
    );
    assert_eq!(
        error(&service_with("scheduler = \"roundrobin\"")),
        "t.toml:4:13: unknown scheduler `roundrobin`; did you mean `round-robin`? (use \
         `weighted`, `round-robin`, `source-hash` or `least-conn`)"
    );
    assert_eq!(
        error(&service_with("on_all_down = \"ignore\"")),
        "t.toml:4:15: unknown on_all_down `ignore`; use `reject` or `drop`"
    );
    assert_eq!(
        error(&service_with("snat = \"masq\"")),
        "t.toml:4:8: unknown snat `masq`; use `masquerade`, `none` or an IP address to rewrite \
         the client address to"
    );
    assert_eq!(
        error(&service_with("[service.health]\ntype = \"icmp\"")),
        "t.toml:5:8: unknown health check type `icmp`; use `tcp`, `http`, `udp`, `exec` or \
         `none`"
    );
}

#[test]
fn bad_durations() {
    assert_eq!(
        error(&service_with("persistence = \"30\"")),
        "t.toml:4:15: persistence: duration \"30\" has no unit; write e.g. \"30s\" (units: ms, \
         s, m, h, d)"
    );
    assert_eq!(
        errors(&service_with(
            "[service.health]\ninterval = \"0s\"\ntimeout = \"1.5s\""
        )),
        [
            "t.toml:5:12: health interval: duration \"0s\" is zero; use a positive duration such \
             as \"1s\"",
            "t.toml:6:11: health timeout: duration \"1.5s\" has a fraction; use whole numbers of \
             a smaller unit, e.g. \"1500ms\" for 1.5s",
        ]
    );
}

#[test]
fn timeout_longer_than_interval() {
    assert_eq!(
        error(&service_with(
            "[service.health]\ninterval = \"1s\"\ntimeout = \"1500ms\""
        )),
        "t.toml:6:11: health timeout 1s500ms is longer than the interval 1s; a probe must end \
         before the next starts, so use a timeout of at most 1s"
    );
    assert_eq!(
        error(&service_with("[service.health]\ntimeout = \"3s\"")),
        "t.toml:5:11: health timeout 3s is longer than the interval 2s (the default); a probe \
         must end before the next starts, so use a timeout of at most 2s"
    );
}

#[test]
fn rise_and_fall_ranges() {
    assert_eq!(
        errors(&service_with("[service.health]\nrise = 0\nfall = 101")),
        [
            "t.toml:5:8: health rise 0 is out of range; use 1 to 100 consecutive successes to \
             mark a backend up",
            "t.toml:6:8: health fall 101 is out of range; use 1 to 100 consecutive failures to \
             mark a backend down",
        ]
    );
    ok(&service_with("[service.health]\nrise = 1\nfall = 100"));
}

#[test]
fn health_path_rules() {
    assert_eq!(
        error(&service_with("[service.health]\npath = \"/health\"")),
        "t.toml:5:8: health path only applies to http checks, and this one is tcp; remove \
         `path` or set type = \"http\""
    );
    assert_eq!(
        error(&service_with(
            "[service.health]\ntype = \"http\"\npath = \"health\""
        )),
        "t.toml:6:8: health path \"health\" must start with \"/\"; write \"/health\""
    );
    assert!(
        error(&service_with(
            "[service.health]\ntype = \"http\"\npath = \"/a b\""
        ))
        .contains("contains ' '")
    );
}

// ---- health probe keys: fast_interval, host, expect_status, payload, command ----

/// A one-service config whose `[service.health]` holds `health`, starting on line 5.
fn health_with(health: &str) -> String {
    service_with(&format!("[service.health]\n{health}"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn fast_interval_defaults_to_a_quarter_of_the_interval() {
    let health = |interval: &str| {
        ok(&health_with(&format!("interval = \"{interval}\""))).services[0]
            .health
            .clone()
    };
    assert_eq!(health("2s").fast_interval, ms(500));
    assert_eq!(health("1m").fast_interval, ms(15_000));
    // At least 100ms…
    assert_eq!(health("200ms").fast_interval, ms(100));
    assert_eq!(health("400ms").fast_interval, ms(100));
    // …but never slower than the interval itself.
    assert_eq!(health("50ms").fast_interval, ms(50));
    // The timeout still defaults to the whole interval.
    assert_eq!(health("200ms").timeout, ms(200));
    // With no [service.health] at all: a quarter of the default 2s.
    assert_eq!(
        ok(&service_with("")).services[0].health.fast_interval,
        ms(500)
    );
}

#[test]
fn fast_interval_values_and_errors() {
    let h = ok(&health_with("interval = \"1s\"\nfast_interval = \"300ms\"")).services[0]
        .health
        .clone();
    assert_eq!(
        (h.interval, h.fast_interval, h.timeout),
        (ms(1000), ms(300), ms(1000))
    );
    // Equal to the interval (no speed-up) and below the default's floor are both allowed.
    let fast = |text: &str| ok(&health_with(text)).services[0].health.fast_interval;
    assert_eq!(fast("interval = \"1s\"\nfast_interval = \"1s\""), ms(1000));
    assert_eq!(fast("fast_interval = \"50ms\""), ms(50));

    assert_eq!(
        error(&health_with("interval = \"1s\"\nfast_interval = \"2s\"")),
        "t.toml:6:17: health fast_interval 2s is longer than the interval 1s; it is the interval \
         while a backend changes state, meant to decide sooner, so use a fast_interval of at \
         most 1s"
    );
    assert_eq!(
        error(&health_with("fast_interval = \"3s\"")),
        "t.toml:5:17: health fast_interval 3s is longer than the interval 2s (the default); it \
         is the interval while a backend changes state, meant to decide sooner, so use a \
         fast_interval of at most 2s"
    );
    assert_eq!(
        error(&health_with("fast_interval = \"250\"")),
        "t.toml:5:17: health fast_interval: duration \"250\" has no unit; write e.g. \"250s\" \
         (units: ms, s, m, h, d)"
    );
    assert_eq!(
        error(&health_with("fast_interval = 250")),
        "t.toml:5:17: `health.fast_interval`: invalid type: integer `250`, expected a duration \
         string with a unit, such as \"2s\" or \"500ms\""
    );
    // Both timing rules are reported at once.
    assert_eq!(
        errors(&health_with(
            "interval = \"1s\"\nfast_interval = \"5s\"\ntimeout = \"5s\""
        )),
        [
            "t.toml:6:17: health fast_interval 5s is longer than the interval 1s; it is the \
             interval while a backend changes state, meant to decide sooner, so use a \
             fast_interval of at most 1s",
            "t.toml:7:11: health timeout 5s is longer than the interval 1s; a probe must end \
             before the next starts, so use a timeout of at most 1s",
        ]
    );
    // An invalid interval is reported once, not again as a comparison.
    assert_eq!(
        error(&health_with("interval = \"0s\"\nfast_interval = \"5s\"")),
        "t.toml:5:12: health interval: duration \"0s\" is zero; use a positive duration such as \
         \"1s\""
    );
}

fn http_kind(text: &str) -> HealthKind {
    ok(&health_with(&format!("type = \"http\"\n{text}"))).services[0]
        .health
        .kind
        .clone()
}

#[test]
fn http_host() {
    assert_eq!(
        http_kind("path = \"/ready\"\nhost = \"www.example.com:8080\""),
        HealthKind::Http {
            path: "/ready".into(),
            host: Some("www.example.com:8080".into()),
            expect_status: vec![(200, 399)],
        }
    );
    let host = |value: &str| error(&health_with(&format!("type = \"http\"\nhost = {value}")));
    assert_eq!(
        host("\"\""),
        "t.toml:6:8: health host is empty; write the Host header to send, e.g. \
         \"www.example.com\", or remove `host` to send the backend's IP:PORT"
    );
    assert_eq!(
        host("\"www example.com\""),
        "t.toml:6:8: health host \"www example.com\" contains ' ', which cannot go in a Host \
         header; write only the host name and an optional :PORT, e.g. \"www.example.com\""
    );
    // Control characters are quoted escaped, keeping the error on one line.
    assert_eq!(
        host("\"a.example\\r\\nX-Evil: 1\""),
        "t.toml:6:8: health host \"a.example\\r\\nX-Evil: 1\" contains '\\r', which cannot go in \
         a Host header; write only the host name and an optional :PORT, e.g. \"www.example.com\""
    );
    assert!(host("\"a\\nb\"").contains("contains '\\n'"));
    assert_eq!(
        host("\"http://www.example.com/health\""),
        "t.toml:6:8: health host \"http://www.example.com/health\" contains '/'; write only the \
         host name and an optional :PORT, e.g. \"www.example.com\" (the request path goes in \
         `path`)"
    );
    assert_eq!(
        error(&health_with("host = \"www.example.com\"")),
        "t.toml:5:8: health host only applies to http checks, and this one is tcp; remove \
         `host` or set type = \"http\""
    );
}

#[test]
fn http_expect_status() {
    let status = |value: &str| match http_kind(&format!("expect_status = \"{value}\"")) {
        HealthKind::Http { expect_status, .. } => expect_status,
        other => panic!("{other:?}"),
    };
    assert_eq!(status("200"), [(200, 200)]);
    assert_eq!(status("200-399"), [(200, 399)]);
    assert_eq!(
        status("200,204,301-302"),
        [(200, 200), (204, 204), (301, 302)]
    );
    // Spaces around entries and dashes are fine; order is kept as written.
    assert_eq!(status(" 404 , 200 - 299 "), [(404, 404), (200, 299)]);
    assert_eq!(status("100-599"), [(100, 599)]);

    let bad = |value: &str| {
        error(&health_with(&format!(
            "type = \"http\"\nexpect_status = {value}"
        )))
    };
    assert_eq!(
        bad("\"\""),
        "t.toml:6:17: health expect_status is empty; list the accepted status codes and ranges, \
         e.g. \"200-399\" or \"200,204,301-302\""
    );
    assert_eq!(
        bad("\"200,,204\""),
        "t.toml:6:17: health expect_status \"200,,204\" has an empty entry; separate codes and \
         ranges with single commas, e.g. \"200-399\" or \"200,204,301-302\""
    );
    assert!(bad("\"200,\"").contains("has an empty entry"));
    assert_eq!(
        bad("\"ok\""),
        "t.toml:6:17: health expect_status \"ok\": \"ok\" is not a status code; write codes and \
         lo-hi ranges separated by commas, e.g. \"200-399\" or \"200,204,301-302\""
    );
    assert_eq!(
        bad("\"2xx,404\""),
        "t.toml:6:17: health expect_status \"2xx,404\": \"2xx\" is not a status code; write a \
         class of codes as a range, \"200-299\""
    );
    assert_eq!(
        bad("\"200-600\""),
        "t.toml:6:17: health expect_status \"200-600\": 600 is not an HTTP status code; use \
         codes from 100 to 599"
    );
    assert!(bad("\"99\"").contains(": 99 is not an HTTP status code"));
    assert!(bad("\"99999999\"").contains(": 99999999 is not an HTTP status code"));
    assert_eq!(
        bad("\"200,399-300\""),
        "t.toml:6:17: health expect_status range \"399-300\" runs backwards; write the lower \
         code first: \"300-399\""
    );
    assert_eq!(
        bad("\"200-\""),
        "t.toml:6:17: health expect_status range \"200-\" is missing a code; write both ends, \
         e.g. \"200-299\""
    );
    assert_eq!(
        bad("200"),
        "t.toml:6:17: `health.expect_status`: invalid type: integer `200`, expected a string of \
         status codes and ranges, such as \"200-399\" or \"200,204\""
    );
    assert_eq!(
        error(&health_with("type = \"udp\"\nexpect_status = \"200\"")),
        "t.toml:6:17: health expect_status only applies to http checks, and this one is udp; \
         remove `expect_status` or set type = \"http\""
    );
}

#[test]
fn udp_payload() {
    let payload = |text: &str| match ok(&health_with(&format!("type = \"udp\"\n{text}"))).services
        [0]
    .health
    .kind
    .clone()
    {
        HealthKind::Udp { payload } => payload,
        other => panic!("{other:?}"),
    };
    assert_eq!(payload(""), b"");
    assert_eq!(payload("payload = \"\""), b"");
    assert_eq!(payload("payload = \"ping\\n\""), b"ping\n");
    // UTF-8 bytes: `é` is two.
    assert_eq!(payload("payload = \"é\""), [0xc3, 0xa9]);
    assert_eq!(
        payload(&format!("payload = \"{}\"", "x".repeat(1400))).len(),
        1400
    );
    assert_eq!(
        payload(&format!("payload = \"{}\"", "é".repeat(700))).len(),
        1400
    );

    // The limit counts bytes, not characters: 701 `é` are 1402 bytes.
    assert_eq!(
        error(&health_with(&format!(
            "type = \"udp\"\npayload = \"{}\"",
            "é".repeat(701)
        ))),
        "t.toml:6:11: health payload is 1402 bytes long; a UDP probe carries at most 1400 bytes \
         (to fit in one unfragmented datagram), so shorten it"
    );
    assert!(
        error(&health_with(&format!(
            "type = \"udp\"\npayload = \"{}\"",
            "x".repeat(1401)
        )))
        .contains("is 1401 bytes long")
    );
    assert_eq!(
        error(&health_with("type = \"http\"\npayload = \"ping\"")),
        "t.toml:6:11: health payload only applies to udp checks, and this one is http; remove \
         `payload` or set type = \"udp\""
    );
    assert_eq!(
        error(&health_with("type = \"udp\"\npayload = 1")),
        "t.toml:6:11: `health.payload`: invalid type: integer `1`, expected a string"
    );
}

#[test]
fn exec_command() {
    let m = ok(&health_with(
        "type = \"exec\"\ncommand = [\"/usr/lib/nagios/check_http\", \"-H\", \"example.com\"]\n\
         timeout = \"1s\"",
    ));
    assert_eq!(
        m.services[0].health.kind,
        HealthKind::Exec {
            command: vec![
                "/usr/lib/nagios/check_http".into(),
                "-H".into(),
                "example.com".into()
            ]
        }
    );

    let cmd = |value: &str| errors(&health_with(&format!("type = \"exec\"\ncommand = {value}")));
    // Required for exec: reported at the type that needs it, inline tables too.
    assert_eq!(
        error(&health_with("type = \"exec\"")),
        "t.toml:5:8: health type \"exec\" needs command = [\"/path/to/check\", ...]"
    );
    assert_eq!(
        error(&service_with("health = { type = \"exec\" }")),
        "t.toml:4:19: health type \"exec\" needs command = [\"/path/to/check\", ...]"
    );
    assert_eq!(
        cmd("[]"),
        [
            "t.toml:6:11: health command is empty; write the program and its arguments, e.g. \
          command = [\"/usr/local/bin/check\", \"--quick\"]"
        ]
    );
    assert_eq!(
        cmd("[\"check.sh\", \"-q\"]"),
        [
            "t.toml:6:12: health command program \"check.sh\" is not an absolute path; write its \
          full path, e.g. \"/usr/local/bin/check.sh\" (the command runs without a shell, so \
          PATH is not searched)"
        ]
    );
    assert!(cmd("[\"./bin/check\"]")[0].contains("e.g. \"/usr/local/bin/check\""));
    assert_eq!(
        cmd("[\"\"]"),
        [
            "t.toml:6:12: health command program is empty; the first element is the program to \
          run, write its absolute path, e.g. \"/usr/local/bin/check\""
        ]
    );
    assert_eq!(
        cmd("[\"/bin/check\", \"a\\u0000b\"]"),
        [
            "t.toml:6:26: health command argument contains a NUL character, which a program \
          argument cannot hold; remove it"
        ]
    );
    assert_eq!(
        cmd("\"/bin/check --quick\""),
        [
            "t.toml:6:11: `health.command`: invalid type: string \"/bin/check --quick\", expected \
          an array of strings, the program and its arguments, such as \
          [\"/usr/local/bin/check\", \"--quick\"]"
        ]
    );
    assert_eq!(
        cmd("[\"/bin/check\", 5]"),
        ["t.toml:6:26: `health.command`: invalid type: integer `5`, expected a string"]
    );
    assert_eq!(
        error(&health_with("command = [\"/bin/check\"]")),
        "t.toml:5:11: health command only applies to exec checks, and this one is tcp; remove \
         `command` or set type = \"exec\""
    );
}

#[test]
fn keys_of_other_probe_types_are_all_reported() {
    let text = health_with(
        "type = \"udp\"\npath = \"/x\"\nhost = \"h\"\nexpect_status = \"x\"\n\
         command = [\"rel\"]\npayload = \"ok\"",
    );
    assert_eq!(
        errors(&text),
        [
            "t.toml:6:8: health path only applies to http checks, and this one is udp; remove \
             `path` or set type = \"http\"",
            "t.toml:7:8: health host only applies to http checks, and this one is udp; remove \
             `host` or set type = \"http\"",
            "t.toml:8:17: health expect_status only applies to http checks, and this one is udp; \
             remove `expect_status` or set type = \"http\"",
            "t.toml:9:11: health command only applies to exec checks, and this one is udp; \
             remove `command` or set type = \"exec\"",
        ]
    );
    // With an unknown type only the type is wrong; the other keys are checked on their own.
    assert_eq!(
        errors(&health_with("type = \"htp\"\npath = \"x\"\nhost = \"a b\"")),
        [
            "t.toml:5:8: unknown health check type `htp`; did you mean `http`? (use `tcp`, \
             `http`, `udp`, `exec` or `none`)",
            "t.toml:6:8: health path \"x\" must start with \"/\"; write \"/x\"",
            "t.toml:7:8: health host \"a b\" contains ' ', which cannot go in a Host header; \
             write only the host name and an optional :PORT, e.g. \"www.example.com\"",
        ]
    );
}

// ---- on_backend_down, health_port ----

#[test]
fn on_backend_down() {
    assert_eq!(
        ok(&service_with("")).services[0].on_backend_down,
        OnBackendDown::Keep
    );
    assert_eq!(
        ok(&service_with("on_backend_down = \"keep\"")).services[0].on_backend_down,
        OnBackendDown::Keep
    );
    assert_eq!(
        ok(&service_with("on_backend_down = \"reset\"")).services[0].on_backend_down,
        OnBackendDown::Reset
    );
    assert_eq!(
        error(&service_with("on_backend_down = \"rest\"")),
        "t.toml:4:19: unknown on_backend_down `rest`; did you mean `reset`? (use `keep` or \
         `reset`)"
    );
    assert_eq!(
        error(&service_with("on_backend_down = \"flush\"")),
        "t.toml:4:19: unknown on_backend_down `flush`; use `keep` or `reset`"
    );
}

/// A one-service config with one backend whose table ends with `extra` (line 6 on).
fn backend_with(health: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"web\"\nlisten = \"198.51.100.10:80\"\n{health}\n\
         [[service.backend]]\naddress = \"10.0.1.11:8080\"\n{extra}\n"
    )
}

#[test]
fn health_port() {
    let port = |health: &str, extra: &str| {
        ok(&backend_with(health, extra)).services[0].backends[0].health_port
    };
    assert_eq!(port("", ""), None);
    assert_eq!(port("", "health_port = 8081"), Some(8081));
    assert_eq!(port("", "health_port = 1"), Some(1));
    assert_eq!(port("", "health_port = 65535"), Some(65535));
    for probe in ["http", "udp"] {
        let health = format!("health = {{ type = \"{probe}\" }}");
        assert_eq!(port(&health, "health_port = 9000"), Some(9000));
    }
    let exec = "health = { type = \"exec\", command = [\"/bin/check\"] }";
    assert_eq!(port(exec, "health_port = 9000"), Some(9000));

    let text = r#"[[service]]
name = "web"
listen = "198.51.100.10:80"
[[service.backend]]
address = "10.0.1.11"
health_port = 0
[[service.backend]]
address = "10.0.1.12"
health_port = 65536
[[service.backend]]
address = "10.0.1.13"
health_port = -1
"#;
    assert_eq!(
        errors(text),
        [
            "t.toml:6:15: backend health_port 0 is out of range; use a port from 1 to 65535, or \
             remove it to probe the backend's own port",
            "t.toml:9:15: backend health_port 65536 is out of range; use a port from 1 to \
             65535, or remove it to probe the backend's own port",
            "t.toml:12:15: backend health_port -1 is out of range; use a port from 1 to 65535, \
             or remove it to probe the backend's own port",
        ]
    );
    assert_eq!(
        error(&backend_with(
            "health = { type = \"none\" }",
            "health_port = 8081"
        )),
        "t.toml:7:15: health_port has no effect without a probe (this service's health type is \
         none); remove health_port, or set a probe type in [service.health]"
    );
    // An unknown type is reported as such, not as a missing probe.
    assert!(
        error(&backend_with(
            "health = { type = \"nope\" }",
            "health_port = 8081"
        ))
        .starts_with("t.toml:4:19: unknown health check type `nope`")
    );
    assert_eq!(
        error(&backend_with("", "health_port = \"8081\"")),
        "t.toml:7:15: `backend.health_port`: invalid type: string \"8081\", expected an integer"
    );
}

#[test]
fn every_key_is_known_to_schema_dto_and_validation() {
    let m = ok(r#"
[[service]]
name = "web"
listen = "198.51.100.10:80"
protocol = "tcp"
scheduler = "weighted"
persistence = "30m"
snat = "masquerade"
on_all_down = "drop"
on_backend_down = "reset"
[service.health]
type = "http"
path = "/health"
host = "www.example.com"
expect_status = "200,204"
interval = "1s"
fast_interval = "200ms"
timeout = "500ms"
rise = 3
fall = 2
[[service.backend]]
address = "10.0.1.11:8080"
weight = 2
backup = true
health_port = 8081

[[service]]
name = "dns"
listen = "198.51.100.10:53"
protocol = "udp"
health = { type = "udp", payload = "ping" }
backend = [{ address = "10.0.1.12" }]

[[service]]
name = "app"
listen = "198.51.100.10:443"
health = { type = "exec", command = ["/usr/local/bin/check", "--port", "443"] }
backend = [{ address = "10.0.1.13" }]
"#);
    let s = &m.services[0];
    assert_eq!(s.on_backend_down, OnBackendDown::Reset);
    assert_eq!(
        s.health,
        Health {
            kind: HealthKind::Http {
                path: "/health".into(),
                host: Some("www.example.com".into()),
                expect_status: vec![(200, 200), (204, 204)],
            },
            interval: ms(1000),
            fast_interval: ms(200),
            timeout: ms(500),
            rise: 3,
            fall: 2,
        }
    );
    assert_eq!(
        s.backends,
        [Backend {
            address: sa("10.0.1.11:8080"),
            weight: 2,
            backup: true,
            health_port: Some(8081),
        }]
    );
    assert_eq!(
        m.services[1].health.kind,
        HealthKind::Udp {
            payload: b"ping".to_vec()
        }
    );
    assert_eq!(
        m.services[2].health.kind,
        HealthKind::Exec {
            command: vec!["/usr/local/bin/check".into(), "--port".into(), "443".into()]
        }
    );
}

#[test]
fn backend_family_mismatch() {
    let text = r#"[[service]]
name = "web6"
listen = "[2001:db8::10]:80"

[[service.backend]]
address = "10.0.1.11:8080"
"#;
    assert_eq!(
        error(text),
        "t.toml:6:11: backend 10.0.1.11:8080 is IPv4 but the service listens on IPv6 \
         [2001:db8::10]:80; use an IPv6 backend address"
    );
}

#[test]
fn duplicate_backend() {
    // Equal after the port defaults: "10.0.1.11" is 10.0.1.11:80.
    let text = r#"[[service]]
name = "web"
listen = "198.51.100.10:80"
[[service.backend]]
address = "10.0.1.11:80"
[[service.backend]]
address = "10.0.1.11"
"#;
    assert_eq!(
        error(text),
        "t.toml:7:11: backend 10.0.1.11:80 is listed twice in service `web` (first on line 5); \
         remove one, or change its weight instead"
    );
}

#[test]
fn backend_weight_and_address_errors() {
    let text = format!(
        r#"[[service]]
name = "web"
listen = "198.51.100.10:80"
[[service.backend]]
address = "10.0.1.11"
weight = {}
[[service.backend]]
address = "10.0.1.12"
weight = -1
[[service.backend]]
address = "10.0.1.13:0"
[[service.backend]]
address = "10.0.1"
[[service.backend]]
address = "198.51.100.10"
"#,
        MAX_WEIGHT + 1
    );
    assert_eq!(
        errors(&text),
        [
            "t.toml:6:10: backend weight 10001 is out of range; use 0 (drained) to 10000",
            "t.toml:9:10: backend weight -1 is out of range; use 0 (drained) to 10000",
            "t.toml:11:11: backend address \"10.0.1.13:0\" has port 0; use a port from 1 to 65535",
            "t.toml:13:11: backend address \"10.0.1\" is not an IP address or IP:PORT (write \
             IPv6 as [addr]:port; host names are not supported)",
            "t.toml:15:11: backend 198.51.100.10:80 is the service's own VIP; traffic would \
             loop, use the backend's real address",
        ]
    );
    let m = ok(&service_with("").replace(
        "address = \"10.0.1.11:8080\"",
        "address = \"10.0.1.11:8080\"\nweight = 0",
    ));
    assert_eq!(m.services[0].backends[0].weight, 0);
    let max = format!("weight = {MAX_WEIGHT}");
    let m = ok(&service_with("").replace(
        "address = \"10.0.1.11:8080\"",
        &format!("address = \"10.0.1.11:8080\"\n{max}"),
    ));
    assert_eq!(m.services[0].backends[0].weight, MAX_WEIGHT);
}

#[test]
fn snat_family_mismatch() {
    assert_eq!(
        error(&service_with("snat = \"2001:db8::1\"")),
        "t.toml:4:8: snat address 2001:db8::1 is IPv6 but the service listens on IPv4 \
         198.51.100.10:80; use an IPv4 address"
    );
}

// ---- [[egress]] ----

#[test]
fn egress_errors() {
    let text = r#"[[egress]]
name = "lan"
source = []
out_interface = "a-very-long-interface"

[[egress]]
name = "lan"
source = ["10.0.0.1/16", "fd00::/8"]
out_interface = "eth0"
snat = ["203.0.113.9-203.0.113.5", "2001:db8::1-203.0.113.1"]

[[egress]]
name = "x"
source = ["10.0.0.0/8", "fd00::/8"]
out_interface = "eth0"
snat = ["203.0.113.1"]

[[egress]]
name = "y"
source = ["10.0.0.0/8"]
out_interface = "eth0"
snat = "masqerade"
"#;
    assert_eq!(
        errors(text),
        [
            "t.toml:3:10: egress `lan` has an empty source list; list the prefixes whose traffic \
             to NAT, e.g. [\"10.0.0.0/16\"]",
            "t.toml:4:17: out_interface \"a-very-long-interface\" is 21 bytes long; Linux \
             interface names are at most 15",
            "t.toml:7:8: duplicate egress name `lan` (first used on line 2); give each egress \
             rule a unique name",
            "t.toml:8:11: source \"10.0.0.1/16\" has host bits set; did you mean \
             \"10.0.0.0/16\"?",
            "t.toml:10:9: snat range \"203.0.113.9-203.0.113.5\" runs backwards; write the lower \
             address first: \"203.0.113.5-203.0.113.9\"",
            "t.toml:10:36: snat range \"2001:db8::1-203.0.113.1\" mixes an IPv6 and an IPv4 \
             address; both ends must be of one family",
            "t.toml:16:8: egress `x` has IPv6 source fd00::/8 but no IPv6 snat address; add one, \
             or use snat = \"masquerade\"",
            "t.toml:22:8: unknown snat `masqerade`; did you mean `masquerade`? use \
             \"masquerade\" or a list of addresses and ranges, e.g. [\"203.0.113.5\", \
             \"203.0.113.10-203.0.113.20\"]",
        ]
    );
}

#[test]
fn egress_missing_keys_and_unused_snat_family() {
    let text = r#"[[egress]]
snat = []

[[egress]]
name = "z"
source = ["10.0.0.0/8"]
out_interface = "eth0"
snat = ["2001:db8::1"]
"#;
    assert_eq!(
        errors(text),
        [
            "t.toml:1:1: egress rule has no name; add name = \"...\" (letters, digits, `_`, \
             `.`, `-`)",
            "t.toml:1:1: this egress rule has no source; add source = [\"10.0.0.0/16\"] listing \
             the prefixes whose traffic to NAT",
            "t.toml:1:1: this egress rule has no out_interface; add out_interface = \"eth0\" \
             (the uplink)",
            "t.toml:2:8: this egress rule has an empty snat list; list addresses or ranges to \
             NAT to, or write snat = \"masquerade\"",
            "t.toml:8:9: snat \"2001:db8::1\" is IPv6 but egress `z` has no IPv6 source; remove \
             it or add an IPv6 source prefix",
        ]
    );
}

#[test]
fn egress_destinations_ports_and_flags() {
    let text = r#"[[egress]]
name = "a"
source = ["10.0.0.0/8", "fd00::/8"]
destination = ["198.51.100.0/24"]
out_interface = "eth*0"
ports = "65535-1024"

[[egress]]
name = "b"
source = ["10.0.0.0/8"]
exclude_destination = ["10.0.0.0/8", "fd00::/8"]
out_interface = "eth0"
ports = "0-100"

[[egress]]
name = "c"
source = ["10.0.0.0/8"]
destination = []
out_interface = "eth0"
snat = "masquerade"
persistent = true
ports = "http"
"#;
    assert_eq!(
        errors(text),
        [
            "t.toml:4:15: egress `a` has IPv6 source fd00::/8 but no IPv6 destination, so its \
             IPv6 traffic would never be translated; add an IPv6 destination (e.g. \"::/0\") or \
             remove the source",
            "t.toml:5:17: out_interface \"eth*0\" has a `*` before its end; `*` may only end a \
             name, matching every interface whose name starts with what comes before it",
            "t.toml:6:9: ports \"65535-1024\" runs backwards; write the lower port first: \
             \"1024-65535\"",
            "t.toml:11:38: exclude_destination fd00::/8 is IPv6 but egress `b` has no IPv6 \
             source; it would exclude nothing, remove it",
            "t.toml:13:9: ports \"0-100\" is not a port range; write first-last with ports from \
             1 to 65535, e.g. \"1024-65535\"",
            "t.toml:18:15: egress `c` has an empty destination list; list the prefixes to NAT \
             traffic to, or remove the key for all",
            "t.toml:21:14: egress `c` masquerades, which has one address, so `persistent` (keep \
             a client on one address of a range) means nothing; remove it, or list addresses in \
             snat",
            "t.toml:22:9: ports \"http\" is not a port range; write first-last with ports from \
             1 to 65535, e.g. \"1024-65535\"",
        ]
    );
}

// ---- many errors at once ----

#[test]
fn all_errors_are_reported_at_once() {
    let text = r#"[daemon]
tabel = "natlb"

[[service]]
name = "web"
listen = "[2001:db8::10]:80"
protcol = "tcp"

[[service.backend]]
address = "10.0.1.11:8080"
weight = 20000

[[egress]]
name = "lan"
source = ["10.0.0.0/16"]
out_interface = "eth0"
snat = "masquerade"
"#;
    assert_eq!(
        errors(text),
        [
            "t.toml:2:1: unknown key `tabel` in [daemon]; did you mean `table`? (valid keys: \
             table, control_socket, control_group, state_dir, metrics, keep_rules_on_exit, hash_seed, hairpin_mark, least_conn_interval, sticky_read_wait)",
            "t.toml:7:1: unknown key `protcol` in [[service]]; did you mean `protocol`? (valid \
             keys: name, listen, protocol, scheduler, hash, persistence, snat, on_all_down, \
             on_backend_down, health, backend)",
            "t.toml:10:11: backend 10.0.1.11:8080 is IPv4 but the service listens on IPv6 \
             [2001:db8::10]:80; use an IPv6 backend address",
            "t.toml:11:10: backend weight 20000 is out of range; use 0 (drained) to 10000",
        ]
    );
}

#[test]
fn a_type_error_in_one_service_does_not_hide_errors_in_another() {
    let text = r#"[[service]]
name = "a"
listen = "198.51.100.10:80"
backend = [{ address = "10.0.1.1", backup = "yes" }]

[[service]]
name = "b"
listen = "198.51.100.10"
backend = [{ address = "10.0.1.1" }]
"#;
    assert_eq!(
        errors(text),
        [
            "t.toml:4:45: `backend.backup`: invalid type: string \"yes\", expected a boolean",
            "t.toml:8:10: listen address \"198.51.100.10\" has no port; write it as \
             \"198.51.100.10:PORT\"",
        ]
    );
}

#[test]
fn columns_count_characters() {
    // `é` is two bytes but one column: the listen error is at column 35, not 36.
    let text = "service = [{ name = \"é\", listen = \"1\" }]\n";
    let errors = errors(text);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("t.toml:1:35: listen address \"1\"")),
        "{errors:#?}"
    );
}

// ---- load ----

#[test]
fn load_reads_files_and_names_them_in_errors() {
    let dir = std::env::temp_dir().join(format!("natlb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let good = dir.join("good.toml");
    std::fs::write(&good, SPEC_EXAMPLE).unwrap();
    assert_eq!(load(&good).unwrap(), ok(SPEC_EXAMPLE));

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[daemon]\ntable = \"1\"\n").unwrap();
    let err = load(&bad).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}:2:9: table name", bad.display())),
        "{err}"
    );

    let binary = dir.join("binary.toml");
    std::fs::write(&binary, b"[daemon]\ntable = \"\xff\"\n").unwrap();
    assert_eq!(
        load(&binary).unwrap_err().to_string(),
        format!(
            "{}:2:10: the file is not valid UTF-8; save it as UTF-8",
            binary.display()
        )
    );

    let missing = dir.join("missing.toml");
    let err = load(&missing).unwrap_err();
    assert_eq!(err.0[0].line, 0);
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read: ", missing.display())),
        "{err}"
    );

    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn too_many_backends_for_a_slot_table() {
    let mut text = String::from("[[service]]\nname = \"big\"\nlisten = \"203.0.113.1:80\"\n");
    for i in 0..257 {
        text.push_str(&format!(
            "[[service.backend]]\naddress = \"10.{}.{}.1:80\"\n",
            i / 256,
            i % 256
        ));
    }
    let e = error(&text);
    assert!(e.starts_with("t.toml:2:8: "), "{e}");
    assert!(
        e.contains("257 backends") && e.contains("at most 256"),
        "{e}"
    );
}

#[test]
fn source_hash_settings() {
    let m = parse(
        "t.toml",
        &format!(
            "[daemon]\nhash_seed = 4294967295\n{}",
            service_with("scheduler = \"source-hash\"\nhash = \"address-port\"")
        ),
    )
    .unwrap();
    assert_eq!(m.daemon.hash_seed, u32::MAX);
    assert_eq!(m.services[0].hash, HashFields::AddressPort);
    assert_eq!(
        parse("t.toml", &service_with("")).unwrap().services[0].hash,
        HashFields::Address
    );
    assert_eq!(
        error(&service_with("hash = \"address\"")),
        "t.toml:4:8: hash applies only to scheduler = \"source-hash\" (this service uses \
         \"weighted\"); remove it or change the scheduler"
    );
    assert_eq!(
        error(&service_with(
            "scheduler = \"source-hash\"\nhash = \"port\""
        )),
        "t.toml:5:8: unknown hash `port`; use `address` or `address-port`"
    );
    assert_eq!(
        error(&format!("[daemon]\nhash_seed = -1\n{}", service_with(""))),
        "t.toml:2:13: hash_seed -1 is out of range; use an integer from 0 to 4294967295 (the \
         kernel's jhash takes a 32-bit seed)"
    );
}

#[test]
fn the_default_probe_follows_the_protocol() {
    let tcp = parse("t.toml", &service_with("")).unwrap();
    assert_eq!(tcp.services[0].health.kind, HealthKind::Tcp);
    // A connect to a UDP port proves nothing: a UDP service is probed only when told how.
    let udp = parse("t.toml", &service_with("protocol = \"udp\"")).unwrap();
    assert_eq!(udp.services[0].health.kind, HealthKind::None);
    let udp = parse(
        "t.toml",
        &service_with("protocol = \"udp\"\n[service.health]\ntype = \"udp\"\npayload = \"x\""),
    )
    .unwrap();
    assert!(matches!(
        udp.services[0].health.kind,
        HealthKind::Udp { .. }
    ));
}

#[test]
fn least_conn_interval() {
    let m = parse("t.toml", &service_with("")).unwrap();
    assert_eq!(m.daemon.least_conn_interval, Duration::from_secs(1));
    let m = parse(
        "t.toml",
        &format!(
            "[daemon]\nleast_conn_interval = \"500ms\"\n{}",
            service_with("")
        ),
    )
    .unwrap();
    assert_eq!(m.daemon.least_conn_interval, Duration::from_millis(500));
    let e = error(&format!(
        "[daemon]\nleast_conn_interval = \"10ms\"\n{}",
        service_with("")
    ));
    assert!(
        e.starts_with("t.toml:2:23: least_conn_interval 10ms is too short"),
        "{e}"
    );
}

#[test]
fn sticky_read_wait() {
    let m = parse("t.toml", &service_with("")).unwrap();
    assert_eq!(m.daemon.sticky_read_wait, Duration::from_millis(3));
    let m = parse(
        "t.toml",
        &format!("[daemon]\nsticky_read_wait = \"0s\"\n{}", service_with("")),
    )
    .unwrap();
    assert_eq!(m.daemon.sticky_read_wait, Duration::ZERO);
    let e = error(&format!(
        "[daemon]\nsticky_read_wait = \"1m\"\n{}",
        service_with("")
    ));
    assert!(
        e.starts_with("t.toml:2:20: sticky_read_wait 60s is too long"),
        "{e}"
    );
}

#[test]
fn persistence_is_one_of_the_offered_durations_on_an_ipv4_service() {
    let e = error(&service_with("persistence = \"25m\""));
    assert!(
        e.starts_with("t.toml:4:15: persistence = \"25m\" is not one of the durations natlb offers: 10s, 30s, 1m,"),
        "{e}"
    );
    assert!(e.contains("(the nearest is \"20m\")"), "{e}");
    // Any spelling of an offered duration is fine: 60m is 1h.
    assert!(parse("t.toml", &service_with("persistence = \"60m\"")).is_ok());
    let v6 = "[[service]]\nname = \"web\"\nlisten = \"[2001:db8::10]:80\"\npersistence = \"5m\"\n\
              [[service.backend]]\naddress = \"[2001:db8:1::11]:8080\"\n";
    let e = error(v6);
    assert!(
        e.starts_with("t.toml:4:15: persistence works on IPv4 services only for now"),
        "{e}"
    );
}
