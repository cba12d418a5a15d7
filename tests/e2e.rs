//! End to end: natlb runs in a gateway namespace; a client reaches backends through its VIPs
//! with real TCP and UDP traffic; `nft list` observes.
//!
//! Statistics: a share check sends n = 400 new connections; under the configured share p the
//! count of one backend is Binomial(400, p), standard deviation 8.7 for p = 3/4. The accepted
//! band, p ± 0.10, is more than 4.5 standard deviations wide on each side, so a correct natlb
//! fails it with probability below 1e-5, while a wrong share (e.g. 1/2 instead of 3/4) fails it.

mod lab;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lab::{Lab, LabOptions, Process, ServerHandle, Signal};

const NATLB: &str = env!("CARGO_BIN_EXE_natlb");
const T: Duration = Duration::from_secs(2);
const SAMPLES: usize = 400;

fn config(dir: &Path, w0: u32, w1: u32, keep_rules: bool) -> String {
    format!(
        r#"
[daemon]
table = "natlb"
control_socket = "{dir}/control.sock"
state_dir = "{dir}/state"
keep_rules_on_exit = {keep_rules}

[[service]]
name = "web"
listen = "203.0.113.10:80"
snat = "masquerade"

[[service.backend]]
address = "192.0.2.11:8080"
weight = {w0}

[[service.backend]]
address = "192.0.2.12:8080"
weight = {w1}

[[service.backend]]
address = "192.0.2.13:8080"
backup = true

[[service]]
name = "plain"
listen = "203.0.113.11:80"
snat = "none"

[[service.backend]]
address = "192.0.2.13:8080"

[[service]]
name = "dns"
listen = "203.0.113.10:53"
protocol = "udp"

[[service.backend]]
address = "192.0.2.11:5353"

[[service.backend]]
address = "192.0.2.12:5353"

[[service]]
name = "web6"
listen = "[fd00:3::10]:80"

[[service.backend]]
address = "[fd00:2::11]:8080"

[[service.backend]]
address = "[fd00:2::12]:8080"
"#,
        dir = dir.display()
    )
}

struct Gateway {
    // Field order is drop order: natlb and the servers go before their namespaces.
    natlb: Option<Process>,
    _servers: Vec<ServerHandle>,
    config: PathBuf,
    lab: Lab,
}

impl Gateway {
    fn new(w0: u32, w1: u32, keep_rules: bool) -> Gateway {
        let lab = Lab::new(LabOptions { backends: 3 });
        let mut servers = Vec::new();
        for i in 0..3 {
            servers.push(lab.start_tcp_server(i, 8080, &format!("be{i}")));
            servers.push(lab.start_udp_server(i, 5353, &format!("be{i}")));
        }
        let config = lab.write_file("natlb.toml", &config(lab.dir(), w0, w1, keep_rules));
        let mut g = Gateway {
            natlb: None,
            _servers: servers,
            config,
            lab,
        };
        g.start();
        g
    }

    /// Starts `natlb run` and waits until it says it runs.
    fn start(&mut self) {
        let p = self.lab.spawn_in(
            self.lab.gateway_ns(),
            &[NATLB, "run", "-c", self.config.to_str().unwrap()],
        );
        let up = lab::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            p.stderr_text().contains("natlb is running")
        });
        assert!(up, "natlb did not start:\n{}", p.stderr_text());
        self.natlb = Some(p);
    }

    fn log(&self) -> String {
        self.natlb.as_ref().unwrap().stderr_text()
    }

    /// `nft list table inet natlb`, with counter values blanked: traffic changes those.
    fn table(&self) -> String {
        let listing = self.lab.exec_ok(
            self.lab.gateway_ns(),
            &["nft", "list", "table", "inet", "natlb"],
        );
        blank_counters(&listing)
    }

    /// Rewrites the config, sends SIGHUP and waits for the log line that ends the reload.
    fn reload(&self, text: &str, expect: &str) {
        let before = self.log().matches(expect).count();
        std::fs::write(&self.config, text).unwrap();
        self.natlb.as_ref().unwrap().signal(Signal::SIGHUP);
        let done = lab::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            self.log().matches(expect).count() > before
        });
        assert!(done, "no {expect:?} after SIGHUP:\n{}", self.log());
    }

    /// Opens `n` new TCP connections to `vip` and counts the answers per backend id.
    fn tcp_shares(&self, vip: &str, n: usize) -> HashMap<String, usize> {
        let vip: SocketAddr = vip.parse().unwrap();
        self.lab.in_client(|| {
            let mut counts = HashMap::new();
            for _ in 0..n {
                let line =
                    lab::tcp_request(vip, T).unwrap_or_else(|e| panic!("TCP to {vip} failed: {e}"));
                let (id, _) = lab::parse_reply(&line).unwrap();
                *counts.entry(id).or_insert(0) += 1;
            }
            counts
        })
    }

    /// The source address the backend saw for one connection to `vip`.
    fn peer_seen(&self, vip: &str) -> IpAddr {
        let line = self.lab.tcp_request(vip.parse().unwrap(), T).unwrap();
        lab::parse_reply(&line).unwrap().1.ip()
    }
}

fn blank_counters(listing: &str) -> String {
    let mut out = Vec::new();
    let mut words = listing.split(' ').peekable();
    while let Some(w) = words.next() {
        out.push(w.to_string());
        if (w == "packets" || w == "bytes")
            && let Some(n) = words.next()
        {
            let digits = n.trim_end_matches(|c: char| !c.is_ascii_digit()).len();
            out.push(format!("N{}", &n[digits..]));
        }
    }
    out.join(" ")
}

/// Asserts two listings are equal, printing only the lines that differ.
fn assert_same_table(a: &str, b: &str) {
    if a != b {
        let only_a: Vec<_> = a.lines().filter(|l| !b.contains(l)).collect();
        let only_b: Vec<_> = b.lines().filter(|l| !a.contains(l)).collect();
        panic!("tables differ\nonly before: {only_a:#?}\nonly after: {only_b:#?}");
    }
}

fn share(counts: &HashMap<String, usize>, id: &str) -> f64 {
    let total: usize = counts.values().sum();
    *counts.get(id).unwrap_or(&0) as f64 / total as f64
}

#[test]
fn weighted_tcp_udp_ipv6_and_snat_policies() {
    let g = Gateway::new(3, 1, true);

    // 3:1 weights give ~75/25 of new TCP connections; the backup gets nothing.
    let counts = g.tcp_shares("203.0.113.10:80", SAMPLES);
    let s0 = share(&counts, "be0");
    assert!((0.65..=0.85).contains(&s0), "be0 share {s0} of {counts:?}");
    assert_eq!(counts.get("be2"), None, "backup got traffic: {counts:?}");

    // masquerade: backends see the gateway's address; snat = "none": the client's own.
    assert_eq!(
        g.peer_seen("203.0.113.10:80"),
        "192.0.2.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        g.peer_seen("203.0.113.11:80"),
        "198.51.100.2".parse::<IpAddr>().unwrap()
    );

    // UDP: every request from a new socket is a new flow, and both backends answer some.
    let udp: Vec<String> = g.lab.in_client(|| {
        (0..60)
            .map(|_| {
                let line = lab::udp_request("203.0.113.10:53".parse().unwrap(), T).unwrap();
                lab::parse_reply(&line).unwrap().0
            })
            .collect()
    });
    for id in ["be0", "be1"] {
        assert!(
            udp.iter().any(|x| x == id),
            "no UDP answer from {id}: {udp:?}"
        );
    }

    // IPv6 VIP, masqueraded to the gateway's IPv6 address on the backend side.
    let v6 = g.tcp_shares("[fd00:3::10]:80", 60);
    assert!(v6.contains_key("be0") && v6.contains_key("be1"), "{v6:?}");
    assert_eq!(
        g.peer_seen("[fd00:3::10]:80"),
        "fd00:2::1".parse::<IpAddr>().unwrap()
    );

    // The operator's view names services and backends, and natlb owns just its table.
    let table = g.table();
    assert!(table.contains("comment \"web 192.0.2.11:8080\""), "{table}");
    assert!(
        table.contains("comment \"web6 [fd00:2::12]:8080\""),
        "{table}"
    );
    let tables = g
        .lab
        .exec_ok(g.lab.gateway_ns(), &["nft", "list", "tables"]);
    assert_eq!(tables.trim(), "table inet natlb");
}

#[test]
fn reload_changes_shares_and_a_bad_reload_changes_nothing() {
    let g = Gateway::new(3, 1, true);
    let dir = g.lab.dir().to_path_buf();

    g.reload(&config(&dir, 1, 3, true), "reload applied in one batch");
    let counts = g.tcp_shares("203.0.113.10:80", SAMPLES);
    let s1 = share(&counts, "be1");
    assert!(
        (0.65..=0.85).contains(&s1),
        "after reload be1 share {s1} of {counts:?}"
    );

    // A config with an unknown key is refused; the table stays exactly as it was.
    let before = g.table();
    let bad = config(&dir, 5, 1, true).replace("snat = \"none\"", "snat = \"none\"\nbogus = 1");
    g.reload(&bad, "reload refused");
    assert!(
        g.log().contains("bogus"),
        "the error names the key:\n{}",
        g.log()
    );
    assert_same_table(&g.table(), &before);
    // A config that parses but is invalid (backend of the wrong family) is refused as well.
    let invalid = config(&dir, 5, 1, true).replace(
        "192.0.2.13:8080\"\n\n[[service]]\nname = \"dns\"",
        "[fd00:2::13]:8080\"\n\n[[service]]\nname = \"dns\"",
    );
    assert_ne!(invalid, config(&dir, 5, 1, true));
    g.reload(&invalid, "reload refused");
    assert_same_table(&g.table(), &before);
    let counts = g.tcp_shares("203.0.113.10:80", 100);
    assert!(counts.contains_key("be1"), "{counts:?}");
}

#[test]
fn kill9_keeps_traffic_and_a_restart_adopts_without_a_change() {
    let mut g = Gateway::new(3, 1, true);
    let before = g.table();

    // A long-lived connection opened before the crash...
    let (mut conn, first) = g
        .lab
        .tcp_connect("203.0.113.10:80".parse().unwrap(), T)
        .unwrap();
    assert!(first.starts_with("be"), "{first}");

    g.natlb.as_mut().unwrap().kill9();
    // ...and new ones keep working while natlb is down: the kernel forwards.
    let counts = g.tcp_shares("203.0.113.10:80", 50);
    assert_eq!(counts.values().sum::<usize>(), 50);
    assert_same_table(&g.table(), &before);

    g.start();
    assert!(
        g.log()
            .contains("adopted the installed table: it is already as configured"),
        "{}",
        g.log()
    );
    assert_same_table(&g.table(), &before);

    // The established connection survived both the crash and the restart.
    conn.set_read_timeout(Some(T)).unwrap();
    conn.write_all(b"still here\n").unwrap();
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still here\n");

    // A restart with a changed config adopts and applies just the difference.
    g.natlb.as_mut().unwrap().stop(Duration::from_secs(5));
    std::fs::write(&g.config, config(g.lab.dir(), 1, 1, true)).unwrap();
    g.start();
    assert!(
        g.log()
            .contains("adopted the installed table; applying the differences"),
        "{}",
        g.log()
    );
    assert_ne!(g.table(), before);
}

#[test]
fn sigterm_without_keep_rules_removes_the_table() {
    let mut g = Gateway::new(1, 1, false);
    assert!(g.table().contains("table inet natlb"));
    let status = g.natlb.as_mut().unwrap().stop(Duration::from_secs(5));
    assert!(status.success(), "{status:?}\n{}", g.log());
    let tables = g
        .lab
        .exec_ok(g.lab.gateway_ns(), &["nft", "list", "tables"]);
    assert_eq!(tables.trim(), "", "table left behind");
    assert!(
        g.lab
            .tcp_request(
                "203.0.113.10:80".parse().unwrap(),
                Duration::from_millis(500)
            )
            .is_err()
    );
}

#[test]
fn a_reload_after_a_hand_edit_resynchronises() {
    let g = Gateway::new(3, 1, true);
    // An operator removes the web service's class element by hand...
    g.lab.exec_ok(
        g.lab.gateway_ns(),
        &[
            "nft",
            "delete",
            "element",
            "inet",
            "natlb",
            "svc4_mod4",
            "{ 203.0.113.10 . tcp . 80 }",
        ],
    );
    assert!(
        g.lab
            .tcp_request(
                "203.0.113.10:80".parse().unwrap(),
                Duration::from_millis(300)
            )
            .is_err()
    );
    // ...then a reload whose delta would delete it again: natlb re-reads the table and applies
    // the difference from what is really installed.
    g.reload(
        &config(g.lab.dir(), 1, 1, true),
        "reload applied in one batch",
    );
    assert!(g.log().contains("retrying once"), "{}", g.log());
    let counts = g.tcp_shares("203.0.113.10:80", 60);
    assert!(
        counts.contains_key("be0") && counts.contains_key("be1"),
        "{counts:?}"
    );
}
