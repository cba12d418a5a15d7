//! The gateway's kernel knobs: `[conntrack]` and `[sysctl]`, written at start and at each
//! reload, then read back and compared.
//!
//! natlb runs on whatever it cannot set: a knob that does not exist, is read-only in natlb's
//! network namespace (the conntrack table's size is shared by every namespace, so only the
//! initial one may set `nf_conntrack_max` and `nf_conntrack_buckets`), or reads back otherwise
//! than written (the kernel clamps some values) is logged with its path and what it holds.
//! A knob removed from the config keeps the value natlb last wrote: like `sysctl.d`, natlb does
//! not remember what was there before.

use std::path::{Path, PathBuf};

use crate::model::{CONNTRACK_KNOBS, Model};

/// One knob to write: its sysctl name, the value, and the config key it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knob {
    pub name: String,
    pub value: i64,
    pub from: String,
}

/// What happened to one knob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written; it held `was` before.
    Set { was: String },
    /// It already held the value; nothing written.
    Unchanged,
    /// Written, but it reads back as this.
    Differs { now: String },
    /// Only the initial network namespace may write it, and natlb runs in another one.
    InitNamespaceOnly { now: String },
    /// No such knob in this kernel (a module not loaded, a typo, another kernel version).
    Missing,
    /// Any other failure.
    Failed(String),
}

/// Knobs that only the initial network namespace may write.
const INIT_NAMESPACE_ONLY: [&str; 2] = [
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_buckets",
];

/// The knobs `model` sets: `[conntrack]` first, then `[sysctl]`, each once (the config check
/// refuses a knob set in both).
pub fn desired(model: &Model) -> Vec<Knob> {
    let mut out: Vec<Knob> = CONNTRACK_KNOBS
        .iter()
        .filter_map(|(key, name, _)| {
            let value = *model.conntrack.knobs.get(key)?;
            Some(Knob {
                name: (*name).to_string(),
                value: i64::try_from(value).unwrap_or(i64::MAX),
                from: format!("[conntrack] {key}"),
            })
        })
        .collect();
    out.extend(model.sysctl.iter().map(|(name, &value)| Knob {
        name: name.clone(),
        value,
        from: "[sysctl]".into(),
    }));
    out
}

/// The file of sysctl `name` under `root` (`/proc/sys`): dots separate directories, and a `/`
/// stands for a dot inside one (`net.ipv4.conf.eth0/100.rp_filter`), as sysctl(8) writes them.
pub fn path(root: &Path, name: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    for part in name.split('.') {
        p.push(part.replace('/', "."));
    }
    p
}

/// Reads sysctl `name` under `root`, trimmed.
pub fn read(root: &Path, name: &str) -> std::io::Result<String> {
    std::fs::read_to_string(path(root, name)).map(|s| s.trim().to_string())
}

/// Writes every knob under `root` that does not hold its value yet, and reads it back.
pub fn apply(root: &Path, knobs: &[Knob]) -> Vec<(Knob, Outcome)> {
    knobs
        .iter()
        .map(|k| (k.clone(), apply_one(root, k)))
        .collect()
}

fn apply_one(root: &Path, knob: &Knob) -> Outcome {
    let want = knob.value.to_string();
    let was = match read(root, &knob.name) {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Missing,
        Err(e) => return Outcome::Failed(format!("cannot read it: {e}")),
    };
    // Multi-value knobs (`net.ipv4.ip_local_port_range`) are not integers; natlb only sets
    // integer knobs, so a plain comparison is enough.
    if was == want {
        return Outcome::Unchanged;
    }
    if let Err(e) = std::fs::write(path(root, &knob.name), &want) {
        let denied = matches!(
            e.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
        );
        return if denied && INIT_NAMESPACE_ONLY.contains(&knob.name.as_str()) {
            Outcome::InitNamespaceOnly { now: was }
        } else {
            Outcome::Failed(format!("cannot write it: {e}"))
        };
    }
    match read(root, &knob.name) {
        Ok(now) if now == want => Outcome::Set { was },
        Ok(now) => Outcome::Differs { now },
        Err(e) => Outcome::Failed(format!("written, but cannot read it back: {e}")),
    }
}

/// The forwarding switches a model's services need, with the family's name: natlb DNATs and
/// the kernel forwards, so with forwarding off no packet reaches a backend.
pub fn forwarding_needed(model: &Model) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if model.services.iter().any(|s| s.vip.addr.is_ipv4()) {
        out.push(("net.ipv4.ip_forward", "IPv4"));
    }
    if model.services.iter().any(|s| s.vip.addr.is_ipv6()) {
        out.push(("net.ipv6.conf.all.forwarding", "IPv6"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, name: &str, value: &str) {
        let p = path(root, name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, value).unwrap();
    }

    fn knob(name: &str, value: i64) -> Knob {
        Knob {
            name: name.into(),
            value,
            from: "[sysctl]".into(),
        }
    }

    #[test]
    fn names_map_to_paths_as_sysctl_writes_them() {
        let root = Path::new("/proc/sys");
        assert_eq!(
            path(root, "net.ipv4.conf.eth0/100.rp_filter"),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
    }

    #[test]
    fn writes_what_differs_and_reports_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        put(root, "net.ipv4.ip_forward", "0\n");
        put(root, "net.netfilter.nf_conntrack_udp_timeout", "30\n");
        let out = apply(
            root,
            &[
                knob("net.ipv4.ip_forward", 1),
                knob("net.netfilter.nf_conntrack_udp_timeout", 30),
                knob("net.netfilter.no_such_knob", 1),
            ],
        );
        assert_eq!(out[0].1, Outcome::Set { was: "0".into() });
        assert_eq!(read(root, "net.ipv4.ip_forward").unwrap(), "1");
        assert_eq!(out[1].1, Outcome::Unchanged);
        assert_eq!(out[2].1, Outcome::Missing);
    }

    #[test]
    fn conntrack_knobs_come_first_with_their_key() {
        let m = crate::config::parse(
            "t.toml",
            "[conntrack]\ntcp_be_liberal = true\nmax = 1000\n[sysctl]\n\"net.ipv4.ip_forward\" = 1\n",
        )
        .unwrap();
        let names: Vec<(String, i64, String)> = desired(&m)
            .into_iter()
            .map(|k| (k.name, k.value, k.from))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "net.netfilter.nf_conntrack_max".to_string(),
                    1000,
                    "[conntrack] max".to_string()
                ),
                (
                    "net.netfilter.nf_conntrack_tcp_be_liberal".into(),
                    1,
                    "[conntrack] tcp_be_liberal".into()
                ),
                ("net.ipv4.ip_forward".into(), 1, "[sysctl]".into()),
            ]
        );
    }
}
