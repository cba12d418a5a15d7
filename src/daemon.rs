//! `natlb run`: install the table, then keep it as the config and the probes say until told to
//! stop.
//!
//! - Start: read the config and the last known backend states (`state_dir`), render, read back
//!   whatever table is installed under natlb's name and send the one batch that makes it right
//!   (nothing, element deltas, or an atomic replace: a restart never interrupts traffic). Then
//!   start the probes.
//! - A probe decides a backend went down or came back: render that backend's service before and
//!   after, and commit the difference as one batch (several decisions that arrive together share
//!   one batch).
//! - SIGHUP: re-read the config; a bad config is logged and changes nothing; a good one is
//!   applied as element deltas in one batch, and probes of unchanged backends keep their state.
//! - SIGTERM/SIGINT: exit, leaving the rules in place unless `keep_rules_on_exit = false`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::admin::{self, AdminChange, AdminState};
use crate::config;
use crate::conntrack_pressure::{self, Pressure};
use crate::control::api::{AdminAnswer, BackendRef, Refusal, ReloadAnswer};
use crate::control::server::{self, Command};
use crate::control::status;
use crate::health::{self, BackendKey, Board, Engine, Report, State};
use crate::least_conn;
use crate::metrics::{Metrics, Reason};
use crate::model::{Backend, Model, OnBackendDown, Scheduler, Service};
use crate::nft::{Change, CommitStats, Nft, NftError, SetDelta};
use crate::reconcile::{self, Plan};
use crate::render::{self, layout, ruleset::Ruleset, ruleset::Value};
use crate::sticky::{self, Eligible};
use crate::sticky_reader::{Answer, Reader};
use crate::sysctl::{self, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] config::ConfigErrors),
    #[error("{0}")]
    Nft(#[from] NftError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the probe thread: {0}")]
    ProbeThread(std::io::Error),
    #[error("cannot start the thread that reads the sticky map: {0}")]
    StickyThread(std::io::Error),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Control(#[from] server::ServeError),
}

/// The daemon's state: the config, what the probes say, and the ruleset it last committed.
struct Daemon {
    config_path: PathBuf,
    /// The config as loaded.
    config: Model,
    /// The config with the weights operators set (`admin`): what natlb renders.
    model: Model,
    /// Operators' drains and weights (`natlb drain`, `enable`, `weight`).
    admin: AdminState,
    metrics: Arc<Metrics>,
    /// Service position in `model.services` by name.
    index: HashMap<String, usize>,
    board: Board,
    engine: Engine,
    installed: Ruleset,
    /// The ruleset generation right after natlb's last commit (or read) of `installed`. While
    /// the kernel still reports it, nobody has changed any table since, and `installed` is
    /// exactly what the kernel holds.
    installed_gen: Option<u32>,
    nft: Nft,
    /// The board changed since the states were last saved.
    states_dirty: bool,
    /// `least-conn` services' effective weights (by backend position) now installed, where they
    /// differ from the configured ones. A reload starts them afresh.
    effective: HashMap<String, Vec<u32>>,
    /// The connection counts of each `least-conn` service's last re-weighting.
    counted: HashMap<String, Vec<u64>>,
    /// Reads of the sticky map, on a thread of their own.
    sticky: Reader,
    /// When to read the sticky map again after a withdrawal: a read while the kernel resizes
    /// the map can miss entries, so they are looked for again about 1, 3 and 7 seconds later.
    resweeps: Vec<tokio::time::Instant>,
    /// How full the conntrack table is, as last seen.
    pressure: Pressure,
}

/// The sticky-map read a change asked for.
enum StickyRead {
    /// The change takes no backend away from a service with persistence.
    NotNeeded,
    /// The read answered within `sticky_read_wait`: these entries go in the change's batch.
    InTime(Vec<Vec<Value>>),
    /// It did not: the change goes without them; they go when the read ends.
    Late,
}

impl StickyRead {
    /// The entries that go in the change's batch.
    fn stale(&self) -> &[Vec<Value>] {
        match self {
            StickyRead::InTime(stale) => stale,
            _ => &[],
        }
    }
}

fn summary(rs: &Ruleset, model: &Model) -> String {
    let backends: usize = model.services.iter().map(|s| s.backends.len()).sum();
    format!(
        "{} service(s), {} backend(s), {} element(s), {} egress rule(s)",
        model.services.len(),
        backends,
        rs.element_count(),
        rs.egress.len()
    )
}

fn index(model: &Model) -> HashMap<String, usize> {
    model
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect()
}

fn element_changes(deltas: &[SetDelta]) -> usize {
    deltas.iter().map(|d| d.add.len() + d.remove.len()).sum()
}

/// Reads natlb's table from the kernel and commits what makes it `want` in one batch, removing
/// `previous` in the same batch if natlb owned a table of that other name. `Ok(None)`: nothing
/// needed changing. Refuses to touch a table under natlb's name that natlb did not create.
fn sync_table(
    nft: &mut Nft,
    want: &Ruleset,
    previous: Option<&str>,
) -> Result<Option<CommitStats>, DaemonError> {
    let found = nft.read_installed(want)?;
    let plan = reconcile::adopt(&found, want);
    match &plan {
        Plan::Refuse { reason } => return Err(DaemonError::Refused(reason.clone())),
        Plan::Nothing => {
            info!(table = %want.table, "adopted the installed table: it is already as configured")
        }
        Plan::Replace { reason } => {
            info!(table = %want.table, "installing the whole table: {reason}")
        }
        Plan::Deltas { deltas, egress } => {
            let egress = if *egress {
                "; the egress chain holds other rules than the config's: writing them again"
            } else {
                ""
            };
            info!(table = %want.table, sets = deltas.len(), egress_rules = want.egress.len(), "adopted the installed table; applying the differences{egress}")
        }
    }
    let mut old = None;
    if let Some(p) = previous.filter(|&p| p != want.table) {
        match nft.table_comment(p)? {
            Some(c) if c.starts_with(crate::nft::COMMENT_PREFIX) => {
                info!(old = p, "removing natlb's table of its previous name");
                old = Some(p);
            }
            Some(_) => warn!("table inet {p} was natlb's once but is not any more; left alone"),
            None => {}
        }
    }
    let changes = plan.changes(want, old);
    if changes.is_empty() {
        return Ok(None);
    }
    Ok(Some(nft.apply(&changes)?))
}

/// The ruleset generation right after a sync: the commit's, or the current one if nothing was
/// committed.
fn generation_after(nft: &mut Nft, stats: Option<&CommitStats>) -> Option<u32> {
    match stats {
        Some(s) => Some(s.generation),
        None => nft.generation().ok(),
    }
}

/// `service` with backend `i`'s weight replaced by `weights[i]`.
fn with_weights(service: &Service, weights: &[u32]) -> Service {
    let mut s = service.clone();
    for (b, &w) in s.backends.iter_mut().zip(weights) {
        b.weight = w;
    }
    s
}

/// Records the table natlb owns now, for the next start.
fn remember_table(model: &Model, table: &str) {
    if let Err(e) = crate::state_dir::save_table(&model.daemon.state_dir, table) {
        warn!(
            "cannot record the table name in {}: {e}",
            crate::state_dir::table_path(&model.daemon.state_dir).display()
        );
    }
}

/// Whether a backend may take new connections: its probe does not say it is down, and no
/// operator drained it.
fn takes_new(board: &Board, admin: &AdminState, s: &Service, b: &Backend) -> bool {
    board.is_up(s, b) && !admin.is_drained(s, b)
}

fn save_admin(admin: &AdminState, model: &Model) -> bool {
    match admin.save(&model.daemon.state_dir) {
        Ok(()) => true,
        Err(e) => {
            error!(
                "cannot save the admin state to {}: {e}; the change is applied but will not \
                 survive a restart",
                admin::path(&model.daemon.state_dir).display()
            );
            false
        }
    }
}

/// Removes the control socket's file when dropped armed: a start that fails after binding
/// leaves no socket behind.
struct SocketFile(Option<PathBuf>);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The sockets natlb serves: the control socket, and the metrics endpoint if configured.
struct Listeners {
    control: tokio::net::UnixListener,
    metrics: Option<tokio::net::TcpListener>,
}

impl Listeners {
    fn bind(model: &Model) -> Result<Listeners, DaemonError> {
        let d = &model.daemon;
        let control = server::bind_control(&d.control_socket, d.control_group.as_deref())?;
        info!(socket = %d.control_socket.display(), "control socket ready");
        // A busy metrics port is logged, not fatal: the gateway's traffic matters more.
        let metrics = d.metrics.and_then(|addr| {
            let bound = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std);
            match bound {
                Ok(l) => {
                    info!(%addr, "metrics at http://{addr}/metrics");
                    Some(l)
                }
                Err(e) => {
                    error!("cannot serve metrics on {addr}: {e}; natlb runs without them");
                    None
                }
            }
        });
        Ok(Listeners { control, metrics })
    }
}

impl Daemon {
    fn start(
        config_path: &Path,
        reports: mpsc::UnboundedSender<Report>,
        sticky_answered: mpsc::UnboundedSender<()>,
        metrics: Arc<Metrics>,
    ) -> Result<(Daemon, Listeners), DaemonError> {
        let config = config::load(config_path)?;
        apply_kernel_knobs(&config, "start");
        let saved = health::store::load(&config.daemon.state_dir).unwrap_or_else(|e| {
            warn!(
                "cannot read {}: {e}; every probed backend starts unknown",
                health::store::path(&config.daemon.state_dir).display()
            );
            BTreeMap::new()
        });
        let mut admin = AdminState::load(&config.daemon.state_dir).unwrap_or_else(|e| {
            error!(
                "cannot read {}: {e}; every backend starts enabled with its configured weight \
                 (drain again what must stay drained; the next change rewrites the file)",
                admin::path(&config.daemon.state_dir).display()
            );
            AdminState::default()
        });
        let loaded = admin.clone();
        let forgotten = admin.retain(&config);
        let model = admin.apply(&config);
        let board = Board::new(&saved, &model);
        let want = render::render(&model, |s, b| takes_new(&board, &admin, s, b));
        // Before touching the kernel: a second natlb on the same socket stops here, before it
        // could fight the first over the table. And before any thread starts: the socket's mode
        // comes from the umask at bind time. A start that fails from here on removes it.
        let listeners = Listeners::bind(&model)?;
        let mut socket_file = SocketFile(Some(model.daemon.control_socket.clone()));
        let mut nft = Nft::open()?;
        // A table natlb owned under another name (renamed while natlb was stopped) goes in the
        // same batch, so two tables never compete for the VIPs.
        let previous = crate::state_dir::load_table(&model.daemon.state_dir);
        let sync = |nft: &mut Nft| {
            let started = std::time::Instant::now();
            let r = sync_table(nft, &want, previous.as_deref());
            metrics.batch(Reason::Start, r.as_ref().ok().map(|_| started.elapsed()));
            r
        };
        let stats = match sync(&mut nft) {
            // The table changed between reading it and committing (another process): read it
            // again and retry, once.
            Err(DaemonError::Nft(NftError::Rejected(errors))) => {
                warn!(
                    "the batch was refused ({}); re-reading the table and retrying once",
                    errors[0]
                );
                sync(&mut nft)?
            }
            other => other?,
        };
        let installed_gen = generation_after(&mut nft, stats.as_ref());
        if let Some(stats) = stats {
            info!(
                table = %want.table,
                messages = stats.messages,
                bytes = stats.bytes,
                encode_ms = stats.encode.as_secs_f64() * 1e3,
                kernel_ms = stats.kernel.as_secs_f64() * 1e3,
                "committed one batch: {}",
                summary(&want, &model)
            );
        }
        remember_table(&model, &want.table);
        if !admin.is_empty() || !forgotten.is_empty() {
            info!(
                restored = admin.len(),
                forgotten = forgotten.len(),
                "admin state: {} backend(s) drained or re-weighted by operators",
                admin.len()
            );
        }
        if admin != loaded {
            save_admin(&admin, &model);
        }
        let mut engine = Engine::new(reports, metrics.clone()).map_err(DaemonError::ProbeThread)?;
        engine.sync(&model.services, |k| board.state(&k.service, k.backend));
        if engine.probed() > 0 {
            info!(
                backends = engine.probed(),
                restored = saved.len(),
                "probing started"
            );
        }
        let mut daemon = Daemon {
            config_path: config_path.to_path_buf(),
            index: index(&model),
            config,
            model,
            admin,
            metrics,
            board,
            engine,
            installed: want,
            installed_gen,
            nft,
            states_dirty: false,
            effective: HashMap::new(),
            counted: HashMap::new(),
            sticky: Reader::start(sticky_answered).map_err(DaemonError::StickyThread)?,
            resweeps: Vec::new(),
            pressure: Pressure::default(),
        };
        // The sticky entries live in the kernel and survive a restart; those the config (or the
        // backends' states) no longer allow go when the read ends.
        daemon.ask_sticky();
        socket_file.0 = None;
        Ok((daemon, listeners))
    }

    /// Asks for a read of the sticky map, if the table has one; the answer arrives in the
    /// daemon's loop (`on_sticky_answers`) unless a change waits for it.
    fn ask_sticky(&mut self) -> Option<u64> {
        ask_sticky(&mut self.sticky, &self.installed)
    }

    /// For a change that takes eligible pairs away and leaves `eligible`: reads the sticky
    /// map, waiting up to `wait`, and says which entries go.
    fn read_for_change(
        sticky: &mut Reader,
        installed: &Ruleset,
        wait: std::time::Duration,
        eligible: &Eligible<'_>,
    ) -> StickyRead {
        let Some(spec) = installed.set(&sticky_set()) else {
            return StickyRead::NotNeeded;
        };
        if wait.is_zero() {
            // Not even a glance: the read is asked for after the commit.
            return StickyRead::Late;
        }
        let seq = sticky.ask(&installed.table, spec);
        let answers = sticky.answers(Some((seq, wait)));
        let in_time = answers.iter().any(|a| a.seq >= seq);
        let stale = stale_in(&answers, eligible);
        if in_time {
            StickyRead::InTime(stale)
        } else {
            StickyRead::Late
        }
    }

    /// After a change that took backends away: reads again now (an entry a client made while
    /// natlb read is not in that read) and a few times later (see `resweeps`).
    fn read_again_after(&mut self, read: &StickyRead) {
        if matches!(read, StickyRead::NotNeeded) {
            return;
        }
        self.ask_sticky();
        let now = tokio::time::Instant::now();
        self.resweeps
            .extend([1, 3, 7].map(|s| now + std::time::Duration::from_secs(s)));
    }

    /// Asks for the re-reads that are due.
    fn resweep_sticky(&mut self) {
        let now = tokio::time::Instant::now();
        let before = self.resweeps.len();
        self.resweeps.retain(|at| *at > now);
        if self.resweeps.len() < before {
            self.ask_sticky();
        }
    }

    /// Reads no change waited for: deletes the entries that are stale under the installed
    /// ruleset, in a batch of their own.
    fn on_sticky_answers(&mut self) {
        let answers = self.sticky.answers(None);
        if answers.is_empty() {
            return;
        }
        let stale = stale_in(&answers, &Eligible::of(&self.installed));
        if stale.is_empty() {
            return;
        }
        let read_ms = answers
            .iter()
            .map(|a| a.took.as_secs_f64() * 1e3)
            .fold(0.0, f64::max);
        let table = self.installed.table.clone();
        let set = sticky_set();
        let result = self.nft.apply(&[Change::Forget {
            table: &table,
            set: &set,
            keys: &stale,
        }]);
        self.metrics.batch(
            Reason::Sticky,
            result.as_ref().ok().map(|s| s.encode + s.kernel),
        );
        match result {
            Ok(stats) => {
                self.installed_gen = Some(stats.generation);
                info!(
                    entries = stale.len(),
                    read_ms,
                    "forgot sticky entries of backends that no longer take new connections"
                );
            }
            Err(e) => warn!("cannot delete {} stale sticky entries: {e}", stale.len()),
        }
    }

    /// Looks at the conntrack table's fill; logs when it reaches `warn_percent` and when it is
    /// clearly below again.
    fn check_conntrack(&mut self) {
        let fill = match conntrack_pressure::read(Path::new(PROC_SYS)) {
            Ok(f) => f,
            Err(e) => {
                debug!("cannot read the conntrack table's fill: {e}");
                return;
            }
        };
        let warn_percent = self.model.conntrack.warn_percent;
        match self.pressure.observe(fill, warn_percent) {
            Some(conntrack_pressure::Change::Above(f)) => warn!(
                count = f.count,
                max = f.max,
                "the conntrack table is {:.0} % full ({} of {}, warn_percent {warn_percent}): \
                 when it is full the kernel drops new connections; raise [conntrack] max (and \
                 buckets) on the host, or shorten the timeouts",
                f.percent(),
                f.count,
                f.max
            ),
            Some(conntrack_pressure::Change::Below(f)) => info!(
                count = f.count,
                max = f.max,
                "the conntrack table is back to {:.0} % full",
                f.percent()
            ),
            None => {}
        }
    }

    /// A reload may change the intervals of the periodic work.
    fn retime(
        &self,
        balance_tick: &mut tokio::time::Interval,
        conntrack_tick: &mut tokio::time::Interval,
    ) {
        for (tick, period) in [
            (conntrack_tick, self.conntrack_interval()),
            (balance_tick, self.least_conn_interval()),
        ] {
            if tick.period() != period {
                *tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
        }
    }

    /// One line for systemd's status: what is installed and how many backends take traffic.
    fn one_line(&self) -> String {
        let (mut backends, mut taking) = (0, 0);
        for s in &self.model.services {
            backends += s.backends.len();
            taking +=
                render::active_backends(s, |s, b| takes_new(&self.board, &self.admin, s, b)).len();
        }
        format!(
            "{} service(s); {taking} of {backends} backend(s) take new connections; {} drained or re-weighted",
            self.model.services.len(),
            self.admin.len()
        )
    }

    fn conntrack_interval(&self) -> std::time::Duration {
        self.model.conntrack.check_interval
    }

    fn least_conn_interval(&self) -> std::time::Duration {
        self.model.daemon.least_conn_interval
    }

    /// Service `i` as installed: with its `least-conn` effective weights, if any.
    fn effective_service(&self, i: usize) -> Service {
        let service = &self.model.services[i];
        match self.effective.get(&service.name) {
            Some(w) => with_weights(service, w),
            None => service.clone(),
        }
    }

    /// The model as installed: `least-conn` services with their effective weights.
    fn effective_model(&self) -> Model {
        let mut m = self.model.clone();
        for s in &mut m.services {
            if let Some(w) = self.effective.get(&s.name) {
                *s = with_weights(s, w);
            }
        }
        m
    }

    /// `least-conn`: counts each backend's live connections in conntrack and re-weights the
    /// services whose counts moved enough (see `least_conn`), in one batch.
    fn rebalance(&mut self) {
        let services: Vec<usize> = (0..self.model.services.len())
            .filter(|&i| self.model.services[i].scheduler == Scheduler::LeastConn)
            .collect();
        if services.is_empty() {
            return;
        }
        let families: Vec<std::net::IpAddr> = services
            .iter()
            .map(|&i| self.model.services[i].vip.addr)
            .collect();
        let counts = match crate::conntrack::count_connections(&families) {
            Ok(c) => c,
            Err(e) => {
                warn!("least-conn: cannot count connections: {e}");
                return;
            }
        };
        let seed = self.model.daemon.hash_seed;
        let mut deltas = Vec::new();
        let mut changed = Vec::new();
        for i in services {
            let service = &self.model.services[i];
            let vip = std::net::SocketAddr::new(service.vip.addr, service.vip.port);
            let of_vip = counts.get(&(vip, service.vip.protocol.number()));
            let conns: Vec<u64> = service
                .backends
                .iter()
                .map(|b| of_vip.and_then(|c| c.get(&b.address)).copied().unwrap_or(0))
                .collect();
            let configured: Vec<u32> = service.backends.iter().map(|b| b.weight).collect();
            let last = self.counted.get(&service.name).map(Vec::as_slice);
            let Some(next) = least_conn::reweigh(&configured, &conns, last) else {
                continue;
            };
            let current = self
                .effective
                .get(&service.name)
                .cloned()
                .unwrap_or_else(|| configured.clone());
            let (board, admin) = (&self.board, &self.admin);
            let before =
                render::service_elements(&with_weights(service, &current), seed, |s, b| {
                    takes_new(board, admin, s, b)
                });
            let after = render::service_elements(&with_weights(service, &next), seed, |s, b| {
                takes_new(board, admin, s, b)
            });
            let d = reconcile::diff_elements(&before, &after);
            if d.is_empty() {
                // Same shares (e.g. the first look at idle backends): nothing to commit.
                self.counted.insert(service.name.clone(), conns);
                self.effective.insert(service.name.clone(), next);
                continue;
            }
            deltas.extend(d);
            changed.push((service.name.clone(), next, conns));
        }
        if changed.is_empty() {
            return;
        }
        let result = if deltas.is_empty() {
            Ok(None)
        } else {
            self.commit_deltas(&deltas).map(Some)
        };
        self.count_batch(Reason::LeastConn, &result);
        match result {
            Ok(stats) => {
                for (name, weights, conns) in changed {
                    info!(
                        service = %name,
                        elements = element_changes(&deltas),
                        kernel_ms = stats.map_or(0.0, |s| s.kernel.as_secs_f64() * 1e3),
                        "least-conn: effective weights {weights:?} for live connections {conns:?}"
                    );
                    self.effective.insert(name.clone(), weights);
                    self.counted.insert(name, conns);
                }
            }
            Err(e) => error!("least-conn: re-weighting failed, the table is unchanged: {e}"),
        }
    }

    /// Applies probe decisions: one batch for all of them.
    fn on_reports(&mut self, reports: Vec<Report>) {
        let mut by_service: BTreeMap<usize, Vec<&Report>> = BTreeMap::new();
        for r in &reports {
            // A report from a task a reload has just stopped may name a removed backend.
            if let Some(&i) = self.index.get(&r.key.service)
                && self.model.services[i]
                    .backends
                    .iter()
                    .any(|b| b.address == r.key.backend)
            {
                by_service.entry(i).or_default().push(r);
            }
        }
        if by_service.is_empty() {
            return;
        }
        let mut deltas = Vec::new();
        let seed = self.model.daemon.hash_seed;
        for (&i, reps) in &by_service {
            let service = self.effective_service(i);
            let (board, admin) = (&mut self.board, &self.admin);
            let before =
                render::service_elements(&service, seed, |s, b| takes_new(board, admin, s, b));
            for r in reps {
                board.set(&r.key, r.transition.to);
            }
            let after =
                render::service_elements(&service, seed, |s, b| takes_new(board, admin, s, b));
            deltas.extend(reconcile::diff_elements(&before, &after));
        }
        let result = if deltas.is_empty() {
            Ok(None)
        } else {
            self.commit_deltas(&deltas).map(Some)
        };
        self.count_batch(Reason::Health, &result);
        let decided = reports.iter().map(|r| r.decided_at).min();
        for r in &reports {
            let t = r.transition;
            self.metrics.transition(&r.key, t.to);
            let what = match (t.from, t.to) {
                (State::Unknown, State::Up) => "backend up at its first probe".to_string(),
                (State::Unknown, _) => "backend DOWN at its first probe; withdrawn".to_string(),
                (_, State::Down) => {
                    format!("backend DOWN after {} failed probe(s); withdrawn", t.after)
                }
                _ => format!("backend UP after {} passed probe(s); restored", t.after),
            };
            info!(
                service = %r.key.service,
                backend = %r.key.backend,
                "{what}: {}",
                r.outcome.detail
            );
        }
        let committed = result.is_ok();
        match result {
            Ok(Some(stats)) => info!(
                elements_changed = element_changes(&deltas),
                kernel_ms = stats.kernel.as_secs_f64() * 1e3,
                decision_to_commit_ms = decided.map_or(0.0, |d| d.elapsed().as_secs_f64() * 1e3),
                "health change committed in one batch"
            ),
            Ok(None) => {}
            Err(e) => error!("health change NOT applied: {e}"),
        }
        if committed {
            self.reset_connections(&reports);
        }
        for &i in by_service.keys() {
            let s = &self.model.services[i];
            if render::active_backends(s, |s, b| takes_new(&self.board, &self.admin, s, b))
                .is_empty()
            {
                warn!(service = %s.name, "no backend of service {} is up: new connections to it fail", s.name);
            }
        }
        // Saved by the next tick of the main loop, not here: the file holds every backend, and
        // writing it per decision would make a decision cost O(backends).
        self.states_dirty = true;
    }

    /// Saves the backend states to `state_dir` if they changed since the last save.
    fn save_states(&mut self) {
        if !self.states_dirty {
            return;
        }
        self.states_dirty = false;
        if let Err(e) = health::store::save(&self.model.daemon.state_dir, &self.board.snapshot()) {
            warn!(
                "cannot save backend states to {}: {e}",
                health::store::path(&self.model.daemon.state_dir).display()
            );
        }
    }

    /// `on_backend_down = "reset"`: deletes the conntrack entries of backends just withdrawn, so
    /// their flows move now (after the commit: new packets must find the new slots).
    fn reset_connections(&self, reports: &[Report]) {
        for r in reports.iter().filter(|r| r.transition.to == State::Down) {
            let Some(&i) = self.index.get(&r.key.service) else {
                continue;
            };
            let service = &self.model.services[i];
            if service.on_backend_down != OnBackendDown::Reset {
                continue;
            }
            match crate::conntrack::flush_backend(&service.vip, r.key.backend) {
                Ok(n) => info!(
                    service = %r.key.service,
                    backend = %r.key.backend,
                    "deleted {n} connection(s) of the withdrawn backend (on_backend_down = reset)"
                ),
                Err(e) => warn!(
                    service = %r.key.service,
                    backend = %r.key.backend,
                    "cannot delete the withdrawn backend's connections: {e}"
                ),
            }
        }
    }

    /// Commits element deltas to the installed table and records them; if the kernel refuses
    /// (the table was changed by hand), re-reads the table and applies the full difference.
    ///
    /// The sticky entries of backends the deltas take away (a withdrawn backend's clients) are
    /// deleted in the same batch when the read of the sticky map ends within
    /// `sticky_read_wait`, and soon after it otherwise.
    fn commit_deltas(&mut self, deltas: &[SetDelta]) -> Result<CommitStats, NftError> {
        let table = self.installed.table.clone();
        let read = if sticky::takes_away(deltas) {
            let after = Eligible::after(&self.installed, deltas);
            Daemon::read_for_change(
                &mut self.sticky,
                &self.installed,
                self.model.daemon.sticky_read_wait,
                &after,
            )
        } else {
            StickyRead::NotNeeded
        };
        let sticky = sticky_set();
        // An empty Forget adds no message.
        let changes = [
            Change::Elements {
                table: &table,
                deltas,
            },
            Change::Forget {
                table: &table,
                set: &sticky,
                keys: read.stale(),
            },
        ];
        match self.nft.apply(&changes) {
            Ok(stats) => {
                reconcile::apply_deltas(&mut self.installed, deltas);
                self.installed_gen = Some(stats.generation);
                log_sticky_read(&read, self.model.daemon.sticky_read_wait, "");
                self.read_again_after(&read);
                Ok(stats)
            }
            Err(NftError::Rejected(errors)) => {
                warn!(
                    "the batch was refused ({}); re-reading table inet {table} and retrying once",
                    errors[0]
                );
                let model = self.effective_model();
                let want = render::render(&model, |s, b| takes_new(&self.board, &self.admin, s, b));
                let stats = self.resync(&want)?;
                self.installed = want;
                self.installed_gen = Some(stats.generation);
                self.read_again_after(&StickyRead::Late);
                Ok(stats)
            }
            Err(e) => Err(e),
        }
    }

    /// SIGHUP or `natlb reload`: re-read the config and apply the difference as one batch.
    /// Any failure leaves both the kernel and natlb's idea of it as they were. Returns what
    /// happened, for the control socket.
    fn reload(&mut self) -> Result<ReloadAnswer, Refusal> {
        let config = match config::load(&self.config_path) {
            Ok(m) => m,
            Err(errors) => {
                // One line per event: the errors are joined.
                let list = errors.to_string().trim_end().replace('\n', " | ");
                error!("reload refused, the running ruleset is unchanged; fix the config: {list}");
                self.metrics.reload(false);
                return Err(Refusal::conflict(format!(
                    "reload refused, the running ruleset is unchanged; fix the config:\n{errors}"
                )));
            }
        };
        // Copies: if the reload fails, the old states stay in force with the old model.
        let mut admin = self.admin.clone();
        let forgotten = admin.retain(&config);
        let model = admin.apply(&config);
        let mut board = self.board.clone();
        board.retain(&model);
        let want = render::render(&model, |s, b| takes_new(&board, &admin, s, b));
        let eligible = Eligible::of(&want);
        let read = if eligible.takes_away_from(&self.installed) {
            Daemon::read_for_change(
                &mut self.sticky,
                &self.installed,
                model.daemon.sticky_read_wait,
                &eligible,
            )
        } else {
            StickyRead::NotNeeded
        };
        let result = self.sync_for_reload(&want, read.stale());
        self.metrics.reload(result.is_ok());
        match &result {
            Ok(Some(s)) => self
                .metrics
                .batch(Reason::Reload, Some(s.encode + s.kernel)),
            Ok(None) => {}
            Err(_) => self.metrics.batch(Reason::Reload, None),
        }
        match result {
            Ok(stats) => {
                let message = if let Some(stats) = &stats {
                    let message =
                        format!("reload applied in one batch: {}", summary(&want, &model));
                    info!(
                        table = %want.table,
                        messages = stats.messages,
                        kernel_ms = stats.kernel.as_secs_f64() * 1e3,
                        "{message}"
                    );
                    message
                } else {
                    info!("reload: the ruleset stays as it is");
                    "reload: the config is applied; the ruleset stays as it is".to_string()
                };
                for k in &forgotten {
                    info!(service = %k.service, backend = %k.backend, "reload: the backend is gone from the config; its admin state is forgotten");
                }
                if admin != self.admin {
                    save_admin(&admin, &model);
                }
                let (old, new) = (&self.model.daemon, &model.daemon);
                if (&old.control_socket, &old.control_group, old.metrics)
                    != (&new.control_socket, &new.control_group, new.metrics)
                {
                    warn!(
                        "reload: control_socket, control_group and metrics take effect at the \
                         next restart; natlb keeps serving {} and the metrics where it did",
                        old.control_socket.display()
                    );
                }
                remember_table(&model, &want.table);
                apply_kernel_knobs(&model, "reload");
                self.installed = want;
                self.installed_gen = generation_after(&mut self.nft, stats.as_ref());
                self.index = index(&model);
                self.engine
                    .sync(&model.services, |k| board.state(&k.service, k.backend));
                let probed: std::collections::HashSet<(&str, std::net::SocketAddr)> = model
                    .services
                    .iter()
                    .flat_map(|s| s.backends.iter().map(|b| (s.name.as_str(), b.address)))
                    .collect();
                self.metrics
                    .probe_log
                    .retain(|k| probed.contains(&(k.service.as_str(), k.backend)));
                self.board = board;
                self.admin = admin;
                self.config = config;
                self.model = model;
                // The reload installed the configured weights; least-conn re-weighs from there.
                self.effective.clear();
                self.counted.clear();
                log_sticky_read(&read, self.model.daemon.sticky_read_wait, "reload: ");
                self.read_again_after(&read);
                Ok(ReloadAnswer { message })
            }
            Err(e) => {
                error!("reload failed, the running ruleset is unchanged: {e}");
                Err(Refusal::failed(format!(
                    "reload failed, the running ruleset is unchanged: {e}"
                )))
            }
        }
    }

    /// The reload's batch (with the deletion of `stale` sticky entries). If the ruleset generation has not moved since natlb's last commit,
    /// no one has touched any table since, so natlb diffs against its own record: reading a big
    /// table back costs the kernel time quadratic in its sets' sizes (a set dump restarts its
    /// walk for every message). Otherwise natlb reads the kernel's table again: someone may have
    /// changed it, or flushed the ruleset.
    fn sync_for_reload(
        &mut self,
        want: &Ruleset,
        stale: &[Vec<Value>],
    ) -> Result<Option<CommitStats>, DaemonError> {
        let current = self.nft.generation().ok();
        if current.is_none() || current != self.installed_gen || want.table != self.installed.table
        {
            // The table is read back and possibly replaced; the sweep after the commit deletes
            // what the new config does not allow.
            return sync_table(&mut self.nft, want, Some(&self.installed.table));
        }
        let plan = reconcile::plan(&self.installed, want);
        info!(
            generation = current.unwrap_or(0),
            "reload: the kernel's table is as natlb left it; diffing against natlb's record"
        );
        let mut changes = plan.changes(want, None);
        let sticky = sticky_set();
        if !stale.is_empty() {
            changes.push(Change::Forget {
                table: &want.table,
                set: &sticky,
                keys: stale,
            });
        }
        if changes.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.nft.apply(&changes)?))
    }

    /// Reads the installed table back and applies what it takes to make it `want`.
    fn resync(&mut self, want: &Ruleset) -> Result<CommitStats, NftError> {
        let found = self.nft.read_installed(want)?;
        let plan = reconcile::adopt(&found, want);
        self.nft
            .apply(&plan.changes(want, Some(&self.installed.table)))
    }

    /// Counts a batch that was sent (`Ok(None)`: there was nothing to send).
    fn count_batch(&self, reason: Reason, result: &Result<Option<CommitStats>, NftError>) {
        match result {
            Ok(Some(s)) => self.metrics.batch(reason, Some(s.encode + s.kernel)),
            Ok(None) => {}
            Err(_) => self.metrics.batch(reason, None),
        }
    }

    /// A request from the control socket.
    fn on_command(&mut self, command: Command) {
        // A client that went away gets no answer: the send error is of no interest.
        match command {
            Command::Status(reply) => {
                let capture = status::capture(status::Inputs {
                    config: &self.config,
                    installed_model: self.effective_model(),
                    board: &self.board,
                    admin: &self.admin,
                    installed: &self.installed,
                });
                let _ = reply.send(capture);
            }
            Command::Admin {
                target,
                change,
                reply,
            } => {
                let _ = reply.send(self.on_admin(&target, change));
            }
            Command::Reload(reply) => {
                info!("natlb reload: reloading {}", self.config_path.display());
                let _ = reply.send(self.reload());
            }
        }
    }

    /// `natlb drain`, `enable`, `weight`: one batch for the backend's service, then the admin
    /// state is saved. A refused batch changes nothing.
    fn on_admin(
        &mut self,
        target: &BackendRef,
        change: AdminChange,
    ) -> Result<AdminAnswer, Refusal> {
        let Some(&i) = self.index.get(&target.service) else {
            let names: Vec<&str> = self
                .config
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            return Err(Refusal::not_found(format!(
                "there is no service \"{}\"; the services are: {}",
                target.service,
                names.join(", ")
            )));
        };
        let j = admin::find_backend(&self.config.services[i], &target.backend)
            .map_err(Refusal::not_found)?;
        if let AdminChange::Weight(w) = change
            && w > crate::model::MAX_WEIGHT
        {
            return Err(Refusal::bad_request(format!(
                "weight {w} is out of range; use 0 to {}",
                crate::model::MAX_WEIGHT
            )));
        }
        let name = self.config.services[i].name.clone();
        let address = self.config.services[i].backends[j].address;
        let configured = self.config.services[i].backends[j].weight;
        let key = BackendKey {
            service: name.clone(),
            backend: address,
        };
        let current = self.admin.get(&name, address);
        let next = AdminState::changed(current, change, configured);
        let weight = next.weight.unwrap_or(configured);
        let answer = |changed: bool, message: String| AdminAnswer {
            service: name.clone(),
            backend: address.to_string(),
            admin: if next.drained { "drained" } else { "enabled" }.to_string(),
            weight,
            changed,
            message,
        };
        if next == current {
            let what = match change {
                AdminChange::Drain => "is drained already".to_string(),
                AdminChange::Enable => "is enabled already".to_string(),
                AdminChange::Weight(w) => format!("has weight {w} already"),
            };
            return Ok(answer(false, format!("{name} {address} {what}")));
        }

        // Before: the service as installed. After: the new admin state; a new weight also
        // drops least-conn's re-weighting of the service, which starts again from it.
        let seed = self.model.daemon.hash_seed;
        let before_service = self.effective_service(i);
        let mut after_service = match change {
            AdminChange::Weight(_) => self.model.services[i].clone(),
            _ => before_service.clone(),
        };
        after_service.backends[j].weight = match change {
            AdminChange::Weight(_) => weight,
            _ => before_service.backends[j].weight,
        };
        let board = &self.board;
        let before = render::service_elements(&before_service, seed, |s, b| {
            takes_new(board, &self.admin, s, b)
        });
        self.admin.set(key.clone(), next);
        let after = render::service_elements(&after_service, seed, |s, b| {
            takes_new(&self.board, &self.admin, s, b)
        });
        let deltas = reconcile::diff_elements(&before, &after);
        let result = if deltas.is_empty() {
            Ok(None)
        } else {
            self.commit_deltas(&deltas).map(Some)
        };
        self.count_batch(Reason::Admin, &result);
        if let Err(e) = result {
            self.admin.set(key, current);
            error!(service = %name, backend = %address, "{change:?} NOT applied: {e}");
            return Err(Refusal::failed(format!(
                "the kernel refused the change; nothing changed: {e}"
            )));
        }
        self.model.services[i].backends[j].weight = weight;
        if let AdminChange::Weight(_) = change {
            self.effective.remove(&name);
            self.counted.remove(&name);
        }
        let saved = save_admin(&self.admin, &self.model);
        let active = render::active_backends(&after_service, |s, b| {
            takes_new(&self.board, &self.admin, s, b)
        });
        let mut message = match change {
            AdminChange::Drain => format!(
                "drained {name} {address}: it takes no new connections, and its established \
                 connections continue (natlb drain --wait waits for them to end)"
            ),
            AdminChange::Enable if active.contains(&j) => {
                format!("enabled {name} {address}: it takes new connections again")
            }
            AdminChange::Enable => format!(
                "enabled {name} {address}; it takes no new connections yet ({})",
                if self.board.is_up(&after_service, &after_service.backends[j]) {
                    "a backup, while a primary is up"
                } else {
                    "its probe says it is down"
                }
            ),
            AdminChange::Weight(w) => format!(
                "weight of {name} {address} is now {w} (configured: {configured}){}",
                if next.drained {
                    "; it stays drained"
                } else {
                    ""
                }
            ),
        };
        if !saved {
            message.push_str(&format!(
                "; WARNING: the state could not be saved to {} and will not survive a restart \
                 (see natlb's log)",
                admin::path(&self.model.daemon.state_dir).display()
            ));
        }
        info!(
            service = %name,
            backend = %address,
            elements_changed = element_changes(&deltas),
            "{message}"
        );
        Ok(answer(true, message))
    }

    fn stop(mut self) -> Result<(), DaemonError> {
        let _ = std::fs::remove_file(&self.model.daemon.control_socket);
        self.save_states();
        if self.model.daemon.keep_rules_on_exit {
            info!(table = %self.installed.table, "exiting; the rules stay in place (keep_rules_on_exit)");
        } else {
            self.nft
                .apply(&[Change::DropTable(&self.installed.table)])?;
            info!(table = %self.installed.table, "exiting; removed the table (keep_rules_on_exit = false)");
        }
        Ok(())
    }
}

/// The sticky map: persistence is IPv4 only (`layout::PERSISTENCE_FAMILIES`).
fn sticky_set() -> String {
    layout::sticky_map_name(crate::render::ruleset::Family::V4)
}

/// Asks `sticky` for a read of `installed`'s sticky map, if it has one.
fn ask_sticky(sticky: &mut Reader, installed: &Ruleset) -> Option<u64> {
    let spec = installed.set(&sticky_set())?;
    Some(sticky.ask(&installed.table, spec))
}

/// The keys of the entries in `answers` that are stale under `eligible`; a failed read is
/// logged (its stale entries stay until a later read, and the guard keeps clients off them).
fn stale_in(answers: &[Answer], eligible: &Eligible<'_>) -> Vec<Vec<Value>> {
    let mut out = BTreeSet::new();
    for a in answers {
        match &a.entries {
            Ok(entries) => out.extend(sticky::stale(entries, eligible)),
            Err(e) => warn!("cannot read the sticky entries: {e}"),
        }
    }
    out.into_iter().collect()
}

fn log_sticky_read(read: &StickyRead, wait: std::time::Duration, prefix: &str) {
    match read {
        StickyRead::InTime(stale) if !stale.is_empty() => info!(
            entries = stale.len(),
            "{prefix}forgot the sticky entries of backends that no longer take new connections, in the same batch"
        ),
        StickyRead::Late => info!(
            "{prefix}the read of the sticky map took longer than sticky_read_wait ({wait:?}): \
             committed without waiting; the entries of backends that no longer take new \
             connections go when it ends, and until then the remember chain keeps their clients \
             off those backends"
        ),
        _ => {}
    }
}

/// Where the kernel's knobs are.
const PROC_SYS: &str = "/proc/sys";

/// Writes the knobs of `[conntrack]` and `[sysctl]`, reads them back, and logs what differs
/// (by the knob's path); warns when forwarding is off for a family with services. natlb runs
/// on whatever happens here.
fn apply_kernel_knobs(model: &Model, when: &str) {
    let root = Path::new(PROC_SYS);
    for (k, outcome) in sysctl::apply(root, &sysctl::desired(model)) {
        let path = sysctl::path(root, &k.name);
        let path = path.display();
        let from = &k.from;
        match outcome {
            Outcome::Set { was } => info!(
                knob = %k.name,
                "{when}: set {path} to {} (was {was}; {from})",
                k.value
            ),
            Outcome::Unchanged => debug!(knob = %k.name, "{when}: {path} is {} already", k.value),
            Outcome::Differs { now } => warn!(
                knob = %k.name,
                "{when}: {path}: natlb wrote {} ({from}), and the kernel reads back {now}",
                k.value
            ),
            Outcome::InitNamespaceOnly { now } => warn!(
                knob = %k.name,
                "{when}: {path} stays {now}, not {} ({from}): only the initial network \
                 namespace may set it (the conntrack table's size is shared by every \
                 namespace), and natlb runs in another one. Set it on the host, or remove it \
                 from the config",
                k.value
            ),
            Outcome::Missing => warn!(
                knob = %k.name,
                "{when}: {path} does not exist in this kernel (is its module loaded?); {from} \
                 is not applied"
            ),
            Outcome::Failed(e) => warn!(
                knob = %k.name,
                "{when}: {path}: {e}; {from} is not applied"
            ),
        }
    }
    for (name, family) in sysctl::forwarding_needed(model) {
        if sysctl::read(root, name).is_ok_and(|v| v == "0") {
            warn!(
                "{when}: {name} is 0, so the kernel forwards no {family} packet and no client \
                 reaches a backend of the {family} services; set \"{name}\" = 1 in [sysctl]"
            );
        }
    }
}

/// How often changed backend states are written to `state_dir`.
const STATE_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Tells systemd (when it started natlb with `Type=notify`) how natlb is doing; without
/// `NOTIFY_SOCKET` it does nothing.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("sd_notify: {e}");
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Signals)?;
    rt.block_on(async {
        // Handlers first: a SIGHUP during start-up is then not lost, and not fatal.
        let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
        let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (answered, mut sticky_answers) = mpsc::unbounded_channel();
        let metrics = Metrics::shared();
        let (mut daemon, listeners) = Daemon::start(config_path, tx, answered, metrics.clone())?;
        let (commands, mut requests) = mpsc::unbounded_channel();
        let shared = Arc::new(server::Shared {
            commands,
            figures: Default::default(),
            metrics,
        });
        tokio::spawn(server::serve_control(listeners.control, shared.clone()));
        if let Some(l) = listeners.metrics {
            tokio::spawn(server::serve_metrics(l, shared));
        }
        info!(config = %config_path.display(), "natlb is running");
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&daemon.one_line()),
        ]);
        let mut save_tick = tokio::time::interval(STATE_SAVE_INTERVAL);
        let mut balance_tick = tokio::time::interval(daemon.least_conn_interval());
        balance_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut conntrack_tick = tokio::time::interval(daemon.conntrack_interval());
        conntrack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The watchdog is pinged from this loop, so a loop stuck anywhere stops the pings and
        // systemd restarts natlb. Twice per WatchdogSec, as sd_watchdog_enabled(3) advises.
        let watchdog = sd_notify::watchdog_enabled();
        let mut watchdog_tick =
            tokio::time::interval(watchdog.map_or(std::time::Duration::from_secs(3600), |d| d / 2));
        watchdog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if let Some(d) = watchdog {
            info!("systemd watchdog: pinging every {:?}", d / 2);
        }
        loop {
            tokio::select! {
                _ = save_tick.tick() => {
                    daemon.save_states();
                    daemon.resweep_sticky();
                }
                _ = watchdog_tick.tick(), if watchdog.is_some() => {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
                _ = balance_tick.tick() => daemon.rebalance(),
                _ = conntrack_tick.tick() => {
                    daemon.check_conntrack();
                    // Here rather than at each decision: the line costs O(backends).
                    notify(&[sd_notify::NotifyState::Status(&daemon.one_line())]);
                }
                Some(()) = sticky_answers.recv() => {
                    while sticky_answers.try_recv().is_ok() {}
                    daemon.on_sticky_answers();
                }
                Some(first) = rx.recv() => {
                    // Decisions that arrived together share one batch.
                    let mut batch = vec![first];
                    while let Ok(r) = rx.try_recv() {
                        batch.push(r);
                    }
                    daemon.on_reports(batch);
                }
                Some(command) = requests.recv() => {
                    let reload = matches!(command, Command::Reload(_));
                    daemon.on_command(command);
                    if reload {
                        daemon.retime(&mut balance_tick, &mut conntrack_tick);
                    }
                    notify(&[sd_notify::NotifyState::Status(&daemon.one_line())]);
                }
                _ = hup.recv() => {
                    info!("SIGHUP: reloading {}", config_path.display());
                    let _ = daemon.reload();
                    daemon.retime(&mut balance_tick, &mut conntrack_tick);
                    notify(&[sd_notify::NotifyState::Status(&daemon.one_line())]);
                }
                _ = term.recv() => break,
                _ = int.recv() => {
                    warn!("SIGINT");
                    break;
                }
            }
        }
        notify(&[sd_notify::NotifyState::Stopping]);
        daemon.stop()
    })
}
