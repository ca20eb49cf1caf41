//! Login throttling, per account name and per client address (IPv6 by /64, since one
//! client owns a whole /64). After `max` failures in a row the key is locked for
//! `base × 2^(failures − max)`, capped at `cap`; while locked, even the right password is
//! refused, so guessing gains nothing from racing the lock. Failures are forgotten after
//! an idle period. Counts are per replica.
//!
//! Memory is bounded whatever the clients send: names and addresses are kept only as
//! 64-bit keyed hashes (a 1 KiB username costs the same as a short one), and each map
//! holds at most [`CAP`] entries. When a map is full, idle entries are pruned first; if
//! that frees nothing, the least recently failed eighth is evicted, entries not locked
//! now going before locked ones (so a flood of new names cannot unlock an account).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most entries per map (each about 48 bytes with the table overhead).
const CAP: usize = 100_000;
/// Failures older than this (and no lock in force) are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

impl Entry {
    fn locked_at(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|u| u > now)
    }
}

/// One throttle map: keyed hash of the name or address → its failures.
struct Map {
    entries: Mutex<HashMap<u64, Entry>>,
    max_failures: u32,
    cap: usize,
}

impl Map {
    fn new(max_failures: u32, cap: usize) -> Self {
        Map {
            entries: Mutex::new(HashMap::new()),
            max_failures,
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn locked_for(&self, k: u64, now: Instant) -> Option<Duration> {
        self.lock()
            .get(&k)
            .and_then(|e| e.locked_until)
            .filter(|u| *u > now)
            .map(|u| u - now)
    }

    /// Makes room for one more entry: prunes idle ones, then evicts the oldest eighth
    /// (unlocked before locked).
    fn make_room(&self, m: &mut HashMap<u64, Entry>, now: Instant) {
        m.retain(|_, e| !stale(e, now));
        if m.len() < self.cap {
            return;
        }
        let mut by_age: Vec<(bool, Instant, u64)> = m
            .iter()
            .map(|(k, e)| (e.locked_at(now), e.last, *k))
            .collect();
        let evict = (self.cap / 8).max(1).min(by_age.len());
        by_age.select_nth_unstable(evict - 1);
        for (_, _, k) in &by_age[..evict] {
            m.remove(k);
        }
    }

    fn fail(&self, k: u64, now: Instant, base: Duration, cap: Duration) {
        let mut m = self.lock();
        if !m.contains_key(&k) && m.len() >= self.cap {
            self.make_room(&mut m, now);
        }
        let e = m.entry(k).or_insert(Entry {
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

    fn clear(&self, k: u64) {
        self.lock().remove(&k);
    }
}

fn stale(e: &Entry, now: Instant) -> bool {
    !e.locked_at(now) && now.duration_since(e.last) > FORGET_AFTER
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
    users: Map,
    ips: Map,
    /// Keyed per process, so nobody can aim names at one hash on purpose.
    hasher: RandomState,
    base: Duration,
    cap: Duration,
}

impl LoginThrottle {
    pub fn new(max_per_user: u32, max_per_ip: u32, base: Duration, cap: Duration) -> Self {
        Self::with_capacity(max_per_user, max_per_ip, base, cap, CAP)
    }

    /// As [`LoginThrottle::new`] with at most `entries` names and `entries` addresses.
    pub fn with_capacity(
        max_per_user: u32,
        max_per_ip: u32,
        base: Duration,
        cap: Duration,
        entries: usize,
    ) -> Self {
        LoginThrottle {
            users: Map::new(max_per_user.max(1), entries),
            ips: Map::new(max_per_ip.max(1), entries),
            hasher: RandomState::new(),
            base,
            cap,
        }
    }

    fn user_key(&self, username: &str) -> u64 {
        self.hasher.hash_one(username.to_lowercase())
    }

    fn ip_key(&self, ip: IpAddr) -> u64 {
        self.hasher.hash_one(ip_key(ip))
    }

    /// Names and addresses tracked now.
    pub fn tracked(&self) -> (usize, usize) {
        (self.users.len(), self.ips.len())
    }

    /// `Some(wait)` while the name or the address is locked.
    pub fn check(&self, username: &str, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let u = self.users.locked_for(self.user_key(username), now);
        let i = self.ips.locked_for(self.ip_key(ip), now);
        u.max(i)
    }

    pub fn failure(&self, username: &str, ip: IpAddr) {
        let now = Instant::now();
        self.users
            .fail(self.user_key(username), now, self.base, self.cap);
        self.ips.fail(self.ip_key(ip), now, self.base, self.cap);
    }

    /// A successful login clears the account's count, not the address's (an attacker
    /// with one valid account must not be able to reset the address counter with it).
    pub fn success(&self, username: &str) {
        self.users.clear(self.user_key(username));
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

    #[test]
    fn a_flood_of_names_and_addresses_stays_bounded() {
        let t = LoginThrottle::with_capacity(
            3,
            3,
            Duration::from_secs(60),
            Duration::from_secs(600),
            64,
        );
        let home: IpAddr = "10.9.9.9".parse().expect("ip");
        for _ in 0..3 {
            t.failure("victim", home);
        }
        assert!(t.check("victim", "10.0.0.1".parse().expect("ip")).is_some());
        // 5000 distinct, long names from 5000 distinct addresses (IPv4 and IPv6 /64s).
        let long = "x".repeat(1000);
        for i in 0..5000u32 {
            let ip = if i % 2 == 0 {
                IpAddr::from(i.to_be_bytes())
            } else {
                IpAddr::from([0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 1])
            };
            t.failure(&format!("{long}{i}"), ip);
            let (users, ips) = t.tracked();
            assert!(users <= 64 && ips <= 64, "{users} names, {ips} addresses");
        }
        // The lock in force survived the flood (unlocked entries are evicted first)...
        assert!(t.check("victim", "10.0.0.2".parse().expect("ip")).is_some());
        assert!(t.check("nobody", home).is_some(), "the address lock too");
        // ...and names first seen after the flood are still tracked and locked.
        for _ in 0..3 {
            t.failure("late", "10.0.0.3".parse().expect("ip"));
        }
        assert!(t.check("late", "10.0.0.4".parse().expect("ip")).is_some());
    }
}
