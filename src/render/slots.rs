//! Slot tables: how a service's new connections are shared among its backends.
//!
//! A service with a slot table of T slots sends a new connection to the backend in slot
//! `random mod T`, so a backend's share is its number of slots over T. T comes from
//! [`SLOT_CLASSES`]: the reduced sum of the weights when that is one of the sizes (exact shares),
//! otherwise the smallest size whose shares are all within [`TOLERANCE`] of the weights.

use super::layout::SLOT_CLASSES;

/// The largest error in any backend's share that a non-exact slot table may have.
pub const TOLERANCE: f64 = 0.01;

/// A service's slot table: `slots[i]` is the position (in the caller's list) of the backend that
/// slot `i` sends to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    pub slots: Vec<usize>,
}

impl SlotTable {
    pub fn size(&self) -> u32 {
        self.slots.len() as u32
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Builds the slot table for backends with these weights (0 = no traffic). `None` when no
/// backend has a positive weight, or when there are more backends than the largest table.
pub fn weighted(weights: &[u32]) -> Option<SlotTable> {
    let live: Vec<(usize, u32)> = weights
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, w)| w > 0)
        .collect();
    if live.is_empty() || live.len() > *SLOT_CLASSES.last()? as usize {
        return None;
    }
    let g = live.iter().fold(0, |g, &(_, w)| gcd(g, w));
    let reduced: Vec<u32> = live.iter().map(|&(_, w)| w / g).collect();
    let total: u64 = reduced.iter().map(|&w| u64::from(w)).sum();

    let counts = if SLOT_CLASSES.iter().any(|&t| u64::from(t) == total) {
        reduced.clone()
    } else {
        let mut best: Option<(f64, Vec<u32>)> = None;
        for &t in SLOT_CLASSES.iter().filter(|&&t| t as usize >= live.len()) {
            let c = apportion(&reduced, total, t);
            let err = max_error(&reduced, total, &c, t);
            if err <= TOLERANCE {
                best = Some((err, c));
                break;
            }
            if best.as_ref().is_none_or(|(e, _)| err < *e) {
                best = Some((err, c));
            }
        }
        best?.1
    };
    let order = interleave(&counts);
    Some(SlotTable {
        slots: order.into_iter().map(|i| live[i].0).collect(),
    })
}

/// Largest-remainder apportionment of `t` slots to `weights`, every backend getting at least one.
fn apportion(weights: &[u32], total: u64, t: u32) -> Vec<u32> {
    let quota = |w: u32| f64::from(w) * f64::from(t) / total as f64;
    let mut counts: Vec<u32> = weights
        .iter()
        .map(|&w| (quota(w).floor() as u32).max(1))
        .collect();
    let mut assigned: u32 = counts.iter().sum();
    // Hand out what is left by largest remainder, and take back any excess (from the minimum of
    // one slot) from the most over-served backends.
    while assigned < t {
        let i = (0..weights.len())
            .max_by(|&a, &b| {
                let ra = quota(weights[a]) - f64::from(counts[a]);
                let rb = quota(weights[b]) - f64::from(counts[b]);
                ra.total_cmp(&rb).then(b.cmp(&a))
            })
            .expect("weights is not empty");
        counts[i] += 1;
        assigned += 1;
    }
    while assigned > t {
        let i = (0..weights.len())
            .filter(|&i| counts[i] > 1)
            .max_by(|&a, &b| {
                let ra = f64::from(counts[a]) - quota(weights[a]);
                let rb = f64::from(counts[b]) - quota(weights[b]);
                ra.total_cmp(&rb).then(b.cmp(&a))
            })
            .expect("t >= number of backends");
        counts[i] -= 1;
        assigned -= 1;
    }
    counts
}

fn max_error(weights: &[u32], total: u64, counts: &[u32], t: u32) -> f64 {
    weights
        .iter()
        .zip(counts)
        .map(|(&w, &c)| (f64::from(c) / f64::from(t) - f64::from(w) / total as f64).abs())
        .fold(0.0, f64::max)
}

/// Spreads each backend's slots evenly over the table (smooth weighted round-robin), so that any
/// run of consecutive slots holds backends in proportion to their weights.
fn interleave(counts: &[u32]) -> Vec<usize> {
    let total: i64 = counts.iter().map(|&c| i64::from(c)).sum();
    let mut current = vec![0i64; counts.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (cur, &c) in current.iter_mut().zip(counts) {
            *cur += i64::from(c);
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
            .expect("counts is not empty");
        current[best] -= total;
        out.push(best);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(t: &SlotTable, n: usize) -> Vec<u32> {
        let mut c = vec![0; n];
        for &i in &t.slots {
            c[i] += 1;
        }
        c
    }

    #[test]
    fn exact_when_reduced_sum_is_a_size() {
        let t = weighted(&[3, 1]).unwrap();
        assert_eq!(t.size(), 4);
        assert_eq!(shares(&t, 2), vec![3, 1]);
        let t = weighted(&[1; 10]).unwrap();
        assert_eq!(t.size(), 10);
        assert_eq!(shares(&t, 10), vec![1; 10]);
        let t = weighted(&[300, 100]).unwrap();
        assert_eq!(t.size(), 4);
    }

    #[test]
    fn drained_backends_get_no_slot() {
        let t = weighted(&[2, 0, 1]).unwrap();
        assert_eq!(t.size(), 3);
        assert_eq!(shares(&t, 3), vec![2, 0, 1]);
        assert_eq!(weighted(&[0, 0]), None);
        assert_eq!(weighted(&[]), None);
    }

    #[test]
    fn approximate_shares_stay_within_tolerance() {
        for weights in [
            vec![1u32; 17],
            vec![100, 1],
            vec![7, 11, 13, 17],
            vec![1; 40],
        ] {
            let t = weighted(&weights).unwrap();
            let total: u32 = weights.iter().sum();
            let c = shares(&t, weights.len());
            for (w, c) in weights.iter().zip(&c) {
                let err =
                    (f64::from(*c) / f64::from(t.size()) - f64::from(*w) / f64::from(total)).abs();
                assert!(err <= 0.02, "{weights:?} -> {c:?} of {}", t.size());
                assert!(*c >= 1);
            }
        }
    }

    #[test]
    fn slots_interleave() {
        let t = weighted(&[3, 1]).unwrap();
        assert_eq!(t.slots, vec![0, 0, 1, 0]);
        let t = weighted(&[1, 1, 1]).unwrap();
        assert_eq!(t.slots, vec![0, 1, 2]);
    }
}
