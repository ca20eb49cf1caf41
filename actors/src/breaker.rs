//! The per-server health state machine, pure (no clock, no I/O) and owned by the registry,
//! the single writer: active probe results and passive trips both land here.
//!
//! `Unknown` (admitted optimistically) → `Healthy` on a good probe, `Down` on a failed one;
//! a passive trip → `Ejected` for `base × n` (capped), n counting ejections; an ejected
//! server needs both the time to pass and a good probe to come back.

use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// Not probed yet: admitted optimistically so a fresh gateway serves at once.
    Unknown,
    Healthy,
    /// The last active probe failed; re-admitted after the next successful probe.
    Down {
        reason: String,
    },
    /// Taken out after request failures; re-admitted by a good probe once `until` passed.
    Ejected {
        until: Instant,
        ejections: u32,
    },
}

impl HealthState {
    pub fn admits_traffic(&self) -> bool {
        matches!(self, HealthState::Unknown | HealthState::Healthy)
    }

    pub fn label(&self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Down { .. } => "down",
            HealthState::Ejected { .. } => "ejected",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EjectPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for EjectPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Breaker {
    pub state: HealthState,
    ejections: u32,
    healthy_since: Option<Instant>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new(HealthState::Unknown)
    }
}

impl Breaker {
    pub fn new(state: HealthState) -> Self {
        let ejections = match &state {
            HealthState::Ejected { ejections, .. } => *ejections,
            _ => 0,
        };
        Self {
            state,
            ejections,
            healthy_since: None,
        }
    }

    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    pub fn on_probe(&mut self, ok: Result<(), String>, now: Instant, policy: &EjectPolicy) {
        match (&self.state, ok) {
            (HealthState::Ejected { until, .. }, Ok(())) if now < *until => {}
            (HealthState::Ejected { .. }, Err(_)) => {}
            (_, Ok(())) => {
                if self.state != HealthState::Healthy {
                    self.healthy_since = Some(now);
                }
                self.state = HealthState::Healthy;
                // A long healthy stretch forgives earlier ejections.
                if self
                    .healthy_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= policy.max)
                {
                    self.ejections = 0;
                }
            }
            (_, Err(reason)) => {
                self.healthy_since = None;
                self.state = HealthState::Down { reason };
            }
        }
    }

    /// Eject for `base × n` (capped), n counting ejections.
    pub fn eject(&mut self, now: Instant, policy: &EjectPolicy) {
        self.ejections = self.ejections.saturating_add(1);
        let span = policy.base.saturating_mul(self.ejections).min(policy.max);
        self.healthy_since = None;
        self.state = HealthState::Ejected {
            until: now + span,
            ejections: self.ejections,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ejection_grows_linearly_and_caps() {
        let p = EjectPolicy::default();
        let mut b = Breaker::new(HealthState::Healthy);
        let t0 = Instant::now();
        let mut spans = Vec::new();
        for _ in 0..12 {
            b.eject(t0, &p);
            if let HealthState::Ejected { until, .. } = b.state {
                spans.push((until - t0).as_secs());
            }
        }
        assert_eq!(&spans[..4], &[30, 60, 90, 120]);
        assert_eq!(*spans.last().expect("12 spans"), 300);
    }

    #[test]
    fn ejected_server_needs_time_and_a_good_probe() {
        let p = EjectPolicy::default();
        let mut b = Breaker::new(HealthState::Healthy);
        let t0 = Instant::now();
        b.eject(t0, &p);
        b.on_probe(Ok(()), t0 + Duration::from_secs(10), &p);
        assert!(matches!(b.state, HealthState::Ejected { .. }));
        b.on_probe(Err("x".into()), t0 + Duration::from_secs(40), &p);
        assert!(matches!(b.state, HealthState::Ejected { .. }));
        b.on_probe(Ok(()), t0 + Duration::from_secs(41), &p);
        assert_eq!(b.state, HealthState::Healthy);
    }

    #[test]
    fn probe_failure_takes_down_and_success_readmits() {
        let p = EjectPolicy::default();
        let mut b = Breaker::new(HealthState::Unknown);
        let t0 = Instant::now();
        b.on_probe(Err("refused".into()), t0, &p);
        assert!(!b.state.admits_traffic());
        b.on_probe(Ok(()), t0, &p);
        assert!(b.state.admits_traffic());
    }

    proptest! {
        /// Whatever the sequence of probes and trips, an ejection never exceeds the cap and
        /// a server is admitted only after a good probe (or before any probe).
        #[test]
        fn ejections_are_bounded_and_admission_needs_a_good_probe(
            events in proptest::collection::vec((0u8..3, 0u64..100_000), 1..80)
        ) {
            let p = EjectPolicy { base: Duration::from_secs(30), max: Duration::from_secs(300) };
            let mut b = Breaker::default();
            let t0 = Instant::now();
            let mut now = t0;
            let mut last_probe_ok = None;
            for (kind, gap) in events {
                now += Duration::from_millis(gap);
                match kind {
                    0 => { b.on_probe(Ok(()), now, &p); last_probe_ok = Some(true); }
                    1 => { b.on_probe(Err("x".into()), now, &p); last_probe_ok = Some(false); }
                    _ => b.eject(now, &p),
                }
                if let HealthState::Ejected { until, .. } = b.state {
                    prop_assert!(until.saturating_duration_since(now) <= p.max);
                }
                if b.state == HealthState::Healthy {
                    prop_assert_eq!(last_probe_ok, Some(true));
                }
            }
        }
    }
}
