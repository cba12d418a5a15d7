//! The figures only the kernel knows, added to a status snapshot: live connections
//! (conntrack), new connections and bytes per backend (the slot maps' element counters) and
//! the conntrack table's fill. These are dumps, so they run on a blocking thread, never on the
//! daemon's loop.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;

use super::api::ConntrackFill;
use super::status::Snapshot;
use crate::nft::{CountedEntry, Nft};
use crate::render::ruleset::Value;

/// Whose traffic an element counts: the service's VIP and protocol, and the backend.
pub type Owner = (SocketAddr, u8, SocketAddr);

/// Turns element counters into per-backend totals that only grow while natlb runs.
///
/// A slot element's counter starts at zero whenever the element is written (a withdrawal or
/// re-weighting moves slots), so the sum over a backend's slots can fall. Each read adds what
/// every element counted since the previous read; an element's count since its last read
/// before it was removed is lost.
#[derive(Debug, Default)]
pub struct Traffic {
    last: HashMap<(Vec<Value>, Vec<Value>), (u64, u64)>,
    totals: HashMap<Owner, (u64, u64)>,
}

fn owner(key: &[Value], data: &[Value]) -> Option<Owner> {
    match (key, data) {
        (
            [Value::Addr(vip), Value::Proto(p), Value::Port(port), ..],
            [Value::Addr(b), Value::Port(bport)],
        ) => Some((
            SocketAddr::new(*vip, *port),
            p.number(),
            SocketAddr::new(*b, *bport),
        )),
        _ => None,
    }
}

impl Traffic {
    /// Takes in one read of every counting map.
    pub fn observe(&mut self, entries: Vec<CountedEntry>) {
        let mut last = HashMap::with_capacity(entries.len());
        for (key, data, now) in entries {
            let Some(who) = owner(&key, &data) else {
                continue;
            };
            let id = (key, data);
            let before = self.last.get(&id).copied().unwrap_or((0, 0));
            // Lower than before: the element was written again since the last read.
            let since = if now.0 >= before.0 && now.1 >= before.1 {
                (now.0 - before.0, now.1 - before.1)
            } else {
                now
            };
            let t = self.totals.entry(who).or_insert((0, 0));
            t.0 += since.0;
            t.1 += since.1;
            last.insert(id, now);
        }
        self.last = last;
    }

    /// (packets, bytes) counted for `owner` so far.
    pub fn total(&self, owner: &Owner) -> (u64, u64) {
        self.totals.get(owner).copied().unwrap_or((0, 0))
    }
}

/// The kernel's figures, shared by the status and metrics requests: one read at a time.
#[derive(Default)]
pub struct Figures {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    traffic: Traffic,
    last: Option<Read>,
}

/// One read of the kernel's figures; errors are messages for `status.errors`.
struct Read {
    /// When the read began.
    at: std::time::Instant,
    /// What it read: the table and the VIP families.
    of: (String, Vec<bool>),
    conntrack: Result<ConntrackFill, String>,
    connections: Result<crate::conntrack::Counts, String>,
    counters: Result<(), String>,
}

fn read(
    snap: &Snapshot,
    families: &[IpAddr],
    of: (String, Vec<bool>),
    traffic: &mut Traffic,
) -> Read {
    let at = std::time::Instant::now();
    let conntrack = crate::conntrack_pressure::read(Path::new("/proc/sys"))
        .map(|f| ConntrackFill {
            count: f.count,
            max: f.max,
        })
        .map_err(|e| format!("cannot read the conntrack table's fill: {e}"));
    let connections = if families.is_empty() {
        Ok(Default::default())
    } else {
        crate::conntrack::count_connections(families)
            .map_err(|e| format!("cannot count connections in conntrack: {e}"))
    };
    let counters = read_counters(&snap.table, &snap.slot_maps)
        .map(|entries| traffic.observe(entries))
        .map_err(|e| format!("cannot read the slot maps' counters: {e}"));
    Read {
        at,
        of,
        conntrack,
        connections,
        counters,
    }
}

/// Adds the kernel's figures to `snap`; what cannot be read is left `null` and named in
/// `status.errors`. Requests that arrive while a read is under way wait for it, and those
/// that asked before it began share it: a scrape and a `natlb status` arriving together cost
/// one read, and reads never pile up behind a slow one (a big table's dump takes seconds).
pub fn fill(snap: &mut Snapshot, figures: &Figures) {
    let asked = std::time::Instant::now();
    let mut families: Vec<IpAddr> = Vec::new();
    for k in &snap.keys {
        if !families.iter().any(|f| f.is_ipv4() == k.vip.is_ipv4()) {
            families.push(k.vip.ip());
        }
    }
    families.sort_by_key(IpAddr::is_ipv4);
    // Held through the read: a request that arrives meanwhile waits, then shares it.
    let mut state = figures.state.lock().unwrap_or_else(|p| p.into_inner());
    let of = (
        snap.table.clone(),
        families.iter().map(IpAddr::is_ipv4).collect(),
    );
    let fresh = state
        .last
        .as_ref()
        .is_some_and(|r| r.of == of && r.at >= asked);
    if !fresh {
        let r = read(snap, &families, of, &mut state.traffic);
        state.last = Some(r);
    }
    let State { traffic, last } = &*state;
    let r = last.as_ref().expect("just read");
    let status = &mut snap.status;
    for e in [
        &r.conntrack.as_ref().err(),
        &r.connections.as_ref().err(),
        &r.counters.as_ref().err(),
    ]
    .into_iter()
    .flatten()
    {
        status.errors.push((*e).clone());
    }
    status.conntrack = r.conntrack.as_ref().ok().copied();
    let connections = r.connections.as_ref().ok();
    let traffic = r.counters.is_ok().then_some(traffic);
    for (service, key) in status.services.iter_mut().zip(&snap.keys) {
        let of_vip = connections.map(|c| c.get(&(key.vip, key.protocol)));
        let mut sums = (Some(0u64), Some(0u64), Some(0u64));
        for (b, &addr) in service.backends.iter_mut().zip(&key.backends) {
            b.connections = of_vip.map(|m| m.and_then(|m| m.get(&addr)).copied().unwrap_or(0));
            if let Some(t) = traffic {
                let (p, by) = t.total(&(key.vip, key.protocol, addr));
                b.packets = Some(p);
                b.bytes = Some(by);
            }
            sums.0 = sums.0.zip(b.connections).map(|(a, b)| a + b);
            sums.1 = sums.1.zip(b.packets).map(|(a, b)| a + b);
            sums.2 = sums.2.zip(b.bytes).map(|(a, b)| a + b);
        }
        service.connections = sums.0;
        service.packets = sums.1;
        service.bytes = sums.2;
    }
}

fn read_counters(
    table: &str,
    maps: &[crate::render::ruleset::SetSpec],
) -> Result<Vec<CountedEntry>, crate::nft::NftError> {
    let mut nft = Nft::open()?;
    let mut out = Vec::new();
    for spec in maps {
        out.extend(nft.counted_entries(table, spec)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn entry(slot: u32, backend: &str, counts: (u64, u64)) -> CountedEntry {
        let b: SocketAddr = backend.parse().unwrap();
        (
            vec![
                Value::Addr("198.51.100.10".parse().unwrap()),
                Value::Proto(Protocol::Tcp),
                Value::Port(80),
                Value::Int(slot),
            ],
            vec![Value::Addr(b.ip()), Value::Port(b.port())],
            counts,
        )
    }

    #[test]
    fn totals_only_grow_when_slots_are_rewritten_or_removed() {
        let vip: SocketAddr = "198.51.100.10:80".parse().unwrap();
        let a: SocketAddr = "10.0.1.11:8080".parse().unwrap();
        let b: SocketAddr = "10.0.1.12:8080".parse().unwrap();
        let mut t = Traffic::default();
        t.observe(vec![
            entry(0, "10.0.1.11:8080", (5, 500)),
            entry(1, "10.0.1.12:8080", (3, 300)),
        ]);
        assert_eq!(t.total(&(vip, 6, a)), (5, 500));
        // Slot 1 moved to a (written again: its counter restarted), slot 0 counted 2 more.
        t.observe(vec![
            entry(0, "10.0.1.11:8080", (7, 700)),
            entry(1, "10.0.1.11:8080", (1, 100)),
        ]);
        assert_eq!(t.total(&(vip, 6, a)), (8, 800));
        assert_eq!(t.total(&(vip, 6, b)), (3, 300), "b keeps what it counted");
        // Slot 1 back to b, starting again from 0: nothing is counted twice.
        t.observe(vec![
            entry(0, "10.0.1.11:8080", (7, 700)),
            entry(1, "10.0.1.12:8080", (2, 200)),
        ]);
        assert_eq!(t.total(&(vip, 6, b)), (5, 500));
        // A rewrite that keeps the same backend shows as a lower count: counted from zero.
        t.observe(vec![entry(0, "10.0.1.11:8080", (1, 100))]);
        assert_eq!(t.total(&(vip, 6, a)), (9, 900));
    }
}
