//! Operating natlb through its control socket, end to end: `natlb status`, `drain` (with
//! `--wait`), `enable`, `weight`, `reload`, the metrics endpoint, and the socket's
//! permissions. natlb runs in the lab's gateway namespace; the CLI reaches it through the
//! socket's path (a path-named unix socket is not bound to a network namespace).
//!
//! Statistics as in e2e.rs: 400 new connections per share check, band ±0.10 (over 4.5
//! standard deviations).

mod gateway;
mod lab;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use gateway::{Gateway, NATLB, T, share};
use natlb::control::api::Status;

const SAMPLES: usize = 400;
const VIP: &str = "203.0.113.10:80";
const BE0: &str = "192.0.2.11:8080";
const BE1: &str = "192.0.2.12:8080";

fn config(dir: &Path, extra_daemon: &str, with_be1: bool) -> String {
    let be1 = if with_be1 {
        format!("\n[[service.backend]]\naddress = \"{BE1}\"\n")
    } else {
        String::new()
    };
    format!(
        r#"
[daemon]
table = "natlb"
control_socket = "{dir}/run/control.sock"
state_dir = "{dir}/state"
{extra_daemon}

[[service]]
name = "web"
listen = "{VIP}"
snat = "masquerade"

[service.health]
type = "tcp"
interval = "300ms"

[[service.backend]]
address = "{BE0}"
{be1}
[[service]]
name = "dns"
listen = "203.0.113.10:53"
protocol = "udp"

[service.health]
type = "none"

[[service.backend]]
address = "192.0.2.11:5353"
"#,
        dir = dir.display()
    )
}

/// Runs the natlb CLI (in the test's own namespace: the socket is reached by its path).
fn cli(g: &Gateway, args: &[&str]) -> Output {
    let mut argv = vec![NATLB];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-c", g.config.to_str().unwrap()]);
    lab::run(&argv)
}

fn cli_ok(g: &Gateway, args: &[&str]) -> String {
    let out = cli(g, args);
    assert!(
        out.status.success(),
        "natlb {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        g.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(g: &Gateway) -> Status {
    let text = cli_ok(g, &["status", "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("status --json: {e}\n{text}"))
}

fn backend<'a>(s: &'a Status, service: &str, addr: &str) -> &'a natlb::control::api::BackendStatus {
    s.services
        .iter()
        .find(|x| x.name == service)
        .and_then(|x| x.backends.iter().find(|b| b.address == addr))
        .unwrap_or_else(|| panic!("no {service} {addr} in {s:?}"))
}

/// Waits until every probed backend has a probe result and is up.
fn wait_probed(g: &Gateway) {
    let ok = lab::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let s = status(g);
        s.services[0]
            .backends
            .iter()
            .all(|b| b.health == "up" && b.last_probe.is_some())
    });
    assert!(ok, "backends not probed up: {:?}", status(g));
}

fn echo(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(T))?;
    conn.write_all(b"ping\n")?;
    let mut buf = [0u8; 16];
    let n = conn.read(&mut buf)?;
    assert_eq!(&buf[..n], b"ping\n");
    Ok(())
}

#[test]
fn drain_keeps_established_connections_and_survives_a_restart_enable_and_weight_restore() {
    let mut g = Gateway::new(|d| config(d, "", true));
    wait_probed(&g);

    // A long connection to be0 (new connections until one lands there).
    let (mut conn, _) = (0..50)
        .find_map(|_| {
            let (c, line) = g.lab.tcp_connect(VIP.parse().unwrap(), T).unwrap();
            line.starts_with("be0 ").then_some((c, line))
        })
        .expect("no connection reached be0 in 50 tries");

    let out = cli_ok(&g, &["drain", "web", BE0]);
    assert!(out.contains("drained web 192.0.2.11:8080"), "{out}");
    // New connections avoid be0; the established one keeps working.
    let counts = g.tcp_shares(VIP, 100);
    assert_eq!(
        counts.get("be0"),
        None,
        "a drained backend got new connections: {counts:?}"
    );
    echo(&mut conn).expect("the established connection to the drained backend broke");
    let s = status(&g);
    let b0 = backend(&s, "web", BE0);
    assert_eq!(
        (
            b0.admin.as_str(),
            b0.effective_weight,
            b0.slots,
            b0.health.as_str()
        ),
        ("drained", 0, 0, "up")
    );
    assert_eq!(b0.connections, Some(1), "the long connection: {b0:?}");
    assert_eq!(backend(&s, "web", BE1).share, 1.0);
    // Draining again changes nothing and says so.
    assert!(cli_ok(&g, &["drain", "web", "192.0.2.11"]).contains("is drained already"));

    // drain --wait returns once the last connection is gone, not before.
    let mut waiter = g.lab.spawn_in(
        g.lab.client_ns(),
        &[
            NATLB,
            "drain",
            "web",
            BE0,
            "--wait",
            "--timeout",
            "60s",
            "-c",
            g.config.to_str().unwrap(),
        ],
    );
    assert!(
        lab::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            waiter.stdout_text().contains("waiting: 1 live connection")
        }),
        "{}{}",
        waiter.stdout_text(),
        waiter.stderr_text()
    );
    assert!(
        waiter.wait_timeout(Duration::from_secs(2)).is_none(),
        "returned too early"
    );
    echo(&mut conn).unwrap();
    drop(conn);
    let done = waiter.wait_timeout(Duration::from_secs(15));
    assert!(
        done.is_some_and(|s| s.success()),
        "{done:?}: {}{}",
        waiter.stdout_text(),
        waiter.stderr_text()
    );
    assert!(waiter.stdout_text().contains("has no live connection left"));

    // The drain survives a restart: still no new connections to be0.
    g.natlb.as_mut().unwrap().stop(Duration::from_secs(5));
    let saved = std::fs::read_to_string(g.lab.dir().join("state/admin.json")).unwrap();
    assert!(
        saved.contains("192.0.2.11:8080") && saved.contains("\"drained\": true"),
        "{saved}"
    );
    g.start();
    assert!(
        g.log().contains("drained or re-weighted by operators"),
        "{}",
        g.log()
    );
    let counts = g.tcp_shares(VIP, 60);
    assert_eq!(counts.get("be0"), None, "after restart: {counts:?}");
    assert_eq!(backend(&status(&g), "web", BE0).admin, "drained");

    // Enable restores it.
    assert!(cli_ok(&g, &["enable", "web", BE0]).contains("takes new connections again"));
    let counts = g.tcp_shares(VIP, 100);
    assert!(
        counts.contains_key("be0") && counts.contains_key("be1"),
        "{counts:?}"
    );

    // Weight 3 for be0 (configured 1): three quarters of new connections.
    cli_ok(&g, &["weight", "web", BE0, "3"]);
    let counts = g.tcp_shares(VIP, SAMPLES);
    let s0 = share(&counts, "be0");
    assert!((0.65..=0.85).contains(&s0), "be0 share {s0} of {counts:?}");
    let s = status(&g);
    let b0 = backend(&s, "web", BE0);
    assert_eq!(
        (b0.weight, b0.admin_weight, b0.effective_weight),
        (1, Some(3), 3)
    );
    assert!((b0.share - 0.75).abs() < 0.02, "{b0:?}");
    // The configured weight clears the override.
    cli_ok(&g, &["weight", "web", BE0, "1"]);
    assert_eq!(backend(&status(&g), "web", BE0).admin_weight, None);

    // A backend removed from the config loses its admin state.
    cli_ok(&g, &["drain", "web", BE1]);
    std::fs::write(&g.config, config(g.lab.dir(), "", false)).unwrap();
    // The drained backend held no slots: the table stays as it is.
    let out = cli_ok(&g, &["reload"]);
    assert!(out.contains("the ruleset stays as it is"), "{out}");
    let saved = std::fs::read_to_string(g.lab.dir().join("state/admin.json")).unwrap();
    assert!(!saved.contains("192.0.2.12"), "{saved}");
    std::fs::write(&g.config, config(g.lab.dir(), "", true)).unwrap();
    cli_ok(&g, &["reload"]);
    assert_eq!(backend(&status(&g), "web", BE1).admin, "enabled");
}

#[test]
fn status_json_has_its_documented_shape_and_counts_real_traffic() {
    let g = Gateway::new(|d| config(d, "", true));
    wait_probed(&g);
    let before = status(&g);
    let counts = g.tcp_shares(VIP, 40);
    let s = status(&g);
    // Every connection through the VIP went through one slot element: the counters say 40.
    let web = &s.services[0];
    let new: u64 = web.packets.unwrap() - before.services[0].packets.unwrap();
    assert_eq!(new, 40, "{web:?}");
    for (i, addr) in [BE0, BE1].iter().enumerate() {
        let b = backend(&s, "web", addr);
        let was = backend(&before, "web", addr).packets.unwrap();
        let id = format!("be{i}");
        assert_eq!(
            (b.packets.unwrap() - was) as usize,
            counts.get(&id).copied().unwrap_or(0),
            "{id}: {b:?} vs {counts:?}"
        );
        assert!(b.bytes.unwrap() >= b.packets.unwrap() * 40, "{b:?}");
    }

    // The exact set of keys, as the README documents them.
    let v: serde_json::Value = serde_json::from_str(&cli_ok(&g, &["status", "--json"])).unwrap();
    let keys = |o: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = o.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&v),
        [
            "conntrack",
            "schema",
            "services",
            "table",
            "time",
            "version"
        ]
    );
    assert_eq!(v["schema"], 1);
    assert_eq!(keys(&v["conntrack"]), ["count", "max"]);
    let svc = &v["services"][0];
    assert_eq!(
        keys(svc),
        [
            "backends",
            "bytes",
            "connections",
            "listen",
            "name",
            "packets",
            "protocol",
            "scheduler",
            "slots"
        ]
    );
    let b = &svc["backends"][0];
    assert_eq!(
        keys(b),
        [
            "address",
            "admin",
            "admin_weight",
            "backup",
            "bytes",
            "connections",
            "effective_weight",
            "health",
            "last_probe",
            "packets",
            "share",
            "slots",
            "weight"
        ]
    );
    assert_eq!(
        keys(&b["last_probe"]),
        ["detail", "latency_ms", "ok", "time"]
    );
    assert_eq!(b["last_probe"]["ok"], true);
    assert_eq!(v["services"][1]["backends"][0]["health"], "unprobed");
    assert!(v["services"][1]["backends"][0]["last_probe"].is_null());

    // The table for people names every backend.
    let text = cli_ok(&g, &["status"]);
    for needle in [
        "SERVICE", "web", BE0, BE1, "enabled", "50.0 %", "dns", "unprobed",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
}

#[test]
fn metrics_scrape_has_per_backend_series() {
    let g = Gateway::new(|d| config(d, "metrics = \"127.0.0.1:9469\"", true));
    wait_probed(&g);
    g.tcp_shares(VIP, 20);
    let scrape = || {
        g.lab.exec_ok(
            g.lab.gateway_ns(),
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "http://127.0.0.1:9469/metrics",
            ],
        )
    };
    let text = scrape();
    for needle in [
        "natlb_build_info{version=\"",
        "natlb_backend_up{service=\"web\",backend=\"192.0.2.11:8080\"} 1",
        "natlb_backend_drained{service=\"web\",backend=\"192.0.2.12:8080\"} 0",
        "natlb_backend_effective_weight{service=\"web\",backend=\"192.0.2.11:8080\"} 1",
        "natlb_backend_connections{service=\"web\",backend=\"192.0.2.11:8080\"}",
        "natlb_backend_packets_total{service=\"web\",backend=\"192.0.2.12:8080\"}",
        "natlb_service_packets_total{service=\"web\"} 20",
        "natlb_probe_duration_seconds_bucket{le=\"0.001\",service=\"web\"}",
        "natlb_probes_total{service=\"web\",result=\"ok\"}",
        "natlb_reconcile_batches_total{reason=\"start\"} 1",
        "natlb_conntrack_max ",
        "# EOF",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    // Every metric the shipped Grafana dashboard queries is a family of a real scrape.
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/grafana/natlb.json"),
    )
    .unwrap();
    let mut used: Vec<&str> = dashboard
        .match_indices("natlb_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() > 15, "{used:?}");
    for name in used {
        let family = ["_total", "_bucket", "_sum", "_count", "_info"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {name}, which natlb does not export"
        );
    }

    // A drain shows up in the next scrape, with the batch that made it.
    cli_ok(&g, &["drain", "web", BE1]);
    let text = scrape();
    for needle in [
        "natlb_backend_drained{service=\"web\",backend=\"192.0.2.12:8080\"} 1",
        "natlb_backend_effective_weight{service=\"web\",backend=\"192.0.2.12:8080\"} 0",
        "natlb_reconcile_batches_total{reason=\"admin\"} 1",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn the_socket_refuses_clients_without_permission() {
    let Ok(setpriv) = which("setpriv") else {
        eprintln!("SKIP: setpriv (util-linux) is not installed");
        return;
    };
    let mut g = Gateway::new(|d| config(d, "", true));
    let socket = g.lab.dir().join("run/control.sock");
    let as_nobody = || {
        lab::run(&[
            &setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            NATLB,
            "status",
            "--socket",
            socket.to_str().unwrap(),
        ])
    };
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = as_nobody();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied on the control socket"),
        "{err}"
    );
    // Root is let in (the control that the client above could reach the socket at all).
    assert!(cli(&g, &["status"]).status.success());

    // With control_group, the group's members are let in, and only they.
    g.natlb.as_mut().unwrap().stop(Duration::from_secs(5));
    std::fs::write(
        &g.config,
        config(g.lab.dir(), "control_group = \"nogroup\"", true),
    )
    .unwrap();
    g.start();
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        (meta.permissions().mode() & 0o777, meta.gid()),
        (0o660, 65534)
    );
    let out = as_nobody();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = lab::run(&[
        &setpriv,
        "--reuid=65534",
        "--regid=65533",
        "--clear-groups",
        NATLB,
        "status",
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert!(!other.status.success(), "a non-member got in");
}

#[test]
fn reload_and_bad_requests_say_what_is_wrong() {
    let g = Gateway::new(|d| config(d, "", true));
    let bad = config(g.lab.dir(), "", true).replace("snat = \"masquerade\"", "snat = \"masq\"");
    std::fs::write(&g.config, &bad).unwrap();
    let out = cli(&g, &["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reload refused") && err.contains("masq"),
        "{err}"
    );
    // The runtime commands still find the socket in a config that does not validate.
    let out = cli(&g, &["drain", "web", "192.0.2.99"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service web has no backend at 192.0.2.99"),
        "{err}"
    );
    let out = cli(&g, &["enable", "nope", BE0]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("there is no service \"nope\"; the services are: web, dns"),
        "{err}"
    );
    let out = cli(&g, &["weight", "web", BE0, "10001"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
    // curl works on the socket as documented.
    let socket = g.lab.dir().join("run/control.sock");
    let body = lab::run_ok(&[
        "curl",
        "-sS",
        "--unix-socket",
        socket.to_str().unwrap(),
        "-X",
        "POST",
        "-d",
        &format!("{{\"service\":\"web\",\"backend\":\"{BE1}\"}}"),
        "http://natlb/v1/drain",
    ]);
    assert!(body.contains("\"admin\": \"drained\""), "{body}");
    // No natlb: the CLI says so.
    let out = lab::run(&[NATLB, "status", "--socket", "/nonexistent/natlb.sock"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no control socket at /nonexistent"));
}

fn which(cmd: &str) -> Result<String, ()> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| format!("{d}/{cmd}"))
        .find(|p| Path::new(p).exists())
        .ok_or(())
}

#[test]
fn systemd_hears_ready_after_the_install_then_watchdog_pings() {
    use std::os::unix::net::UnixDatagram;
    let mut g = Gateway::new_stopped(|d| config(d, "", true));
    let path = g.lab.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let p = g.lab.spawn_in_with(
        g.lab.gateway_ns(),
        &[
            NATLB,
            "run",
            "-c",
            g.config.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        |c| {
            c.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "400000");
        },
    );
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("no READY from natlb");
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("READY=1\n"), "{first}");
    assert!(first.contains("STATUS=2 service(s)"), "{first}");
    // READY comes after the first install: the table is there.
    assert!(g.table().contains("map slots4"));
    // Watchdog pings every WATCHDOG_USEC / 2 from the daemon's loop.
    let started = std::time::Instant::now();
    let mut pings = 0;
    while pings < 3 {
        let n = sock.recv(&mut buf).expect("watchdog pings stopped");
        if &buf[..n] == b"WATCHDOG=1\n" {
            pings += 1;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    g.natlb = Some(p);
    // JSON logs: one object per line, with the event's fields.
    assert!(g.wait_log(
        "\"message\":\"backend up at its first probe",
        2,
        Duration::from_secs(5)
    ));
    let log = g.log();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("\"service\":\"web\",\"backend\":\"192.0.2.11:8080\"")),
        "{log}"
    );
    g.natlb.as_mut().unwrap().stop(Duration::from_secs(5));
    let n = sock.recv(&mut buf).unwrap();
    let mut last = String::from_utf8_lossy(&buf[..n]).into_owned();
    while last == "WATCHDOG=1\n" {
        let n = sock.recv(&mut buf).unwrap();
        last = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    assert_eq!(last, "STOPPING=1\n");
}
