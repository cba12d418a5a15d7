//! The gateway's kernel knobs end to end: natlb in a gateway namespace writes `[conntrack]` and
//! `[sysctl]`, the test reads them back from that namespace's /proc/sys, a reload changes them,
//! a knob only the initial namespace may set gives a warning while natlb keeps serving, and
//! the conntrack table's fill is watched.

mod gateway;
mod lab;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use gateway::Gateway;

const VIP: &str = "203.0.113.10:80";

fn config(conntrack: &str, sysctl: &str) -> impl Fn(&Path) -> String {
    move |dir: &Path| {
        format!(
            r#"
[daemon]
table = "natlb"
control_socket = "{dir}/control.sock"
state_dir = "{dir}/state"

[conntrack]
{conntrack}

[sysctl]
{sysctl}

[[service]]
name = "web"
listen = "{VIP}"
snat = "masquerade"

[service.health]
type = "none"

[[service.backend]]
address = "192.0.2.11:8080"
"#,
            dir = dir.display(),
        )
    }
}

/// A sysctl as the gateway namespace sees it.
fn knob(g: &Gateway, path: &str) -> String {
    g.lab
        .exec_ok(g.lab.gateway_ns(), &["cat", &format!("/proc/sys/{path}")])
        .trim()
        .to_string()
}

#[test]
fn knobs_are_written_read_back_and_changed_by_a_reload() {
    let g = Gateway::new(config(
        "udp_timeout = 45\ntcp_timeout_close_wait = 20\ntcp_be_liberal = true\nicmp_timeout = 7",
        "\"net.ipv4.tcp_fin_timeout\" = 21",
    ));
    assert_eq!(knob(&g, "net/netfilter/nf_conntrack_udp_timeout"), "45");
    assert_eq!(
        knob(&g, "net/netfilter/nf_conntrack_tcp_timeout_close_wait"),
        "20"
    );
    assert_eq!(knob(&g, "net/netfilter/nf_conntrack_tcp_be_liberal"), "1");
    assert_eq!(knob(&g, "net/netfilter/nf_conntrack_icmp_timeout"), "7");
    assert_eq!(knob(&g, "net/ipv4/tcp_fin_timeout"), "21");
    assert!(
        g.log()
            .contains("start: set /proc/sys/net/netfilter/nf_conntrack_udp_timeout to 45"),
        "{}",
        g.log()
    );

    let text = config("udp_timeout = 60\ntcp_be_liberal = false", "")(g.lab.dir());
    g.reload(&text, "reload:");
    assert_eq!(knob(&g, "net/netfilter/nf_conntrack_udp_timeout"), "60");
    assert_eq!(knob(&g, "net/netfilter/nf_conntrack_tcp_be_liberal"), "0");
    assert!(
        g.log()
            .contains("reload: set /proc/sys/net/netfilter/nf_conntrack_udp_timeout to 60 (was 45"),
        "{}",
        g.log()
    );
    // Traffic goes on.
    assert_eq!(g.tcp_shares(VIP, 2).get("be0"), Some(&2));
}

#[test]
fn a_knob_only_the_initial_namespace_may_set_gives_a_warning_and_natlb_serves() {
    let host_max = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let g = Gateway::new(config("max = 12345\nbuckets = 4096", ""));
    let log = g.log();
    for knob in ["nf_conntrack_max", "nf_conntrack_buckets"] {
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains(&format!("/proc/sys/net/netfilter/{knob} stays"))
                && l.contains("only the initial network namespace may set it")),
            "no warning for {knob}:\n{log}"
        );
    }
    assert_eq!(g.tcp_shares(VIP, 3).get("be0"), Some(&3));
    // natlb never touched the host's value (the namespace cannot, but check what the host sees).
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        host_max
    );
}

#[test]
fn forwarding_off_with_services_gives_a_warning() {
    let g = Gateway::new(config("", "\"net.ipv4.ip_forward\" = 0"));
    assert_eq!(knob(&g, "net/ipv4/ip_forward"), "0");
    assert!(
        g.log().lines().any(|l| l.contains("WARN")
            && l.contains("net.ipv4.ip_forward is 0, so the kernel forwards no IPv4 packet")),
        "{}",
        g.log()
    );
}

#[test]
fn a_conntrack_table_past_warn_percent_gives_a_warning() {
    // The maximum is the host's (shared by every namespace); the count is the gateway
    // namespace's own. Fill 1 % of it, and then some, with unanswered UDP flows.
    let max: u64 = knob_host("net/netfilter/nf_conntrack_max");
    let flows = (max / 100 + 200) as usize;
    let g = Gateway::new(config("warn_percent = 1\ncheck_interval = \"1s\"", ""));
    g.lab.in_ns(g.lab.gateway_ns(), || {
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for _ in 0..flows {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(b"x", to).unwrap();
        }
    });
    assert!(
        g.wait_log("the conntrack table is", 1, Duration::from_secs(5)),
        "no warning after {flows} flows of {max}:\n{}",
        g.log()
    );
    let log = g.log();
    let line = log
        .lines()
        .find(|l| l.contains("the conntrack table is"))
        .unwrap();
    assert!(
        line.contains("WARN") && line.contains("warn_percent 1"),
        "{line}"
    );
}

fn knob_host(path: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
