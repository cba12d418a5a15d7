//! Status benchmark: what `natlb status` and a Prometheus scrape cost as the number of services
//! grows, and whether they stall anything.
//!
//! A status call (or a scrape) is three steps:
//!
//! 1. on the daemon's loop: the installed model (`effective_model`, a clone of the model) and
//!    `control::status::capture` (copies, and a count of the installed slots);
//! 2. on a blocking thread: the document (`control::status::snapshot` of the capture), then
//!    `control::figures::fill`, which reads the conntrack fill from /proc/sys, dumps conntrack
//!    (`count_connections`) and dumps the slot maps' element counters
//!    (`Nft::counted_entries`, a netlink set dump). Requests within a second share one read;
//!    the bench times fresh reads only;
//! 3. on that thread too, the answer: `serde_json::to_vec_pretty` of the status (control
//!    socket) or `Metrics::encode` (scrape).
//!
//! For each size N (services × backends each, weighted scheduler unless `--scheduler` says
//! otherwise, weights 1; VIPs in 198.18.0.0/16, backends in 198.19.0.0/16: benchmarking ranges,
//! nothing is sent), in a fresh network namespace that this program creates and removes (also
//! on panic, SIGINT and SIGTERM), it installs the table (a `Replace` plan, as at start-up), then
//! times each step over R rounds, the parts of (2) separately too, and as the reference, in the
//! same rounds, the kernel commit of withdrawing and restoring one random backend. Last, it
//! times those commits again while another thread runs `fill` back to back: does a dump stall
//! the commits?
//!
//! Every backend has a last probe in the probe log (as in a running daemon with probes). The
//! namespace's conntrack table is empty: the conntrack dump is its fixed cost only.
//!
//! Prints a markdown table on stdout (progress goes to stderr). It asserts no timings.
//!
//! `cargo bench --bench status -- [--sizes 1000,10000,50000] [--backends 10] [--rounds N]
//! [--seed S] [--scheduler weighted|round-robin|source-hash] [--no-concurrent]`. Needs root
//! (network namespaces, nf_tables).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use natlb::admin::AdminState;
use natlb::control::figures::{self, Figures};
use natlb::control::status::{self, Inputs, Snapshot};
use natlb::health::engine::Observer;
use natlb::health::probe::Outcome;
use natlb::health::{BackendKey, Board};
use natlb::metrics::Metrics;
use natlb::model::{Backend, Model, Scheduler, Service};
use natlb::nft::{Change, Installed, Nft};
use natlb::reconcile::{self, Plan};
use natlb::render::layout;
use natlb::render::ruleset::{Family, Ruleset};
use natlb::render::{render, service_elements};

mod common;
use common::services::*;
use common::*;

/// Withdraw/restore pairs per round: the reference commit's median has enough samples.
const PAIRS_PER_ROUND: usize = 5;

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

struct Options {
    sizes: Vec<usize>,
    backends: usize,
    /// Rounds per size; `None`: 20 up to 10k services, 5 above.
    rounds: Option<usize>,
    seed: u64,
    scheduler: Scheduler,
    concurrent: bool,
}

const USAGE: &str = "usage: cargo bench --bench status -- [--sizes 1000,10000,50000] \
                     [--backends 10] [--rounds N] [--seed S] \
                     [--scheduler weighted|round-robin|source-hash] [--no-concurrent]";

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        sizes: vec![1_000, 10_000],
        backends: 10,
        rounds: None,
        seed: 0x0073_7461_7475,
        scheduler: Scheduler::Weighted,
        concurrent: true,
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
            "--no-concurrent" => o.concurrent = false,
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
    if o.rounds == Some(0) {
        return Err(format!("--rounds must be positive\n{USAGE}"));
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Workload (the same services as benches/commit.rs)
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

fn median(v: &[Duration]) -> f64 {
    median_p99(v).0
}

fn max_ms(v: &[Duration]) -> f64 {
    v.iter().max().map_or(f64::NAN, |d| ms(*d))
}

/// The daemon's state a snapshot borrows.
struct World {
    model: Model,
    installed: Ruleset,
    board: Board,
    admin: AdminState,
    metrics: Metrics,
}

impl World {
    /// A status request: on the daemon's loop the installed model and the capture, then off
    /// it the document. Returns it with the time of each.
    fn snapshot(&self) -> (Snapshot, Duration, Duration, Duration) {
        let started = Instant::now();
        // `Daemon::effective_model`: a clone of the model (no least-conn services here).
        let installed_model = self.model.clone();
        let clone = started.elapsed();
        let started = Instant::now();
        let capture = status::capture(Inputs {
            config: &self.model,
            installed_model,
            board: &self.board,
            admin: &self.admin,
            installed: &self.installed,
        });
        let took = started.elapsed();
        let started = Instant::now();
        let snap = status::snapshot(&capture, &self.metrics.probe_log);
        let document = started.elapsed();
        (snap, clone, took, document)
    }
}

#[derive(Default)]
struct Samples {
    clone: Vec<Duration>,
    /// `status::capture`, on the loop.
    snapshot: Vec<Duration>,
    /// `status::snapshot` of the capture, off the loop.
    document: Vec<Duration>,
    /// /proc/sys conntrack fill.
    pressure: Vec<Duration>,
    conntrack: Vec<Duration>,
    /// `Nft::open` + `counted_entries` of every slot map, as `fill` does.
    counters: Vec<Duration>,
    fill: Vec<Duration>,
    json_pretty: Vec<Duration>,
    encode: Vec<Duration>,
    /// Kernel commit of one backend's withdrawal / restoration.
    withdraw: Vec<Duration>,
    restore: Vec<Duration>,
}

struct Concurrent {
    /// Withdraw commits while another thread runs `fill` back to back.
    withdraw: Vec<Duration>,
    /// As many withdraw commits right after, with no fill running.
    alone: Vec<Duration>,
    fills: usize,
    fill: Vec<Duration>,
}

struct SizeResult {
    services: usize,
    backends: usize,
    rounds: usize,
    slot_elements: usize,
    all_elements: usize,
    /// Fewest and most elements one counter dump returned.
    dumped: (usize, usize),
    install: Duration,
    s: Samples,
    json_bytes: usize,
    json_pretty_bytes: usize,
    metrics_bytes: usize,
    metrics_lines: usize,
    fill_errors: Vec<String>,
    concurrent: Option<Concurrent>,
}

/// Commits one service's change from `before` to `after` health, the way a health change
/// does; returns the kernel commit's time and patches `current`.
fn change(
    nft: &mut Nft,
    current: &mut Ruleset,
    svc: &Service,
    before: impl Fn(&Service, &Backend) -> bool,
    after: impl Fn(&Service, &Backend) -> bool,
) -> Duration {
    let deltas = reconcile::diff_elements(
        &service_elements(svc, 0, before),
        &service_elements(svc, 0, after),
    );
    let stats = nft
        .apply(&[Change::Elements {
            table: &current.table,
            deltas: &deltas,
        }])
        .unwrap_or_else(|e| panic!("committing a backend change failed: {e}"));
    reconcile::apply_deltas(current, &deltas);
    stats.kernel
}

/// Withdraws one random backend and restores it: (withdraw, restore) kernel commit times.
fn withdraw_restore(
    nft: &mut Nft,
    current: &mut Ruleset,
    model: &Model,
    rng: &mut Rng,
) -> (Duration, Duration) {
    let svc = &model.services[rng.below(model.services.len())];
    let be = &svc.backends[rng.below(svc.backends.len())];
    let down = |s: &Service, b: &Backend| !(std::ptr::eq(s, svc) && std::ptr::eq(b, be));
    let w = change(nft, current, svc, |_, _| true, down);
    let r = change(nft, current, svc, down, |_, _| true);
    (w, r)
}

fn slot_maps(rs: &Ruleset) -> Vec<natlb::render::ruleset::SetSpec> {
    [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|f| rs.set(&layout::slots_map_name(f)).cloned())
        .collect()
}

/// Installs `rs` as the daemon does at start-up (a `Replace` plan), then waits until the
/// kernel's table reads back as sent: a set dump is not a snapshot while a big set's hash table
/// still grows after the commit. Returns the commit's wall time.
fn install(nft: &mut Nft, rs: &Ruleset, label: &str) -> Duration {
    let plan = Plan::Replace {
        reason: "benchmark".into(),
    };
    let started = Instant::now();
    nft.apply(&plan.changes(rs, None))
        .unwrap_or_else(|e| panic!("installing {label} failed: {e}"));
    let took = started.elapsed();
    let mut read = nft.read_installed(rs);
    for _ in 0..20 {
        match &read {
            Ok(Installed::Ours(installed)) if installed != rs => {
                std::thread::sleep(Duration::from_millis(500));
                read = nft.read_installed(rs);
            }
            _ => break,
        }
    }
    match read {
        Ok(Installed::Ours(installed)) => {
            assert!(
                installed == *rs,
                "the installed table differs from the render"
            )
        }
        Ok(other) => panic!("the installed table is not natlb's: {other:?}"),
        Err(e) => panic!("reading the table back failed: {e}"),
    }
    took
}

/// A running daemon's probe log and counters: one probe of every backend.
fn probed_metrics(model: &Model) -> Metrics {
    let metrics = Metrics::default();
    for s in &model.services {
        for b in &s.backends {
            metrics.probed(
                &BackendKey {
                    service: s.name.clone(),
                    backend: b.address,
                },
                &Outcome {
                    ok: true,
                    detail: "connected".into(),
                    latency: Duration::from_micros(350),
                },
            );
        }
    }
    metrics
}

fn run_size(o: &Options, services: usize, rng: &mut Rng, notes: &mut Vec<String>) -> SizeResult {
    let backends = o.backends;
    let rounds = o.rounds.unwrap_or(if services <= 10_000 { 20 } else { 5 });
    let label = format!("{services} x {backends}");
    eprintln!("bench: {label}: building the model");
    let model = build_model(services, backends, o.scheduler);
    let rs = render(&model, |_, _| true);
    let slot_elements: usize = slot_maps(&rs)
        .iter()
        .map(|m| rs.elements.get(&m.name).map_or(0, |e| e.len()))
        .sum();
    let all_elements = rs.element_count();
    let world = World {
        board: Board::new(&BTreeMap::new(), &model),
        admin: AdminState::default(),
        metrics: probed_metrics(&model),
        installed: rs,
        model,
    };

    let ns = Netns::new("status");
    settle_or_note(&format!("the install at {label}"), notes);
    eprintln!("bench: {label}: install ({all_elements} elements, {slot_elements} in slot maps)");
    let result = in_netns(&ns, || {
        let mut nft = Nft::open().unwrap_or_else(|e| panic!("{e}"));
        let install_t = install(&mut nft, &world.installed, &label);
        eprintln!("bench: {label}: installed in {:.0} ms", ms(install_t));
        let maps = slot_maps(&world.installed);
        let families = [world.model.services[0].vip.addr];

        // Untimed: the first read of the counters (Traffic starts empty), and the sizes.
        let (mut snap, _, _, _) = world.snapshot();
        figures::fill(&mut snap, &Figures::default());
        let fill_errors = snap.status.errors.clone();
        for e in &fill_errors {
            eprintln!("bench: {label}: fill: {e}");
        }
        let json_bytes = serde_json::to_vec(&snap.status).expect("serializes").len();
        let json_pretty_bytes = serde_json::to_vec_pretty(&snap.status)
            .expect("serializes")
            .len();
        let text = world.metrics.encode(&snap.status);
        let (metrics_bytes, metrics_lines) = (text.len(), text.lines().count());
        drop((snap, text));

        settle_or_note(&format!("the rounds at {label}"), notes);
        eprintln!("bench: {label}: {rounds} rounds");
        let mut s = Samples::default();
        let mut dumped = (usize::MAX, 0);
        let mut current = world.installed.clone();
        let progress = Instant::now();
        for r in 0..rounds {
            // The reference: one backend's withdrawal and restoration, committed.
            for _ in 0..PAIRS_PER_ROUND {
                let (w, rst) = withdraw_restore(&mut nft, &mut current, &world.model, rng);
                s.withdraw.push(w);
                s.restore.push(rst);
            }

            // (1) On the daemon's loop.
            let (mut snap, clone, took, document) = world.snapshot();
            s.clone.push(clone);
            s.snapshot.push(took);
            s.document.push(document);

            // (2)'s parts, one by one.
            let started = Instant::now();
            let p = natlb::conntrack_pressure::read(Path::new("/proc/sys"));
            s.pressure.push(started.elapsed());
            drop(p);
            let started = Instant::now();
            let c = natlb::conntrack::count_connections(&families);
            s.conntrack.push(started.elapsed());
            if let Err(e) = c {
                panic!("count_connections: {e}");
            }
            let started = Instant::now();
            let mut n = 0;
            let mut counter_nft = Nft::open().unwrap_or_else(|e| panic!("{e}"));
            for m in &maps {
                n += counter_nft
                    .counted_entries(&world.installed.table, m)
                    .unwrap_or_else(|e| panic!("counted_entries {}: {e}", m.name))
                    .len();
            }
            s.counters.push(started.elapsed());
            drop(counter_nft);
            dumped = (dumped.0.min(n), dumped.1.max(n));

            // (2) whole: a fresh read (a shared one would take no time).
            let fresh = Figures::default();
            let started = Instant::now();
            figures::fill(&mut snap, &fresh);
            s.fill.push(started.elapsed());

            // (3) The answers.
            let started = Instant::now();
            let body = serde_json::to_vec_pretty(&snap.status).expect("serializes");
            s.json_pretty.push(started.elapsed());
            drop(body);
            let started = Instant::now();
            let text = world.metrics.encode(&snap.status);
            s.encode.push(started.elapsed());
            drop(text);

            if progress.elapsed() > Duration::from_secs(20) && (r + 1) % 5 == 0 {
                eprintln!("bench: {label}: {} rounds done", r + 1);
            }
        }
        if dumped.0 != slot_elements || dumped.1 != slot_elements {
            let note = format!(
                "{label}: a counter dump returned {}..{} elements, the slot maps hold {}",
                dumped.0, dumped.1, slot_elements
            );
            eprintln!("bench: note: {note}");
            notes.push(note);
        }

        // Do the dumps stall the commits? Another thread runs fill back to back (as repeated
        // scrapes would) while this one commits withdrawals.
        let concurrent = o.concurrent.then(|| {
            settle_or_note(&format!("the concurrent rounds at {label}"), notes);
            eprintln!("bench: {label}: withdraw commits during fills");
            let stop = AtomicBool::new(false);
            let fills = AtomicUsize::new(0);
            let min_fills = rounds.min(5);
            let min_pairs = rounds * PAIRS_PER_ROUND;
            let world = &world;
            let (withdraw, fill) = std::thread::scope(|sc| {
                // Created by a thread inside the namespace: it is in it too.
                let filler = sc.spawn(|| {
                    let mut took = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let (mut snap, _, _, _) = world.snapshot();
                        let fresh = Figures::default();
                        let started = Instant::now();
                        figures::fill(&mut snap, &fresh);
                        took.push(started.elapsed());
                        fills.fetch_add(1, Ordering::Relaxed);
                    }
                    took
                });
                // Let the first fill start.
                std::thread::sleep(Duration::from_millis(5));
                let mut withdraw = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(300);
                while (fills.load(Ordering::Relaxed) < min_fills || withdraw.len() < min_pairs)
                    && Instant::now() < deadline
                {
                    let (w, _) = withdraw_restore(&mut nft, &mut current, &world.model, rng);
                    withdraw.push(w);
                }
                stop.store(true, Ordering::Relaxed);
                (withdraw, filler.join().expect("the fill thread panicked"))
            });
            // The same number of commits with no fill running, for a fair p99 and max.
            let alone = (0..withdraw.len())
                .map(|_| withdraw_restore(&mut nft, &mut current, &world.model, rng).0)
                .collect();
            Concurrent {
                withdraw,
                alone,
                fills: fills.load(Ordering::Relaxed),
                fill,
            }
        });

        // Outside the timings: the patched record is the full render, and the kernel agrees.
        assert!(
            current == world.installed,
            "the table after the rounds differs from the render"
        );
        match nft.read_installed(&world.installed) {
            Ok(Installed::Ours(k)) => assert!(k == world.installed, "kernel table differs"),
            other => panic!("reading the table back after the rounds: {other:?}"),
        }
        SizeResult {
            services,
            backends,
            rounds,
            slot_elements,
            all_elements,
            dumped,
            install: install_t,
            s,
            json_bytes,
            json_pretty_bytes,
            metrics_bytes,
            metrics_lines,
            fill_errors,
            concurrent,
        }
    });
    drop(ns);
    let (f, _) = median_p99(&result.s.fill);
    let (w, _) = median_p99(&result.s.withdraw);
    eprintln!(
        "bench: {label}: snapshot {} , fill {}, withdraw commit {}",
        fmt_ms(median(&result.s.snapshot)),
        fmt_ms(f),
        fmt_ms(w)
    );
    result
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn mb(bytes: usize) -> String {
    format!("{:.2}", bytes as f64 / 1e6)
}

fn report(results: &[SizeResult], notes: &[String], o: &Options) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Scheduler: {}; {} backends per service. All times are medians unless a p99 is shown.\n",
        o.scheduler.name(),
        o.backends
    );
    let _ = writeln!(
        out,
        "| services | elements in slot maps | loop: clone + capture (1) median / p99 | document | \
         counter dump | conntrack dump | full fill (2) median / p99 | encode (3) | JSON MB | \
         metrics MB | one-withdraw commit (ref) | fill / withdraw |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let loop_t: Vec<Duration> =
            r.s.clone
                .iter()
                .zip(&r.s.snapshot)
                .map(|(a, b)| *a + *b)
                .collect();
        let (snm, snp) = median_p99(&loop_t);
        let (fm, fp) = median_p99(&r.s.fill);
        let w = median(&r.s.withdraw);
        let _ = writeln!(
            out,
            "| {} × {} | {} | {} / {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {:.0} |",
            thousands(r.services),
            r.backends,
            r.slot_elements,
            fmt_ms(snm),
            fmt_ms(snp),
            fmt_ms(median(&r.s.document)),
            fmt_ms(median(&r.s.counters)),
            fmt_ms(median(&r.s.conntrack)),
            fmt_ms(fm),
            fmt_ms(fp),
            fmt_ms(median(&r.s.encode)),
            mb(r.json_bytes),
            mb(r.metrics_bytes),
            fmt_ms(w),
            fm / w,
        );
    }
    let _ = writeln!(
        out,
        "\n(1) runs on the daemon's loop; the document, (2) and (3) on a blocking thread; (3) = \
         `Metrics::encode`. \
         counter dump = `Nft::open` + `counted_entries` of the slot maps; full fill also reads \
         /proc/sys, dumps conntrack (empty in the bench's namespace) and adds the figures. \
         JSON MB = `serde_json::to_vec` of the status. ref = kernel commit of one backend's \
         withdrawal, measured in the same rounds.\n"
    );

    let _ = writeln!(
        out,
        "| services | rounds | all elements | install (Replace) | model clone (loop) | \
         JSON pretty serialize | pretty JSON MB | metrics lines | status off the loop: \
         document + fill + JSON | scrape off the loop: document + fill + encode | \
         loop / withdraw | counter dump ns/element | /proc/sys read | restore commit |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let clone = median(&r.s.clone);
        let snap = median(&r.s.snapshot);
        let doc = median(&r.s.document);
        let fill = median(&r.s.fill);
        let json = median(&r.s.json_pretty);
        let enc = median(&r.s.encode);
        let w = median(&r.s.withdraw);
        let per_element = median(&r.s.counters) * 1e6 / r.slot_elements.max(1) as f64;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} |",
            thousands(r.services),
            r.rounds,
            r.all_elements,
            fmt_ms(ms(r.install)),
            fmt_ms(clone),
            fmt_ms(json),
            mb(r.json_pretty_bytes),
            r.metrics_lines,
            fmt_ms(doc + fill + json),
            fmt_ms(doc + fill + enc),
            (clone + snap) / w,
            per_element,
            fmt_ms(median(&r.s.pressure)),
            fmt_ms(median(&r.s.restore)),
        );
    }

    if results.iter().any(|r| r.concurrent.is_some()) {
        let _ = writeln!(
            out,
            "\nDo the dumps stall the commits? Withdraw commits while another thread runs \
             `fill` back to back, then as many with nothing else running:\n"
        );
        let _ = writeln!(
            out,
            "| services | commits | during fills median / p99 / max | > 1 ms | alone median / \
             p99 / max | > 1 ms | fills | fill median meanwhile |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in results {
            let Some(c) = &r.concurrent else { continue };
            let (am, ap) = median_p99(&c.alone);
            let (cm, cp) = median_p99(&c.withdraw);
            let slow = |v: &[Duration]| v.iter().filter(|d| **d > Duration::from_millis(1)).count();
            let _ = writeln!(
                out,
                "| {} | {} | {} / {} / {} | {} | {} / {} / {} | {} | {} | {} |",
                thousands(r.services),
                c.withdraw.len(),
                fmt_ms(cm),
                fmt_ms(cp),
                fmt_ms(max_ms(&c.withdraw)),
                slow(&c.withdraw),
                fmt_ms(am),
                fmt_ms(ap),
                fmt_ms(max_ms(&c.alone)),
                slow(&c.alone),
                c.fills,
                fmt_ms(median(&c.fill)),
            );
        }
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
        let growth = large.slot_elements as f64 / small.slot_elements.max(1) as f64;
        let ratio = |f: fn(&Samples) -> &Vec<Duration>| median(f(&large.s)) / median(f(&small.s));
        let _ = writeln!(
            out,
            "\nGrowth {} → {} (elements ×{growth:.1}): snapshot ×{:.1}, counter dump ×{:.1}, \
             conntrack dump ×{:.1}, fill ×{:.1}, encode ×{:.1}, withdraw commit ×{:.2}.",
            thousands(small.services),
            thousands(large.services),
            ratio(|s| &s.snapshot),
            ratio(|s| &s.counters),
            ratio(|s| &s.conntrack),
            ratio(|s| &s.fill),
            ratio(|s| &s.encode),
            ratio(|s| &s.withdraw),
        );
    }

    let mut all_notes: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.fill_errors
                .iter()
                .map(move |e| format!("{}: fill reported: {e}", thousands(r.services)))
        })
        .collect();
    for r in results {
        if r.dumped.0 != r.slot_elements || r.dumped.1 != r.slot_elements {
            all_notes.push(format!(
                "{}: counter dumps returned {}..{} of {} elements",
                thousands(r.services),
                r.dumped.0,
                r.dumped.1,
                r.slot_elements
            ));
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
    set_prefix("natlb-sbench");
    let o = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if !start("status") {
        return ExitCode::FAILURE;
    }
    let mut notes = Vec::new();

    // Warm-up: loads the nf_tables and conntrack netlink modules, so no size pays for that.
    {
        let model = build_model(1, o.backends, o.scheduler);
        let rs = render(&model, |_, _| true);
        let ns = Netns::new("warm");
        in_netns(&ns, || {
            let mut nft = Nft::open().unwrap_or_else(|e| panic!("{e}"));
            install(&mut nft, &rs, "the warm-up");
            let world = World {
                board: Board::new(&BTreeMap::new(), &model),
                admin: AdminState::default(),
                metrics: probed_metrics(&model),
                installed: rs,
                model,
            };
            let (mut snap, _, _, _) = world.snapshot();
            figures::fill(&mut snap, &Figures::default());
            for e in &snap.status.errors {
                eprintln!("bench: warm-up: fill: {e}");
            }
        });
    }

    let mut rng = Rng(o.seed);
    let started = Instant::now();
    let mut results = Vec::new();
    for &n in &o.sizes {
        results.push(run_size(&o, n, &mut rng, &mut notes));
    }
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    print!("{}", report(&results, &notes, &o));
    ExitCode::SUCCESS
}
