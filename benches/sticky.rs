//! Persistence benchmark: what a withdrawal costs when the kernel's sticky map holds many
//! clients.
//!
//! In a fresh network namespace: natlb's table with 1000 services × 10 backends, every one
//! with `persistence`, and the sticky map filled with N client entries spread evenly over the
//! services and their backends (as the remember chain would have made them). Then, for R rounds,
//! one backend of a random service is withdrawn the way the daemon does it: read the sticky
//! entries, pick the withdrawn backend's (`sticky::stale`), commit the slot deltas and their
//! deletion in one batch; then it is restored (its entries put back for the next round).
//!
//! The reference, in the same process: the same withdrawals with an empty sticky map.
//!
//! `cargo bench --bench sticky -- [--entries 10000,100000] [--rounds 20]`. Needs root.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{Netns, Rng, in_netns, ms};
use natlb::model::*;
use natlb::nft::{Change, Nft, SetDelta};
use natlb::reconcile;
use natlb::render::ruleset::{Entry, Value};
use natlb::render::{layout, render, service_elements};
use natlb::sticky::{self, Eligible};
use natlb::sticky_reader::Reader;

const SERVICES: usize = 1000;
const BACKENDS: usize = 10;

fn vip_of(i: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250) as u8 + 1)),
        80,
    )
}

fn backend_of(i: usize, k: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(
            10,
            100 + k as u8,
            (i / 250) as u8,
            (i % 250) as u8 + 1,
        )),
        8080,
    )
}

fn model() -> Model {
    let mut m = natlb::config::parse("bench.toml", "[daemon]\ntable = \"natlb_sticky_bench\"\n")
        .expect("base config");
    for i in 0..SERVICES {
        let v = vip_of(i);
        m.services.push(Service {
            name: format!("svc{i}"),
            vip: Vip {
                addr: v.ip(),
                protocol: Protocol::Tcp,
                port: v.port(),
            },
            scheduler: Scheduler::Weighted,
            hash: HashFields::Address,
            persistence: Some(Duration::from_secs(1800)),
            snat: Snat::None,
            on_all_down: OnAllDown::Reject,
            on_backend_down: OnBackendDown::Keep,
            health: Health {
                kind: HealthKind::None,
                interval: Duration::from_secs(2),
                fast_interval: Duration::from_millis(500),
                timeout: Duration::from_secs(2),
                rise: 2,
                fall: 3,
            },
            backends: (0..BACKENDS)
                .map(|k| Backend {
                    address: backend_of(i, k),
                    weight: 1,
                    backup: false,
                    health_port: None,
                })
                .collect(),
        });
    }
    m
}

/// Client `c` of service `i`, on backend `c % BACKENDS`.
fn entry(i: usize, c: usize) -> (Vec<Value>, Entry) {
    let v = vip_of(i);
    let client = Ipv4Addr::from(0xc000_0000u32 + (i * 100_000 + c) as u32);
    let b = backend_of(i, c % BACKENDS);
    (
        vec![
            Value::Addr(IpAddr::V4(client)),
            Value::Addr(v.ip()),
            Value::Proto(Protocol::Tcp),
            Value::Port(v.port()),
        ],
        Entry {
            data: vec![Value::Addr(b.ip()), Value::Port(b.port())],
            comment: String::new(),
        },
    )
}

struct Row {
    entries: usize,
    read: Vec<Duration>,
    commit: Vec<Duration>,
    total: Vec<Duration>,
    forgot: usize,
    /// Reads that returned fewer entries than the map held.
    incomplete: usize,
    /// As the daemon does it (`sticky_read_wait`, 3 ms): from the decision to the withdrawal's
    /// commit, whether the entries made it into that batch, and from the decision until they
    /// were deleted.
    daemon_commit: Vec<Duration>,
    daemon_in_time: usize,
    daemon_gone: Vec<Duration>,
}

/// The daemon's default `sticky_read_wait`.
const READ_WAIT: Duration = Duration::from_millis(3);

fn median(v: &[Duration]) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    ms(v[v.len() / 2])
}

fn p99(v: &[Duration]) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    ms(v[(v.len() * 99 / 100).min(v.len() - 1)])
}

/// Commits a withdrawal's slot deltas with the deletion of its `stale` sticky entries (none:
/// no message), in one batch.
fn withdraw(
    nft: &mut Nft,
    table: &str,
    deltas: &[SetDelta],
    stale: &[Vec<Value>],
) -> Result<(), String> {
    let sticky = layout::sticky_map_name(natlb::render::ruleset::Family::V4);
    nft.apply(&[
        Change::Elements { table, deltas },
        Change::Forget {
            table,
            set: &sticky,
            keys: stale,
        },
    ])
    .map(|_| ())
    .map_err(|e| format!("withdraw: {e}"))
}

/// Puts backend `k` of service `i` back (its slots, from the withdrawn state `after`) with its
/// clients' sticky entries, for the next round.
fn restore(
    nft: &mut Nft,
    table: &str,
    svc: &Service,
    after: &natlb::render::ruleset::Elements,
    i: usize,
    k: usize,
    per_service: usize,
) -> Result<(), String> {
    let back: Vec<SetDelta> =
        reconcile::diff_elements(after, &service_elements(svc, 0, |_, _| true));
    let put_back = [SetDelta {
        set: layout::sticky_map_name(natlb::render::ruleset::Family::V4),
        remove: vec![],
        add: (0..per_service)
            .filter(|c| c % BACKENDS == k)
            .map(|c| entry(i, c))
            .collect(),
    }];
    nft.apply(&[
        Change::Elements {
            table,
            deltas: &back,
        },
        Change::Elements {
            table,
            deltas: &put_back,
        },
    ])
    .map(|_| ())
    .map_err(|e| format!("restore: {e}"))
}

fn run(entries: usize, rounds: usize, rng: &mut Rng) -> Result<Row, String> {
    let ns = Netns::new("sticky");
    in_netns(&ns, || {
        let m = model();
        let all_up = render(&m, |_, _| true);
        let mut nft = Nft::open().map_err(|e| e.to_string())?;
        nft.apply(&[Change::CreateTable(&all_up)])
            .map_err(|e| format!("install: {e}"))?;
        let sticky = layout::sticky_map_name(natlb::render::ruleset::Family::V4);
        let spec = all_up.set(&sticky).cloned().ok_or("no sticky map")?;
        // Fill: `entries` clients spread over the services.
        let per_service = entries / SERVICES;
        let mut fill = SetDelta {
            set: sticky.clone(),
            ..Default::default()
        };
        for i in 0..SERVICES {
            for c in 0..per_service {
                fill.add.push(entry(i, c));
            }
        }
        for chunk in fill.add.chunks(50_000) {
            let d = [SetDelta {
                set: sticky.clone(),
                remove: vec![],
                add: chunk.to_vec(),
            }];
            nft.apply(&[Change::Elements {
                table: &all_up.table,
                deltas: &d,
            }])
            .map_err(|e| format!("fill: {e}"))?;
        }
        // Let the kernel finish resizing the map's hash table after the bulk fill: a read during
        // a resize misses elements (counted below as incomplete reads).
        std::thread::sleep(Duration::from_secs(3));
        let mut row = Row {
            entries,
            read: vec![],
            commit: vec![],
            total: vec![],
            forgot: 0,
            incomplete: 0,
            daemon_commit: vec![],
            daemon_in_time: 0,
            daemon_gone: vec![],
        };
        let (wake, _woken) = tokio::sync::mpsc::unbounded_channel();
        let mut reader = Reader::start(wake).map_err(|e| e.to_string())?;
        for _ in 0..rounds {
            let i = rng.below(SERVICES);
            let k = rng.below(BACKENDS);
            let svc = &m.services[i];
            let gone = svc.backends[k].address;
            let down = |_: &Service, b: &Backend| b.address != gone;
            let started = Instant::now();
            let after = service_elements(svc, 0, down);
            let deltas = reconcile::diff_elements(&service_elements(svc, 0, |_, _| true), &after);
            assert!(sticky::takes_away(&deltas));
            let read_at = Instant::now();
            let kernel_entries = nft
                .dynamic_entries(&all_up.table, &spec)
                .map_err(|e| format!("read: {e}"))?;
            let stale = sticky::stale(&kernel_entries, &Eligible::after(&all_up, &deltas));
            if kernel_entries.len() != per_service * SERVICES {
                row.incomplete += 1;
            }
            row.read.push(read_at.elapsed());
            let commit_at = Instant::now();
            withdraw(&mut nft, &all_up.table, &deltas, &stale)?;
            row.commit.push(commit_at.elapsed());
            row.total.push(started.elapsed());
            row.forgot += stale.len();
            // Restore, with the forgotten clients back, for the next round.
            restore(&mut nft, &all_up.table, svc, &after, i, k, per_service)?;
        }
        // The same withdrawals the way the daemon makes them: the read on the reader thread,
        // waited for up to READ_WAIT; past it, the withdrawal is committed and the entries
        // deleted in a batch of their own when the read ends.
        for _ in 0..rounds {
            let i = rng.below(SERVICES);
            let k = rng.below(BACKENDS);
            let svc = &m.services[i];
            let gone = svc.backends[k].address;
            let down = |_: &Service, b: &Backend| b.address != gone;
            let started = Instant::now();
            let after = service_elements(svc, 0, down);
            let deltas = reconcile::diff_elements(&service_elements(svc, 0, |_, _| true), &after);
            let eligible = Eligible::after(&all_up, &deltas);
            let seq = reader.ask(&all_up.table, &spec);
            let answers = reader.answers(Some((seq, READ_WAIT)));
            let answer = answers.into_iter().find(|a| a.seq >= seq);
            let stale = match &answer {
                Some(a) => sticky::stale(a.entries.as_ref().map_err(|e| e.clone())?, &eligible),
                None => vec![],
            };
            withdraw(&mut nft, &all_up.table, &deltas, &stale)?;
            row.daemon_commit.push(started.elapsed());
            if answer.is_some() {
                row.daemon_in_time += 1;
            } else {
                let late = loop {
                    let got = reader.answers(Some((seq, Duration::from_secs(60))));
                    if let Some(a) = got.into_iter().find(|a| a.seq >= seq) {
                        break a;
                    }
                };
                let stale = sticky::stale(late.entries.as_ref().map_err(|e| e.clone())?, &eligible);
                nft.apply(&[Change::Forget {
                    table: &all_up.table,
                    set: &sticky,
                    keys: &stale,
                }])
                .map_err(|e| format!("forget: {e}"))?;
            }
            row.daemon_gone.push(started.elapsed());
            restore(&mut nft, &all_up.table, svc, &after, i, k, per_service)?;
        }
        Ok(row)
    })
}

fn main() -> ExitCode {
    common::set_prefix("natlb-sbench");
    if !common::start("sticky") {
        return ExitCode::FAILURE;
    }
    let mut sizes = vec![10_000usize, 100_000];
    let mut rounds = 20;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--entries" => {
                sizes = it
                    .next()
                    .map(|v| v.split(',').filter_map(|s| s.parse().ok()).collect())
                    .unwrap_or_default()
            }
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(20),
            "--bench" => {}
            other => {
                eprintln!("unknown option {other}; usage: [--entries 10000,100000] [--rounds 20]");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut rng = Rng(0x5eed);
    let mut rows = Vec::new();
    for &n in std::iter::once(&0).chain(sizes.iter()) {
        eprintln!("sticky: {n} entries, {rounds} withdrawals ...");
        match run(n, rounds, &mut rng) {
            Ok(r) => rows.push(r),
            Err(e) => {
                eprintln!("sticky: {n} entries: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{SERVICES} services × {BACKENDS} backends, all with persistence; one backend withdrawn per round ({rounds} rounds): read the sticky map, pick the withdrawn backend's entries, commit slot deltas + their deletion in one batch.\n"
    );
    println!(
        "| sticky entries | read + pick median | p99 | commit median | p99 | withdrawal total median | vs empty map | entries forgotten per withdrawal | incomplete reads |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let base = median(&rows[0].total);
    for r in &rows {
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.1}× | {} | {} of {rounds} |",
            r.entries,
            median(&r.read),
            p99(&r.read),
            median(&r.commit),
            p99(&r.commit),
            median(&r.total),
            median(&r.total) / base,
            r.forgot / rounds.max(1),
            r.incomplete,
        );
    }
    println!(
        "\nThe same withdrawals as the daemon makes them: the read on its own thread, waited for up to sticky_read_wait ({} ms); past it, the withdrawal is committed and the entries are deleted in a batch of their own when the read ends.\n",
        READ_WAIT.as_millis()
    );
    println!(
        "| sticky entries | decision → withdrawal committed, median | p99 | entries in the withdrawal's batch | decision → entries deleted, median | p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.2} ms | {:.2} ms | {} of {rounds} | {:.2} ms | {:.2} ms |",
            r.entries,
            median(&r.daemon_commit),
            p99(&r.daemon_commit),
            r.daemon_in_time,
            median(&r.daemon_gone),
            p99(&r.daemon_gone),
        );
    }
    ExitCode::SUCCESS
}
