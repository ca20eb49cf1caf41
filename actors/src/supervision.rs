//! Restart policy for supervisors: what ractor leaves to the user.
//!
//! [`RestartBook`] is pure (no clocks of its own, no I/O) so it is property-tested: a child may
//! restart `max_restarts` times within `window`; the first restart is immediate and later ones
//! back off exponentially. Past the budget the supervisor escalates by stopping itself.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub window: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    /// Per actor 5 restarts in 30 s; first at once, then 50 ms doubling to 5 s.
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(30),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart after this delay (zero for the first restart in the window).
    RestartAfter(Duration),
    /// The budget is spent: escalate.
    GiveUp,
}

/// Restart history of one child.
#[derive(Debug, Default)]
pub struct RestartBook {
    recent: VecDeque<Instant>,
    pub total: u64,
}

impl RestartBook {
    pub fn on_exit(&mut self, policy: &RestartPolicy, now: Instant) -> RestartDecision {
        while let Some(front) = self.recent.front() {
            if now.saturating_duration_since(*front) > policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= policy.max_restarts {
            return RestartDecision::GiveUp;
        }
        let prior = self.recent.len();
        self.recent.push_back(now);
        self.total += 1;
        if prior == 0 {
            return RestartDecision::RestartAfter(Duration::ZERO);
        }
        let factor = 1u32 << (prior - 1).min(16);
        let delay = policy
            .backoff_base
            .saturating_mul(factor)
            .min(policy.backoff_max);
        RestartDecision::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_restart_is_immediate_then_backoff_then_give_up() {
        let p = RestartPolicy::default();
        let mut book = RestartBook::default();
        let t0 = Instant::now();
        assert_eq!(
            book.on_exit(&p, t0),
            RestartDecision::RestartAfter(Duration::ZERO)
        );
        assert_eq!(
            book.on_exit(&p, t0),
            RestartDecision::RestartAfter(Duration::from_millis(50))
        );
        assert_eq!(
            book.on_exit(&p, t0),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
        book.on_exit(&p, t0);
        book.on_exit(&p, t0);
        assert_eq!(book.on_exit(&p, t0), RestartDecision::GiveUp);
        // Outside the window the budget is available again.
        let later = t0 + Duration::from_secs(31);
        assert_eq!(
            book.on_exit(&p, later),
            RestartDecision::RestartAfter(Duration::ZERO)
        );
    }

    proptest! {
        /// Never more than `max_restarts` accepted restarts inside any window.
        #[test]
        fn budget_holds_for_any_exit_times(gaps in proptest::collection::vec(0u64..20_000, 1..60)) {
            let p = RestartPolicy::default();
            let mut book = RestartBook::default();
            let t0 = Instant::now();
            let mut now = t0;
            let mut accepted: Vec<Instant> = Vec::new();
            for g in gaps {
                now += Duration::from_millis(g);
                if let RestartDecision::RestartAfter(d) = book.on_exit(&p, now) {
                    prop_assert!(d <= p.backoff_max);
                    accepted.push(now);
                }
                let in_window = accepted.iter().filter(|t| now.saturating_duration_since(**t) <= p.window).count();
                prop_assert!(in_window <= p.max_restarts);
            }
        }
    }
}
