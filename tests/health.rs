//! Health probes end to end: natlb withdraws a failed backend's share and restores it, a
//! backup takes over when every primary is down, and backend states survive a restart.
//!
//! The time bounds are the probe windows plus generous slack (probes at 200 ms, fall 3 / rise
//! 2): they check that withdrawal happens within the configured window, not how fast a machine
//! is.

mod gateway;
mod lab;

use std::path::Path;
use std::time::Duration;

use gateway::{Gateway, T};

fn config(dir: &Path) -> String {
    format!(
        r#"
[daemon]
state_dir = "{dir}/state"
control_socket = "{dir}/control.sock"

[[service]]
name = "web"
listen = "203.0.113.10:80"

[service.health]
type = "tcp"
interval = "200ms"
fast_interval = "100ms"
rise = 2
fall = 3

[[service.backend]]
address = "192.0.2.11:8080"

[[service.backend]]
address = "192.0.2.12:8080"

[[service.backend]]
address = "192.0.2.13:8080"
backup = true
"#,
        dir = dir.display()
    )
}

/// fall x interval, with slack for a loaded machine.
const WITHDRAW_WITHIN: Duration = Duration::from_secs(5);

#[test]
fn a_dead_backend_is_withdrawn_and_restored_and_the_backup_takes_over() {
    let mut g = Gateway::new(config);
    let counts = g.tcp_shares("203.0.113.10:80", 60);
    assert!(
        counts.contains_key("be0") && counts.contains_key("be1"),
        "{counts:?}"
    );

    // A connection established on be0 before anything happens.
    let (mut held, first) = loop {
        let (c, line) = g
            .lab
            .tcp_connect("203.0.113.10:80".parse().unwrap(), T)
            .unwrap();
        if line.starts_with("be0") {
            break (c, line);
        }
    };
    assert!(first.starts_with("be0"));

    // be1 dies: withdrawn within the fall window, no new connection reaches it.
    g.stop_tcp(1);
    assert!(
        g.wait_log("backend DOWN", 1, WITHDRAW_WITHIN),
        "be1 not withdrawn:\n{}",
        g.log()
    );
    assert!(g.log().contains("192.0.2.12:8080"), "{}", g.log());
    let counts = g.tcp_shares("203.0.113.10:80", 60);
    assert_eq!(counts.get("be0"), Some(&60), "{counts:?}");
    let table = g.table();
    assert!(
        !table.contains("comment \"web 192.0.2.12:8080\""),
        "{table}"
    );

    // The connection on be0 is untouched.
    use std::io::{Read, Write};
    held.write_all(b"ping\n").unwrap();
    let mut buf = [0u8; 16];
    let n = held.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping\n");

    // be1 comes back: restored after rise successes.
    g.start_tcp(1);
    assert!(g.wait_log("backend UP", 1, WITHDRAW_WITHIN), "{}", g.log());
    let counts = g.tcp_shares("203.0.113.10:80", 60);
    assert!(counts.contains_key("be1"), "{counts:?}");

    // Both primaries die: the backup serves.
    g.stop_tcp(0);
    g.stop_tcp(1);
    assert!(
        g.wait_log("backend DOWN", 3, WITHDRAW_WITHIN),
        "{}",
        g.log()
    );
    let counts = g.tcp_shares("203.0.113.10:80", 20);
    assert_eq!(counts.get("be2"), Some(&20), "{counts:?}");
    assert!(g.log().contains("health change committed in one batch"));

    // Everything down: the client is refused at once (TCP reset), not left to time out.
    g.stop_tcp(2);
    assert!(
        g.wait_log("backend DOWN", 4, WITHDRAW_WITHIN),
        "{}",
        g.log()
    );
    assert!(
        g.log().contains("no backend of service web is up"),
        "{}",
        g.log()
    );
    let started = std::time::Instant::now();
    let err = g
        .lab
        .tcp_request("203.0.113.10:80".parse().unwrap(), Duration::from_secs(5))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not refused promptly"
    );
    assert!(
        g.table()
            .contains("203.0.113.10 . tcp . 80 comment \"web\"")
    );

    // And back: one backend returns, the VIP serves again.
    g.start_tcp(0);
    assert!(g.wait_log("backend UP", 2, WITHDRAW_WITHIN), "{}", g.log());
    let counts = g.tcp_shares("203.0.113.10:80", 10);
    assert_eq!(counts.get("be0"), Some(&10), "{counts:?}");
}

#[test]
fn an_all_down_udp_service_answers_port_unreachable_or_drops() {
    let g = Gateway::new(|dir| {
        format!(
            r#"
[daemon]
state_dir = "{dir}/state"
control_socket = "{dir}/control.sock"

[[service]]
name = "refuse"
listen = "203.0.113.20:53"
protocol = "udp"

[[service.backend]]
address = "192.0.2.11:5353"
weight = 0

[[service]]
name = "silent"
listen = "203.0.113.21:53"
protocol = "udp"
on_all_down = "drop"

[[service.backend]]
address = "192.0.2.11:5353"
weight = 0
"#,
            dir = dir.display()
        )
    });
    let err = g
        .lab
        .udp_request("203.0.113.20:53".parse().unwrap(), Duration::from_secs(2))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let err = g
        .lab
        .udp_request(
            "203.0.113.21:53".parse().unwrap(),
            Duration::from_millis(500),
        )
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "dropped, so no answer at all: {err}"
    );
}

#[test]
fn backend_states_survive_a_restart() {
    let mut g = Gateway::new(config);
    g.stop_tcp(1);
    assert!(
        g.wait_log("backend DOWN", 1, WITHDRAW_WITHIN),
        "{}",
        g.log()
    );
    // States are saved within a second of a change.
    let path = g.lab.dir().join("state/health.state");
    let saved = lab::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        std::fs::read_to_string(&path).is_ok_and(|s| s.contains("down\tweb\t192.0.2.12:8080"))
    });
    assert!(saved, "{:?}", std::fs::read_to_string(&path));

    // Restarted, natlb installs nothing for be1 before any probe: the table it finds is adopted
    // as it is, and no connection goes to the dead backend.
    g.natlb.as_mut().unwrap().stop(Duration::from_secs(5));
    g.start();
    assert!(
        g.log()
            .contains("adopted the installed table: it is already as configured"),
        "{}",
        g.log()
    );
    let counts = g.tcp_shares("203.0.113.10:80", 40);
    assert_eq!(counts.get("be0"), Some(&40), "{counts:?}");
}

#[test]
fn an_http_503_withdraws_a_backend_whose_port_still_accepts() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU16, Ordering};
    let lab_config = |dir: &Path| {
        format!(
            r#"
[daemon]
state_dir = "{dir}/state"
control_socket = "{dir}/control.sock"

[[service]]
name = "web"
listen = "203.0.113.10:80"

[service.health]
type = "http"
path = "/health"
interval = "200ms"
rise = 2
fall = 3

[[service.backend]]
address = "192.0.2.11:8080"
health_port = 9000

[[service.backend]]
address = "192.0.2.12:8080"
health_port = 9000
"#,
            dir = dir.display()
        )
    };
    let status: Vec<Arc<AtomicU16>> = (0..2).map(|_| Arc::new(AtomicU16::new(200))).collect();
    let mut g = Gateway::new_stopped(lab_config);
    let _http: Vec<_> = (0..2)
        .map(|i| gateway::HttpServer::start(g.lab.backend_ns(i), 9000, status[i].clone()))
        .collect();
    g.start();
    assert!(
        g.wait_log("backend up at its first probe", 2, WITHDRAW_WITHIN),
        "{}",
        g.log()
    );
    // be1 says 503 on its health port while its service port still accepts connections.
    status[1].store(503, Ordering::Relaxed);
    assert!(
        g.wait_log("backend DOWN", 1, WITHDRAW_WITHIN),
        "{}",
        g.log()
    );
    assert!(g.log().contains("503"), "{}", g.log());
    let counts = g.tcp_shares("203.0.113.10:80", 40);
    assert_eq!(counts.get("be0"), Some(&40), "{counts:?}");
    status[1].store(200, Ordering::Relaxed);
    assert!(g.wait_log("backend UP", 1, WITHDRAW_WITHIN), "{}", g.log());
}

/// A UDP socket of the client's, connected to the VIP: one flow (a fixed 5-tuple). Sockets
/// keep the namespace they were made in, so the test thread can use it.
fn udp_flow(g: &Gateway) -> std::net::UdpSocket {
    g.lab.in_client(|| {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.connect("203.0.113.10:53").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        sock
    })
}

/// Sends one datagram on the flow: the id of the backend that answered, or the error kind.
fn ask(sock: &std::net::UdpSocket) -> Result<String, std::io::ErrorKind> {
    sock.send(b"q").unwrap();
    let mut buf = [0u8; 128];
    let n = sock.recv(&mut buf).map_err(|e| e.kind())?;
    Ok(String::from_utf8_lossy(&buf[..n])
        .split(' ')
        .next()
        .unwrap()
        .to_string())
}

fn udp_config(on_backend_down: &'static str) -> impl Fn(&Path) -> String {
    move |dir: &Path| {
        format!(
            r#"
[daemon]
state_dir = "{dir}/state"
control_socket = "{dir}/control.sock"

[[service]]
name = "dns"
listen = "203.0.113.10:53"
protocol = "udp"
snat = "none"
on_backend_down = "{on_backend_down}"

[service.health]
type = "udp"
payload = "health"
interval = "200ms"
fall = 2

[[service.backend]]
address = "192.0.2.11:5353"

[[service.backend]]
address = "192.0.2.12:5353"
"#,
            dir = dir.display()
        )
    }
}

#[test]
fn with_reset_a_udp_flow_moves_off_a_withdrawn_backend_at_once() {
    let mut g = Gateway::new(udp_config("reset"));
    let flow = udp_flow(&g);
    let first = ask(&flow).unwrap();
    let dead: usize = first[2..].parse().unwrap();
    g.servers[dead].1 = None; // its UDP server stops: probes get port unreachable
    assert!(
        g.wait_log("backend DOWN", 1, WITHDRAW_WITHIN),
        "{}",
        g.log()
    );
    assert!(
        g.wait_log(
            "deleted 1 connection(s) of the withdrawn backend",
            1,
            WITHDRAW_WITHIN
        ),
        "{}",
        g.log()
    );
    // The same 5-tuple: its next datagrams are a new flow, to the other backend.
    let other = format!("be{}", 1 - dead);
    for _ in 0..3 {
        assert_eq!(ask(&flow), Ok(other.clone()));
    }
}

#[test]
fn with_keep_a_udp_flow_stays_on_its_backend() {
    let mut g = Gateway::new(udp_config("keep"));
    let flow = udp_flow(&g);
    let first = ask(&flow).unwrap();
    let dead: usize = first[2..].parse().unwrap();
    g.servers[dead].1 = None;
    assert!(
        g.wait_log("backend DOWN", 1, WITHDRAW_WITHIN),
        "{}",
        g.log()
    );
    // conntrack still sends this flow to the dead backend, which answers port unreachable.
    assert_eq!(ask(&flow), Err(std::io::ErrorKind::ConnectionRefused));
    // A new flow goes to the backend that is up.
    assert_eq!(ask(&udp_flow(&g)), Ok(format!("be{}", 1 - dead)));
}
