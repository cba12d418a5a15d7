//! `natlb run`: install the table, then keep it as the config says until told to stop.
//!
//! Start: read the config, render, read back whatever table is installed under natlb's name and
//! send the one batch that makes it right (nothing, element deltas, or an atomic replace: a
//! restart never interrupts traffic). SIGHUP: re-read the config; a bad config is logged and
//! changes nothing; a good one is applied as element deltas in one batch. SIGTERM/SIGINT: exit,
//! leaving the rules in place unless `keep_rules_on_exit = false`.

use std::path::{Path, PathBuf};

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config;
use crate::model::Model;
use crate::nft::{Nft, NftError};
use crate::reconcile::{self, Plan};
use crate::render::{self, ruleset::Ruleset};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] config::ConfigErrors),
    #[error("{0}")]
    Nft(#[from] NftError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// The daemon's state: the config file and the ruleset it last committed.
struct Daemon {
    config_path: PathBuf,
    model: Model,
    installed: Ruleset,
    nft: Nft,
}

fn desired(model: &Model) -> Ruleset {
    // Every backend counts as up until health checking decides otherwise.
    render::render(model, |_, _| true)
}

fn warn_unsupported(model: &Model) {
    for w in crate::support::not_yet_supported(model) {
        warn!("{w}");
    }
}

fn summary(rs: &Ruleset, model: &Model) -> String {
    let backends: usize = model.services.iter().map(|s| s.backends.len()).sum();
    format!(
        "{} service(s), {} backend(s), {} element(s)",
        model.services.len(),
        backends,
        rs.element_count()
    )
}

impl Daemon {
    fn start(config_path: &Path) -> Result<Daemon, DaemonError> {
        let model = config::load(config_path)?;
        warn_unsupported(&model);
        let want = desired(&model);
        let mut nft = Nft::open()?;
        let found = nft.read_installed(&want)?;
        let plan = reconcile::adopt(&found, &want);
        match &plan {
            Plan::Nothing => {
                info!(table = %want.table, "adopted the installed table: it is already as configured")
            }
            Plan::Replace { reason } => {
                info!(table = %want.table, "installing the whole table: {reason}")
            }
            Plan::Deltas(d) => {
                info!(table = %want.table, sets = d.len(), "adopted the installed table; applying the differences")
            }
        }
        if plan != Plan::Nothing {
            let stats = nft.apply(&plan.changes(&want, None))?;
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
        Ok(Daemon {
            config_path: config_path.to_path_buf(),
            model,
            installed: want,
            nft,
        })
    }

    /// SIGHUP: re-read the config and apply the difference as one batch. Any failure leaves
    /// both the kernel and natlb's idea of it as they were.
    fn reload(&mut self) {
        let model = match config::load(&self.config_path) {
            Ok(m) => m,
            Err(errors) => {
                error!(
                    "reload refused, the running ruleset is unchanged; fix the config:\n{errors}"
                );
                return;
            }
        };
        warn_unsupported(&model);
        let want = desired(&model);
        let plan = reconcile::plan(&self.installed, &want);
        if let Plan::Replace { reason } = &plan {
            info!(table = %want.table, "reload replaces the whole table: {reason}");
        }
        if plan == Plan::Nothing {
            info!("reload: nothing changed");
            self.model = model;
            return;
        }
        let changes = plan.changes(&want, Some(&self.installed.table));
        let mut result = self.nft.apply(&changes);
        if let Err(NftError::Rejected(errors)) = &result {
            // The kernel's table is not what natlb last installed (someone changed it by hand):
            // read it back and apply the difference from what is really there.
            warn!(
                "the batch was refused ({}); re-reading table inet {} and retrying once",
                errors[0], want.table
            );
            result = self.resync(&want);
        }
        match result {
            Ok(stats) => {
                let elements: usize = match &plan {
                    Plan::Deltas(d) => d.iter().map(|d| d.add.len() + d.remove.len()).sum(),
                    _ => want.element_count(),
                };
                info!(
                    table = %want.table,
                    elements_changed = elements,
                    kernel_ms = stats.kernel.as_secs_f64() * 1e3,
                    "reload applied in one batch: {}",
                    summary(&want, &model)
                );
                self.installed = want;
                self.model = model;
            }
            Err(e) => error!("reload failed, the running ruleset is unchanged: {e}"),
        }
    }

    /// Reads the installed table back and applies what it takes to make it `want`.
    fn resync(&mut self, want: &Ruleset) -> Result<crate::nft::CommitStats, NftError> {
        let found = self.nft.read_installed(want)?;
        let plan = reconcile::adopt(&found, want);
        self.nft
            .apply(&plan.changes(want, Some(&self.installed.table)))
    }

    fn stop(mut self) -> Result<(), DaemonError> {
        if self.model.daemon.keep_rules_on_exit {
            info!(table = %self.installed.table, "exiting; the rules stay in place (keep_rules_on_exit)");
        } else {
            self.nft
                .apply(&[crate::nft::Change::DropTable(&self.installed.table)])?;
            info!(table = %self.installed.table, "exiting; removed the table (keep_rules_on_exit = false)");
        }
        Ok(())
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
        let mut daemon = Daemon::start(config_path)?;
        info!(config = %config_path.display(), "natlb is running");
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    info!("SIGHUP: reloading {}", config_path.display());
                    daemon.reload();
                }
                _ = term.recv() => break,
                _ = int.recv() => {
                    warn!("SIGINT");
                    break;
                }
            }
        }
        daemon.stop()
    })
}
