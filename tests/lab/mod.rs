//! Integration-test lab: network namespaces with a client, a NAT gateway and backends.
//!
//! Include it from an integration test with `mod lab;`. Everything a lab creates
//! (namespaces, veths, processes, temp files, server threads) is removed by Drop guards,
//! also when the test panics.
//!
//! # Topology and addressing plan
//!
//! ```text
//!   client ns                 gateway ns                          backend ns i (0-based)
//!  +-----------+  veth   +-----------------------+  veth     +------------------------+
//!  | eth0      |---------| eth0        br0 ----- |-- vb{i} --| eth0                   |
//!  +-----------+         +-----------------------+           +------------------------+
//!  198.51.100.2/24        198.51.100.1/24  192.0.2.1/24       192.0.2.(11+i)/24
//!  fd00:1::2/64           fd00:1::1/64     fd00:2::1/64       fd00:2::(11+i)/64
//! ```
//!
//! - client `eth0`: [`CLIENT_V4`] / [`CLIENT_V6`]; default routes (v4 and v6) via the gateway,
//!   so any VIP (e.g. [`VIP_NET_V4`] 203.0.113.0/24, [`VIP_NET_V6`] fd00:3::/64) is sent to the
//!   gateway. Extra client addresses: [`Lab::add_client_address`].
//! - gateway `eth0` ([`GATEWAY_CLIENT_IF`]): [`GATEWAY_CLIENT_V4`] / [`GATEWAY_CLIENT_V6`];
//!   gateway `br0` ([`GATEWAY_BACKEND_IF`], a bridge with one veth `vb{i}` per backend):
//!   [`GATEWAY_BACKEND_V4`] / [`GATEWAY_BACKEND_V6`]. The gateway has no default route: without
//!   a DNAT rule a VIP is unreachable. `ip_forward` and IPv6 forwarding are on.
//! - backend i `eth0` ([`BACKEND_IF`]): 192.0.2.(11+i)/24 and fd00:2::(11+i)/64, where the IPv6
//!   group is written with the *same decimal digits* as the IPv4 octet (backend 0 is
//!   `192.0.2.11` and `fd00:2::11`, backend 9 is `192.0.2.20` and `fd00:2::20`). Default routes
//!   (v4 and v6) via the gateway, so replies return through it even without SNAT.
//! - Every namespace: `lo` up, DAD disabled (`accept_dad=0`, addresses added `nodad`),
//!   `rp_filter=0`.
//!
//! Namespace names are `nl{pid}x{counter}{role}` with role `c`, `g`, `b{i}`; interface names
//! are fixed because each veth is created directly inside its namespaces.
//!
//! Servers ([`Lab::start_tcp_server`], [`Lab::start_udp_server`]) and clients
//! ([`Lab::tcp_request`], ...) run as threads of the test process that entered the namespace
//! with `setns(CLONE_NEWNET)`. A server answers every TCP connection / UDP datagram with one
//! line `"{id} {peer_addr}\n"` (IPv4-mapped peers shown as plain IPv4, see [`parse_reply`]);
//! a TCP server then echoes whatever the client sends until the client closes.
#![allow(dead_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sched::{CloneFlags, setns};
pub use nix::sys::signal::Signal;
use nix::sys::socket::{
    self as nsock, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, sockopt,
};
use nix::sys::time::TimeVal;
use nix::unistd::Pid;

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
pub const GATEWAY_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const GATEWAY_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
pub const GATEWAY_BACKEND_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const GATEWAY_BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1);
/// Client-side network (prefix length 24 / 64).
pub const CLIENT_NET_V4: &str = "198.51.100.0/24";
pub const CLIENT_NET_V6: &str = "fd00:1::/64";
/// Backend-side network (prefix length 24 / 64).
pub const BACKEND_NET_V4: &str = "192.0.2.0/24";
pub const BACKEND_NET_V6: &str = "fd00:2::/64";
/// Suggested VIP ranges: routed from the client to the gateway, unknown elsewhere.
pub const VIP_NET_V4: &str = "203.0.113.0/24";
pub const VIP_NET_V6: &str = "fd00:3::/64";
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 0x10);
/// Interface names.
pub const CLIENT_IF: &str = "eth0";
pub const GATEWAY_CLIENT_IF: &str = "eth0";
pub const GATEWAY_BACKEND_IF: &str = "br0";
pub const BACKEND_IF: &str = "eth0";
/// Maximum number of backends a lab supports.
pub const MAX_BACKENDS: usize = 200;

/// Address of backend `i` (0-based): 192.0.2.(11+i).
pub fn backend_v4(i: usize) -> Ipv4Addr {
    assert!(i < MAX_BACKENDS, "backend index {i} out of range");
    Ipv4Addr::new(192, 0, 2, (11 + i) as u8)
}

/// Address of backend `i` (0-based): fd00:2::(11+i), written with the same decimal digits.
pub fn backend_v6(i: usize) -> Ipv6Addr {
    assert!(i < MAX_BACKENDS, "backend index {i} out of range");
    let group = u16::from_str_radix(&(11 + i).to_string(), 16).unwrap();
    Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, group)
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Polls `cond` every `poll` until it returns true (→ true) or `timeout` passes (→ false).
pub fn wait_until(timeout: Duration, poll: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(poll);
    }
}

fn describe(argv: &[&str], out: &Output) -> String {
    format!(
        "command {:?} failed: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        argv,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command in the current namespace and returns its output (panics if it can't start).
pub fn run(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"))
}

/// Runs a command, panics with its stdout/stderr if it fails, returns stdout.
pub fn run_ok(argv: &[&str]) -> String {
    let out = run(argv);
    if !out.status.success() {
        panic!("{}", describe(argv, &out));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `argv` inside namespace `ns` (`ip netns exec`).
pub fn exec_in(ns: &str, argv: &[&str]) -> Output {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    run(&full)
}

/// Like [`exec_in`], panics with stdout/stderr on failure, returns stdout.
pub fn exec_in_ok(ns: &str, argv: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    run_ok(&full)
}

/// Runs `ip -n NS -batch -` with the given commands (one `ip` command per line, without `ip`).
fn ip_batch(ns: &str, cmds: &[String]) {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run ip");
    let script = cmds.join("\n") + "\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        panic!(
            "ip -n {ns} -batch failed: {}\n--- script ---\n{script}--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Moves the *current thread* into network namespace `ns` (by name, /run/netns/NAME).
/// Sockets the thread opens afterwards belong to that namespace.
pub fn enter_netns(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    setns(&f, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

/// Runs `f` on a fresh thread that has entered namespace `ns`, returns its result
/// (a panic in `f` is propagated).
pub fn in_netns<R: Send, F: FnOnce() -> R + Send>(ns: &str, f: F) -> R {
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            enter_netns(ns);
            f()
        });
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Writes a sysctl of the current thread's namespace (call inside [`in_netns`]).
fn write_sysctl(key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
}

fn unique_temp_path(prefix: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "natlb-{prefix}-{}-{}-{nanos}",
        std::process::id(),
        next_id()
    ))
}

// ---------------------------------------------------------------------------------------------
// Temp files
// ---------------------------------------------------------------------------------------------

/// A directory under `std::env::temp_dir()`, removed (recursively) on Drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = unique_temp_path(prefix);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {path:?}: {e}"));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory, returns the full path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {p:?}: {e}"));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A file path under `std::env::temp_dir()`, removed on Drop (the file need not exist).
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    pub fn new(prefix: &str) -> TempFile {
        TempFile {
            path: unique_temp_path(prefix),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Netns
// ---------------------------------------------------------------------------------------------

/// A named network namespace (`ip netns add`). Drop kills every process in it (SIGKILL) and
/// deletes it, which also deletes its veths.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `nl{pid}x{counter}{role}`. `role` should be short (e.g. "g", "b3").
    pub fn new(role: &str) -> Netns {
        let pid = std::process::id();
        loop {
            let name = format!("nl{pid}x{}{role}", next_id());
            let out = run(&["ip", "netns", "add", &name]);
            if out.status.success() {
                return Netns { name };
            }
            let err = String::from_utf8_lossy(&out.stderr);
            // A leftover of an earlier process with the same pid: skip that name.
            if !err.contains("exists") {
                panic!("{}", describe(&["ip", "netns", "add", &name], &out));
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Pids of processes in the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        let out = run(&["ip", "netns", "pids", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let me = std::process::id() as i32;
        for pid in self.pids() {
            if pid != me {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "lab: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("lab: ip netns del {}: {e}", self.name),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lab
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct LabOptions {
    pub backends: usize,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions { backends: 2 }
    }
}

/// client -- gateway -- N backends. See the module documentation for the addressing plan.
pub struct Lab {
    // Field order = drop order.
    client: Netns,
    gateway: Netns,
    backends: Vec<Netns>,
    dir: TempDir,
}

impl Lab {
    pub fn new(opts: LabOptions) -> Lab {
        assert!(
            opts.backends <= MAX_BACKENDS,
            "at most {MAX_BACKENDS} backends"
        );
        // Guards are owned by locals first, so a panic during setup still removes them.
        let client = Netns::new("c");
        let gateway = Netns::new("g");
        let backends: Vec<Netns> = (0..opts.backends)
            .map(|i| Netns::new(&format!("b{i}")))
            .collect();
        let dir = TempDir::new("lab");

        // Sysctls first, so interfaces created afterwards inherit the defaults.
        let all: Vec<&str> = std::iter::once(client.name())
            .chain(std::iter::once(gateway.name()))
            .chain(backends.iter().map(|b| b.name()))
            .collect();
        for ns in &all {
            let is_gw = *ns == gateway.name();
            in_netns(ns, || {
                for family in ["all", "default"] {
                    write_sysctl(&format!("net.ipv6.conf.{family}.accept_dad"), "0");
                    write_sysctl(&format!("net.ipv4.conf.{family}.rp_filter"), "0");
                }
                if is_gw {
                    write_sysctl("net.ipv4.ip_forward", "1");
                    write_sysctl("net.ipv6.conf.all.forwarding", "1");
                }
            });
        }

        let c = client.name();
        let mut gw = vec![
            "link set lo up".to_string(),
            format!("link add {GATEWAY_CLIENT_IF} type veth peer name {CLIENT_IF} netns {c}"),
            format!(
                "link add {GATEWAY_BACKEND_IF} type bridge forward_delay 0 stp_state 0 mcast_snooping 0"
            ),
        ];
        for (i, b) in backends.iter().enumerate() {
            let b = b.name();
            gw.push(format!(
                "link add vb{i} type veth peer name {BACKEND_IF} netns {b}"
            ));
            gw.push(format!("link set vb{i} master {GATEWAY_BACKEND_IF}"));
            gw.push(format!("link set vb{i} up"));
        }
        gw.extend([
            format!("addr add {GATEWAY_CLIENT_V4}/24 dev {GATEWAY_CLIENT_IF}"),
            format!("addr add {GATEWAY_CLIENT_V6}/64 dev {GATEWAY_CLIENT_IF} nodad"),
            format!("addr add {GATEWAY_BACKEND_V4}/24 dev {GATEWAY_BACKEND_IF}"),
            format!("addr add {GATEWAY_BACKEND_V6}/64 dev {GATEWAY_BACKEND_IF} nodad"),
            format!("link set {GATEWAY_CLIENT_IF} up"),
            format!("link set {GATEWAY_BACKEND_IF} up"),
        ]);
        ip_batch(gateway.name(), &gw);

        ip_batch(
            c,
            &[
                "link set lo up".to_string(),
                format!("addr add {CLIENT_V4}/24 dev {CLIENT_IF}"),
                format!("addr add {CLIENT_V6}/64 dev {CLIENT_IF} nodad"),
                format!("link set {CLIENT_IF} up"),
                format!("route add 0.0.0.0/0 via {GATEWAY_CLIENT_V4}"),
                format!("route add ::/0 via {GATEWAY_CLIENT_V6}"),
            ],
        );
        for (i, b) in backends.iter().enumerate() {
            ip_batch(
                b.name(),
                &[
                    "link set lo up".to_string(),
                    format!("addr add {}/24 dev {BACKEND_IF}", backend_v4(i)),
                    format!("addr add {}/64 dev {BACKEND_IF} nodad", backend_v6(i)),
                    format!("link set {BACKEND_IF} up"),
                    format!("route add 0.0.0.0/0 via {GATEWAY_BACKEND_V4}"),
                    format!("route add ::/0 via {GATEWAY_BACKEND_V6}"),
                ],
            );
        }

        Lab {
            client,
            gateway,
            backends,
            dir,
        }
    }

    pub fn client_ns(&self) -> &str {
        self.client.name()
    }

    pub fn gateway_ns(&self) -> &str {
        self.gateway.name()
    }

    pub fn backend_ns(&self, i: usize) -> &str {
        self.backends[i].name()
    }

    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// All namespace names of this lab (client, gateway, backends).
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(&self.client)
            .chain(std::iter::once(&self.gateway))
            .chain(self.backends.iter())
            .map(|n| n.name().to_string())
            .collect()
    }

    pub fn backend_addr_v4(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.backends.len(), "no backend {i}");
        backend_v4(i)
    }

    pub fn backend_addr_v6(&self, i: usize) -> Ipv6Addr {
        assert!(i < self.backends.len(), "no backend {i}");
        backend_v6(i)
    }

    /// The lab's temp directory (removed with the lab), e.g. for config files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file into [`Lab::dir`] and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        self.dir.write(name, contents)
    }

    /// Adds an address (CIDR, e.g. "198.51.100.3/24" or "fd00:1::3/64") to the client's eth0.
    /// It is never picked as the default source: an IPv4 one in 198.51.100.0/24 becomes a
    /// secondary address, an IPv6 one is added with `preferred_lft 0` (deprecated, but usable
    /// when bound explicitly, see [`Lab::tcp_request_from`]).
    pub fn add_client_address(&self, cidr: &str) {
        let mut argv = vec!["ip", "-n", self.client_ns(), "addr", "add", cidr, "dev"];
        argv.push(CLIENT_IF);
        if cidr.contains(':') {
            argv.extend(["nodad", "preferred_lft", "0"]);
        }
        run_ok(&argv);
    }

    /// Runs `argv` in namespace `ns` through `ip netns exec`.
    pub fn exec(&self, ns: &str, argv: &[&str]) -> Output {
        exec_in(ns, argv)
    }

    /// Like [`Lab::exec`], panics with stdout/stderr on failure, returns stdout.
    pub fn exec_ok(&self, ns: &str, argv: &[&str]) -> String {
        exec_in_ok(ns, argv)
    }

    /// `nft list ruleset` in the gateway.
    pub fn gateway_ruleset(&self) -> String {
        self.exec_ok(self.gateway_ns(), &["nft", "list", "ruleset"])
    }

    /// Runs `f` on a fresh thread inside namespace `ns` and returns its result.
    pub fn in_ns<R: Send, F: FnOnce() -> R + Send>(&self, ns: &str, f: F) -> R {
        in_netns(ns, f)
    }

    /// Runs `f` on a fresh thread inside the client namespace.
    pub fn in_client<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> R {
        in_netns(self.client_ns(), f)
    }

    /// Starts a TCP server in backend `i` on `[::]:port` (dual-stack).
    pub fn start_tcp_server(&self, i: usize, port: u16, id: &str) -> ServerHandle {
        ServerHandle::start(self.backend_ns(i).to_string(), port, id, Proto::Tcp)
    }

    /// Starts a UDP server in backend `i` on `[::]:port` (dual-stack).
    pub fn start_udp_server(&self, i: usize, port: u16, id: &str) -> ServerHandle {
        ServerHandle::start(self.backend_ns(i).to_string(), port, id, Proto::Udp)
    }

    /// Starts a TCP and a UDP server in the client namespace on `[::]:port`: a host outside the
    /// gateway, for traffic the backends' network sends out (egress).
    pub fn start_client_servers(&self, port: u16, id: &str) -> (ServerHandle, ServerHandle) {
        (
            ServerHandle::start(self.client_ns().to_string(), port, id, Proto::Tcp),
            ServerHandle::start(self.client_ns().to_string(), port, id, Proto::Udp),
        )
    }

    /// From the client namespace: connect, read the server's line (without "\n"), close.
    pub fn tcp_request(&self, addr: SocketAddr, timeout: Duration) -> io::Result<String> {
        self.in_client(|| tcp_request(addr, timeout))
    }

    /// Like [`Lab::tcp_request`] with the source address bound to `src` first.
    pub fn tcp_request_from(
        &self,
        src: IpAddr,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<String> {
        self.in_client(|| tcp_request_from(src, addr, timeout))
    }

    /// From the client namespace: open a connection and read the greeting line; the returned
    /// stream stays open (and in the client namespace) until dropped. The server echoes data.
    pub fn tcp_connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<(TcpStream, String)> {
        self.in_client(|| tcp_connect(None, addr, timeout))
    }

    /// From the client namespace: send one datagram, return the reply line (without "\n").
    pub fn udp_request(&self, addr: SocketAddr, timeout: Duration) -> io::Result<String> {
        self.in_client(|| udp_request(addr, timeout))
    }

    /// Like [`Lab::udp_request`] with the source address bound to `src` first.
    pub fn udp_request_from(
        &self,
        src: IpAddr,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<String> {
        self.in_client(|| udp_request_from(src, addr, timeout))
    }

    /// Spawns `argv` in namespace `ns` (`ip netns exec NS argv...`), stdout/stderr to temp files.
    pub fn spawn_in(&self, ns: &str, argv: &[&str]) -> Process {
        Process::spawn_in(ns, argv, |_| {})
    }

    /// Like [`Lab::spawn_in`], with a hook to adjust the command (env, current dir, ...).
    pub fn spawn_in_with(
        &self,
        ns: &str,
        argv: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Process {
        Process::spawn_in(ns, argv, configure)
    }
}

// ---------------------------------------------------------------------------------------------
// Clients (plain functions: they use the namespace of the calling thread)
// ---------------------------------------------------------------------------------------------

/// Splits a server reply `"{id} {peer}"` into id and peer address.
pub fn parse_reply(line: &str) -> Option<(String, SocketAddr)> {
    let (id, peer) = line.trim_end().split_once(' ')?;
    Some((id.to_string(), peer.parse().ok()?))
}

fn normalize_peer(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

fn family_of(addr: &SocketAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn nix_err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn timeval(d: Duration) -> TimeVal {
    let d = d.max(Duration::from_millis(1));
    TimeVal::new(d.as_secs() as _, d.subsec_micros() as _)
}

fn read_line(stream: &mut TcpStream, deadline: Instant) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {:?}",
                        String::from_utf8_lossy(&line)
                    ),
                ));
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Connects (optionally from `src`), reads the greeting line; the stream stays open.
/// Uses the calling thread's namespace.
pub fn tcp_connect(
    src: Option<IpAddr>,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<(TcpStream, String)> {
    let deadline = Instant::now() + timeout;
    let mut stream = match src {
        None => TcpStream::connect_timeout(&addr, timeout)?,
        Some(src) => {
            let fd: OwnedFd = nsock::socket(
                family_of(&addr),
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(nix_err)?;
            let local = SockaddrStorage::from(SocketAddr::new(src, 0));
            nsock::bind(fd.as_raw_fd(), &local).map_err(nix_err)?;
            // Linux bounds a blocking connect() by SO_SNDTIMEO.
            nsock::setsockopt(&fd, sockopt::SendTimeout, &timeval(timeout)).map_err(nix_err)?;
            match nsock::connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
                Ok(()) => {}
                Err(nix::Error::EINPROGRESS) | Err(nix::Error::EAGAIN) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
                }
                Err(e) => return Err(nix_err(e)),
            }
            nsock::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::new(0, 0)).map_err(nix_err)?;
            TcpStream::from(fd)
        }
    };
    let line = read_line(&mut stream, deadline)?;
    Ok((stream, line))
}

/// Connect, read one line (returned without "\n"), close. Uses the calling thread's namespace.
pub fn tcp_request(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    tcp_connect(None, addr, timeout).map(|(_, line)| line)
}

/// Like [`tcp_request`] from source address `src`.
pub fn tcp_request_from(src: IpAddr, addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    tcp_connect(Some(src), addr, timeout).map(|(_, line)| line)
}

/// Send one datagram, return the reply (without "\n"). Uses the calling thread's namespace.
pub fn udp_request(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    let src = if addr.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    udp_request_from(src, addr, timeout)
}

/// Like [`udp_request`] from source address `src` (port chosen by the kernel).
pub fn udp_request_from(src: IpAddr, addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    let sock = UdpSocket::bind(SocketAddr::new(src, 0))?;
    sock.connect(addr)?;
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    sock.send(b"ping\n")?;
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(io::ErrorKind::TimedOut, "no UDP reply")
        } else {
            e
        }
    })?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// A TCP/UDP server thread inside a backend namespace. Drop stops it (within ~50 ms).
pub struct ServerHandle {
    ns: String,
    port: u16,
    id: String,
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

const POLL: Duration = Duration::from_millis(20);
/// A TCP connection is closed by the server at the latest after this long.
const MAX_HOLD: Duration = Duration::from_secs(300);

fn bind_dual_stack(ty: SockType, port: u16) -> io::Result<OwnedFd> {
    let fd =
        nsock::socket(AddressFamily::Inet6, ty, SockFlag::SOCK_CLOEXEC, None).map_err(nix_err)?;
    nsock::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(nix_err)?;
    nsock::setsockopt(&fd, sockopt::Ipv6V6Only, &false).map_err(nix_err)?;
    let addr = SockaddrStorage::from(SocketAddr::V6(SocketAddrV6::new(
        Ipv6Addr::UNSPECIFIED,
        port,
        0,
        0,
    )));
    nsock::bind(fd.as_raw_fd(), &addr).map_err(nix_err)?;
    if ty == SockType::Stream {
        nsock::listen(&fd, Backlog::new(1024).map_err(nix_err)?).map_err(nix_err)?;
    }
    Ok(fd)
}

impl ServerHandle {
    fn start(ns: String, port: u16, id: &str, proto: Proto) -> ServerHandle {
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let thread = {
            let (ns, id, stop, hits) = (ns.clone(), id.to_string(), stop.clone(), hits.clone());
            std::thread::Builder::new()
                .name(format!("lab-{id}"))
                .spawn(move || {
                    enter_netns(&ns);
                    let ty = match proto {
                        Proto::Tcp => SockType::Stream,
                        Proto::Udp => SockType::Datagram,
                    };
                    let fd = match bind_dual_stack(ty, port) {
                        Ok(fd) => fd,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    match proto {
                        Proto::Tcp => tcp_serve(TcpListener::from(fd), &id, &stop, &hits),
                        Proto::Udp => udp_serve(UdpSocket::from(fd), &id, &stop, &hits),
                    }
                })
                .expect("spawn server thread")
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("server {id} ({proto:?}) in {ns} on port {port}: {e}"),
            Err(_) => panic!("server thread {id} in {ns} died during startup"),
        }
        ServerHandle {
            ns,
            port,
            id: id.to_string(),
            stop,
            hits,
            thread: Some(thread),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// TCP connections accepted / UDP datagrams answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tcp_serve(listener: TcpListener, id: &str, stop: &Arc<AtomicBool>, hits: &AtomicUsize) {
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("lab server {id}: set_nonblocking: {e}");
        return;
    }
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                hits.fetch_add(1, Ordering::SeqCst);
                let greeting = format!("{id} {}\n", normalize_peer(peer));
                let stop = stop.clone();
                conns.retain(|h| !h.is_finished());
                match std::thread::Builder::new()
                    .name(format!("lab-{id}-conn"))
                    .spawn(move || tcp_conn(stream, greeting, &stop))
                {
                    Ok(h) => conns.push(h),
                    Err(e) => eprintln!("lab server {id}: spawn: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // e.g. ECONNABORTED, EMFILE: keep serving.
                eprintln!("lab server {id}: accept: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
    for h in conns {
        let _ = h.join();
    }
}

fn tcp_conn(mut stream: TcpStream, greeting: String, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    if stream.write_all(greeting.as_bytes()).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(Some(POLL));
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) && start.elapsed() < MAX_HOLD {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

fn udp_serve(sock: UdpSocket, id: &str, stop: &AtomicBool, hits: &AtomicUsize) {
    if let Err(e) = sock.set_read_timeout(Some(POLL)) {
        eprintln!("lab server {id}: set_read_timeout: {e}");
        return;
    }
    let mut buf = [0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        match sock.recv_from(&mut buf) {
            Ok((_, peer)) => {
                hits.fetch_add(1, Ordering::SeqCst);
                let reply = format!("{id} {}\n", normalize_peer(peer));
                let _ = sock.send_to(reply.as_bytes(), peer);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                eprintln!("lab server {id}: recv: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A process spawned inside a namespace. Drop: SIGTERM, wait up to 2 s, then SIGKILL.
/// If the test is panicking, Drop prints the captured stderr.
pub struct Process {
    child: Child,
    argv: Vec<String>,
    status: Option<ExitStatus>,
    stdout: TempFile,
    stderr: TempFile,
}

impl Process {
    /// Spawns `ip netns exec NS argv...` (the pid is argv[0]'s: `ip` execs it).
    pub fn spawn_in(ns: &str, argv: &[&str], configure: impl FnOnce(&mut Command)) -> Process {
        let stdout = TempFile::new("stdout");
        let stderr = TempFile::new("stderr");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(File::create(stdout.path()).expect("create stdout file"))
            .stderr(File::create(stderr.path()).expect("create stderr file"));
        configure(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {argv:?} in {ns}: {e}"));
        Process {
            child,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            status: None,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(self.stdout.path()).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// Sends `sig` (ignored if the process has already been reaped).
    pub fn signal(&self, sig: Signal) {
        if self.status.is_none() {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), sig);
        }
    }

    /// Non-blocking: exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        self.kill9_quiet().expect("wait after SIGKILL")
    }

    fn kill9_quiet(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.try_wait() {
            return Some(s);
        }
        self.signal(Signal::SIGKILL);
        self.status = self.child.wait().ok();
        self.status
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> ExitStatus {
        self.stop_quiet(grace).expect("wait for process")
    }

    fn stop_quiet(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_wait() {
            return Some(s);
        }
        self.signal(Signal::SIGTERM);
        self.wait_timeout(grace).or_else(|| self.kill9_quiet())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop_quiet(Duration::from_secs(2));
        if std::thread::panicking() {
            eprintln!(
                "lab: process {:?} (pid {}) status {:?}\n--- stderr ---\n{}",
                self.argv,
                self.child.id(),
                self.status,
                self.stderr_text()
            );
        }
    }
}
