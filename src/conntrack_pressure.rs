//! Conntrack pressure: when the table is full the kernel drops new connections (the log says
//! "nf_conntrack: table full, dropping packet"), which clients see as sessions that fail at
//! random. natlb looks at `nf_conntrack_count` and `nf_conntrack_max` on an interval, warns
//! once when the table reaches `warn_percent`, and says so again when it is back
//! below: a hysteresis of [`HYSTERESIS`] points, so a count hovering at the line does not fill
//! the log. Pure, apart from [`read`].

use std::path::Path;

/// Points below `warn_percent` the table must fall before natlb calls the pressure over.
pub const HYSTERESIS: u8 = 5;

/// The table's fill as natlb last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    pub count: u64,
    pub max: u64,
}

impl Fill {
    pub fn percent(self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            self.count as f64 * 100.0 / self.max as f64
        }
    }
}

/// A change worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Above(Fill),
    Below(Fill),
}

#[derive(Debug, Default)]
pub struct Pressure {
    above: bool,
    /// The last look, for the metrics.
    pub last: Option<Fill>,
}

impl Pressure {
    pub fn observe(&mut self, fill: Fill, warn_percent: u8) -> Option<Change> {
        self.last = Some(fill);
        let p = fill.percent();
        if !self.above && p >= f64::from(warn_percent) {
            self.above = true;
            return Some(Change::Above(fill));
        }
        if self.above && p <= f64::from(warn_percent.saturating_sub(HYSTERESIS)) {
            self.above = false;
            return Some(Change::Below(fill));
        }
        None
    }
}

/// Reads the fill of the conntrack table natlb's network namespace sees, from `root`
/// (`/proc/sys`). The count is the namespace's own; the maximum is shared by all.
pub fn read(root: &Path) -> Result<Fill, String> {
    let get = |name: &str| -> Result<u64, String> {
        let text = crate::sysctl::read(root, name).map_err(|e| format!("{name}: {e}"))?;
        text.parse()
            .map_err(|_| format!("{name} reads {text:?}, not a number"))
    };
    Ok(Fill {
        count: get("net.netfilter.nf_conntrack_count")?,
        max: get("net.netfilter.nf_conntrack_max")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(count: u64) -> Fill {
        Fill { count, max: 1000 }
    }

    #[test]
    fn warns_once_above_the_line_and_once_when_clearly_below() {
        let mut p = Pressure::default();
        assert_eq!(p.observe(fill(700), 80), None);
        assert_eq!(p.observe(fill(801), 80), Some(Change::Above(fill(801))));
        // Hovering at the line says nothing more.
        assert_eq!(p.observe(fill(790), 80), None);
        assert_eq!(p.observe(fill(810), 80), None);
        assert_eq!(p.observe(fill(751), 80), None);
        assert_eq!(p.observe(fill(750), 80), Some(Change::Below(fill(750))));
        assert_eq!(p.observe(fill(600), 80), None);
        assert_eq!(p.last, Some(fill(600)));
    }

    #[test]
    fn a_full_table_is_above_any_line() {
        let mut p = Pressure::default();
        assert!(matches!(p.observe(fill(1000), 100), Some(Change::Above(_))));
    }
}
