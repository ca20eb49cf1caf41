//! Retry budgets, one per model, after Finagle's `RetryBudget`: every request deposits
//! `percent`% of a retry, a reserve of `min_per_sec` retries per second is always there (so a
//! burst of first retries gets through before deposits accumulate), and both expire after
//! `ttl`. Over any `ttl` window a full outage therefore costs at most
//! `(1 + percent/100) × requests + min_per_sec × ttl` upstream attempts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Slots of the sliding window, each `ttl / SLOTS` long.
const SLOTS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetPolicy {
    pub percent: u32,
    pub min_per_sec: u32,
    pub ttl: Duration,
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    deposits: u64,
    withdrawals: u64,
}

#[derive(Debug)]
struct Window {
    slots: [Slot; SLOTS],
    /// Index of the slot `current` refers to.
    head: usize,
    /// Start of the head slot.
    head_start: Instant,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            slots: [Slot::default(); SLOTS],
            head: 0,
            head_start: now,
        }
    }

    /// Move the head to `now`, clearing slots that fell out of the window.
    fn advance(&mut self, now: Instant, slot_len: Duration) {
        let elapsed = now.saturating_duration_since(self.head_start);
        let steps = (elapsed.as_nanos() / slot_len.as_nanos().max(1)) as usize;
        if steps == 0 {
            return;
        }
        for _ in 0..steps.min(SLOTS) {
            self.head = (self.head + 1) % SLOTS;
            self.slots[self.head] = Slot::default();
        }
        self.head_start += slot_len.saturating_mul(steps as u32);
    }

    fn totals(&self) -> (u64, u64) {
        self.slots
            .iter()
            .fold((0, 0), |(d, w), s| (d + s.deposits, w + s.withdrawals))
    }
}

/// The retry budget of one model.
#[derive(Debug)]
pub struct RetryBudget {
    policy: BudgetPolicy,
    window: Mutex<Window>,
    retries: AtomicU64,
    denied: AtomicU64,
}

impl RetryBudget {
    pub fn new(policy: BudgetPolicy) -> Self {
        Self {
            policy,
            window: Mutex::new(Window::new(Instant::now())),
            retries: AtomicU64::new(0),
            denied: AtomicU64::new(0),
        }
    }

    fn slot_len(&self) -> Duration {
        (self.policy.ttl / SLOTS as u32).max(Duration::from_millis(1))
    }

    /// One client request arrived.
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    fn deposit_at(&self, now: Instant) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.advance(now, self.slot_len());
        let head = w.head;
        w.slots[head].deposits += 1;
    }

    /// Take one retry if the budget has it.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    fn try_withdraw_at(&self, now: Instant) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.advance(now, self.slot_len());
        let (deposits, withdrawals) = w.totals();
        // In hundredths of a retry, to stay in integers.
        let reserve = u64::from(self.policy.min_per_sec) * self.policy.ttl.as_millis() as u64 / 10;
        let balance = reserve + deposits * u64::from(self.policy.percent);
        if balance >= (withdrawals + 1) * 100 {
            let head = w.head;
            w.slots[head].withdrawals += 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.denied.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }
}

/// The budgets of all models, created on first use (only for models the routing table
/// knows, so the map is bounded by the fleet).
#[derive(Debug)]
pub struct RetryBudgets {
    policy: RwLock<BudgetPolicy>,
    by_model: RwLock<HashMap<Arc<str>, Arc<RetryBudget>>>,
}

impl RetryBudgets {
    pub fn new(policy: BudgetPolicy) -> Self {
        Self {
            policy: RwLock::new(policy),
            by_model: RwLock::default(),
        }
    }

    /// A new policy: budgets start afresh under it.
    pub fn set_policy(&self, policy: BudgetPolicy) {
        let mut current = self.policy.write().unwrap_or_else(|p| p.into_inner());
        if *current != policy {
            *current = policy;
            self.by_model
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
    }

    pub fn get(&self, model: &str) -> Arc<RetryBudget> {
        if let Some(b) = self
            .by_model
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
        {
            return b.clone();
        }
        let policy = *self.policy.read().unwrap_or_else(|p| p.into_inner());
        self.by_model
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(Arc::from(model))
            .or_insert_with(|| Arc::new(RetryBudget::new(policy)))
            .clone()
    }

    /// `(model, retries, denied)` for every model seen.
    pub fn snapshot(&self) -> Vec<(String, u64, u64)> {
        let mut v: Vec<_> = self
            .by_model
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(m, b)| (m.to_string(), b.retries(), b.denied()))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(percent: u32, min_per_sec: u32) -> BudgetPolicy {
        BudgetPolicy {
            percent,
            min_per_sec,
            ttl: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_reserve_lets_a_burst_of_first_retries_through() {
        let b = RetryBudget::new(policy(20, 10));
        let t = Instant::now();
        // 64 requests arrive at once and all fail: the reserve (10/s × 10 s) covers them.
        for _ in 0..64 {
            b.deposit_at(t);
        }
        let granted = (0..64).filter(|_| b.try_withdraw_at(t)).count();
        assert_eq!(granted, 64);
    }

    #[test]
    fn deposits_and_withdrawals_expire_with_the_window() {
        let b = RetryBudget::new(policy(20, 0));
        let t = Instant::now();
        for _ in 0..10 {
            b.deposit_at(t);
        }
        assert!(b.try_withdraw_at(t));
        assert!(b.try_withdraw_at(t));
        assert!(!b.try_withdraw_at(t), "20 % of 10 requests is 2 retries");
        let later = t + Duration::from_secs(11);
        assert!(!b.try_withdraw_at(later), "old deposits expired");
        for _ in 0..5 {
            b.deposit_at(later);
        }
        assert!(b.try_withdraw_at(later));
    }

    proptest! {
        /// A full outage within one window: retries ≤ percent × requests + reserve.
        #[test]
        fn retries_stay_within_the_budget(
            requests in 1usize..2000,
            percent in 0u32..=100,
            min_per_sec in 0u32..20,
        ) {
            let b = RetryBudget::new(policy(percent, min_per_sec));
            let t = Instant::now();
            let mut retries = 0u64;
            for _ in 0..requests {
                b.deposit_at(t);
                // every attempt fails: retry as long as the budget allows (max 5 tries)
                for _ in 0..5 {
                    if b.try_withdraw_at(t) { retries += 1 } else { break }
                }
            }
            let bound = requests as u64 * u64::from(percent) / 100 + u64::from(min_per_sec) * 10;
            prop_assert!(retries <= bound, "{retries} > {bound}");
            prop_assert!(retries + 1 >= bound.min(requests as u64 * 5), "{retries} far below {bound}");
        }
    }
}
