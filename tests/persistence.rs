//! Persistence end to end: natlb in a gateway namespace, three real backends, a client
//! namespace with many source addresses, real TCP connections, and the kernel's sticky map
//! read with `nft list map`.
//!
//! The service uses the `weighted` scheduler (a random slot per new connection), so without
//! persistence a client's connections spread: the chance that one client's 6 connections all
//! reach one backend is 3 · (1/3)^6 = 1/243, and that 12 clients all do so is below 1e-28.
//! Every "sticks" check below rests on that bound.

mod gateway;
mod lab;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use gateway::Gateway;

const VIP: &str = "203.0.113.10:80";

/// `wait`: `sticky_read_wait`, how long a withdrawal waits for the read of the sticky map.
fn config(
    persistence: &'static str,
    comment: &'static str,
    wait: &'static str,
) -> impl Fn(&Path) -> String {
    move |dir: &Path| {
        format!(
            r#"
# {comment}
[daemon]
table = "natlb"
control_socket = "{dir}/control.sock"
state_dir = "{dir}/state"
keep_rules_on_exit = true
sticky_read_wait = "{wait}"

[[service]]
name = "web"
listen = "{VIP}"
snat = "masquerade"
persistence = "{persistence}"

[service.health]
type = "tcp"
interval = "200ms"
fast_interval = "100ms"
rise = 2
fall = 2

[[service.backend]]
address = "192.0.2.11:8080"

[[service.backend]]
address = "192.0.2.12:8080"

[[service.backend]]
address = "192.0.2.13:8080"
"#,
            dir = dir.display(),
        )
    }
}

/// Which backend each client reaches over `tries` new connections; panics if a client's
/// connections disagree (it did not stick).
fn mapping(g: &Gateway, clients: &[IpAddr], tries: usize) -> BTreeMap<IpAddr, String> {
    g.backend_per_client(VIP, clients, tries, || sticky(g))
}

/// `nft list map inet natlb sticky4`.
fn sticky(g: &Gateway) -> String {
    g.lab.exec_ok(
        g.lab.gateway_ns(),
        &["nft", "list", "map", "inet", "natlb", "sticky4"],
    )
}

/// The sticky entries per backend address, as the kernel lists them.
fn entries_per_backend(g: &Gateway) -> HashMap<String, usize> {
    let listing = sticky(g);
    let mut out = HashMap::new();
    for i in 1..=3 {
        let addr = format!(": 192.0.2.1{i} . 8080");
        let n = listing.matches(&addr).count();
        if n > 0 {
            out.insert(format!("be{}", i - 1), n);
        }
    }
    out
}

/// After `victim` was withdrawn: its clients reach another backend, everyone else the same.
fn assert_only_its_clients_moved(
    before: &BTreeMap<IpAddr, String>,
    during: &BTreeMap<IpAddr, String>,
    victim: &str,
) {
    for (c, id) in before {
        if id == victim {
            assert_ne!(&during[c], id, "client {c} still reaches the dead backend");
        } else {
            assert_eq!(&during[c], id, "client {c} moved though its backend is up");
        }
    }
}

fn backend_index(id: &str) -> usize {
    id.trim_start_matches("be").parse().unwrap()
}

#[test]
fn a_client_sticks_and_a_withdrawn_backends_clients_are_forgotten_in_the_same_batch() {
    // Waits as long as it takes: the entries go in the withdrawal's batch whatever the load.
    let mut g = Gateway::new(config("5m", "", "10s"));
    let clients = g.clients(12);
    let before = mapping(&g, &clients, 6);
    let per_backend = entries_per_backend(&g);
    assert_eq!(
        per_backend.values().sum::<usize>(),
        12,
        "one entry per client:\n{}",
        sticky(&g)
    );
    assert!(sticky(&g).contains("timeout 5m"), "{}", sticky(&g));

    // The backend with the most clients dies.
    let (victim, _) = per_backend.iter().max_by_key(|(_, n)| **n).unwrap();
    let victim = victim.clone();
    g.stop_tcp(backend_index(&victim));
    assert!(
        g.wait_log("backend DOWN", 1, Duration::from_secs(5)),
        "{}",
        g.log()
    );
    assert!(
        g.log().contains("in the same batch"),
        "the withdrawal did not forget the entries in its batch:\n{}",
        g.log()
    );
    assert!(
        !entries_per_backend(&g).contains_key(&victim),
        "entries still point at the withdrawn {victim}:\n{}",
        sticky(&g)
    );

    // Its clients pick a backend that is up and stick to it; the others stay where they were.
    let during = mapping(&g, &clients, 4);
    assert_only_its_clients_moved(&before, &during, &victim);

    // The backend comes back: no one is moved back to it (their sessions now live elsewhere).
    g.start_tcp(backend_index(&victim));
    assert!(
        g.wait_log("backend UP", 1, Duration::from_secs(5)),
        "{}",
        g.log()
    );
    let after = mapping(&g, &clients, 3);
    assert_eq!(after, during);
}

#[test]
fn persistence_survives_a_restart_and_an_unchanged_reload_and_expires() {
    let mut g = Gateway::new(config("10s", "first", "3ms"));
    let clients = g.clients(12);
    let before = mapping(&g, &clients, 3);

    // natlb dies and comes back: the entries live in the kernel's table, which natlb adopts.
    g.natlb.as_mut().unwrap().kill9();
    g.start();
    assert!(
        g.log().contains("adopted the installed table"),
        "{}",
        g.log()
    );
    assert_eq!(
        mapping(&g, &clients, 2),
        before,
        "the restart lost the clients' backends"
    );

    // A reload that does not change the service keeps them too.
    let text = config("10s", "second", "3ms")(g.lab.dir());
    g.reload(&text, "reload");
    assert_eq!(
        mapping(&g, &clients, 2),
        before,
        "the reload lost the clients' backends"
    );

    // Idle for longer than the persistence: the kernel drops every entry.
    let empty = lab::wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
        entries_per_backend(&g).is_empty()
    });
    assert!(empty, "entries outlived their 10s:\n{}", sticky(&g));
}

#[test]
fn a_reload_that_removes_persistence_forgets_the_clients() {
    let g = Gateway::new(config("1h", "", "3ms"));
    let clients = g.clients(4);
    mapping(&g, &clients, 2);
    assert_eq!(entries_per_backend(&g).values().sum::<usize>(), 4);
    let text = config("1h", "", "3ms")(g.lab.dir()).replace("persistence = \"1h\"\n", "");
    g.reload(&text, "reload");
    assert!(
        entries_per_backend(&g).is_empty(),
        "entries of a service without persistence:\n{}",
        sticky(&g)
    );
}

#[test]
fn a_stale_entry_never_sends_a_client_to_a_backend_that_takes_no_new_connections() {
    let g = Gateway::new(config("5m", "", "3ms"));
    let clients = g.clients(2);
    // An entry natlb did not delete (as if its read of the map had missed it): the client is
    // remembered on 192.0.2.99, which is no backend of the service.
    let key = format!("{} . 203.0.113.10 . tcp . 80", clients[0]);
    g.lab.exec_ok(
        g.lab.gateway_ns(),
        &[
            "nft",
            "add",
            "element",
            "inet",
            "natlb",
            "sticky4",
            &format!("{{ {key} timeout 5m : 192.0.2.99 . 8080 }}"),
        ],
    );
    assert!(sticky(&g).contains(": 192.0.2.99 . 8080"), "{}", sticky(&g));

    // The guard drops the first SYN and deletes the entry; the retransmission finds a slot
    // (192.0.2.99 does not exist: a connection sent there would time out).
    let reached = mapping(&g, &clients[..1], 3);
    let listing = sticky(&g);
    assert!(!listing.contains("192.0.2.99"), "{listing}");
    let backend = format!(
        ": 192.0.2.{} . 8080",
        backend_index(&reached[&clients[0]]) + 11
    );
    let entry = listing
        .split(['{', ','])
        .find(|e| e.contains(&key))
        .unwrap_or_else(|| panic!("the client is not remembered:\n{listing}"));
    assert!(
        entry.contains(&backend),
        "the client is not remembered on the backend it reached ({backend}):\n{listing}"
    );
}

#[test]
fn a_withdrawal_that_does_not_wait_for_the_read_forgets_the_entries_just_after() {
    // Never waits: the withdrawal is committed first, the entries go when the read ends.
    let mut g = Gateway::new(config("5m", "", "0s"));
    let clients = g.clients(12);
    let before = mapping(&g, &clients, 4);
    let per_backend = entries_per_backend(&g);
    let (victim, _) = per_backend.iter().max_by_key(|(_, n)| **n).unwrap();
    let victim = victim.clone();
    g.stop_tcp(backend_index(&victim));
    assert!(
        g.wait_log(
            "took longer than sticky_read_wait",
            1,
            Duration::from_secs(5)
        ),
        "{}",
        g.log()
    );
    assert!(
        g.wait_log(
            "forgot sticky entries of backends that no longer take new connections",
            1,
            Duration::from_secs(5)
        ),
        "{}",
        g.log()
    );
    assert!(
        !entries_per_backend(&g).contains_key(&victim),
        "entries still point at the withdrawn {victim}:\n{}",
        sticky(&g)
    );
    let during = mapping(&g, &clients, 3);
    assert_only_its_clients_moved(&before, &during, &victim);
}
