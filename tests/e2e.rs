//! End to end: natlb runs in a gateway namespace; a client reaches backends through its VIPs
//! with real TCP and UDP traffic; `nft list` observes.
//!
//! Statistics: a share check sends n = 400 new connections; under the configured share p the
//! count of one backend is Binomial(400, p), standard deviation 8.7 for p = 3/4. The accepted
//! band, p ± 0.10, is more than 4.5 standard deviations wide on each side, so a correct natlb
//! fails it with probability below 1e-5, while a wrong share (e.g. 1/2 instead of 3/4) fails it.

mod gateway;
mod lab;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use gateway::{Gateway, T, assert_same_table, share};

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

[service.health]
type = "udp"
interval = "500ms"

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

#[test]
fn weighted_tcp_udp_ipv6_and_snat_policies() {
    let g = Gateway::new(|d| config(d, 3, 1, true));

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
    let g = Gateway::new(|d| config(d, 3, 1, true));
    let dir = g.lab.dir().to_path_buf();

    g.reload(&config(&dir, 1, 3, true), "reload applied in one batch");
    // Nobody touched the ruleset since natlb's last commit: no need to read the table back.
    assert!(
        g.log().contains("diffing against natlb's record"),
        "{}",
        g.log()
    );
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
    let mut g = Gateway::new(|d| config(d, 3, 1, true));
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
    let mut g = Gateway::new(|d| config(d, 1, 1, false));
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
    let g = Gateway::new(|d| config(d, 3, 1, true));
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
    // ...then a reload: natlb re-reads the table and applies the difference from what is
    // really installed, not from what it last wrote.
    g.reload(
        &config(g.lab.dir(), 1, 1, true),
        "reload applied in one batch",
    );
    // The hand edit moved the ruleset's generation, so natlb read the table back.
    assert!(
        !g.log().contains("diffing against natlb's record"),
        "{}",
        g.log()
    );
    let counts = g.tcp_shares("203.0.113.10:80", 60);
    assert!(
        counts.contains_key("be0") && counts.contains_key("be1"),
        "{counts:?}"
    );
}

#[test]
fn a_restart_repairs_rules_changed_by_hand() {
    let mut g = Gateway::new(|d| config(d, 1, 1, true));
    let before = g.table();
    g.natlb.as_mut().unwrap().stop(Duration::from_secs(5));
    g.lab.exec_ok(
        g.lab.gateway_ns(),
        &["nft", "flush", "chain", "inet", "natlb", "prerouting"],
    );
    g.start();
    assert!(g.log().contains("its rules differ"), "{}", g.log());
    assert_same_table(&g.table(), &before);
    let counts = g.tcp_shares("203.0.113.10:80", 20);
    assert_eq!(counts.values().sum::<usize>(), 20);
}

#[test]
fn natlb_never_touches_a_table_it_did_not_create() {
    let lab = lab::Lab::new(lab::LabOptions { backends: 1 });
    let foreign = "table inet natlb {\n  chain input { type filter hook input priority 0; policy accept; }\n}\n";
    let f = lab.write_file("foreign.nft", foreign);
    lab.exec_ok(lab.gateway_ns(), &["nft", "-f", f.to_str().unwrap()]);
    let listing = lab.exec_ok(lab.gateway_ns(), &["nft", "list", "ruleset"]);
    let cfg = lab.write_file("natlb.toml", &config(lab.dir(), 1, 1, true));
    let mut p = lab.spawn_in(
        lab.gateway_ns(),
        &[gateway::NATLB, "run", "-c", cfg.to_str().unwrap()],
    );
    let status = p
        .wait_timeout(Duration::from_secs(10))
        .expect("natlb should refuse and exit");
    assert!(!status.success());
    assert!(
        p.stderr_text().contains("natlb did not create it"),
        "{}",
        p.stderr_text()
    );
    assert_eq!(
        lab.exec_ok(lab.gateway_ns(), &["nft", "list", "ruleset"]),
        listing
    );
}

#[test]
fn a_table_renamed_while_natlb_was_stopped_is_removed() {
    let mut g = Gateway::new(|d| config(d, 1, 1, true));
    g.natlb.as_mut().unwrap().stop(Duration::from_secs(5));
    let renamed = std::fs::read_to_string(&g.config)
        .unwrap()
        .replace("table = \"natlb\"", "table = \"gw\"");
    std::fs::write(&g.config, renamed).unwrap();
    g.start();
    let tables = g
        .lab
        .exec_ok(g.lab.gateway_ns(), &["nft", "list", "tables"]);
    assert_eq!(tables.trim(), "table inet gw", "{}", g.log());
    let counts = g.tcp_shares("203.0.113.10:80", 20);
    assert_eq!(counts.values().sum::<usize>(), 20);
}
