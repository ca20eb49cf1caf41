//! Login throttling, per account name and per client address (IPv6 by /64, since one
//! client owns a whole /64). After `max` failures in a row the key is locked for
//! `base × 2^(failures − max)`, capped at `cap`; while locked, even the right password is
//! refused, so guessing gains nothing from racing the lock. Failures are forgotten after
//! an idle period. Counts are per replica.
//!
//! Memory is bounded: each map holds at most [`CAP`] entries; beyond that, idle ones are
//! pruned and new names are not tracked (the per-address throttle still applies).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CAP: usize = 100_000;
/// Failures older than this (and no lock in force) are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

struct Map<K> {
    entries: Mutex<HashMap<K, Entry>>,
    max_failures: u32,
}

impl<K: std::hash::Hash + Eq + Clone> Map<K> {
    fn new(max_failures: u32) -> Self {
        Map {
            entries: Mutex::new(HashMap::new()),
            max_failures,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn locked_for(&self, k: &K, now: Instant) -> Option<Duration> {
        self.lock()
            .get(k)
            .and_then(|e| e.locked_until)
            .filter(|u| *u > now)
            .map(|u| u - now)
    }

    fn fail(&self, k: &K, now: Instant, base: Duration, cap: Duration) {
        let mut m = self.lock();
        if !m.contains_key(k) && m.len() >= CAP {
            m.retain(|_, e| !stale(e, now));
            if m.len() >= CAP {
                return;
            }
        }
        let e = m.entry(k.clone()).or_insert(Entry {
            failures: 0,
            locked_until: None,
            last: now,
        });
        if stale(e, now) {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        if e.failures >= self.max_failures {
            let exp = (e.failures - self.max_failures).min(20);
            let lock = base.saturating_mul(1u32 << exp).min(cap);
            e.locked_until = Some(now + lock);
        }
    }

    fn clear(&self, k: &K) {
        self.lock().remove(k);
    }
}

fn stale(e: &Entry, now: Instant) -> bool {
    e.locked_until.is_none_or(|u| u <= now) && now.duration_since(e.last) > FORGET_AFTER
}

/// Client address as throttled: IPv4 as is, IPv6 by its /64.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            IpAddr::from(s)
        }
    }
}

pub struct LoginThrottle {
    users: Map<String>,
    ips: Map<IpAddr>,
    base: Duration,
    cap: Duration,
}

impl LoginThrottle {
    pub fn new(max_per_user: u32, max_per_ip: u32, base: Duration, cap: Duration) -> Self {
        LoginThrottle {
            users: Map::new(max_per_user.max(1)),
            ips: Map::new(max_per_ip.max(1)),
            base,
            cap,
        }
    }

    /// `Some(wait)` while the name or the address is locked.
    pub fn check(&self, username: &str, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let u = self.users.locked_for(&username.to_lowercase(), now);
        let i = self.ips.locked_for(&ip_key(ip), now);
        u.max(i)
    }

    pub fn failure(&self, username: &str, ip: IpAddr) {
        let now = Instant::now();
        self.users
            .fail(&username.to_lowercase(), now, self.base, self.cap);
        self.ips.fail(&ip_key(ip), now, self.base, self.cap);
    }

    /// A successful login clears the account's count, not the address's (an attacker
    /// with one valid account must not be able to reset the address counter with it).
    pub fn success(&self, username: &str) {
        self.users.clear(&username.to_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_max_and_backs_off() {
        let t = LoginThrottle::new(3, 100, Duration::from_secs(10), Duration::from_secs(25));
        let ip: IpAddr = "2001:db8::1".parse().expect("ip");
        let other: IpAddr = "2001:db8::ffff".parse().expect("ip");
        for _ in 0..2 {
            t.failure("Bob", ip);
            assert!(t.check("bob", ip).is_none());
        }
        t.failure("bob", other);
        let w = t
            .check("BOB", "10.0.0.1".parse().expect("ip"))
            .expect("locked");
        assert!(w > Duration::from_secs(9) && w <= Duration::from_secs(10));
        t.failure("bob", ip);
        t.failure("bob", ip);
        let w = t.check("bob", ip).expect("locked");
        assert!(
            w > Duration::from_secs(20) && w <= Duration::from_secs(25),
            "capped: {w:?}"
        );
        assert!(t.check("carol", "10.0.0.1".parse().expect("ip")).is_none());
    }
}
