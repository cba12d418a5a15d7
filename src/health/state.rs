//! Hysteresis: when a backend's probe results change its state. Pure, no clock.
//!
//! A backend that is up goes down after `fall` consecutive failures; one that is down comes up
//! after `rise` consecutive successes. A backend natlb knows nothing about yet (fresh start)
//! counts as up for traffic, and its first probe result decides at once: natlb neither holds
//! back a new service until `rise` probes have passed nor keeps sending to a backend that
//! fails its very first probe.

/// What natlb believes about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No probe has answered yet.
    Unknown,
    Up,
    Down,
}

/// A change of state, with the results that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    /// Consecutive results that led to the change (1 from `Unknown`).
    pub after: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hysteresis {
    state: State,
    /// Consecutive results that disagree with `state`.
    streak: u32,
    rise: u32,
    fall: u32,
}

impl Hysteresis {
    pub fn new(rise: u32, fall: u32, initial: State) -> Hysteresis {
        Hysteresis {
            state: initial,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the backend may take new connections.
    pub fn is_up(&self) -> bool {
        self.state != State::Down
    }

    /// Whether results are disagreeing with the state: probes should come faster to decide.
    pub fn changing(&self) -> bool {
        self.streak > 0 || self.state == State::Unknown
    }

    /// Keeps the state and streak but takes new thresholds (a reload that changed rise/fall).
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Records one probe result; returns the transition it caused, if any.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        let (to, needed) = match (self.state, ok) {
            (State::Unknown, true) => (State::Up, 1),
            (State::Unknown, false) => (State::Down, 1),
            (State::Up, true) | (State::Down, false) => {
                self.streak = 0;
                return None;
            }
            (State::Up, false) => (State::Down, self.fall),
            (State::Down, true) => (State::Up, self.rise),
        };
        self.streak += 1;
        if self.streak < needed {
            return None;
        }
        let t = Transition {
            from: self.state,
            to,
            after: self.streak,
        };
        self.state = to;
        self.streak = 0;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(h: &mut Hysteresis, results: &str) -> Vec<State> {
        results
            .chars()
            .filter_map(|c| h.record(c == '+').map(|t| t.to))
            .collect()
    }

    #[test]
    fn first_result_decides_an_unknown_backend() {
        let mut h = Hysteresis::new(2, 3, State::Unknown);
        assert!(h.is_up() && h.changing());
        assert_eq!(run(&mut h, "-"), vec![State::Down]);
        let mut h = Hysteresis::new(2, 3, State::Unknown);
        assert_eq!(run(&mut h, "+"), vec![State::Up]);
        assert!(!h.changing());
    }

    #[test]
    fn fall_and_rise_need_consecutive_results() {
        let mut h = Hysteresis::new(2, 3, State::Up);
        assert_eq!(
            run(&mut h, "--+--+"),
            vec![],
            "interrupted streaks never decide"
        );
        assert_eq!(run(&mut h, "---"), vec![State::Down]);
        assert!(!h.is_up());
        assert_eq!(run(&mut h, "+-+-"), vec![]);
        assert!(h.changing() || h.state() == State::Down);
        assert_eq!(run(&mut h, "++"), vec![State::Up]);
    }

    #[test]
    fn a_flapping_backend_changes_at_most_once_per_window() {
        // Alternating results never complete a window of 2 or 3.
        let mut h = Hysteresis::new(2, 3, State::Up);
        assert_eq!(run(&mut h, &"+-".repeat(50)), vec![]);
        // With rise = fall = 2, "--++--++" flips at every second result: one change per window.
        let mut h = Hysteresis::new(2, 2, State::Up);
        let changes = run(&mut h, &"--++".repeat(10));
        assert_eq!(changes.len(), 20);
        let mut h = Hysteresis::new(2, 2, State::Up);
        for (i, c) in "--++--++".chars().enumerate() {
            let t = h.record(c == '+');
            assert_eq!(t.is_some(), i % 2 == 1, "result {i}");
        }
    }

    #[test]
    fn restart_keeps_a_known_state() {
        let mut h = Hysteresis::new(2, 3, State::Down);
        assert!(!h.is_up());
        assert_eq!(run(&mut h, "+"), vec![]);
        assert!(h.changing());
        assert_eq!(run(&mut h, "+"), vec![State::Up]);
    }

    #[test]
    fn thresholds_of_one_decide_at_once() {
        let mut h = Hysteresis::new(0, 1, State::Up);
        assert_eq!(
            run(&mut h, "-+-"),
            vec![State::Down, State::Up, State::Down]
        );
    }
}
