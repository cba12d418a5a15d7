//! Health benchmark: what natlb's probe engine costs, and how fast a probe's decision reaches
//! the kernel, with the real daemon (`natlb run`) probing real TCP backends.
//!
//! For each size (services × backends each; TCP probes, interval 1s, rise 2, fall 3, the
//! fast_interval and timeout left at their defaults), in a fresh network namespace that this
//! program creates and removes (also on panic, SIGINT and SIGTERM):
//!
//! - Backends, as remote hosts: every backend address (10.64.0.0/10, port 8080) is routed to a
//!   TUN device, and ONE thread of this program answers each SYN that comes out of it with a
//!   SYN-ACK (common/tun_responder.rs). It counts them: probes per second. The gateway's kernel
//!   does what it does with a real network (SYN out, SYN-ACK in, ACK and the probe's reset out);
//!   none of the backends' work runs in natlb's context. The SYN-ACKs are received in the
//!   context of the responder thread that writes them, so its system time (which also holds its
//!   own TUN reads and writes) is reported beside natlb's: natlb + responder is an upper bound
//!   for the gateway's whole cost. With two or more CPUs natlb is pinned to CPU 0 and the
//!   responder to CPU 1.
//!   `--loopback` puts the backends on natlb's own loopback instead (127.64.0.0/10, one
//!   listener thread that accepts and closes, no pinning): then both ends of every probe
//!   connection run in natlb's context, as in the first measurements.
//! - natlb: started through `ip netns exec` on a generated config; its log (stderr) is read line
//!   by line (and kept in a file). The benchmark waits for "natlb is running" and for every
//!   backend's first-probe line.
//! - Probe engine cost: after the first probes, a few seconds of quiet, then a window (30 s) over
//!   which it reads natlb's CPU time (/proc/PID/stat utime + stime), then VmRSS and VmHWM.
//! - Decision → commit: for random backends, one at a time: a set element of this program's OWN
//!   table `inet benchblock` (output hook, `reject with tcp reset` for the backend's address,
//!   port 8080) makes its probes fail; it waits for natlb's "health change committed in one
//!   batch" line that follows the backend's DOWN line, removes the block and waits for the
//!   restore commit. natlb's own `decision_to_commit_ms` and `kernel_ms` from those lines are
//!   the figures; the time from block / unblock to the commit line shows the detection delay.
//!
//! Default sizes: 10k × 1 (10k services and 10k backends: both targets at once; a withdraw
//! there takes a service's only backend), 1k × 10 (10k backends, a withdraw leaves 9) and
//! 10k × 2 (10k services where a withdraw leaves one backend; 20k backends, twice the probe
//! load of the CPU/RSS target).
//!
//! The failure injector: a blocked backend answers its probes with a TCP reset, like a closed
//! port (the responder answers its SYNs with a reset; with `--loopback`, a table of this
//! program in the namespace does).
//!
//! Probe connections are tracked by conntrack, as on a real gateway (natlb's table has nat
//! hooks, so every connection natlb opens gets an entry: with the kernel's defaults it stays
//! 10 s in CLOSE after a reset, 120 s in TIME_WAIT after a FIN exchange; the default table holds
//! 262144). `--notrack` adds raw-priority `notrack` rules for port 8080 (both ways) in a table
//! of the benchmark's own in natlb's namespace, which takes conntrack out of the picture.
//!
//! Prints markdown tables on stdout (progress goes to stderr). It asserts no timings.
//!
//! `cargo bench --bench health -- [--sizes 10000x1,1000x10,10000x2] [--rounds 30]
//! [--window 30] [--seed S] [--keep-logs DIR] [--notrack] [--loopback]`. Needs root (network namespaces,
//! nf_tables). `NATLB_BENCH_BIN=PATH` runs that build of natlb instead of this one (A/B runs).

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, LineWriter, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

const TABLE: &str = "natlb";
/// The port of every backend; the listener's.
const PORT: u16 = 8080;
/// This benchmark's own table in the namespace: the failure injector.
const BLOCK_TABLE: &str = "benchblock";
/// This benchmark's table in natlb's namespace with `--notrack`.
const NOTRACK_TABLE: &str = "benchnotrack";
/// The TUN device that stands for the network to the backends, and its point-to-point pair.
const TUN_LINK: &str = "bench-be";
const TUN_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 1);
const TUN_PEER: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 2);
/// Every remote backend address, routed to the TUN device.
const BE_RANGE: &str = "10.64.0.0/10";
/// How long the daemon may take to say "natlb is running".
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the first probes of every backend may take, after "natlb is running".
const FIRST_PROBES_TIMEOUT: Duration = Duration::from_secs(120);
/// Quiet time between the first probes and the CPU window.
const STEADY_AFTER: Duration = Duration::from_secs(5);
/// How long one withdraw or restore may take to show up as a commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Size {
    services: usize,
    backends: usize,
}

impl Size {
    fn total(self) -> usize {
        self.services * self.backends
    }
}

struct Options {
    sizes: Vec<Size>,
    rounds: usize,
    window: Duration,
    seed: u64,
    keep_logs: Option<PathBuf>,
    /// Exempt the probe connections (port 8080, both ways) from conntrack.
    notrack: bool,
    /// Backends on natlb's own loopback instead of a second namespace.
    loopback: bool,
}

const USAGE: &str = "usage: cargo bench --bench health -- [--sizes 10000x1,1000x10,10000x2] \
                     [--rounds 30] [--window SECONDS] [--seed S] [--keep-logs DIR] [--notrack] \
                     [--loopback]";

/// Backend addresses: (127|10).(64..128).(0..=255).(1..=250).
const MAX_BACKENDS: usize = 64 * 256 * 250;

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        sizes: vec![
            Size {
                services: 10_000,
                backends: 1,
            },
            Size {
                services: 1_000,
                backends: 10,
            },
            Size {
                services: 10_000,
                backends: 2,
            },
        ],
        rounds: 30,
        window: Duration::from_secs(30),
        seed: 0x6865_616c_7468,
        keep_logs: None,
        notrack: false,
        loopback: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        let number = |name: &str, v: &str| -> Result<usize, String> {
            v.trim()
                .replace('_', "")
                .parse()
                .map_err(|_| format!("{name}: {v:?} is not a number\n{USAGE}"))
        };
        match a.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--sizes" => {
                let v = value("--sizes")?;
                o.sizes = v
                    .split(',')
                    .map(|s| {
                        let (n, b) = s
                            .split_once(['x', 'X'])
                            .ok_or(format!("--sizes: {s:?} is not SERVICESxBACKENDS\n{USAGE}"))?;
                        Ok(Size {
                            services: number("--sizes", n)?,
                            backends: number("--sizes", b)?,
                        })
                    })
                    .collect::<Result<_, String>>()?;
            }
            "--rounds" => o.rounds = number("--rounds", &value("--rounds")?)?,
            "--window" => {
                o.window = Duration::from_secs(number("--window", &value("--window")?)? as u64)
            }
            "--seed" => o.seed = number("--seed", &value("--seed")?)? as u64,
            "--keep-logs" => o.keep_logs = Some(PathBuf::from(value("--keep-logs")?)),
            "--notrack" => o.notrack = true,
            "--loopback" => o.loopback = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.sizes.is_empty()
        || o.sizes
            .iter()
            .any(|s| s.services == 0 || s.backends == 0 || s.backends > 254)
    {
        return Err(format!(
            "--sizes: positive services, 1..=254 backends each\n{USAGE}"
        ));
    }
    if o.sizes.iter().any(|s| s.total() > MAX_BACKENDS) {
        return Err(format!("--sizes: at most {MAX_BACKENDS} backends\n{USAGE}"));
    }
    if o.window.is_zero() {
        return Err(format!("--window must be positive\n{USAGE}"));
    }
    Ok(o)
}

mod common;
use common::tun_responder::Responder;
use common::*;

/// Runs `program args` inside `ns`; its stderr on failure.
fn run_in(ns: &Netns, program: &str, args: &[&str]) -> Result<String, String> {
    in_netns(ns, || {
        let out = command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------------------

/// VIP of service `i`: 198.18.a.b (a < 256, b in 1..=200), port 80 and up beyond 51,200.
fn vip_of(i: usize) -> String {
    let host = i % (256 * 200);
    let addr = Ipv4Addr::new(198, 18, (host / 200) as u8, (host % 200 + 1) as u8);
    format!("{addr}:{}", 80 + i / (256 * 200))
}

/// Address of backend number `j` (over all services): 10.(64..).(0..=255).(1..=250) in
/// [`BE_RANGE`], or 127.(64..).(0..=255).(1..=250) on loopback.
fn backend_ip(j: usize, loopback: bool) -> Ipv4Addr {
    Ipv4Addr::new(
        if loopback { 127 } else { 10 },
        (64 + j / (256 * 250)) as u8,
        ((j / 250) % 256) as u8,
        (j % 250 + 1) as u8,
    )
}

fn backend_addr(j: usize, loopback: bool) -> String {
    format!("{}:{PORT}", backend_ip(j, loopback))
}

fn config_toml(size: Size, dir: &Path, loopback: bool) -> String {
    let Size { services, backends } = size;
    let mut out = String::with_capacity(services * (250 + backends * 50));
    let _ = write!(
        out,
        "# natlb health benchmark: {services} services x {backends} backends\n\
         [daemon]\ntable = \"{TABLE}\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\n\
         keep_rules_on_exit = true\n",
        dir.join("control.sock").display(),
        dir.join("state").display()
    );
    for i in 0..services {
        let _ = write!(
            out,
            "\n[[service]]\nname = \"svc{i}\"\nlisten = \"{}\"\nprotocol = \"tcp\"\n\
             scheduler = \"weighted\"\nsnat = \"masquerade\"\n\
             [service.health]\ntype = \"tcp\"\ninterval = \"1s\"\nrise = 2\nfall = 3\n",
            vip_of(i)
        );
        for k in 0..backends {
            let _ = write!(
                out,
                "[[service.backend]]\naddress = \"{}\"\n",
                backend_addr(i * backends + k, loopback)
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The backends: one listener thread in the namespace
// ---------------------------------------------------------------------------------------------

/// Accepts and closes every connection to port 8080 of any local address of the namespace.
struct Listener {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    tid: i32,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    fn start(ns: &Netns, cpu: Option<usize>) -> Result<Listener, String> {
        let path = ns.path();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let (stop2, accepted2, errors2) = (stop.clone(), accepted.clone(), errors.clone());
        let thread = std::thread::spawn(move || {
            let setup = || -> Result<TcpListener, String> {
                let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))?;
                if let Some(cpu) = cpu {
                    pin_to(cpu)?;
                }
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT))
                    .map_err(|e| format!("bind 0.0.0.0:{PORT}: {e}"))?;
                // A deep accept queue: probes come in bursts (std listens with 128).
                // SAFETY: listen on a socket this thread owns.
                if unsafe { libc::listen(l.as_raw_fd(), 4096) } != 0 {
                    return Err(format!("listen: {}", std::io::Error::last_os_error()));
                }
                l.set_nonblocking(true)
                    .map_err(|e| format!("nonblocking: {e}"))?;
                Ok(l)
            };
            let l = match setup() {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            // SAFETY: gettid has no preconditions.
            let _ = tx.send(Ok(unsafe { libc::gettid() }));
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((conn, _)) => {
                        drop(conn);
                        accepted2.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let mut pfd = libc::pollfd {
                            fd: l.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd.
                        unsafe { libc::poll(&mut pfd, 1, 100) };
                    }
                    Err(_) => {
                        errors2.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
        match rx.recv() {
            Ok(Ok(tid)) => Ok(Listener {
                stop,
                accepted,
                errors,
                tid,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err("the listener thread died".into()),
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon and its log
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    FirstUp,
    FirstDown,
    Down,
    Up,
}

#[derive(Debug, Clone)]
struct Commit {
    /// The transitions logged just before it: the decisions of its batch.
    reports: Vec<(Kind, String)>,
    elements: Option<usize>,
    kernel_ms: Option<f64>,
    decision_to_commit_ms: Option<f64>,
}

#[derive(Debug)]
enum Event {
    Running,
    Report(Kind, String),
    Commit(Commit),
    Other,
}

/// The value of `key=value` in a log line (the last one: fields come after the message).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn report_kind(line: &str) -> Option<Kind> {
    if line.contains("backend up at its first probe") {
        Some(Kind::FirstUp)
    } else if line.contains("backend DOWN at its first probe") {
        Some(Kind::FirstDown)
    } else if line.contains("backend DOWN after") {
        Some(Kind::Down)
    } else if line.contains("backend UP after") {
        Some(Kind::Up)
    } else {
        None
    }
}

/// `natlb run` in a namespace, its stderr read by a thread (and copied to a file).
struct Natlb {
    child: ChildGuard,
    pid: u32,
    lines: mpsc::Receiver<(Instant, String)>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Reports since the last non-report line: the batch a commit line closes.
    pending: Vec<(Kind, String)>,
    tail: VecDeque<String>,
    errors: Vec<String>,
    /// WARN lines other than the expected "no backend of service ... is up".
    warnings: Vec<String>,
    all_down_warnings: usize,
    /// Backends natlb has declared down and not up since.
    down: HashSet<String>,
}

impl Natlb {
    fn start(ns: &Netns, config: &Path, log: &Path, cpu: Option<usize>) -> Result<Natlb, String> {
        // NATLB_BENCH_BIN runs another build of natlb (an A/B between two commits on the
        // same machine); the default is this checkout's.
        let bin = std::env::var("NATLB_BENCH_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_natlb").to_string());
        let mut file =
            LineWriter::new(File::create(log).map_err(|e| format!("create {log:?}: {e}"))?);
        // `ip netns exec` and `taskset` exec the command: the child's pid is natlb's, and every
        // thread natlb starts inherits the CPU set.
        let mut cmd = command("ip");
        cmd.args(["netns", "exec", ns.name()]);
        if let Some(cpu) = cpu {
            cmd.args(["taskset", "-c", &cpu.to_string()]);
        }
        let child = cmd
            .args([bin.as_str(), "run", "-c"])
            .arg(config)
            .env("NATLB_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        let mut child = ChildGuard(child);
        let pid = child.0.id();
        let stderr = child.0.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        // Drains stderr until the daemon exits, so it never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let at = Instant::now();
                let _ = writeln!(file, "{line}");
                let _ = tx.send((at, line));
            }
        });
        Ok(Natlb {
            child,
            pid,
            lines: rx,
            reader: Some(reader),
            pending: Vec::new(),
            tail: VecDeque::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
            all_down_warnings: 0,
            down: HashSet::new(),
        })
    }

    /// The next log event before `deadline`; `Ok(None)` at the deadline, `Err` if natlb exited.
    fn next(&mut self, deadline: Instant) -> Result<Option<(Instant, Event)>, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, line) = match self.lines.recv_timeout(left) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => return Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.0.wait().map(|s| s.to_string());
                return Err(format!(
                    "natlb exited ({}); last log lines: {}",
                    status.unwrap_or_else(|e| e.to_string()),
                    self.tail()
                ));
            }
        };
        if self.tail.len() == 4 {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        let event = if let Some(kind) = report_kind(&line) {
            let backend = field(&line, "backend").unwrap_or("?").to_string();
            if matches!(kind, Kind::FirstDown | Kind::Down) {
                self.down.insert(backend.clone());
            } else {
                self.down.remove(&backend);
            }
            // First-probe "up" decisions change no element and close no batch with a commit.
            if kind != Kind::FirstUp {
                self.pending.push((kind, backend.clone()));
            }
            Event::Report(kind, backend)
        } else if line.contains("health change committed in one batch") {
            Event::Commit(Commit {
                reports: std::mem::take(&mut self.pending),
                elements: field(&line, "elements_changed").and_then(|v| v.parse().ok()),
                kernel_ms: field(&line, "kernel_ms").and_then(|v| v.parse().ok()),
                decision_to_commit_ms: field(&line, "decision_to_commit_ms")
                    .and_then(|v| v.parse().ok()),
            })
        } else {
            self.pending.clear();
            if line.contains("natlb is running") {
                Event::Running
            } else {
                if line.contains(" ERROR ") {
                    self.errors.push(line);
                } else if line.contains(" WARN ") {
                    if line.contains("no backend of service") {
                        self.all_down_warnings += 1;
                    } else {
                        self.warnings.push(line);
                    }
                }
                Event::Other
            }
        };
        Ok(Some((at, event)))
    }

    fn tail(&self) -> String {
        self.tail
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" | ")
    }

    fn rss(&self) -> (Option<u64>, Option<u64>, Option<u64>) {
        (
            proc_status(self.pid, "VmRSS"),
            proc_status(self.pid, "VmHWM"),
            proc_status(self.pid, "Threads"),
        )
    }

    /// SIGTERM, then up to 30 s for it to exit; how it ended.
    fn stop(mut self) -> String {
        let _ = signal::kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match self.child.0.try_wait() {
                Ok(Some(s)) => break s.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => break "still running 30 s after SIGTERM; killed".into(),
                Err(e) => break format!("wait: {e}"),
            }
        };
        drop(self.child);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

/// utime + stime (clock ticks) from a /proc/.../stat file.
fn cpu_ticks(path: &str) -> Option<u64> {
    let (u, s) = cpu_ticks_split(path)?;
    Some(u + s)
}

fn cpu_ticks_split(path: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start with the state, field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn proc_status(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Conntrack and socket figures of the namespace (read from a thread inside it).
#[derive(Default)]
struct NetStats {
    conntrack: Option<u64>,
    conntrack_max: Option<u64>,
    /// Sums over CPUs of /proc/net/stat/nf_conntrack's drop, early_drop, insert_failed.
    ct_drop: u64,
    ct_early_drop: u64,
    ct_insert_failed: u64,
    /// TCP sockets in TIME_WAIT (/proc/net/sockstat).
    time_wait: Option<u64>,
    /// TcpExt counters (/proc/net/netstat): accept queue overflows and drops of the listener,
    /// TIME_WAIT sockets not created for lack of buckets.
    listen_overflows: Option<u64>,
    listen_drops: Option<u64>,
    tw_overflow: Option<u64>,
}

fn net_stats(ns: &Netns) -> NetStats {
    in_netns(ns, || {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let mut s = NetStats {
            conntrack: read("/proc/sys/net/netfilter/nf_conntrack_count")
                .and_then(|v| v.trim().parse().ok()),
            conntrack_max: read("/proc/sys/net/netfilter/nf_conntrack_max")
                .and_then(|v| v.trim().parse().ok()),
            ..NetStats::default()
        };
        if let Some(t) = read("/proc/thread-self/net/stat/nf_conntrack") {
            let mut lines = t.lines();
            let header: Vec<&str> = lines
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect();
            let col = |name: &str| header.iter().position(|h| *h == name);
            let (d, e, i) = (col("drop"), col("early_drop"), col("insert_failed"));
            for row in lines {
                let v: Vec<u64> = row
                    .split_whitespace()
                    .map(|x| u64::from_str_radix(x, 16).unwrap_or(0))
                    .collect();
                let get = |c: Option<usize>| c.and_then(|c| v.get(c).copied()).unwrap_or(0);
                s.ct_drop += get(d);
                s.ct_early_drop += get(e);
                s.ct_insert_failed += get(i);
            }
        }
        if let Some(t) = read("/proc/thread-self/net/netstat") {
            // Pairs of lines: "TcpExt: names..." then "TcpExt: values...".
            let tcp_ext: Vec<Vec<&str>> = t
                .lines()
                .filter(|l| l.starts_with("TcpExt:"))
                .map(|l| l.split_whitespace().collect())
                .collect();
            if let [names, values, ..] = tcp_ext.as_slice() {
                let get = |name: &str| {
                    names
                        .iter()
                        .position(|n| *n == name)
                        .and_then(|i| values.get(i)?.parse().ok())
                };
                s.listen_overflows = get("ListenOverflows");
                s.listen_drops = get("ListenDrops");
                s.tw_overflow = get("TCPTimeWaitOverflow");
            }
        }
        if let Some(t) = read("/proc/thread-self/net/sockstat") {
            s.time_wait = t.lines().find(|l| l.starts_with("TCP:")).and_then(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.iter()
                    .position(|x| *x == "tw")
                    .and_then(|p| w.get(p + 1)?.parse().ok())
            });
        }
        s
    })
}

/// Busy share, %, between two (idle, total) readings.
fn busy_pct(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<f64> {
    let ((i0, t0), (i1, t1)) = a.zip(b)?;
    (t1 > t0).then(|| 100.0 * (1.0 - (i1 - i0) as f64 / (t1 - t0) as f64))
}

/// Median and p99 (nearest rank) of `v`.
fn median_p99(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |q: f64| ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (median, s[rank(0.99)])
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::NAN, f64::NAN), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

struct Cpu {
    /// natlb's utime and stime over the window, % of one core.
    user_pct: f64,
    sys_pct: f64,
    probes_per_s: f64,
    listener_pct: Option<f64>,
    /// All CPUs busy, % of the machine.
    machine_pct: Option<f64>,
    /// The CPU natlb is pinned to, busy (natlb, softirq, anything else), % of that CPU.
    natlb_cpu_busy_pct: Option<f64>,
    rss_kb: Option<u64>,
    hwm_kb: Option<u64>,
    threads: Option<u64>,
    net: NetStats,
    /// Decisions logged during the window (nothing was blocked: none expected).
    false_decisions: usize,
}

/// One withdraw or restore, as natlb logged it.
struct Observed {
    /// From adding / removing the block to the commit line.
    after_action: Duration,
    elements: Option<usize>,
    kernel_ms: Option<f64>,
    decision_to_commit_ms: Option<f64>,
    /// Other decisions in the same batch.
    shared: usize,
}

#[derive(Default)]
struct SizeResult {
    backends_total: usize,
    /// Spawn to "natlb is running".
    start: Option<Duration>,
    /// "natlb is running" to the last first-probe line.
    first_probes: Option<Duration>,
    first_down: usize,
    cpu: Option<Cpu>,
    withdraws: Vec<Observed>,
    restores: Vec<Observed>,
    rounds_tried: usize,
    /// Decisions about backends the benchmark did not touch, after the first probes.
    spurious: Vec<String>,
    stop: Option<String>,
    /// The namespace's conntrack and sockets after the rounds, and how long natlb had run.
    net_end: Option<(Duration, NetStats)>,
    /// Withdraws / restores not seen, and natlb's last log lines at the first of them.
    round_failures: Vec<String>,
    first_failure_log: Option<String>,
    notes: Vec<String>,
    error: Option<String>,
    health: String,
    natlb_errors: Vec<String>,
    natlb_warnings: Vec<String>,
    all_down_warnings: usize,
}

impl SizeResult {
    fn round_failure(&mut self, label: &str, round: usize, e: String, natlb: &Natlb) {
        eprintln!("bench: {label}: round {round}: {e}");
        if self.first_failure_log.is_none() {
            self.first_failure_log = Some(natlb.tail());
        }
        self.round_failures.push(e);
    }
}

// ---------------------------------------------------------------------------------------------
// One size
// ---------------------------------------------------------------------------------------------

/// The block set: this program's own table in the namespace. Probes to an address in
/// `@blocked` port 8080 are answered with a TCP reset: "connection refused" (input hook, with
/// `--loopback`).
fn block_table_script() -> String {
    format!(
        "table inet {BLOCK_TABLE} {{\n\
         \tset blocked {{ type ipv4_addr; }}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tip daddr @blocked tcp dport {PORT} reject with tcp reset\n\
         \t}}\n\
         }}\n"
    )
}

/// `--notrack`, in natlb's namespace: raw-priority chains exempt every probe connection (both
/// directions) from conntrack.
fn notrack_script() -> String {
    format!(
        "table inet {NOTRACK_TABLE} {{\n\
         \tchain raw_output {{\n\
         \t\ttype filter hook output priority raw; policy accept;\n\
         \t\ttcp dport {PORT} notrack\n\
         \t\ttcp sport {PORT} notrack\n\
         \t}}\n\
         \tchain raw_prerouting {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\ttcp dport {PORT} notrack\n\
         \t\ttcp sport {PORT} notrack\n\
         \t}}\n\
         }}\n"
    )
}

/// Where natlb and the backends run.
struct Topology {
    /// natlb's namespace: the gateway.
    gw: Netns,
    backends: Backends,
    /// The CPU natlb is pinned to (remote backends, two or more CPUs).
    natlb_cpu: Option<usize>,
}

enum Backends {
    /// Every backend address routed to a TUN device whose SYNs this program answers.
    Remote(Responder),
    /// `--loopback`: a listener in natlb's namespace, and the block table there.
    Loopback(Listener),
}

impl Topology {
    fn new(o: &Options, dir: &TempDir) -> Result<Topology, String> {
        let gw = Netns::new("h");
        run_in(&gw, "ip", &["link", "set", "lo", "up"])?;
        if o.notrack {
            let script = dir.write("notrack.nft", &notrack_script());
            run_in(&gw, "nft", &["-f", &script.to_string_lossy()])?;
        }
        if o.loopback {
            let script = dir.write("block.nft", &block_table_script());
            run_in(&gw, "nft", &["-f", &script.to_string_lossy()])?;
            let listener = Listener::start(&gw, None).map_err(|e| format!("listener: {e}"))?;
            return Ok(Topology {
                gw,
                backends: Backends::Loopback(listener),
                natlb_cpu: None,
            });
        }
        // natlb on CPU 0, the responder (the "network") on CPU 1.
        let two = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
        let responder = Responder::start(
            &gw.path(),
            TUN_LINK,
            TUN_LOCAL,
            TUN_PEER,
            PORT,
            two.then_some(1),
        )
        .map_err(|e| format!("responder: {e}"))?;
        run_in(&gw, "ip", &["route", "add", BE_RANGE, "dev", TUN_LINK])?;
        Ok(Topology {
            gw,
            backends: Backends::Remote(responder),
            natlb_cpu: two.then_some(0),
        })
    }

    /// Probe connections answered so far.
    fn answered(&self) -> u64 {
        match &self.backends {
            Backends::Remote(r) => r.answered(),
            Backends::Loopback(l) => l.accepted(),
        }
    }

    /// CPU ticks of the thread that plays the backends.
    fn backends_ticks(&self) -> Option<u64> {
        let tid = match &self.backends {
            Backends::Remote(r) => r.tid,
            Backends::Loopback(l) => l.tid,
        };
        cpu_ticks(&format!("/proc/self/task/{tid}/stat"))
    }

    fn set_blocked(&self, ip: Ipv4Addr, blocked: bool) -> Result<(), String> {
        match &self.backends {
            Backends::Remote(r) => {
                r.set_blocked(ip, blocked);
                Ok(())
            }
            Backends::Loopback(_) => set_blocked(&self.gw, ip, blocked),
        }
    }
}

fn set_blocked(ns: &Netns, ip: Ipv4Addr, blocked: bool) -> Result<(), String> {
    let verb = if blocked { "add" } else { "delete" };
    let elem = format!("{{ {ip} }}");
    run_in(
        ns,
        "nft",
        &[verb, "element", "inet", BLOCK_TABLE, "blocked", &elem],
    )
    .map(|_| ())
}

/// Waits for the commit whose batch holds decision `kind` about `backend`; every other
/// decision seen meanwhile goes to `spurious`. `Ok(Err(_))`: none within [`COMMIT_TIMEOUT`];
/// `Err(_)`: natlb exited.
fn wait_commit(
    natlb: &mut Natlb,
    kind: Kind,
    backend: &str,
    since: Instant,
    spurious: &mut Vec<String>,
) -> Result<Result<Observed, String>, String> {
    let deadline = since + COMMIT_TIMEOUT;
    let mut seen_report = false;
    loop {
        match natlb.next(deadline)? {
            None => {
                return Ok(Err(format!(
                    "no {} commit for {backend} within {COMMIT_TIMEOUT:?} ({})",
                    if kind == Kind::Down {
                        "withdraw"
                    } else {
                        "restore"
                    },
                    if seen_report {
                        "its decision was logged"
                    } else {
                        "no decision logged either"
                    },
                )));
            }
            Some((_, Event::Report(k, b))) => {
                if k == kind && b == backend {
                    seen_report = true;
                } else {
                    spurious.push(format!("{k:?} {b}"));
                }
            }
            Some((at, Event::Commit(c))) => {
                if c.reports.iter().any(|(k, b)| *k == kind && b == backend) {
                    return Ok(Ok(Observed {
                        after_action: at - since,
                        elements: c.elements,
                        kernel_ms: c.kernel_ms,
                        decision_to_commit_ms: c.decision_to_commit_ms,
                        shared: c.reports.len() - 1,
                    }));
                }
            }
            Some(_) => {}
        }
    }
}

fn run_size(o: &Options, size: Size, rng: &mut Rng, notes: &mut Vec<String>) -> SizeResult {
    let label = format!("{} x {}", size.services, size.backends);
    let total = size.total();
    let mut r = SizeResult {
        backends_total: total,
        ..SizeResult::default()
    };
    let dir = TempDir::new();
    eprintln!(
        "bench: {label}: writing the config ({total} backends in {})",
        if o.loopback {
            "127.64.0.0/10"
        } else {
            BE_RANGE
        }
    );
    let text = config_toml(size, &dir.path, o.loopback);
    // natlb's own validation must accept loopback backends; the effective probe settings.
    match natlb::config::parse("natlb.toml", &text) {
        Ok(m) => {
            let h = &m.services[0].health;
            r.health = format!(
                "{:?}, interval {:?}, fast_interval {:?}, timeout {:?}, rise {}, fall {}",
                h.kind, h.interval, h.fast_interval, h.timeout, h.rise, h.fall
            );
        }
        Err(e) => {
            r.error = Some(format!("natlb rejects the config: {e}"));
            return r;
        }
    }
    let config = dir.write("natlb.toml", &text);
    drop(text);
    let log = dir.path.join("natlb.log");

    let topo = match Topology::new(o, &dir) {
        Ok(t) => t,
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    settle_or_note(&format!("natlb at {label}"), notes);

    eprintln!("bench: {label}: natlb run");
    let started = Instant::now();
    let mut natlb = match Natlb::start(&topo.gw, &config, &log, topo.natlb_cpu) {
        Ok(n) => n,
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    let outcome = measure(o, size, rng, &topo, &mut natlb, started, &mut r);
    if let Err(e) = outcome {
        eprintln!("bench: {label}: {e}");
        r.error = Some(e);
    }
    r.natlb_errors = std::mem::take(&mut natlb.errors);
    r.natlb_warnings = std::mem::take(&mut natlb.warnings);
    r.all_down_warnings = natlb.all_down_warnings;
    let stop = natlb.stop();
    eprintln!("bench: {label}: natlb stopped: {stop}");
    r.stop = Some(stop);
    if let Some(keep) = &o.keep_logs {
        let to = keep.join(format!(
            "natlb-health-{}x{}.log",
            size.services, size.backends
        ));
        match std::fs::create_dir_all(keep).and_then(|_| std::fs::copy(&log, &to)) {
            Ok(_) => eprintln!("bench: {label}: natlb's log kept in {}", to.display()),
            Err(e) => eprintln!(
                "bench: {label}: cannot keep the log in {}: {e}",
                to.display()
            ),
        }
    }
    if let Backends::Loopback(l) = &topo.backends {
        let errors = l.errors.load(Ordering::Relaxed);
        if errors > 0 {
            r.notes
                .push(format!("the listener had {errors} accept errors"));
        }
    }
    drop(topo);
    r
}

#[allow(clippy::too_many_arguments)]
fn measure(
    o: &Options,
    size: Size,
    rng: &mut Rng,
    topo: &Topology,
    natlb: &mut Natlb,
    started: Instant,
    r: &mut SizeResult,
) -> Result<(), String> {
    let label = format!("{} x {}", size.services, size.backends);
    let total = size.total();

    // Start, then every backend's first probe.
    let deadline = started + DAEMON_START_TIMEOUT;
    let running_at = loop {
        match natlb.next(deadline)? {
            Some((at, Event::Running)) => break at,
            Some(_) => {}
            None => {
                return Err(format!(
                    "no \"natlb is running\" within {DAEMON_START_TIMEOUT:?}; last log lines: {}",
                    natlb.tail()
                ));
            }
        }
    };
    r.start = Some(running_at - started);
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", natlb.pid)).unwrap_or_default();
    if comm.trim() != "natlb" {
        return Err(format!("pid {} is {:?}, not natlb", natlb.pid, comm.trim()));
    }
    eprintln!(
        "bench: {label}: natlb running after {:.0} ms; waiting for {total} first probes",
        ms(running_at - started)
    );
    let mut first = HashSet::new();
    let mut down = HashSet::new();
    let deadline = running_at + FIRST_PROBES_TIMEOUT;
    let mut last_first = running_at;
    while first.len() < total {
        match natlb.next(deadline)? {
            Some((at, Event::Report(kind, b))) => match kind {
                Kind::FirstUp | Kind::FirstDown => {
                    if kind == Kind::FirstDown {
                        down.insert(b.clone());
                        r.first_down += 1;
                    }
                    first.insert(b);
                    last_first = at;
                }
                Kind::Up => {
                    down.remove(&b);
                }
                Kind::Down => {
                    down.insert(b);
                }
            },
            Some(_) => {}
            None => {
                return Err(format!(
                    "only {} of {total} backends had their first probe logged {:?} after \
                     \"natlb is running\"; last log lines: {}",
                    first.len(),
                    FIRST_PROBES_TIMEOUT,
                    natlb.tail()
                ));
            }
        }
    }
    r.first_probes = Some(last_first - running_at);
    eprintln!(
        "bench: {label}: first probes of {total} backends logged within {:.0} ms ({} down)",
        ms(last_first - running_at),
        r.first_down
    );
    if !down.is_empty() {
        r.notes.push(format!(
            "{} backend(s) were DOWN at their first probe (e.g. {}); waited for them to come up",
            down.len(),
            down.iter().next().map(String::as_str).unwrap_or("?")
        ));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !down.is_empty() {
            match natlb.next(deadline)? {
                Some((_, Event::Report(Kind::Up, b))) => {
                    down.remove(&b);
                }
                Some((_, Event::Report(Kind::Down, b))) => {
                    down.insert(b);
                }
                Some(_) => {}
                None => {
                    return Err(format!(
                        "{} backend(s) still down 60 s after their first probe",
                        down.len()
                    ));
                }
            }
        }
    }

    // Steady state: CPU over the window.
    let quiet_until = Instant::now() + STEADY_AFTER;
    let mut spurious = Vec::new();
    let drain = |natlb: &mut Natlb, until: Instant, spurious: &mut Vec<String>| loop {
        match natlb.next(until)? {
            Some((_, Event::Report(k, b))) => spurious.push(format!("{k:?} {b}")),
            Some(_) => {}
            None => return Ok::<(), String>(()),
        }
    };
    drain(natlb, quiet_until, &mut spurious)?;
    eprintln!("bench: {label}: measuring CPU for {} s", o.window.as_secs());
    let stat = format!("/proc/{}/stat", natlb.pid);
    let t0 = Instant::now();
    let c0 = cpu_ticks_split(&stat).ok_or("cannot read natlb's /proc stat")?;
    let l0 = topo.backends_ticks();
    let a0 = topo.answered();
    let m0 = machine_ticks();
    let natlb_cpu = topo.natlb_cpu;
    let g0 = natlb_cpu.and_then(cpu_ticks_of);
    drain(natlb, t0 + o.window, &mut spurious)?;
    let c1 = cpu_ticks_split(&stat).ok_or("cannot read natlb's /proc stat")?;
    let l1 = topo.backends_ticks();
    let a1 = topo.answered();
    let m1 = machine_ticks();
    let g1 = natlb_cpu.and_then(cpu_ticks_of);
    let window = t0.elapsed();
    let (rss_kb, hwm_kb, threads) = natlb.rss();
    let hz = clock_ticks();
    let pct = |ticks: u64| ticks as f64 / hz / window.as_secs_f64() * 100.0;
    let cpu = Cpu {
        user_pct: pct(c1.0 - c0.0),
        sys_pct: pct(c1.1 - c0.1),
        probes_per_s: (a1 - a0) as f64 / window.as_secs_f64(),
        listener_pct: l0.zip(l1).map(|(a, b)| pct(b - a)),
        machine_pct: busy_pct(m0, m1),
        natlb_cpu_busy_pct: busy_pct(g0, g1),
        rss_kb,
        hwm_kb,
        threads,
        net: net_stats(&topo.gw),
        false_decisions: spurious.len(),
    };
    eprintln!(
        "bench: {label}: natlb {:.1} % of one core (user {:.1}, sys {:.1}), {:.0} probes/s, \
         RSS {} kB, peak {} kB",
        cpu.user_pct + cpu.sys_pct,
        cpu.user_pct,
        cpu.sys_pct,
        cpu.probes_per_s,
        rss_kb.unwrap_or(0),
        hwm_kb.unwrap_or(0)
    );
    r.cpu = Some(cpu);
    if !spurious.is_empty() {
        r.notes.push(format!(
            "{} decision(s) during the steady-state window, nothing blocked (e.g. {})",
            spurious.len(),
            spurious[..spurious.len().min(3)].join(", ")
        ));
        spurious.clear();
    }

    // Decision → commit: block one backend, wait for its withdraw; unblock, wait for restore.
    eprintln!("bench: {label}: {} withdraw/restore rounds", o.rounds);
    let mut used = HashSet::new();
    for round in 0..o.rounds {
        // A backend not used yet that natlb holds up (false DOWNs may have hit others).
        let mut tries = 0;
        let j = loop {
            let j = rng.below(total);
            tries += 1;
            if tries > 100_000
                || (!natlb.down.contains(&backend_addr(j, o.loopback)) && used.insert(j))
            {
                break j;
            }
        };
        let ip = backend_ip(j, o.loopback);
        let addr = backend_addr(j, o.loopback);
        r.rounds_tried += 1;
        topo.set_blocked(ip, true)?;
        let blocked_at = Instant::now();
        let withdraw = wait_commit(natlb, Kind::Down, &addr, blocked_at, &mut spurious);
        // Unblocked even if natlb is gone.
        topo.set_blocked(ip, false)?;
        let unblocked_at = Instant::now();
        match withdraw? {
            Ok(w) => r.withdraws.push(w),
            Err(e) => r.round_failure(&label, round, e, natlb),
        }
        match wait_commit(natlb, Kind::Up, &addr, unblocked_at, &mut spurious)? {
            Ok(w) => r.restores.push(w),
            // The backend's state is unknown now: carry on with others.
            Err(e) => r.round_failure(&label, round, e, natlb),
        }
        if (round + 1) % 10 == 0 {
            eprintln!("bench: {label}: {} rounds done", round + 1);
        }
    }
    if !spurious.is_empty() {
        r.notes.push(format!(
            "{} decision(s) about backends that were not blocked, during the rounds (e.g. {})",
            spurious.len(),
            spurious[..spurious.len().min(3)].join(", ")
        ));
    }
    r.spurious = spurious;
    r.net_end = Some((started.elapsed(), net_stats(&topo.gw)));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn mb(kb: Option<u64>) -> String {
    kb.map_or("n/a".into(), |kb| format!("{:.1} MB", kb as f64 / 1024.0))
}

fn size_label(s: Size) -> String {
    format!("{} × {}", thousands(s.services), s.backends)
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.1} %"))
}

fn values(v: &[Observed], f: impl Fn(&Observed) -> Option<f64>) -> Vec<f64> {
    v.iter().filter_map(f).collect()
}

fn report(sizes: &[Size], results: &[SizeResult], notes: &[String], o: &Options) -> String {
    let mut out = String::new();
    let health = results
        .iter()
        .map(|r| r.health.as_str())
        .find(|h| !h.is_empty())
        .unwrap_or("n/a");
    let where_ = if o.loopback {
        "127.64.0.0/10 addresses on natlb's own loopback, one listener thread accepts and \
         closes (--loopback: the kernel's work for both ends of each probe connection runs in \
         natlb's context)"
            .to_string()
    } else {
        format!(
            "{BE_RANGE} routed to a TUN device; one responder thread answers every SYN with a \
             SYN-ACK, like remote hosts{}",
            if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
                " (natlb pinned to CPU 0, the responder to CPU 1)"
            } else {
                " (one CPU: no pinning)"
            }
        )
    };
    let _ = writeln!(
        out,
        "Backends: {where_}, port {PORT}. Probes: \
         {health}. Probe connections: {}.\n",
        if o.notrack {
            "exempt from conntrack (--notrack: a raw-priority notrack rule for port 8080 in \
             the benchmark's own table)"
        } else {
            "tracked by conntrack, as on a gateway (natlb's table has nat hooks; the kernel's \
             default conntrack limits)"
        }
    );
    let _ = writeln!(
        out,
        "Probe engine, steady state ({} s window, after the first probes + {} s):\n",
        o.window.as_secs(),
        STEADY_AFTER.as_secs()
    );
    let _ = writeln!(
        out,
        "| services × backends | backends | probes/s | natlb CPU (% of one core) | user / sys \
         | natlb's CPU busy (all causes) | VmRSS | VmHWM | threads | start → running \
         | first probes | backends' thread CPU | machine busy | decisions in window (none expected) | conntrack entries (max) | \
         TIME_WAIT |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (s, r) in sizes.iter().zip(results) {
        let start = r.start.map_or("n/a".into(), |d| fmt_ms(ms(d)));
        let first = r.first_probes.map_or("n/a".into(), |d| fmt_ms(ms(d)));
        match &r.cpu {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.1} % | {:.1} / {:.1} % | {} | {} | {} | {} | {start} \
                     | {first} | {} | {} | {} | {} ({}) | {} |",
                    size_label(*s),
                    r.backends_total,
                    c.probes_per_s,
                    c.user_pct + c.sys_pct,
                    c.user_pct,
                    c.sys_pct,
                    pct(c.natlb_cpu_busy_pct),
                    mb(c.rss_kb),
                    mb(c.hwm_kb),
                    c.threads.map_or("n/a".into(), |t| t.to_string()),
                    pct(c.listener_pct),
                    pct(c.machine_pct),
                    c.false_decisions,
                    c.net.conntrack.map_or("n/a".into(), |v| v.to_string()),
                    c.net.conntrack_max.map_or("n/a".into(), |v| v.to_string()),
                    c.net.time_wait.map_or("n/a".into(), |v| v.to_string()),
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {} | {} | failed | | | | | | | {start} | {first} | | | | | |",
                    size_label(*s),
                    r.backends_total
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nCPU = natlb's utime + stime over the window. backends' thread = the responder (its \
         system time includes the gateway's handling of every SYN-ACK it writes, so natlb + \
         responder bounds the gateway's whole cost) or, with --loopback, the listener. natlb's \
         CPU busy = the CPU natlb is pinned to, busy for any cause, n/a without pinning. VmHWM = peak RSS since start (includes the cold \
         install). machine busy = all CPUs ({} online).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let _ = writeln!(
        out,
        "Decision → commit: {} rounds per size, each blocks one random backend (TCP reset), \
         waits for natlb's withdraw commit, unblocks it and waits for the restore commit. \
         natlb's own figures from its \"health change committed in one batch\" lines:\n",
        o.rounds
    );
    let _ = writeln!(
        out,
        "| services × backends | commits (withdraw + restore) | decision → commit median | p99 \
         | max | kernel median | kernel p99 | elements per withdraw / restore | block → \
         withdraw commit median (min–max) | unblock → restore commit median (min–max) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (s, r) in sizes.iter().zip(results) {
        let all: Vec<&Observed> = r.withdraws.iter().chain(&r.restores).collect();
        let d2c: Vec<f64> = all.iter().filter_map(|x| x.decision_to_commit_ms).collect();
        let kernel: Vec<f64> = all.iter().filter_map(|x| x.kernel_ms).collect();
        let (dm, dp) = median_p99(&d2c);
        let (_, dmax) = min_max(&d2c);
        let (km, kp) = median_p99(&kernel);
        let elements = |v: &[Observed]| {
            let e: Vec<f64> = values(v, |x| x.elements.map(|e| e as f64));
            let (m, _) = median_p99(&e);
            if m.is_nan() {
                "n/a".to_string()
            } else {
                format!("{m:.0}")
            }
        };
        let detect = |v: &[Observed]| {
            let t = values(v, |x| Some(ms(x.after_action)));
            let (m, _) = median_p99(&t);
            let (lo, hi) = min_max(&t);
            format!("{} ({}–{})", fmt_ms(m), fmt_ms(lo), fmt_ms(hi))
        };
        let _ = writeln!(
            out,
            "| {} | {} + {} of {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
            size_label(*s),
            r.withdraws.len(),
            r.restores.len(),
            2 * r.rounds_tried,
            fmt_ms(dm),
            fmt_ms(dp),
            fmt_ms(dmax),
            fmt_ms(km),
            fmt_ms(kp),
            elements(&r.withdraws),
            elements(&r.restores),
            detect(&r.withdraws),
            detect(&r.restores),
        );
    }
    let _ = writeln!(
        out,
        "\ndecision → commit = natlb's decision_to_commit_ms (deciding probe result → kernel \
         acknowledged the batch); kernel = its kernel_ms. p99 is nearest rank: up to 100 \
         commits it is the largest. block → withdraw commit = when the benchmark saw the \
         commit line after adding the block: the wait for the backend's next regular probe \
         (0 to 1.1 s), then fall − 1 more failures at the fast interval, then the commit. \
         unblock → restore: the next regular probe, then rise − 1 passes at the fast interval."
    );
    let _ = writeln!(
        out,
        "\nTargets (from the issue; for reference, not asserted):\n\
         - deciding probe result → kernel commit ≤ 5 ms at 10k services\n\
         - probe engine with 10k backends at 1 s: < 25 % of one core, < 100 MB RSS"
    );

    let mut all_notes: Vec<String> = Vec::new();
    for (s, r) in sizes.iter().zip(results) {
        let l = size_label(*s);
        if let Some(e) = &r.error {
            all_notes.push(format!("{l}: {e}"));
        }
        if r.first_down > 0 {
            all_notes.push(format!(
                "{l}: {} backend(s) DOWN at their first probe",
                r.first_down
            ));
        }
        for n in &r.notes {
            all_notes.push(format!("{l}: {n}"));
        }
        let shared: Vec<usize> = r
            .withdraws
            .iter()
            .chain(&r.restores)
            .map(|w| w.shared)
            .filter(|&n| n > 0)
            .collect();
        if !shared.is_empty() {
            all_notes.push(format!(
                "{l}: {} of the measured commits shared their batch with other decisions (up to \
                 {}); their decision → commit is the earliest decision's",
                shared.len(),
                shared.iter().max().unwrap_or(&0)
            ));
        }
        if !r.round_failures.is_empty() {
            all_notes.push(format!(
                "{l}: {} of {} withdraws / restores not seen: {}{}; natlb's last lines at the \
                 first: {}",
                r.round_failures.len(),
                2 * r.rounds_tried,
                r.round_failures[..r.round_failures.len().min(3)].join("; "),
                if r.round_failures.len() > 3 {
                    "; …"
                } else {
                    ""
                },
                r.first_failure_log.as_deref().unwrap_or("n/a")
            ));
        }
        if let Some((after, n)) = &r.net_end {
            let v = |x: Option<u64>| x.map_or("n/a".into(), |v| v.to_string());
            all_notes.push(format!(
                "{l}: after the rounds ({:.0} s after start): conntrack entries {} of max {}, \
                 conntrack drop {}, early_drop {}, insert_failed {}; TCP TIME_WAIT sockets {}, \
                 TCPTimeWaitOverflow {}; listener ListenOverflows {}, ListenDrops {}",
                after.as_secs_f64(),
                v(n.conntrack),
                v(n.conntrack_max),
                n.ct_drop,
                n.ct_early_drop,
                n.ct_insert_failed,
                v(n.time_wait),
                v(n.tw_overflow),
                v(n.listen_overflows),
                v(n.listen_drops)
            ));
        }
        for e in r.natlb_errors.iter().take(5) {
            all_notes.push(format!("{l}: natlb logged: {e}"));
        }
        for w in r.natlb_warnings.iter().take(5) {
            all_notes.push(format!("{l}: natlb logged: {w}"));
        }
        if r.natlb_warnings.len() > 5 {
            all_notes.push(format!(
                "{l}: … and {} more WARN lines",
                r.natlb_warnings.len() - 5
            ));
        }
        if r.all_down_warnings > 0 && s.backends > 1 {
            all_notes.push(format!(
                "{l}: {} \"no backend of service … is up\" warnings",
                r.all_down_warnings
            ));
        }
        if let Some(st) = &r.stop
            && !st.contains("exit status: 0")
        {
            all_notes.push(format!("{l}: natlb's exit after SIGTERM: {st}"));
        }
    }
    all_notes.extend(notes.iter().cloned());
    if !all_notes.is_empty() {
        let _ = writeln!(out, "\nNotes:");
        for n in all_notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

fn main() -> ExitCode {
    set_prefix("natlb-hbench");
    let o = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if !start("health") {
        return ExitCode::FAILURE;
    }
    let mut notes = Vec::new();
    let mut rng = Rng(o.seed);
    let started = Instant::now();
    let mut results = Vec::new();
    for &s in &o.sizes {
        results.push(run_size(&o, s, &mut rng, &mut notes));
    }
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    print!("{}", report(&o.sizes, &results, &notes, &o));
    ExitCode::SUCCESS
}
