//! The last known state of every probed backend, kept in `state_dir` so that a restarted natlb
//! does not treat a backend that was down as up (nor tear down an adopted table) before its
//! first probe answers.
//!
//! Format: one line per backend, `up|down <TAB> service <TAB> address`. Written whole to a
//! temporary file, synced and renamed over the old one, so a crash leaves either version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::engine::BackendKey;
use super::state::State;

pub const FILE_NAME: &str = "health.state";

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the saved states; a missing file is an empty map, unreadable lines are skipped.
pub fn load(state_dir: &Path) -> std::io::Result<BTreeMap<BackendKey, State>> {
    let text = match std::fs::read_to_string(path(state_dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    Ok(parse(&text))
}

fn parse(text: &str) -> BTreeMap<BackendKey, State> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split('\t');
        let (Some(state), Some(service), Some(addr), None) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let state = match state {
            "up" => State::Up,
            "down" => State::Down,
            _ => continue,
        };
        if let Ok(backend) = addr.parse() {
            out.insert(
                BackendKey {
                    service: service.to_string(),
                    backend,
                },
                state,
            );
        }
    }
    out
}

fn format(states: &BTreeMap<BackendKey, State>) -> String {
    let mut out = String::new();
    for (k, s) in states {
        let s = match s {
            State::Up => "up",
            State::Down => "down",
            State::Unknown => continue,
        };
        out.push_str(&format!("{s}\t{}\t{}\n", k.service, k.backend));
    }
    out
}

/// Saves the states atomically.
pub fn save(state_dir: &Path, states: &BTreeMap<BackendKey, State>) -> std::io::Result<()> {
    crate::state_dir::write_atomic(state_dir, FILE_NAME, format(states).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tolerance() {
        let dir = std::env::temp_dir().join(format!("natlb-store-{}", std::process::id()));
        let mut m = BTreeMap::new();
        let k = |s: &str, a: &str| BackendKey {
            service: s.into(),
            backend: a.parse().unwrap(),
        };
        m.insert(k("web", "192.0.2.1:80"), State::Down);
        m.insert(k("web6", "[fd00::1]:80"), State::Up);
        m.insert(k("x", "192.0.2.9:80"), State::Unknown);
        save(&dir, &m).unwrap();
        let back = load(&dir).unwrap();
        assert_eq!(back.len(), 2, "unknown states are not saved");
        assert_eq!(back[&k("web", "192.0.2.1:80")], State::Down);
        assert_eq!(back[&k("web6", "[fd00::1]:80")], State::Up);
        assert_eq!(
            parse("garbage\nup\tweb\tnot-an-address\ndown\ta\t192.0.2.1:1\n").len(),
            1
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(load(&dir).unwrap().is_empty());
    }
}
