//! Schedulers end to end: natlb in a gateway namespace, three real backends, a client namespace
//! with many source addresses, real TCP connections.
//!
//! None of these checks is statistical except where noted: round-robin and source-hash are
//! deterministic given the table natlb installs.

mod gateway;
mod lab;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use gateway::{Gateway, T};

const VIP: &str = "203.0.113.10:80";

fn config(
    scheduler: &'static str,
    extra: &'static str,
    weights: [u32; 3],
) -> impl Fn(&Path) -> String {
    seeded_config(scheduler, extra, weights, 0)
}

fn seeded_config(
    scheduler: &'static str,
    extra: &'static str,
    weights: [u32; 3],
    seed: u32,
) -> impl Fn(&Path) -> String {
    move |dir: &Path| {
        format!(
            r#"
[daemon]
table = "natlb"
control_socket = "{dir}/control.sock"
state_dir = "{dir}/state"
keep_rules_on_exit = false
hash_seed = {seed}

[[service]]
name = "web"
listen = "{VIP}"
snat = "masquerade"
scheduler = "{scheduler}"
{extra}

[service.health]
type = "tcp"
interval = "200ms"
fast_interval = "100ms"
rise = 2
fall = 2

[[service.backend]]
address = "192.0.2.11:8080"
weight = {w0}

[[service.backend]]
address = "192.0.2.12:8080"
weight = {w1}

[[service.backend]]
address = "192.0.2.13:8080"
weight = {w2}
"#,
            dir = dir.display(),
            w0 = weights[0],
            w1 = weights[1],
            w2 = weights[2],
        )
    }
}

/// The backend ids (be0, be1, be2) that `n` successive new connections reach, in order.
fn sequence(g: &Gateway, n: usize) -> Vec<String> {
    let vip: SocketAddr = VIP.parse().unwrap();
    g.lab.in_client(|| {
        (0..n)
            .map(|_| {
                let line = lab::tcp_request(vip, T).unwrap_or_else(|e| panic!("TCP: {e}"));
                lab::parse_reply(&line).unwrap().0
            })
            .collect()
    })
}

fn counts(ids: &[String]) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for id in ids {
        *c.entry(id.clone()).or_insert(0) += 1;
    }
    c
}

#[test]
fn round_robin_gives_each_backend_its_turn() {
    let g = Gateway::new(config("round-robin", "", [1, 1, 1]));
    // Over 4·N connections no backend gets more than one turn more than another.
    let seq = sequence(&g, 12);
    let c = counts(&seq);
    assert_eq!(c.len(), 3, "{seq:?}");
    let (lo, hi) = (c.values().min().unwrap(), c.values().max().unwrap());
    assert!(hi - lo <= 1, "uneven turns {c:?} in {seq:?}");
    // And the turns come in a cycle: any three successive connections reach three backends.
    for w in seq.windows(3) {
        let mut w = w.to_vec();
        w.sort();
        w.dedup();
        assert_eq!(w.len(), 3, "not a cycle: {seq:?}");
    }
    assert!(g.table().contains("numgen inc mod 3"), "{}", g.table());
}

#[test]
fn weighted_round_robin_follows_the_weights_exactly() {
    let g = Gateway::new(config("round-robin", "", [2, 1, 1]));
    // 4 slots: over 4 full cycles be0 gets 8 turns, the others 4 each.
    let c = counts(&sequence(&g, 16));
    assert_eq!(c.get("be0"), Some(&8), "{c:?}");
    assert_eq!(c.get("be1"), Some(&4), "{c:?}");
    assert_eq!(c.get("be2"), Some(&4), "{c:?}");
}

/// Which backend each client reaches; panics if one client's `tries` connections disagree.
fn mapping(g: &Gateway, clients: &[IpAddr], tries: usize) -> BTreeMap<IpAddr, String> {
    g.backend_per_client(VIP, clients, tries, String::new)
}

#[test]
fn source_hash_keeps_clients_and_moves_only_the_withdrawn_backends_clients() {
    let mut g = Gateway::new(config("source-hash", "", [1, 1, 1]));
    let clients = g.clients(30);
    let before = mapping(&g, &clients, 3);
    let per_backend = counts(&before.values().cloned().collect::<Vec<_>>());
    // 30 clients over 3 equal backends: a backend with none would mean a broken table (the
    // chance of it with a uniform hash is 3 · (2/3)^30 < 2e-5).
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    assert!(
        g.table().contains("jhash ip saddr mod 61 seed 0x0"),
        "{}",
        g.table()
    );

    // be1 dies: only its clients move; every other client keeps its backend.
    g.stop_tcp(1);
    assert!(
        g.wait_log("backend DOWN", 1, Duration::from_secs(5)),
        "{}",
        g.log()
    );
    let during = mapping(&g, &clients, 2);
    for (c, id) in &before {
        if id == "be1" {
            assert_ne!(during[c], "be1", "client {c} still on the dead backend");
        } else {
            assert_eq!(&during[c], id, "client {c} moved though its backend is up");
        }
    }

    // be1 comes back: the table is the same function of the same backends, so every client
    // is back where it was.
    g.start_tcp(1);
    assert!(
        g.wait_log("backend UP", 1, Duration::from_secs(5)),
        "{}",
        g.log()
    );
    let after = mapping(&g, &clients, 2);
    assert_eq!(after, before);
}

#[test]
fn source_hash_by_address_and_port_spreads_one_client() {
    let g = Gateway::new(config("source-hash", "hash = \"address-port\"", [1, 1, 1]));
    // 30 connections from one address, each from its own source port. With a uniform hash the
    // chance that they all land on one backend is 3 · (1/3)^30 < 1e-13.
    let c = counts(&sequence(&g, 30));
    assert!(c.len() >= 2, "{c:?}");
    assert!(
        g.table().contains("jhash ip saddr . th sport mod 61"),
        "{}",
        g.table()
    );
}

#[test]
fn gateways_with_the_same_seed_send_a_client_to_the_same_backend() {
    // Three gateways (each a lab of its own: client, gateway and backends in namespaces), the
    // same services; two share the seed.
    let a = Gateway::new(seeded_config("source-hash", "", [1, 2, 1], 7));
    let b = Gateway::new(seeded_config("source-hash", "", [1, 2, 1], 7));
    let c = Gateway::new(seeded_config("source-hash", "", [1, 2, 1], 8));
    let (ca, cb, cc) = (a.clients(30), b.clients(30), c.clients(30));
    assert_eq!(ca, cb);
    let (ma, mb, mc) = (
        mapping(&a, &ca, 1),
        mapping(&b, &cb, 1),
        mapping(&c, &cc, 1),
    );
    assert_eq!(ma, mb, "same config and seed, different backends");
    // Another seed is another table: with 30 clients over 3 backends, the chance that an
    // unrelated table maps every one of them the same way is below (1/2)^30.
    assert_ne!(ma, mc, "the seed changed nothing");
}

#[test]
fn least_conn_steers_new_connections_away_from_a_busy_backend() {
    let g = Gateway::new(config("least-conn", "", [1, 1, 1]));
    let vip: SocketAddr = VIP.parse().unwrap();
    // 15 long connections held open on be0 (the others that land elsewhere are closed).
    let mut held = Vec::new();
    while held.len() < 15 {
        let (conn, line) = g.lab.tcp_connect(vip, T).unwrap();
        if line.starts_with("be0") {
            held.push(conn);
        }
    }
    // The next count after that sees be0's load: be0's effective weight drops to 1 (earlier
    // re-weightings may have followed the connections opened and closed on the way).
    assert!(
        g.wait_log(
            "least-conn: effective weights [1, ",
            1,
            Duration::from_secs(5)
        ),
        "{}",
        g.log()
    );
    // be0 now has weight 1 against 16 for each of the others: a share of 1/33. Over 60 new
    // connections its count is Binomial(60, 1/33), mean 1.8; more than 10 has a probability
    // below 1e-5, while an even spread would give it about 20.
    let c = counts(&sequence(&g, 60));
    assert!(c.get("be0").copied().unwrap_or(0) <= 10, "{c:?}");
    // Steady counts do not churn the table: no new weights while nothing changes.
    let lines = g.log().matches("least-conn: effective weights").count();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        g.log().matches("least-conn: effective weights").count(),
        lines,
        "{}",
        g.log()
    );
    drop(held);
}
