//! What both benchmarks need: namespaces, temp dirs and child processes that are removed by
//! Drop guards and, on SIGINT / SIGTERM / SIGHUP, by a watcher thread.
#![allow(dead_code)]

pub mod services;
pub mod tun_responder;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{self, SigSet, Signal};
use nix::unistd::Pid;

static PREFIX: OnceLock<&'static str> = OnceLock::new();

/// Names this benchmark's namespaces and temp dirs (`natlb-bench`, `natlb-hbench`).
pub fn set_prefix(prefix: &'static str) {
    let _ = PREFIX.set(prefix);
}

fn prefix() -> &'static str {
    PREFIX.get().copied().unwrap_or("natlb-bench")
}

// ---------------------------------------------------------------------------------------------
// Cleanup: namespaces, temp dirs and child processes, removed by Drop guards and, on SIGINT /
// SIGTERM / SIGHUP, by a watcher thread.
// ---------------------------------------------------------------------------------------------

pub static NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());
pub static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
pub static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn forget<T: PartialEq>(list: &Mutex<Vec<T>>, item: &T) {
    let mut l = list.lock().unwrap_or_else(|e| e.into_inner());
    l.retain(|x| x != item);
}

pub fn netns_pids(name: &str) -> Vec<i32> {
    command("ip")
        .args(["netns", "pids", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills whatever runs in namespace `name` and deletes it.
pub fn remove_netns(name: &str) {
    let me = std::process::id() as i32;
    for pid in netns_pids(name) {
        if pid != me {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    match command("ip")
        .args(["netns", "del", name])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "bench: ip netns del {name}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("bench: ip netns del {name}: {e}"),
    }
}

/// A fresh named network namespace, deleted on Drop (with every process in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        let name = unique(&format!("{}-{role}-", prefix()));
        // Registered first: a signal between `add` and the push still finds it.
        NAMESPACES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        let out = command("ip")
            .args(["netns", "add", &name])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
        if !out.status.success() {
            forget(&NAMESPACES, &name);
            panic!(
                "ip netns add {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Netns { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_netns(&self.name);
        forget(&NAMESPACES, &self.name);
    }
}

/// Runs `f` on a new thread that has entered namespace `ns`; processes it spawns start there.
pub fn in_netns<R: Send>(ns: &Netns, f: impl FnOnce() -> R + Send) -> R {
    let path = ns.path();
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        });
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A directory under the temp dir, removed on Drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(unique(&format!("{}-", prefix())));
        DIRS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {path:?}: {e}"));
        TempDir { path }
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {p:?}: {e}"));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        forget(&DIRS, &self.path);
    }
}

/// A child process, killed (SIGKILL) and reaped on Drop unless it already exited.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A command whose process starts with no blocked signals: the bench blocks SIGINT/SIGTERM/
/// SIGHUP (see [`watch_signals`]) and a child would inherit that mask across exec.
pub fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    // SAFETY: the hook only calls pthread_sigmask, which is async-signal-safe, and allocates
    // nothing.
    unsafe {
        c.pre_exec(|| {
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
        });
    }
    c
}

/// Blocks SIGINT/SIGTERM/SIGHUP in every thread (call before spawning any) and has one thread
/// wait for them: it removes what the bench created and exits. Children get an empty mask
/// ([`command`]), so they still die of these signals.
pub fn watch_signals() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        eprintln!("bench: cannot block signals ({e}); an interrupt may leave namespaces behind");
        return;
    }
    std::thread::spawn(move || {
        let Ok(sig) = set.wait() else { return };
        eprintln!("\nbench: {sig}: removing namespaces and temp files");
        let names = NAMESPACES.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for n in names {
            remove_netns(&n);
        }
        let dirs = DIRS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        std::process::exit(128 + sig as i32);
    });
}

// Measuring helpers shared by both benchmarks.

/// splitmix64: a small deterministic generator (the crate has no rand dependency).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// (idle, total) jiffies of all CPUs.
pub fn machine_ticks() -> Option<(u64, u64)> {
    stat_ticks("cpu")
}

/// (idle, total) jiffies of CPU `n`.
pub fn cpu_ticks_of(n: usize) -> Option<(u64, u64)> {
    stat_ticks(&format!("cpu{n}"))
}

/// (idle, total) jiffies of the /proc/stat line named `name`.
fn stat_ticks(name: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((idle, v.iter().sum()))
}

/// Waits (up to 20 s) until the CPUs are mostly idle. Returns false if the machine stayed busy.
pub fn settle() -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some((i0, t0)) = machine_ticks() else {
            return false;
        };
        std::thread::sleep(Duration::from_millis(300));
        let Some((i1, t1)) = machine_ticks() else {
            return false;
        };
        if t1 > t0 && (i1 - i0) as f64 / (t1 - t0) as f64 >= 0.85 {
            return true;
        }
    }
    false
}

pub fn settle_or_note(what: &str, notes: &mut Vec<String>) {
    if !settle() {
        let note = format!("the machine was busy before {what} (CPUs < 85 % idle for 20 s)");
        eprintln!("bench: note: {note}");
        notes.push(note);
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v >= 1000.0 {
        format!("{:.2} s", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.2} ms")
    }
}

/// `n` as a size label: `10k` for whole thousands, else the number.
pub fn thousands(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_to(cpu: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("pin to CPU {cpu}: {e}"))
}

/// What every benchmark does first, after its options: checks it runs as root (namespaces,
/// nf_tables), starts the signal watcher and prints the load average. False if not root.
pub fn start(what: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the {what} benchmark needs root (network namespaces, nf_tables)");
        return false;
    }
    watch_signals();
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        eprintln!("bench: load average at start: {}", load.trim());
    }
    true
}

/// Median and p99 (nearest rank) of `v`, in ms.
pub fn median_p99(v: &[Duration]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort();
    let rank = |q: f64| ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    let median = if s.len() % 2 == 1 {
        ms(s[s.len() / 2])
    } else {
        (ms(s[s.len() / 2 - 1]) + ms(s[s.len() / 2])) / 2.0
    };
    (median, ms(s[rank(0.99)]))
}
