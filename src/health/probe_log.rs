//! The last result of every backend's probe, for `natlb status`. Probe tasks write it (on the
//! probe thread), the status reader copies from it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::engine::BackendKey;
use super::probe::Outcome;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastProbe {
    pub ok: bool,
    pub detail: String,
    pub at: SystemTime,
    pub latency: Duration,
}

#[derive(Debug, Default)]
pub struct ProbeLog {
    last: Mutex<HashMap<BackendKey, LastProbe>>,
}

impl ProbeLog {
    pub fn record(&self, key: &BackendKey, outcome: &Outcome) {
        let probe = LastProbe {
            ok: outcome.ok,
            detail: outcome.detail.clone(),
            at: SystemTime::now(),
            latency: outcome.latency,
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        // No key clone per probe once the backend has an entry.
        match last.get_mut(key) {
            Some(slot) => *slot = probe,
            None => {
                last.insert(key.clone(), probe);
            }
        }
    }

    pub fn get(&self, key: &BackendKey) -> Option<LastProbe> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.get(key).cloned()
    }

    /// Forgets the backends `keep` says no longer are probed.
    pub fn retain(&self, keep: impl Fn(&BackendKey) -> bool) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.retain(|k, _| keep(k));
    }
}
