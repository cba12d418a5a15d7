//! The probe engine: one task per probed backend, each probing on its own schedule and
//! reporting its backend's state changes to the daemon.
//!
//! Each task owns its backend's [`Hysteresis`], so it knows when results disagree with the
//! state and probes at `fast_interval` until they decide. Probes are spread: a task's first probe
//! comes within the first fraction of a second (a fresh start probes at once, but ten thousand
//! backends do not fire in the same millisecond), and every later wait is jittered by ±10 %.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};

use super::probe::{Outcome, Target, probe};
use super::state::{Hysteresis, State, Transition};
use crate::model::{Backend, Health, HealthKind, Service};

/// Identifies a backend across reloads: its service's name and its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub service: String,
    pub backend: SocketAddr,
}

impl std::fmt::Display for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.service, self.backend)
    }
}

/// A state change of one backend, with the probe result that decided it.
#[derive(Debug, Clone)]
pub struct Report {
    pub key: BackendKey,
    pub transition: Transition,
    pub outcome: Outcome,
    /// When the deciding probe result came in.
    pub decided_at: tokio::time::Instant,
}

/// Everything that decides how a backend is probed; a reload restarts a backend's task only
/// when this changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub health: Health,
    pub target: SocketAddr,
}

impl ProbeSpec {
    pub fn of(service: &Service, backend: &Backend) -> ProbeSpec {
        let mut target = backend.address;
        if let Some(p) = backend.health_port {
            target.set_port(p);
        }
        ProbeSpec {
            health: service.health.clone(),
            target,
        }
    }
}

/// The first probe's delay: spread over at most this long, or the interval if shorter.
const FIRST_PROBE_SPREAD: Duration = Duration::from_millis(500);

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.9 + 0.2 * fastrand::f64())
}

/// Probes start on multiples of this tick (counted from the engine's first use), so that the
/// daemon wakes once for the probes of a tick instead of once for each: at ten thousand probes
/// a second, waking and sleeping costs more than the probes' own system calls. A probe comes at
/// most one tick late.
const PROBE_TICK: Duration = Duration::from_millis(10);

/// The first tick at or after `after` from now.
fn on_tick(after: Duration) -> Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    let epoch = Instant::from_std(*EPOCH.get_or_init(std::time::Instant::now));
    let due = Instant::now() + after;
    let since = due.saturating_duration_since(epoch).as_nanos();
    let tick = PROBE_TICK.as_nanos();
    let ticks = since.div_ceil(tick);
    epoch + Duration::from_nanos(u64::try_from(ticks * tick).unwrap_or(u64::MAX))
}

/// Sees every probe result (for `natlb status` and the metrics); called on the probe thread.
pub trait Observer: Send + Sync {
    fn probed(&self, key: &BackendKey, outcome: &Outcome);
}

/// Sees nothing.
impl Observer for () {
    fn probed(&self, _: &BackendKey, _: &Outcome) {}
}

/// Probes with `check` forever: waits, probes, records, reports transitions.
pub async fn probe_loop<F, Fut>(
    key: BackendKey,
    spec: ProbeSpec,
    initial: State,
    reports: mpsc::UnboundedSender<Report>,
    observer: Arc<dyn Observer>,
    check: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Outcome>,
{
    let h = &spec.health;
    let mut state = Hysteresis::new(h.rise, h.fall, initial);
    sleep(FIRST_PROBE_SPREAD.min(h.interval).mul_f64(fastrand::f64())).await;
    loop {
        let outcome = check().await;
        observer.probed(&key, &outcome);
        if let Some(transition) = state.record(outcome.ok) {
            let report = Report {
                key: key.clone(),
                transition,
                outcome,
                decided_at: tokio::time::Instant::now(),
            };
            if reports.send(report).is_err() {
                return; // the daemon is gone
            }
        }
        let wait = if state.changing() {
            h.fast_interval
        } else {
            h.interval
        };
        sleep_until(on_tick(jittered(wait))).await;
    }
}

/// The running probe tasks, by backend.
///
/// They run on a runtime of their own, on its own thread: the daemon's loop (decisions,
/// commits, reloads) then never waits behind a tick's worth of probes, and the probes never wait
/// behind a commit.
pub struct Engine {
    tasks: HashMap<BackendKey, (ProbeSpec, JoinHandle<()>)>,
    reports: mpsc::UnboundedSender<Report>,
    observer: Arc<dyn Observer>,
    probes: tokio::runtime::Handle,
    /// Dropping it stops the probe thread.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Engine {
    pub fn new(
        reports: mpsc::UnboundedSender<Report>,
        observer: Arc<dyn Observer>,
    ) -> std::io::Result<Engine> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let probes = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("natlb-probes".into())
            .spawn(move || {
                let _ = rt.block_on(stopped);
            })?;
        Ok(Engine {
            tasks: HashMap::new(),
            reports,
            observer,
            probes,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn probed(&self) -> usize {
        self.tasks.len()
    }

    /// Makes the running tasks match `services`: keeps the task of every backend whose probe is
    /// unchanged (so a reload loses no probe state), starts the missing ones from `state_of`
    /// (the last known state), stops the rest.
    pub fn sync(&mut self, services: &[Service], state_of: impl Fn(&BackendKey) -> State) {
        let mut wanted: HashMap<BackendKey, ProbeSpec> = HashMap::new();
        for s in services {
            if s.health.kind == HealthKind::None {
                continue;
            }
            for b in &s.backends {
                let key = BackendKey {
                    service: s.name.clone(),
                    backend: b.address,
                };
                wanted.insert(key, ProbeSpec::of(s, b));
            }
        }
        self.tasks.retain(|key, (spec, task)| {
            let keep = wanted.get(key) == Some(spec);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, spec) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let target = Target {
                service: key.service.clone(),
                addr: spec.target,
            };
            // Shared, not copied per probe: ten thousand probes a second each cloning a name
            // and a probe kind show up in the profile.
            let kind = Arc::new(spec.health.kind.clone());
            let target = Arc::new(target);
            let limit = spec.health.timeout;
            let task = self.probes.spawn(probe_loop(
                key.clone(),
                spec.clone(),
                state_of(&key),
                self.reports.clone(),
                self.observer.clone(),
                move || {
                    let (kind, target) = (kind.clone(), target.clone());
                    async move { probe(&kind, &target, limit).await }
                },
            ));
            self.tasks.insert(key, (spec, task));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    fn spec(interval_ms: u64, fast_ms: u64, rise: u32, fall: u32) -> ProbeSpec {
        ProbeSpec {
            health: Health {
                kind: HealthKind::Tcp,
                interval: Duration::from_millis(interval_ms),
                fast_interval: Duration::from_millis(fast_ms),
                timeout: Duration::from_millis(interval_ms),
                rise,
                fall,
            },
            target: "192.0.2.1:80".parse().unwrap(),
        }
    }

    fn key() -> BackendKey {
        BackendKey {
            service: "web".into(),
            backend: "192.0.2.1:80".parse().unwrap(),
        }
    }

    /// Runs a probe loop against scripted results (true = pass) on tokio's paused clock and
    /// returns when each probe ran and what the loop reported.
    async fn scripted(
        spec: ProbeSpec,
        initial: State,
        script: Vec<bool>,
        run_for: Duration,
    ) -> (Vec<Duration>, Vec<(Duration, State)>) {
        let start = Instant::now();
        let times = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(script.into_iter()));
        let t2 = times.clone();
        let task = tokio::spawn(probe_loop(
            key(),
            spec,
            initial,
            tx,
            Arc::new(()),
            move || {
                t2.lock().unwrap().push(start.elapsed());
                let ok = script.lock().unwrap().next().unwrap_or(true);
                async move {
                    Outcome {
                        ok,
                        detail: String::new(),
                        latency: Duration::ZERO,
                    }
                }
            },
        ));
        let mut reports = Vec::new();
        let deadline = start + run_for;
        loop {
            tokio::select! {
                r = rx.recv() => reports.push((start.elapsed(), r.unwrap().transition.to)),
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        task.abort();
        let t = times.lock().unwrap().clone();
        (t, reports)
    }

    #[tokio::test(start_paused = true)]
    async fn withdraws_after_fall_failures_at_the_fast_interval() {
        // Up; then failures from the 3rd probe on. interval 1 s, fast 250 ms, fall 3.
        let mut script = vec![true, true];
        script.extend([false; 20]);
        let (times, reports) = scripted(
            spec(1000, 250, 2, 3),
            State::Up,
            script,
            Duration::from_secs(6),
        )
        .await;
        assert!(
            times[0] < Duration::from_millis(500),
            "first probe at once: {times:?}"
        );
        // Probes 1-3 are ~1 s apart; once the first failure is seen they come every ~250 ms.
        let gap = |i: usize| times[i + 1] - times[i];
        assert!(gap(0) >= Duration::from_millis(900) && gap(1) >= Duration::from_millis(900));
        // 250 ms + 10 % jitter, then up to one tick late.
        let fast = Duration::from_millis(275) + PROBE_TICK;
        assert!(gap(2) <= fast && gap(3) <= fast, "{times:?}");
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].1, State::Down);
        // Decided at the 3rd failure: within fall x fast_interval of the first one.
        assert!(reports[0].0 - times[2] <= 3 * fast);
    }

    #[tokio::test(start_paused = true)]
    async fn restores_after_rise_successes_and_flapping_decides_nothing() {
        let script = vec![false, true, false, true, false, true, true, true];
        let (_, reports) = scripted(
            spec(1000, 100, 2, 3),
            State::Down,
            script,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            reports.iter().map(|r| r.1).collect::<Vec<_>>(),
            vec![State::Up]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_backend_is_decided_by_its_first_probe() {
        let (_, reports) = scripted(
            spec(2000, 500, 2, 3),
            State::Unknown,
            vec![false],
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].1, State::Down);
    }

    #[tokio::test(start_paused = true)]
    async fn first_probes_of_many_backends_are_spread() {
        let mut firsts = Vec::new();
        for _ in 0..200 {
            let (times, _) = scripted(
                spec(1000, 250, 2, 3),
                State::Up,
                vec![],
                Duration::from_millis(600),
            )
            .await;
            firsts.push(times[0]);
        }
        let max = firsts.iter().max().unwrap();
        let distinct: std::collections::HashSet<_> = firsts.iter().collect();
        assert!(*max <= FIRST_PROBE_SPREAD, "{max:?}");
        assert!(
            distinct.len() > 150,
            "first probes not spread: {} distinct",
            distinct.len()
        );
    }
}
