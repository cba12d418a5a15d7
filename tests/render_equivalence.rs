//! The two encodings of natlb's table can never drift: the netlink encoder's table and the
//! rendered nft script, each loaded into a fresh namespace, list identically.

mod lab;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use natlb::model::*;
use natlb::nft::{Change, Installed, Nft};
use natlb::render::{render, script::to_script};

fn backend(addr: &str, weight: u32, backup: bool) -> Backend {
    Backend {
        address: addr.parse().unwrap(),
        weight,
        backup,
    }
}

fn service(name: &str, listen: &str, protocol: Protocol, snat: Snat, backends: Vec<Backend>) -> Service {
    let l: SocketAddr = listen.parse().unwrap();
    Service {
        name: name.into(),
        vip: Vip {
            addr: l.ip(),
            protocol,
            port: l.port(),
        },
        scheduler: Scheduler::Weighted,
        persistence: None,
        snat,
        on_all_down: OnAllDown::Reject,
        health: Health {
            kind: HealthKind::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
        },
        backends,
    }
}

pub fn sample_model(table: &str) -> Model {
    Model {
        daemon: Daemon {
            table: table.into(),
            control_socket: "/run/natlb/control.sock".into(),
            state_dir: "/var/lib/natlb".into(),
            metrics: None,
            keep_rules_on_exit: true,
        },
        conntrack: Conntrack::default(),
        sysctl: Default::default(),
        services: vec![
            service(
                "web",
                "203.0.113.10:80",
                Protocol::Tcp,
                Snat::Masquerade,
                vec![backend("192.0.2.11:8080", 3, false), backend("192.0.2.12:8080", 1, false), backend("192.0.2.13:8080", 1, true)],
            ),
            service(
                "dns",
                "203.0.113.10:53",
                Protocol::Udp,
                Snat::Address("192.0.2.1".parse::<IpAddr>().unwrap()),
                vec![backend("192.0.2.11:53", 1, false), backend("192.0.2.12:53", 1, false)],
            ),
            service(
                "web6",
                "[fd00:3::10]:443",
                Protocol::Tcp,
                Snat::None,
                (0..17).map(|i| backend(&format!("[fd00:2::{:x}]:8443", 0x11 + i), 1 + i % 3, false)).collect(),
            ),
        ],
        egress: vec![],
    }
}

#[test]
fn netlink_and_script_list_the_same() {
    let model = sample_model("natlb");
    let rs = render(&model, |_, _| true);
    let a = lab::Netns::new("ea");
    let b = lab::Netns::new("eb");

    lab::in_netns(a.name(), || {
        let mut nft = Nft::open().unwrap();
        nft.apply(&[Change::DropTable(&rs.table), Change::CreateTable(&rs)])
            .unwrap_or_else(|e| panic!("{e}"));
        // Reading it back gives what was installed.
        match nft.read_installed(&rs).unwrap() {
            Installed::Ours(installed) => assert_eq!(installed, rs),
            other => panic!("not adopted: {other:?}"),
        }
    });
    let script = to_script(&rs);
    let dir = lab::TempDir::new("equiv");
    let path = dir.write("natlb.nft", &script);
    lab::exec_in_ok(b.name(), &["nft", "-f", path.to_str().unwrap()]);

    let list_a = lab::exec_in_ok(a.name(), &["nft", "list", "table", "inet", "natlb"]);
    let list_b = lab::exec_in_ok(b.name(), &["nft", "list", "table", "inet", "natlb"]);
    if list_a != list_b {
        let d = dir.write("a.txt", &list_a);
        let e = dir.write("b.txt", &list_b);
        let diff = lab::run(&["diff", "-u", d.to_str().unwrap(), e.to_str().unwrap()]);
        panic!("netlink vs script differ:\n{}", String::from_utf8_lossy(&diff.stdout));
    }
    assert!(list_a.contains("comment \"web 192.0.2.11:8080\""), "{list_a}");
    // The whole ruleset must list cleanly too (nft's decoder is stricter than the kernel).
    lab::exec_in_ok(a.name(), &["nft", "list", "ruleset"]);
}
