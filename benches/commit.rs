//! Commit benchmark: what natlb's kernel commits cost as the number of services grows.
//!
//! For each size N (services × backends each, weighted scheduler unless `--scheduler` says
//! otherwise, weights 1, SNAT masquerade;
//! VIPs in 198.18.0.0/16, backends in 198.19.0.0/16: benchmarking ranges, nothing is sent), each
//! in fresh network namespaces that this program creates and removes (also on panic, SIGINT and
//! SIGTERM):
//!
//! 1. cold install through netlink (render + encode + kernel commit of the whole table);
//! 2. the same render as an nft script loaded with `nft -f` into another fresh namespace;
//! 3. withdraw one random backend, then restore it, many times: render + diff in user space, and
//!    the kernel commit of the element deltas (the figure the issue targets);
//! 4. the real daemon (`natlb run`) started on the same services as a TOML config: its RSS once
//!    it says "natlb is running".
//!
//! Prints a markdown table on stdout (progress goes to stderr). It asserts no timings.
//!
//! `cargo bench --bench commit -- [--sizes 1000,10000,50000] [--backends 10] [--rounds N]
//! [--seed S] [--no-nft] [--no-rss] [--scheduler weighted|round-robin|source-hash]`. Needs root (network namespaces, nf_tables).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use natlb::model::{Backend, Scheduler, Service};
use natlb::nft::{Change, CommitStats, Installed, Nft};
use natlb::reconcile::{self, Plan};
use natlb::render::ruleset::Ruleset;
use natlb::render::{render, script::to_script, service_elements};

/// How long the daemon may take to say "natlb is running".
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

struct Options {
    sizes: Vec<usize>,
    backends: usize,
    /// Withdraw/restore rounds per size; `None`: 200 up to 10k services, 100 above.
    rounds: Option<usize>,
    seed: u64,
    nft_reference: bool,
    rss: bool,
    scheduler: Scheduler,
}

const USAGE: &str = "usage: cargo bench --bench commit -- [--sizes 1000,10000,50000] \
                     [--backends 10] [--rounds N] [--seed S] [--no-nft] [--no-rss] \
                     [--scheduler weighted|round-robin|source-hash]";

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        sizes: vec![1_000, 10_000, 50_000],
        backends: 10,
        rounds: None,
        seed: 0x006e_6174_6c62,
        nft_reference: true,
        rss: true,
        scheduler: Scheduler::Weighted,
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
                    .map(|s| number("--sizes", s))
                    .collect::<Result<_, _>>()?;
            }
            "--backends" => o.backends = number("--backends", &value("--backends")?)?,
            "--rounds" => o.rounds = Some(number("--rounds", &value("--rounds")?)?),
            "--seed" => o.seed = number("--seed", &value("--seed")?)? as u64,
            "--no-nft" => o.nft_reference = false,
            "--no-rss" => o.rss = false,
            "--scheduler" => {
                o.scheduler = match value("--scheduler")?.as_str() {
                    "weighted" => Scheduler::Weighted,
                    "round-robin" => Scheduler::RoundRobin,
                    "source-hash" => Scheduler::SourceHash,
                    other => return Err(format!("--scheduler: {other:?}?\n{USAGE}")),
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.sizes.is_empty() || o.sizes.contains(&0) {
        return Err(format!("--sizes must list positive numbers\n{USAGE}"));
    }
    if !(1..=254).contains(&o.backends) {
        return Err(format!("--backends must be 1..=254\n{USAGE}"));
    }
    Ok(o)
}

mod common;
use common::services::*;
use common::*;

// ---------------------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------------------

/// The same services as a config file for `natlb run`.
fn config_toml(services: usize, backends: usize, scheduler: Scheduler, dir: &Path) -> String {
    let mut out = String::with_capacity(services * (150 + backends * 60));
    let _ = write!(
        out,
        "# natlb commit benchmark: {services} services x {backends} backends\n\
         [daemon]\ntable = \"{TABLE}\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\n\
         keep_rules_on_exit = true\n",
        dir.join("control.sock").display(),
        dir.join("state").display()
    );
    for i in 0..services {
        let _ = write!(
            out,
            "\n[[service]]\nname = \"{}\"\nlisten = \"{}\"\nprotocol = \"tcp\"\n\
             scheduler = \"{}\"\nsnat = \"masquerade\"\n\
             # No probes: this measures the table and its commits.\n\
             [service.health]\ntype = \"none\"\n",
            service_name(i),
            vip_of(i),
            scheduler.name()
        );
        for k in 0..backends {
            let _ = write!(
                out,
                "[[service.backend]]\naddress = \"{}\"\nweight = 1\n",
                backend_of(i, k)
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Changes {
    /// Kernel commit (send to last answer).
    kernel: Vec<Duration>,
    /// Render of the changed service before and after + diff.
    render_diff: Vec<Duration>,
    /// Building the batch.
    encode: Vec<Duration>,
    /// render + diff + encode + kernel.
    total: Vec<Duration>,
    /// Elements removed + added per change.
    elements: Vec<usize>,
    bytes: Vec<usize>,
}

impl Changes {
    fn record(&mut self, render_diff: Duration, stats: &CommitStats, elements: usize) {
        self.kernel.push(stats.kernel);
        self.render_diff.push(render_diff);
        self.encode.push(stats.encode);
        self.total.push(render_diff + stats.encode + stats.kernel);
        self.elements.push(elements);
        self.bytes.push(stats.bytes);
    }
}

struct Cold {
    elements: usize,
    render: Duration,
    stats: CommitStats,
    /// render + encode + kernel.
    total: Duration,
}

struct DaemonRss {
    rss_kb: u64,
    hwm_kb: u64,
    /// From spawn to "natlb is running".
    start: Duration,
    /// The daemon's own report of its cold commit, if it logged one.
    kernel_ms: Option<f64>,
}

struct SizeResult {
    services: usize,
    backends: usize,
    rounds: usize,
    cold: Cold,
    nft_f: Option<Result<Duration, String>>,
    withdraw: Changes,
    restore: Changes,
    /// Full render + diff of an unchanged model: what a SIGHUP reload costs in user space.
    reload_render_diff: Duration,
    config_parse: Option<Result<Duration, String>>,
    daemon: Option<Result<DaemonRss, String>>,
}

/// Commits the change of one service's backends from `before` to `after` health, the way a
/// health change does: render that service twice, diff, one batch; then patches `current`.
fn change(
    nft: &mut Nft,
    current: &mut Ruleset,
    svc: &Service,
    before: impl Fn(&Service, &Backend) -> bool,
    after: impl Fn(&Service, &Backend) -> bool,
    out: &mut Changes,
) {
    let started = Instant::now();
    let deltas = reconcile::diff_elements(
        &service_elements(svc, 0, before),
        &service_elements(svc, 0, after),
    );
    let render_diff = started.elapsed();
    let elements = deltas.iter().map(|d| d.remove.len() + d.add.len()).sum();
    let stats = nft
        .apply(&[Change::Elements {
            table: &current.table,
            deltas: &deltas,
        }])
        .unwrap_or_else(|e| panic!("committing a backend change failed: {e}"));
    out.record(render_diff, &stats, elements);
    reconcile::apply_deltas(current, &deltas);
}

/// Loads `script` with `nft -f` into `ns`: wall time of the nft process.
fn nft_f(ns: &Netns, script: &Path) -> Result<Duration, String> {
    in_netns(ns, || {
        let started = Instant::now();
        let out = command("nft")
            .arg("-f")
            .arg(script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        let took = started.elapsed();
        if out.status.success() {
            Ok(took)
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "nft -f failed ({}): {}",
                out.status,
                err.lines().take(5).collect::<Vec<_>>().join(" | ")
            ))
        }
    })
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Starts `natlb run -c CONFIG` in `ns`, waits for "natlb is running", reads its memory, stops it.
fn daemon_rss(ns: &Netns, config: &Path) -> Result<DaemonRss, String> {
    let bin = env!("CARGO_BIN_EXE_natlb");
    let started = Instant::now();
    // `ip netns exec` execs the command: the child's pid is natlb's.
    let child = command("ip")
        .args(["netns", "exec", ns.name(), bin, "run", "-c"])
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
    let (tx, rx) = mpsc::channel::<String>();
    // Drains stderr until the daemon exits, so it never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let mut kernel_ms = None;
    let deadline = Instant::now() + DAEMON_START_TIMEOUT;
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(v) = line.split("kernel_ms=").nth(1) {
                    kernel_ms = v.split_whitespace().next().and_then(|x| x.parse().ok());
                }
                let running = line.contains("natlb is running");
                log.push(line);
                if running {
                    let start = started.elapsed();
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    if comm.trim() != "natlb" {
                        break Err(format!("pid {pid} is {:?}, not natlb", comm.trim()));
                    }
                    match (proc_status_kb(pid, "VmRSS"), proc_status_kb(pid, "VmHWM")) {
                        (Some(rss_kb), Some(hwm_kb)) => {
                            break Ok(DaemonRss {
                                rss_kb,
                                hwm_kb,
                                start,
                                kernel_ms,
                            });
                        }
                        _ => break Err(format!("cannot read /proc/{pid}/status")),
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(format!(
                    "no \"natlb is running\" within {DAEMON_START_TIMEOUT:?}"
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.0.wait().map(|s| s.to_string()).unwrap_or_default();
                break Err(format!("natlb exited ({status}) before running"));
            }
        }
    };
    // Stop it the way an operator would, then make sure.
    let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < stop_deadline {
        if let Ok(Some(_)) = child.0.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child);
    let _ = reader.join();
    result.map_err(|e| {
        let tail: Vec<&String> = log.iter().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().map(String::as_str).collect();
        format!("{e}; last log lines: {}", tail.join(" | "))
    })
}

fn run_size(o: &Options, services: usize, rng: &mut Rng, notes: &mut Vec<String>) -> SizeResult {
    let backends = o.backends;
    let rounds = o
        .rounds
        .unwrap_or(if services <= 10_000 { 200 } else { 100 });
    let label = format!("{services} x {backends}");
    eprintln!("bench: {label}: building the model");
    let model = build_model(services, backends, o.scheduler);
    let dir = TempDir::new();

    // 1. Cold install through netlink, in a fresh namespace.
    let ns = Netns::new("natlb");
    settle_or_note(&format!("the cold install at {label}"), notes);
    eprintln!("bench: {label}: cold install (netlink)");
    let mut result = in_netns(&ns, || {
        let started = Instant::now();
        let rs = render(&model, |_, _| true);
        let render_t = started.elapsed();
        let mut nft = Nft::open().unwrap_or_else(|e| panic!("{e}"));
        let stats = nft
            .apply(&[Change::DropTable(&rs.table), Change::CreateTable(&rs)])
            .unwrap_or_else(|e| panic!("cold install of {label} failed: {e}"));
        let total = started.elapsed();
        let cold = Cold {
            elements: rs.element_count(),
            render: render_t,
            stats,
            total,
        };
        eprintln!(
            "bench: {label}: cold install {:.0} ms (render {:.0}, encode {:.0}, kernel {:.0}), \
             {} elements, {} messages, {} bytes",
            ms(total),
            ms(render_t),
            ms(stats.encode),
            ms(stats.kernel),
            cold.elements,
            stats.messages,
            stats.bytes
        );

        // The kernel holds what was sent (read back, untimed). A set dump is not a snapshot:
        // while a big set's hash table is still growing after the commit, a dump that takes
        // several messages can miss elements. So read until it matches, or give up.
        let mut read = nft.read_installed(&rs);
        for _ in 0..20 {
            match &read {
                Ok(Installed::Ours(installed)) if *installed != rs => {
                    std::thread::sleep(Duration::from_millis(500));
                    read = nft.read_installed(&rs);
                }
                _ => break,
            }
        }
        match read {
            Ok(Installed::Ours(installed)) => {
                if installed != rs {
                    let differ: Vec<String> = rs
                        .elements
                        .iter()
                        .filter(|(set, e)| installed.elements.get(*set) != Some(*e))
                        .map(|(set, e)| {
                            let got = installed.elements.get(set).map_or(0, |g| g.len());
                            format!("{set}: {} rendered, {got} installed", e.len())
                        })
                        .collect();
                    panic!(
                        "the installed table differs from the render: {differ:?}, seed {} vs \
                         {}, comment {:?} vs {:?}, chains equal: {}",
                        installed.hash_seed,
                        rs.hash_seed,
                        installed.comment,
                        rs.comment,
                        installed.chains == rs.chains
                    );
                }
            }
            Ok(other) => panic!("the installed table is not natlb's: {other:?}"),
            Err(e) => panic!("reading the table back failed: {e}"),
        }

        // 2. The same render through `nft -f`, in another fresh namespace.
        let nft_f_t = o.nft_reference.then(|| {
            let script = dir.write("natlb.nft", &to_script(&rs));
            let ns2 = Netns::new("nftf");
            settle_or_note(&format!("nft -f at {label}"), notes);
            eprintln!("bench: {label}: nft -f of the same render");
            let r = nft_f(&ns2, &script);
            match &r {
                Ok(t) => eprintln!("bench: {label}: nft -f {:.0} ms", ms(*t)),
                Err(e) => eprintln!("bench: {label}: {e}"),
            }
            let _ = std::fs::remove_file(&script);
            r
        });
        // ns2 is gone: let the kernel free its table before timing small commits.
        settle_or_note(&format!("the withdraw rounds at {label}"), notes);

        // 3. Withdraw one backend, restore it; `rounds` times.
        eprintln!("bench: {label}: {rounds} withdraw/restore rounds");
        let mut withdraw = Changes::default();
        let mut restore = Changes::default();
        let mut current = rs;
        let progress = Instant::now();
        for r in 0..rounds {
            let svc = &model.services[rng.below(services)];
            let be = &svc.backends[rng.below(backends)];
            let down = |s: &Service, b: &Backend| !(std::ptr::eq(s, svc) && std::ptr::eq(b, be));
            change(
                &mut nft,
                &mut current,
                svc,
                |_, _| true,
                down,
                &mut withdraw,
            );
            change(&mut nft, &mut current, svc, down, |_, _| true, &mut restore);
            if progress.elapsed() > Duration::from_secs(20) && (r + 1) % 25 == 0 {
                eprintln!("bench: {label}: {} rounds done", r + 1);
            }
        }
        // Outside the timings: the patched record is the full render, and the kernel agrees.
        let full = render(&model, |_, _| true);
        assert!(
            current == full,
            "patched ruleset differs from the full render"
        );
        match nft.read_installed(&full) {
            Ok(Installed::Ours(k)) => assert!(k == full, "kernel table differs from the render"),
            other => panic!("reading the table back after the rounds: {other:?}"),
        }
        // The reload path (SIGHUP) renders and diffs the whole model: timed once.
        let started = Instant::now();
        let plan = reconcile::plan(&current, &render(&model, |_, _| true));
        let reload_render_diff = started.elapsed();
        assert_eq!(plan, Plan::Nothing);
        SizeResult {
            services,
            backends,
            rounds,
            cold,
            nft_f: nft_f_t,
            withdraw,
            restore,
            reload_render_diff,
            config_parse: None,
            daemon: None,
        }
    });
    drop(ns);

    // 4. The daemon on the same services, from a config file.
    if o.rss {
        let text = config_toml(services, backends, o.scheduler, &dir.path);
        let config = dir.write("natlb.toml", &text);
        // The config describes the same table as the in-process model (untimed check).
        let started = Instant::now();
        result.config_parse = Some(match natlb::config::parse("natlb.toml", &text) {
            Ok(parsed) => {
                let took = started.elapsed();
                if render(&parsed, |_, _| true) == render(&model, |_, _| true) {
                    Ok(took)
                } else {
                    Err("the config renders another table than the model".into())
                }
            }
            Err(e) => Err(format!("config rejected: {e}")),
        });
        drop(text);
        if let Some(Err(e)) = &result.config_parse {
            eprintln!("bench: {label}: {e}");
        }
        let ns3 = Netns::new("daemon");
        settle_or_note(&format!("the daemon at {label}"), notes);
        eprintln!("bench: {label}: natlb run");
        let r = daemon_rss(&ns3, &config);
        match &r {
            Ok(d) => eprintln!(
                "bench: {label}: daemon running after {:.0} ms, RSS {} kB, peak {} kB",
                ms(d.start),
                d.rss_kb,
                d.hwm_kb
            ),
            Err(e) => eprintln!("bench: {label}: daemon: {e}"),
        }
        result.daemon = Some(r);
    }
    result
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn mb(kb: u64) -> String {
    format!("{:.0} MB", kb as f64 / 1024.0)
}

fn size_label(n: usize) -> String {
    thousands(n)
}

fn report(results: &[SizeResult], notes: &[String], scheduler: Scheduler) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Scheduler: {}.\n", scheduler.name());
    let _ = writeln!(
        out,
        "| services × backends | elements | cold install natlb (kernel) | nft -f same render \
         | ratio | withdraw median | p99 | restore median | RSS | peak RSS |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let cold = format!(
            "{} ({})",
            fmt_ms(ms(r.cold.total)),
            fmt_ms(ms(r.cold.stats.kernel))
        );
        let (nft_f, ratio) = match &r.nft_f {
            Some(Ok(t)) => (
                fmt_ms(ms(*t)),
                format!("{:.2}", r.cold.total.as_secs_f64() / t.as_secs_f64()),
            ),
            Some(Err(_)) => ("failed".into(), "n/a".into()),
            None => ("skipped".into(), "n/a".into()),
        };
        let (wm, wp) = median_p99(&r.withdraw.kernel);
        let (rm, _) = median_p99(&r.restore.kernel);
        let (rss, hwm) = match &r.daemon {
            Some(Ok(d)) => (mb(d.rss_kb), mb(d.hwm_kb)),
            Some(Err(_)) => ("failed".into(), "failed".into()),
            None => ("skipped".into(), "skipped".into()),
        };
        let _ = writeln!(
            out,
            "| {} × {} | {} | {cold} | {nft_f} | {ratio} | {} | {} | {} | {rss} | {hwm} |",
            size_label(r.services),
            r.backends,
            r.cold.elements,
            fmt_ms(wm),
            fmt_ms(wp),
            fmt_ms(rm),
        );
    }

    let _ = writeln!(
        out,
        "\nCold install = render + encode + kernel commit, wall time; (kernel) = the commit alone. \
         ratio = natlb cold / nft -f. withdraw / restore = kernel commit of one backend's \
         element deltas.\n"
    );
    let _ = writeln!(
        out,
        "| services × backends | cold: render / encode | cold batch | rounds | elements per \
         change | one-service render+diff median | encode median | withdraw total median | withdraw p99 \
         total | full render+diff (reload) | config parse | daemon start → running | daemon cold commit (kernel) |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let mut per_change = r.withdraw.elements.clone();
        per_change.sort_unstable();
        let elements = per_change
            .get(per_change.len() / 2)
            .map_or("n/a".into(), |e| e.to_string());
        let (rd, _) = median_p99(&r.withdraw.render_diff);
        let (enc, _) = median_p99(&r.withdraw.encode);
        let (tot, totp) = median_p99(&r.withdraw.total);
        let parse = match &r.config_parse {
            Some(Ok(t)) => fmt_ms(ms(*t)),
            Some(Err(_)) => "failed".into(),
            None => "skipped".into(),
        };
        let (start, dk) = match &r.daemon {
            Some(Ok(d)) => (
                fmt_ms(ms(d.start)),
                d.kernel_ms.map_or("n/a".into(), fmt_ms),
            ),
            Some(Err(_)) => ("failed".into(), "failed".into()),
            None => ("skipped".into(), "skipped".into()),
        };
        let _ = writeln!(
            out,
            "| {} × {} | {} / {} | {:.1} MB in {} messages | {} | {elements} | {} | {} | {} | {} \
             | {} | {parse} | {start} | {dk} |",
            size_label(r.services),
            r.backends,
            fmt_ms(ms(r.cold.render)),
            fmt_ms(ms(r.cold.stats.encode)),
            r.cold.stats.bytes as f64 / 1e6,
            r.cold.stats.messages,
            r.rounds,
            fmt_ms(rd),
            fmt_ms(enc),
            fmt_ms(tot),
            fmt_ms(totp),
            fmt_ms(ms(r.reload_render_diff)),
        );
    }

    if results.len() >= 2 {
        let small = results
            .iter()
            .min_by_key(|r| r.services)
            .expect("non-empty");
        let large = results
            .iter()
            .max_by_key(|r| r.services)
            .expect("non-empty");
        let (ms_small, _) = median_p99(&small.withdraw.kernel);
        let (ms_large, _) = median_p99(&large.withdraw.kernel);
        let _ = writeln!(
            out,
            "\nwithdraw median ratio {}/{}: {:.2} ({} / {})",
            size_label(large.services),
            size_label(small.services),
            ms_large / ms_small,
            fmt_ms(ms_large),
            fmt_ms(ms_small)
        );
    }

    let _ = writeln!(
        out,
        "\nTargets (from the issue; for reference, not asserted):\n\
         - one change (withdraw) kernel commit ≤ 1 ms median at 50k services\n\
         - withdraw median 50k / 1k ≤ 1.5\n\
         - cold install of 10k × 10 ≤ 3 s, and below `nft -f` of the same render"
    );

    let failures: Vec<String> = results
        .iter()
        .flat_map(|r| {
            let l = format!("{} × {}", size_label(r.services), r.backends);
            let mut f = Vec::new();
            if let Some(Err(e)) = &r.nft_f {
                f.push(format!("{l}: nft -f: {e}"));
            }
            if let Some(Err(e)) = &r.config_parse {
                f.push(format!("{l}: config: {e}"));
            }
            if let Some(Err(e)) = &r.daemon {
                f.push(format!("{l}: daemon: {e}"));
            }
            f
        })
        .collect();
    if !failures.is_empty() || !notes.is_empty() {
        let _ = writeln!(out, "\nNotes:");
        for n in failures.iter().chain(notes) {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

fn main() -> ExitCode {
    set_prefix("natlb-bench");
    let o = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if !start("commit") {
        return ExitCode::FAILURE;
    }
    let mut notes = Vec::new();

    // Warm-up: loads the nf_tables modules both paths need, so no size pays for that.
    {
        let model = build_model(1, o.backends, o.scheduler);
        let rs = render(&model, |_, _| true);
        let ns = Netns::new("warm");
        in_netns(&ns, || {
            Nft::open()
                .and_then(|mut n| n.apply(&[Change::DropTable(TABLE), Change::CreateTable(&rs)]))
                .unwrap_or_else(|e| panic!("warm-up install failed: {e}"));
        });
        if o.nft_reference {
            let dir = TempDir::new();
            let script = dir.write("warm.nft", &to_script(&rs));
            let ns2 = Netns::new("warm");
            if let Err(e) = nft_f(&ns2, &script) {
                eprintln!("bench: warm-up: {e}");
            }
        }
    }

    let mut rng = Rng(o.seed);
    let started = Instant::now();
    let mut results = Vec::new();
    for &n in &o.sizes {
        results.push(run_size(&o, n, &mut rng, &mut notes));
    }
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    print!("{}", report(&results, &notes, o.scheduler));
    ExitCode::SUCCESS
}
