//! `least-conn`: new connections favour the backends holding the fewest live connections.
//!
//! natlb cannot pick per packet (the kernel does, from the slot table), so it re-weights the
//! slot table on an interval instead: each up backend gets effective weight
//! `weight / (1 + connections / weight)`, scaled so the least loaded backend has
//! [`LEVELS`] and clamped to at least 1 (every up backend keeps a share, so its count can fall).
//! An approximation, as documented: between two looks at conntrack the shares stay fixed.
//!
//! Hysteresis: natlb re-weighs a service only when some backend's count moved, since the
//! counts of the last re-weighting, by at least [`MIN_MOVE`] connections and by a quarter. A
//! connection or two opening and closing on an idle backend would otherwise halve and restore
//! its weight every second; steady or jittering counts never churn the table.

/// Effective weights run from 1 to this for the least loaded backend.
pub const LEVELS: u32 = 16;

/// The smallest change of one backend's count that makes natlb re-weigh.
pub const MIN_MOVE: u64 = 4;

/// The effective weights for backends with configured `weights` (0 = drained, stays 0) and live
/// connection counts `conns`; `None` if no count moved enough from `last` (the counts of the
/// last re-weighting, `None` before the first).
pub fn reweigh(weights: &[u32], conns: &[u64], last: Option<&[u64]>) -> Option<Vec<u32>> {
    if let Some(last) = last
        && last.len() == conns.len()
        && !conns.iter().zip(last).any(|(&c, &l)| {
            let d = c.abs_diff(l);
            d >= MIN_MOVE && 4 * d > c.max(l)
        })
    {
        return None;
    }
    Some(effective(weights, conns))
}

/// The effective weights, without hysteresis.
pub fn effective(weights: &[u32], conns: &[u64]) -> Vec<u32> {
    // Capacity left, in the configured weight's units: a backend with weight w and c
    // connections is as attractive as w / (1 + c / w).
    let score: Vec<f64> = weights
        .iter()
        .zip(conns)
        .map(|(&w, &c)| {
            if w == 0 {
                0.0
            } else {
                let w = f64::from(w);
                w / (1.0 + c as f64 / w)
            }
        })
        .collect();
    let best = score.iter().cloned().fold(0.0, f64::max);
    score
        .iter()
        .map(|&s| {
            if s == 0.0 {
                0
            } else {
                ((s / best) * f64::from(LEVELS))
                    .round()
                    .clamp(1.0, f64::from(LEVELS)) as u32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_backends_keep_their_configured_proportions() {
        assert_eq!(effective(&[1, 1, 1], &[0, 0, 0]), vec![16, 16, 16]);
        assert_eq!(effective(&[2, 1], &[0, 0]), vec![16, 8]);
    }

    #[test]
    fn a_loaded_backend_gets_less_and_never_nothing() {
        // be0 holds 20 long connections, be1 none: nearly everything new goes to be1.
        assert_eq!(effective(&[1, 1], &[20, 0]), vec![1, 16]);
        assert_eq!(effective(&[1, 1], &[1, 0]), vec![8, 16]);
        // Drained stays drained.
        assert_eq!(effective(&[0, 1], &[0, 5]), vec![0, 16]);
    }

    #[test]
    fn steady_or_jittering_counts_do_not_churn() {
        let last: &[u64] = &[30, 32, 31];
        assert_eq!(reweigh(&[1, 1, 1], &[31, 30, 33], Some(last)), None);
        // One connection on an idle backend is noise, not load.
        assert_eq!(reweigh(&[1, 1, 1], &[15, 0, 1], Some(&[15, 0, 0])), None);
        // A real shift re-weighs, and so does the first look or a changed set of backends.
        assert!(reweigh(&[1, 1, 1], &[90, 30, 30], Some(last)).is_some());
        assert!(reweigh(&[1, 1, 1], &[15, 0, 0], Some(&[0, 0, 0])).is_some());
        assert!(reweigh(&[1, 1, 1], &[0, 0, 0], None).is_some());
        assert!(reweigh(&[1, 1], &[0, 0], Some(last)).is_some());
    }
}
