//! Egress SNAT and hairpin end to end. The lab's backends' network (192.0.2.0/24, fd00:2::/64,
//! behind the gateway's br0) plays the internal network; the client namespace (198.51.100.2,
//! beyond the gateway's eth0) plays a host outside, and runs servers that answer with the
//! source address they saw.

mod gateway;
mod lab;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use gateway::{Gateway, T};
use lab::{
    BACKEND_NET_V4, BACKEND_NET_V6, CLIENT_NET_V4, CLIENT_V4, CLIENT_V6, GATEWAY_BACKEND_V4,
    GATEWAY_BACKEND_V6, GATEWAY_CLIENT_V4, GATEWAY_CLIENT_V6,
};

const VIP: &str = "203.0.113.10:80";
const VIP6: &str = "[fd00:3::10]:80";
/// The port of the servers on the outside host.
const OUT_PORT: u16 = 7000;

/// Two services (IPv4 and IPv6, `snat = "none"`, backends 0 and 1) and the given egress rules.
fn config(egress: String) -> impl Fn(&Path) -> String {
    move |dir: &Path| {
        let mut text = format!(
            r#"
[daemon]
table = "natlb"
control_socket = "{dir}/control.sock"
state_dir = "{dir}/state"
"#,
            dir = dir.display(),
        );
        for (name, listen, be0, be1) in [
            ("web", VIP, "192.0.2.11:8080", "192.0.2.12:8080"),
            ("web6", VIP6, "[fd00:2::11]:8080", "[fd00:2::12]:8080"),
        ] {
            text.push_str(&format!(
                r#"
[[service]]
name = "{name}"
listen = "{listen}"
snat = "none"
[service.health]
type = "none"
[[service.backend]]
address = "{be0}"
[[service.backend]]
address = "{be1}"
"#
            ));
        }
        text.push_str(&egress);
        text
    }
}

fn egress(source: &[&str], out_interface: &str, extra: &str) -> String {
    let source: Vec<String> = source.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "\n[[egress]]\nname = \"lan\"\nsource = [{}]\nout_interface = \"{out_interface}\"\n{extra}\n",
        source.join(", ")
    )
}

fn outside(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, OUT_PORT)
}

/// The source address the outside host saw for one connection from backend `i`'s namespace
/// (from `src` if given), over TCP or UDP.
fn seen_outside(g: &Gateway, i: usize, src: Option<IpAddr>, to: IpAddr, udp: bool) -> IpAddr {
    let to = outside(to);
    let line = lab::in_netns(g.lab.backend_ns(i), || match (src, udp) {
        (None, false) => lab::tcp_request(to, T),
        (Some(s), false) => lab::tcp_request_from(s, to, T),
        (None, true) => lab::udp_request(to, T),
        (Some(s), true) => lab::udp_request_from(s, to, T),
    })
    .unwrap_or_else(|e| panic!("from backend {i} ({src:?}) to {to} (udp: {udp}): {e}"));
    lab::parse_reply(&line).unwrap().1.ip()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn masquerade_then_an_address_seen_from_an_outside_host() {
    let g = Gateway::new(config(egress(
        &[BACKEND_NET_V4, BACKEND_NET_V6],
        "eth0",
        "snat = \"masquerade\"",
    )));
    let _servers = g.lab.start_client_servers(OUT_PORT, "out");
    let (v4, v6) = (IpAddr::V4(CLIENT_V4), IpAddr::V6(CLIENT_V6));

    // Masquerade: the outside host sees the gateway's address on the way out.
    assert_eq!(seen_outside(&g, 0, None, v4, false), GATEWAY_CLIENT_V4);
    assert_eq!(seen_outside(&g, 1, None, v4, true), GATEWAY_CLIENT_V4);
    assert_eq!(seen_outside(&g, 0, None, v6, false), GATEWAY_CLIENT_V6);
    let table = g.table();
    assert!(
        table.contains("oifname \"eth0\" ip saddr 192.0.2.0/24 masquerade comment \"egress lan\""),
        "{table}"
    );

    // A reload turns it into SNAT to fixed addresses (routed back to the gateway: they are in
    // the VIP ranges), in one batch.
    let text = config(egress(
        &[BACKEND_NET_V4, BACKEND_NET_V6],
        "eth0",
        "snat = [\"203.0.113.77\", \"fd00:3::77\"]",
    ))(g.lab.dir());
    g.reload(&text, "reload applied in one batch");
    assert_eq!(seen_outside(&g, 0, None, v4, false), ip("203.0.113.77"));
    assert_eq!(seen_outside(&g, 2, None, v4, true), ip("203.0.113.77"));
    assert_eq!(seen_outside(&g, 1, None, v6, false), ip("fd00:3::77"));
    let table = g.table();
    assert!(
        !table.contains("masquerade comment \"egress lan\""),
        "{table}"
    );
    assert!(
        table.contains("oifname \"eth0\" ip6 saddr fd00:2::/64 snat ip6 to fd00:3::77"),
        "{table}"
    );

    // Traffic from elsewhere is left alone: the outside host reaches a backend directly (the
    // gateway forwards it) and the backend sees the host's own address.
    let line = g
        .lab
        .tcp_request("192.0.2.11:8080".parse().unwrap(), T)
        .unwrap();
    assert_eq!(lab::parse_reply(&line).unwrap().1.ip(), CLIENT_V4);
}

#[test]
fn load_balanced_connections_keep_their_service_policy_under_an_overlapping_egress() {
    // An egress that translates the outside network's traffic into the backends' network: a
    // plain forwarded connection is masqueraded, but a load-balanced one (to the VIP, which
    // says `snat = "none"`) keeps the client's address, and its replies flow.
    let g = Gateway::new(config(egress(
        &[CLIENT_NET_V4],
        "br0",
        "snat = \"masquerade\"",
    )));
    let direct = g
        .lab
        .tcp_request("192.0.2.11:8080".parse().unwrap(), T)
        .unwrap();
    assert_eq!(
        lab::parse_reply(&direct).unwrap().1.ip(),
        GATEWAY_BACKEND_V4
    );
    for _ in 0..4 {
        assert_eq!(g.peer_seen(VIP), CLIENT_V4);
    }
    let line = g
        .lab
        .udp_request("192.0.2.12:5353".parse().unwrap(), T)
        .unwrap();
    assert_eq!(lab::parse_reply(&line).unwrap().1.ip(), GATEWAY_BACKEND_V4);
}

#[test]
fn snat_to_a_range_and_to_a_list_spreads_sources() {
    let g = Gateway::new(config(egress(
        &[BACKEND_NET_V4],
        "eth0",
        "snat = \"203.0.113.100-203.0.113.103\"",
    )));
    let _servers = g.lab.start_client_servers(OUT_PORT, "out");
    // 24 internal hosts: extra addresses of backend 0.
    let sources: Vec<IpAddr> = (100..124)
        .map(|n| {
            let a = format!("192.0.2.{n}");
            g.lab.exec_ok(
                g.lab.backend_ns(0),
                &["ip", "addr", "add", &format!("{a}/24"), "dev", "eth0"],
            );
            ip(&a)
        })
        .collect();
    let v4 = IpAddr::V4(CLIENT_V4);
    let seen = |g: &Gateway| -> BTreeMap<IpAddr, IpAddr> {
        sources
            .iter()
            .map(|&s| (s, seen_outside(g, 0, Some(s), v4, false)))
            .collect()
    };

    // A range: the kernel spreads sources across its addresses. All 24 sources on one of the 4
    // addresses would happen by chance with probability 4^-23.
    let range = seen(&g);
    let used: BTreeSet<IpAddr> = range.values().copied().collect();
    let allowed: BTreeSet<IpAddr> = (100..104).map(|n| ip(&format!("203.0.113.{n}"))).collect();
    assert!(used.is_subset(&allowed), "{range:?}");
    assert!(used.len() >= 2, "every source got one address: {range:?}");

    // A list: natlb shares the clients out by a hash of their address, and with `persistent`
    // a client keeps its share. Both addresses used, each source the same twice.
    let text = config(egress(
        &[BACKEND_NET_V4],
        "eth0",
        "snat = [\"203.0.113.120\", \"203.0.113.121\"]\npersistent = true\nports = \"20000-29999\"",
    ))(g.lab.dir());
    g.reload(&text, "reload applied in one batch");
    let first = seen(&g);
    let second = seen(&g);
    assert_eq!(first, second, "a source changed address");
    let used: BTreeSet<IpAddr> = first.values().copied().collect();
    assert_eq!(
        used,
        BTreeSet::from([ip("203.0.113.120"), ip("203.0.113.121")]),
        "{first:?}"
    );
    // The port range applies: the outside host sees source ports in it.
    let port = lab::in_netns(g.lab.backend_ns(0), || {
        let line = lab::tcp_request(outside(v4), T).unwrap();
        lab::parse_reply(&line).unwrap().1.port()
    });
    assert!((20000..=29999).contains(&port), "source port {port}");
}

#[test]
fn hairpin_a_client_on_the_backends_network_reaches_the_vip() {
    let g = Gateway::new(config(String::new()));
    // In a real network a switch carries the backend's direct answer to the client without
    // the gateway seeing it. The lab's backends share a bridge in the gateway namespace, and
    // with br_netfilter the gateway's conntrack would see (and un-DNAT) that bridged answer:
    // the hairpin would work without natlb. Bridged traffic skips the gateway's netfilter here.
    lab::in_netns(g.lab.gateway_ns(), || {
        for table in ["iptables", "ip6tables"] {
            let knob = format!("/proc/sys/net/bridge/bridge-nf-call-{table}");
            if Path::new(&knob).exists() {
                std::fs::write(&knob, "0").unwrap();
            }
        }
    });
    // Backend 2 is not a backend of the services: it is a client on their backends' network.
    let from_be2 = |vip: &str| {
        let vip: SocketAddr = vip.parse().unwrap();
        lab::in_netns(g.lab.backend_ns(2), || lab::tcp_request(vip, T))
    };
    for (vip, gateway) in [
        (VIP, IpAddr::V4(GATEWAY_BACKEND_V4)),
        (VIP6, IpAddr::V6(GATEWAY_BACKEND_V6)),
    ] {
        for _ in 0..4 {
            let line = from_be2(vip).unwrap_or_else(|e| panic!("hairpin to {vip}: {e}"));
            let (id, peer) = lab::parse_reply(&line).unwrap();
            assert!(id == "be0" || id == "be1", "{line}");
            // Masqueraded to the gateway's address on that network, so the answer comes back
            // through the gateway.
            assert_eq!(peer.ip(), gateway, "{line}");
        }
    }
    // A client from outside keeps its own address (the service says `snat = "none"`).
    assert_eq!(g.peer_seen(VIP), CLIENT_V4);

    // The control: without the hairpin masquerade rule, the backend answers the client
    // directly, from its own address, and the connection never completes.
    let listing = g.lab.exec_ok(
        g.lab.gateway_ns(),
        &["nft", "-a", "list", "chain", "inet", "natlb", "postrouting"],
    );
    let handle = listing
        .lines()
        .find(|l| l.contains("meta mark &"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap_or_else(|| panic!("no hairpin rule in\n{listing}"))
        .trim()
        .to_string();
    g.lab.exec_ok(
        g.lab.gateway_ns(),
        &[
            "nft",
            "delete",
            "rule",
            "inet",
            "natlb",
            "postrouting",
            "handle",
            &handle,
        ],
    );
    let failed = from_be2(VIP);
    assert!(
        failed.is_err(),
        "hairpin worked without the rule: {failed:?}"
    );
}

#[test]
fn a_restart_keeps_egress_rules_as_they_are_or_writes_them_again() {
    let mut g = Gateway::new(config(egress(
        &[BACKEND_NET_V4],
        "eth0",
        "snat = \"203.0.113.77\"",
    )));
    let _servers = g.lab.start_client_servers(OUT_PORT, "out");
    let v4 = IpAddr::V4(CLIENT_V4);
    assert_eq!(seen_outside(&g, 0, None, v4, false), ip("203.0.113.77"));
    // natlb compares the egress rules it finds with the ones it would write, constants and
    // comments included: after a plain restart there is nothing to do.
    g.natlb.take();
    g.start();
    assert!(
        g.log()
            .contains("adopted the installed table: it is already as configured"),
        "{}",
        g.log()
    );
    // Someone adds a rule to the egress chain by hand; a restarted natlb adopts the table and
    // writes the egress chain again, so the stray rule goes.
    g.lab.exec_ok(
        g.lab.gateway_ns(),
        &[
            "nft",
            "add",
            "rule",
            "inet",
            "natlb",
            "egress",
            "oifname",
            "eth0",
            "masquerade",
        ],
    );
    g.natlb.take();
    g.start();
    assert!(
        g.wait_log(
            "the egress chain holds other rules than the config's",
            1,
            Duration::from_secs(5)
        ),
        "{}",
        g.log()
    );
    let table = g.table();
    assert_eq!(
        table.matches("oifname \"eth0\"").count(),
        1,
        "the hand-made rule is still there:\n{table}"
    );
    assert_eq!(seen_outside(&g, 0, None, v4, false), ip("203.0.113.77"));
}
