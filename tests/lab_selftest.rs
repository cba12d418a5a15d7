//! Tests of the integration-test lab harness itself (tests/lab/mod.rs): plain routing through
//! the gateway (no NAT rules), cleanup on drop and on panic, process guards.

mod lab;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use lab::{Lab, LabOptions, Signal};

const T: Duration = Duration::from_secs(5);

fn netns_list() -> Vec<String> {
    lab::run_ok(&["ip", "netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn assert_gone(names: &[String]) {
    let list = netns_list();
    for n in names {
        assert!(!list.contains(n), "namespace {n} still exists: {list:?}");
    }
}

fn pid_alive(pid: i32) -> bool {
    // A zombie still has /proc/PID; treat it as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn addressing_plan() {
    assert_eq!(lab::backend_v4(0), Ipv4Addr::new(192, 0, 2, 11));
    assert_eq!(lab::backend_v6(0).to_string(), "fd00:2::11");
    assert_eq!(lab::backend_v4(9).to_string(), "192.0.2.20");
    assert_eq!(lab::backend_v6(9).to_string(), "fd00:2::20");
    assert_eq!(lab::backend_v6(100).to_string(), "fd00:2::111");
    let (id, peer) = lab::parse_reply("be0 [fd00:1::2]:4000\n").unwrap();
    assert_eq!(id, "be0");
    assert_eq!(peer, "[fd00:1::2]:4000".parse().unwrap());
}

#[test]
fn routed_forwarding_without_nat() {
    let lab = Lab::new(LabOptions { backends: 2 });
    let names = lab.namespaces();
    assert_eq!(names.len(), 4);
    for n in &names {
        assert!(n.len() <= 32, "{n}");
    }
    assert_eq!(lab.backend_addr_v4(1).to_string(), "192.0.2.12");

    let tcp0 = lab.start_tcp_server(0, 8080, "be0");
    let tcp1 = lab.start_tcp_server(1, 8080, "be1");
    let udp0 = lab.start_udp_server(0, 5353, "be0");
    let udp1 = lab.start_udp_server(1, 5353, "be1");

    for i in 0..2 {
        let id = format!("be{i}");
        // TCP over IPv4.
        let addr = SocketAddr::new(lab.backend_addr_v4(i).into(), 8080);
        let line = lab.tcp_request(addr, T).expect("tcp v4");
        let (got, peer) = lab::parse_reply(&line).unwrap();
        assert_eq!(got, id);
        assert_eq!(peer.ip(), IpAddr::V4(lab::CLIENT_V4), "{line}");
        assert!(line.starts_with(&format!("{id} 198.51.100.2:")), "{line}");

        // TCP over IPv6.
        let addr = SocketAddr::new(lab.backend_addr_v6(i).into(), 8080);
        let line = lab.tcp_request(addr, T).expect("tcp v6");
        assert!(line.starts_with(&format!("{id} [fd00:1::2]:")), "{line}");

        // UDP over both.
        let addr = SocketAddr::new(lab.backend_addr_v4(i).into(), 5353);
        let line = lab.udp_request(addr, T).expect("udp v4");
        assert!(line.starts_with(&format!("{id} 198.51.100.2:")), "{line}");
        let addr = SocketAddr::new(lab.backend_addr_v6(i).into(), 5353);
        let line = lab.udp_request(addr, T).expect("udp v6");
        assert!(line.starts_with(&format!("{id} [fd00:1::2]:")), "{line}");
    }
    assert_eq!(tcp0.hits(), 2);
    assert_eq!(tcp1.hits(), 2);
    assert_eq!(udp0.hits(), 2);
    assert_eq!(udp1.hits(), 2);

    // A second client source address, for TCP and UDP, v4 and v6.
    lab.add_client_address("198.51.100.3/24");
    lab.add_client_address("fd00:1::3/64");
    let be0 = SocketAddr::new(lab.backend_addr_v4(0).into(), 8080);
    let src: IpAddr = "198.51.100.3".parse().unwrap();
    let line = lab.tcp_request_from(src, be0, T).unwrap();
    assert!(line.starts_with("be0 198.51.100.3:"), "{line}");
    let line = lab
        .udp_request_from(src, SocketAddr::new(be0.ip(), 5353), T)
        .unwrap();
    assert!(line.starts_with("be0 198.51.100.3:"), "{line}");
    let be1v6 = SocketAddr::new(lab.backend_addr_v6(1).into(), 8080);
    let line = lab
        .tcp_request_from("fd00:1::3".parse().unwrap(), be1v6, T)
        .unwrap();
    assert!(line.starts_with("be1 [fd00:1::3]:"), "{line}");

    // Many requests from one thread in the client namespace.
    let ok = lab.in_client(|| {
        (0..100)
            .filter(|k| {
                let addr = SocketAddr::new(lab::backend_v4(k % 2).into(), 8080);
                lab::tcp_request(addr, T).is_ok()
            })
            .count()
    });
    assert_eq!(ok, 100);

    // A long-lived connection: greeting, then echo.
    let (mut stream, greeting) = lab.tcp_connect(be1v6, T).unwrap();
    assert!(greeting.starts_with("be1 [fd00:1::2]:"), "{greeting}");
    stream.set_read_timeout(Some(T)).unwrap();
    stream.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");

    // Nothing listens on 9999: refused, quickly. An unrouted VIP: an error too.
    let err = lab
        .tcp_request(SocketAddr::new(be0.ip(), 9999), T)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let vip = SocketAddr::new(lab::VIP_V4.into(), 80);
    assert!(lab.tcp_request(vip, Duration::from_secs(2)).is_err());

    // The gateway has no ruleset; exec works.
    let ruleset = lab.gateway_ruleset();
    assert!(!ruleset.contains("nat"), "{ruleset}");
    let routes = lab.exec_ok(lab.client_ns(), &["ip", "-6", "route"]);
    assert!(routes.contains("default via fd00:1::1"), "{routes}");

    // Servers stop while the connection is still open; dropping must not hang.
    drop((tcp0, tcp1, udp0, udp1));
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    drop(lab);
    assert_gone(&names);
}

#[test]
fn drop_removes_namespaces_and_processes() {
    let lab = Lab::new(LabOptions { backends: 1 });
    let names = lab.namespaces();
    let listed = netns_list();
    for n in &names {
        assert!(listed.contains(n), "{n} missing in {listed:?}");
    }
    // A stray background process that no guard owns: the Netns guard must kill it.
    let out = lab.exec_ok(
        lab.gateway_ns(),
        &[
            "sh",
            "-c",
            "sleep 1000 >/dev/null 2>&1 </dev/null & echo $!",
        ],
    );
    let stray: i32 = out.trim().parse().unwrap();
    assert!(pid_alive(stray));
    let dir = lab.dir().to_path_buf();
    let file = lab.write_file("x.toml", "x = 1\n");
    assert!(file.exists());

    drop(lab);
    assert_gone(&names);
    assert!(!dir.exists());
    assert!(
        lab::wait_until(T, Duration::from_millis(20), || !pid_alive(stray)),
        "stray process {stray} survived"
    );
}

#[test]
fn panic_inside_lab_cleans_up() {
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::new(LabOptions { backends: 3 });
        *names.lock().unwrap() = lab.namespaces();
        let _srv = lab.start_tcp_server(2, 80, "be2");
        let _proc = lab.spawn_in(lab.gateway_ns(), &["sleep", "1000"]);
        panic!("deliberate panic inside a lab");
    });
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 5);
    assert_gone(&names);
}

#[test]
fn process_guard() {
    let lab = Lab::new(LabOptions { backends: 0 });

    // stderr is captured; SIGTERM ends it.
    let mut p = lab.spawn_in(
        lab.gateway_ns(),
        &["sh", "-c", "echo ready >&2; echo out; exec sleep 1000"],
    );
    assert!(lab::wait_until(T, Duration::from_millis(10), || p
        .stderr_text()
        .contains("ready")));
    assert!(p.stdout_text().contains("out"));
    assert!(p.wait_timeout(Duration::from_millis(50)).is_none());
    p.signal(Signal::SIGTERM);
    let status = p.wait_timeout(T).expect("exits on SIGTERM");
    assert!(!status.success());

    // Exit code is reported.
    let mut p = lab.spawn_in(lab.client_ns(), &["sh", "-c", "exit 3"]);
    assert_eq!(p.wait_timeout(T).and_then(|s| s.code()), Some(3));

    // kill9.
    let mut p = lab.spawn_in(lab.gateway_ns(), &["sleep", "1000"]);
    let pid = p.pid() as i32;
    p.kill9();
    assert!(!pid_alive(pid));

    // A process ignoring SIGTERM is SIGKILLed by Drop after the grace period.
    let p = lab.spawn_in(
        lab.gateway_ns(),
        &[
            "sh",
            "-c",
            "trap '' TERM; echo armed >&2; while :; do sleep 0.05; done",
        ],
    );
    assert!(lab::wait_until(T, Duration::from_millis(10), || p
        .stderr_text()
        .contains("armed")));
    let pid = p.pid() as i32;
    let start = std::time::Instant::now();
    drop(p);
    assert!(start.elapsed() < Duration::from_secs(4));
    assert!(!pid_alive(pid));

    let names = lab.namespaces();
    drop(lab);
    assert_gone(&names);
}
