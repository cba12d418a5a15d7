//! natlb runs under the capabilities systemd/natlb.service gives it, and no fewer.
//!
//! natlb runs as uid 0 in the lab's gateway namespace under `setpriv` with exactly the unit's
//! `CapabilityBoundingSet=` (parsed from the unit file, so the unit and this test cannot
//! drift), `--no-new-privs` and no inheritable or ambient capabilities: for root that leaves
//! the bounding set as its permitted and effective sets, as systemd does. Under those limits it
//! must do everything it does in production: install its table, forward a client to a backend,
//! write sysctls and its state_dir, probe (tcp, udp, exec), dump and delete conntrack entries,
//! serve the control socket and metrics, and exit cleanly. The controls show the test can
//! fail: without the unit's capabilities natlb refuses to start and says why, and a
//! `control_group` needs CAP_CHOWN, as the unit's comment says.

mod gateway;
mod lab;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use gateway::{Gateway, NATLB, T};
use lab::Process;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/natlb.service");

/// Capability names by number (include/uapi/linux/capability.h), as setpriv spells them.
const CAPS: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// The capabilities of every `KEY=` line of the unit's [Service] section, with systemd's
/// rules for lists: assignments add up, an empty one resets. Lowercase, without `CAP_`.
fn unit_caps(unit: &str, key: &str) -> Vec<String> {
    let mut caps: Vec<String> = Vec::new();
    let mut section = "";
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != "[Service]" || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some(value) = line
            .strip_prefix(key)
            .and_then(|rest| rest.trim_start().strip_prefix('='))
        else {
            continue;
        };
        let value = value.trim();
        assert!(
            !value.starts_with('~'),
            "{UNIT}: {key}{value}: an inverted list is not supported by this test; list the \
             capabilities natlb gets"
        );
        if value.is_empty() {
            caps.clear();
        }
        for cap in value.split_whitespace() {
            let name = cap
                .strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("{UNIT}: {key}: {cap:?} is not a capability name"))
                .to_ascii_lowercase();
            assert!(
                CAPS.contains(&name.as_str()),
                "{UNIT}: {key}: unknown {cap}"
            );
            if !caps.contains(&name) {
                caps.push(name);
            }
        }
    }
    caps.sort();
    caps
}

fn read_unit() -> String {
    std::fs::read_to_string(UNIT).unwrap_or_else(|e| panic!("{UNIT}: {e}"))
}

/// The unit's bounding set; its ambient set must be part of it (systemd refuses otherwise).
fn bounding_set() -> Vec<String> {
    let unit = read_unit();
    let bounding = unit_caps(&unit, "CapabilityBoundingSet");
    assert!(
        !bounding.is_empty(),
        "{UNIT} has no CapabilityBoundingSet= line"
    );
    for cap in unit_caps(&unit, "AmbientCapabilities") {
        assert!(
            bounding.contains(&cap),
            "{UNIT}: AmbientCapabilities has CAP_{} outside CapabilityBoundingSet",
            cap.to_ascii_uppercase()
        );
    }
    bounding
}

/// The bit mask of `caps`, as /proc/PID/status prints it.
fn mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| 1u64 << CAPS.iter().position(|k| k == c).unwrap())
        .sum()
}

fn setpriv() -> Option<String> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| format!("{d}/setpriv"))
        .find(|p| Path::new(p).exists())
}

/// `setpriv` arguments that leave exactly `caps` in the bounding set (none if empty).
fn setpriv_args(setpriv: &str, caps: &[String]) -> Vec<String> {
    let mut bounding = String::from("-all");
    for c in caps {
        bounding.push_str(",+");
        bounding.push_str(c);
    }
    [
        setpriv,
        "--bounding-set",
        &bounding,
        "--inh-caps",
        "-all",
        "--ambient-caps",
        "-all",
        "--no-new-privs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Spawns `natlb run` in the gateway under `setpriv` with `caps`, and waits until it says it
/// runs or exits. Same pid as `ip netns exec`: ip execs setpriv, which execs natlb.
fn spawn_natlb(g: &Gateway, setpriv: &str, caps: &[String]) -> Process {
    let mut argv = setpriv_args(setpriv, caps);
    argv.extend([NATLB, "run", "-c", g.config.to_str().unwrap()].map(String::from));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut p = g.lab.spawn_in(g.lab.gateway_ns(), &argv);
    lab::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        p.stderr_text().contains("natlb is running") || p.try_wait().is_some()
    });
    p
}

fn config(dir: &Path, extra_daemon: &str) -> String {
    format!(
        r#"
[daemon]
table = "natlb"
control_socket = "{dir}/run/control.sock"
state_dir = "{dir}/state"
metrics = "127.0.0.1:9469"
least_conn_interval = "200ms"
{extra_daemon}

# A sysctl of the gateway's own namespace (the kernel's default is 432000).
[conntrack]
tcp_timeout_established = 7200

[[service]]
name = "web"
listen = "203.0.113.10:80"
scheduler = "least-conn"
on_backend_down = "reset"

[service.health]
type = "tcp"
interval = "300ms"

[[service.backend]]
address = "192.0.2.11:8080"

[[service.backend]]
address = "192.0.2.12:8080"

[[service]]
name = "dns"
listen = "203.0.113.10:53"
protocol = "udp"

[service.health]
type = "udp"
payload = "ping"
interval = "300ms"

[[service.backend]]
address = "192.0.2.11:5353"

[[service]]
name = "execd"
listen = "203.0.113.11:80"

[service.health]
type = "exec"
command = ["/bin/sh", "-c", "exit 0"]
interval = "300ms"

[[service.backend]]
address = "192.0.2.13:8080"
"#,
        dir = dir.display()
    )
}

/// Field `key` of /proc/PID/status.
fn proc_status(pid: u32, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn cap_field(pid: u32, key: &str) -> u64 {
    u64::from_str_radix(&proc_status(pid, key), 16).unwrap()
}

/// Lines of the log that say natlb was refused something.
fn refusals(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains(" ERROR ")
                || l.contains("Operation not permitted")
                || l.contains("Permission denied")
                || l.contains("errno 1")
                || l.contains("EPERM")
                || l.contains("EACCES")
        })
        .collect()
}

#[test]
fn natlb_works_under_the_units_capabilities() {
    let Some(setpriv) = setpriv() else {
        eprintln!("SKIP: setpriv (util-linux) is not installed");
        return;
    };
    let caps = bounding_set();
    eprintln!("the unit's capabilities: {caps:?}");
    let mut g = Gateway::new_stopped(|d| config(d, ""));
    let p = spawn_natlb(&g, &setpriv, &caps);
    g.natlb = Some(p);
    assert!(
        g.log().contains("natlb is running"),
        "natlb did not start under {caps:?}:\n{}",
        g.log()
    );

    // The process holds exactly the unit's set, and can gain nothing.
    let pid = g.natlb.as_ref().unwrap().pid();
    assert_eq!(proc_status(pid, "Name"), "natlb");
    let want = mask(&caps);
    for key in ["CapBnd", "CapPrm", "CapEff"] {
        assert_eq!(cap_field(pid, key), want, "{key} of natlb");
    }
    for key in ["CapInh", "CapAmb"] {
        assert_eq!(cap_field(pid, key), 0, "{key} of natlb");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");

    // Its table is installed, and a client reaches a backend through the VIP (TCP and UDP).
    let tables = g
        .lab
        .exec_ok(g.lab.gateway_ns(), &["nft", "list", "tables"]);
    assert_eq!(tables.trim(), "table inet natlb");
    assert!(g.table().contains("comment \"web 192.0.2.11:8080\""));
    let line = g
        .lab
        .tcp_request("203.0.113.10:80".parse().unwrap(), T)
        .expect("TCP through the VIP");
    let (id, peer) = lab::parse_reply(&line).unwrap();
    assert!(id == "be0" || id == "be1", "{line}");
    assert_eq!(peer.ip().to_string(), "192.0.2.1", "masqueraded: {line}");
    let line = g
        .lab
        .udp_request("203.0.113.10:53".parse().unwrap(), T)
        .expect("UDP through the VIP");
    assert!(line.starts_with("be0 "), "{line}");

    // It wrote the gateway's sysctl and its state_dir.
    let timeout = g.lab.in_ns(g.lab.gateway_ns(), || {
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established")
            .unwrap()
    });
    assert_eq!(timeout.trim(), "7200");
    let state = g.lab.dir().join("state");
    assert_eq!(
        std::fs::read_to_string(state.join("table")).unwrap_or_default(),
        "natlb\n"
    );
    assert!(
        lab::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            state.join("health.state").exists()
        }),
        "no health.state in {state:?}:\n{}",
        g.log()
    );

    // Every probe type ran: tcp and udp connects, and a command (a child under no_new_privs).
    assert!(
        g.wait_log("backend up at its first probe", 4, Duration::from_secs(5)),
        "{}",
        g.log()
    );
    assert!(g.log().contains("/bin/sh exited with exit status: 0"));

    // The control socket answers (its status reads conntrack's counts), and a drain commits a
    // batch and writes admin.json to the state_dir.
    let socket = g.lab.dir().join("run/control.sock");
    let socket = socket.to_str().unwrap();
    let status = lab::run_ok(&[NATLB, "status", "--socket", socket]);
    assert!(status.contains("table inet natlb"), "{status}");
    lab::run_ok(&[
        NATLB,
        "drain",
        "execd",
        "192.0.2.13:8080",
        "--socket",
        socket,
    ]);
    assert!(state.join("admin.json").exists());

    // The metrics endpoint (a TCP port of the gateway's namespace) serves.
    let scrape = g.lab.in_ns(g.lab.gateway_ns(), || {
        let mut s = TcpStream::connect("127.0.0.1:9469").expect("metrics port");
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: natlb\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    });
    assert!(scrape.contains("natlb_build_info"), "{scrape}");

    // A withdrawn backend's conntrack entries are deleted (a ctnetlink dump and deletes).
    let (_held, first) = g
        .lab
        .tcp_connect("203.0.113.10:80".parse().unwrap(), T)
        .unwrap();
    eprintln!("held a connection to {first}");
    g.stop_tcp(1);
    assert!(
        g.wait_log(
            "of the withdrawn backend (on_backend_down = reset) service=web backend=192.0.2.12:8080",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        g.log()
    );

    // Nothing was refused along the way, and SIGTERM is a clean exit.
    let log = g.log();
    assert!(refusals(&log).is_empty(), "refused:\n{log}");
    let status = g.natlb.as_mut().unwrap().stop(Duration::from_secs(5));
    assert!(status.success(), "{status}\n{}", g.log());
}

#[test]
fn without_the_units_capabilities_natlb_refuses_to_start_and_says_why() {
    let Some(setpriv) = setpriv() else {
        eprintln!("SKIP: setpriv (util-linux) is not installed");
        return;
    };
    let caps = bounding_set();
    // No capability at all, then every capability except the unit's: neither is enough.
    let others: Vec<String> = CAPS
        .iter()
        .map(|c| c.to_string())
        .filter(|c| !caps.contains(c))
        .collect();
    let g = Gateway::new_stopped(|d| config(d, ""));
    for (what, set) in [
        ("no capability", Vec::new()),
        ("all but the unit's", others),
    ] {
        let mut p = spawn_natlb(&g, &setpriv, &set);
        let status = p.wait_timeout(Duration::from_secs(10));
        let log = p.stderr_text();
        assert!(
            status.is_some_and(|s| !s.success()),
            "with {what}, natlb did not fail: {status:?}\n{log}"
        );
        assert!(!log.contains("natlb is running"), "{log}");
        // It says why: the kernel refused its first netlink request with EPERM.
        assert!(
            log.contains("refused NFT_MSG_GETGEN")
                && (log.contains("errno 1")
                    || log.contains("Operation not permitted")
                    || log.contains("EPERM")),
            "with {what}, the error does not name the refusal:\n{log}"
        );
        let tables = g
            .lab
            .exec_ok(g.lab.gateway_ns(), &["nft", "list", "tables"]);
        assert_eq!(tables.trim(), "", "with {what}");
        assert!(!g.lab.dir().join("state/table").exists(), "with {what}");
    }
}

#[test]
fn a_control_group_needs_cap_chown_as_the_unit_says() {
    let Some(setpriv) = setpriv() else {
        eprintln!("SKIP: setpriv (util-linux) is not installed");
        return;
    };
    let Ok(Some(group)) = nix::unistd::Group::from_name("nogroup") else {
        eprintln!("SKIP: no group \"nogroup\" on this machine");
        return;
    };
    let unit = read_unit();
    let caps = bounding_set();
    assert!(
        unit.contains("control_group needs CAP_CHOWN"),
        "{UNIT} should say that control_group needs CAP_CHOWN"
    );
    let mut g = Gateway::new_stopped(|d| config(d, "control_group = \"nogroup\""));
    if !caps.contains(&"chown".to_string()) {
        let mut p = spawn_natlb(&g, &setpriv, &caps);
        let status = p.wait_timeout(Duration::from_secs(10));
        let log = p.stderr_text();
        assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{log}");
        assert!(
            log.contains("cannot give the control socket")
                && log.contains("to control_group")
                && log.contains("not permitted"),
            "{log}"
        );
        // It fails before touching the kernel, and leaves no socket behind.
        let tables = g
            .lab
            .exec_ok(g.lab.gateway_ns(), &["nft", "list", "tables"]);
        assert_eq!(tables.trim(), "", "{log}");
        assert!(!g.lab.dir().join("run/control.sock").exists());
    }
    let mut with_chown = caps.clone();
    with_chown.push("chown".to_string());
    g.natlb = Some(spawn_natlb(&g, &setpriv, &with_chown));
    assert!(g.log().contains("natlb is running"), "{}", g.log());
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(g.lab.dir().join("run/control.sock")).unwrap();
    assert_eq!(
        (meta.permissions().mode() & 0o777, meta.gid()),
        (0o660, group.gid.as_raw())
    );
}
