//! Envoy-style retry budget: concurrent retries stay at or below `ratio` of active requests,
//! with a floor, so a full outage cannot multiply upstream load.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct RetryBudget {
    inner: Arc<Counters>,
    ratio: f64,
    floor: usize,
}

#[derive(Debug, Default)]
struct Counters {
    active: AtomicUsize,
    retrying: AtomicUsize,
    total: AtomicU64,
    denied: AtomicU64,
}

/// Counts one active request while alive.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Counters>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one retry in progress while alive.
#[derive(Debug)]
pub struct RetryGuard(Arc<Counters>);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.retrying.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RetryBudget {
    pub fn new(ratio: f64, floor: usize) -> Self {
        Self {
            inner: Arc::default(),
            ratio,
            floor,
        }
    }

    pub fn enter(&self) -> ActiveGuard {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.inner.clone())
    }

    /// A retry slot, if the budget allows one now.
    pub fn try_retry(&self) -> Option<RetryGuard> {
        let active = self.inner.active.load(Ordering::Acquire);
        let allowed = ((active as f64 * self.ratio).ceil() as usize).max(self.floor);
        let mut cur = self.inner.retrying.load(Ordering::Acquire);
        loop {
            if cur >= allowed {
                self.inner.denied.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self.inner.retrying.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.inner.total.fetch_add(1, Ordering::Relaxed);
                    return Some(RetryGuard(self.inner.clone()));
                }
                Err(actual) => cur = actual,
            }
        }
    }

    pub fn active_retries(&self) -> usize {
        self.inner.retrying.load(Ordering::Relaxed)
    }
    pub fn total_retries(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }
    pub fn denied(&self) -> u64 {
        self.inner.denied.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_then_ratio() {
        let b = RetryBudget::new(0.2, 3);
        let actives: Vec<_> = (0..10).map(|_| b.enter()).collect();
        let r: Vec<_> = (0..5).filter_map(|_| b.try_retry()).collect();
        assert_eq!(r.len(), 3, "floor of 3 with 10 active");
        drop(r);
        let more: Vec<_> = (0..40).map(|_| b.enter()).collect();
        let r: Vec<_> = (0..20).filter_map(|_| b.try_retry()).collect();
        assert_eq!(r.len(), 10, "20% of 50 active");
        assert_eq!(b.denied(), 12);
        drop((actives, more));
    }
}
