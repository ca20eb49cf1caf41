//! In-memory mirror of accounts and API keys, kept fresh by PostgreSQL LISTEN/NOTIFY.
//!
//! Authentication reads only this cache on the hot path. Every change commits a
//! notification (`u:`, `k:`, `s:` + id); each replica's listener re-reads the changed row,
//! so a revoked key or a disabled account stops working everywhere within milliseconds.
//! Notifications sent while a listener is disconnected are lost, so every (re)connect
//! reloads the whole cache after `LISTEN` is in place. While the database is down, the
//! entries keep serving (stale); misses fail with 503.
//!
//! Keys are indexed by the first 8 bytes of their digest and confirmed by a constant-time
//! comparison of the whole digest. Negative lookups (unknown digests) are remembered for a
//! short time in a bounded set, so a flood of invalid keys costs one query each at most
//! once per TTL and bounded memory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::secrets::{digests_equal, index_of, Digest};
use super::store::{KeyRow, UserRow};

/// Entries in the negative set before it is pruned (then cleared if nothing expired).
const NEGATIVE_CAP: usize = 10_000;
/// How long an unknown digest is answered from memory.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// A key as authentication needs it.
#[derive(Debug)]
pub struct KeyEntry {
    pub row: KeyRow,
    pub digest: Digest,
}

#[derive(Default)]
struct State {
    users: HashMap<Uuid, Arc<UserRow>>,
    keys: HashMap<u64, Vec<Arc<KeyEntry>>>,
    key_index: HashMap<Uuid, u64>,
    /// Logged-out sessions → when their last access token expires.
    revoked_sessions: HashMap<Uuid, Instant>,
    negative: HashMap<Digest, Instant>,
}

impl State {
    fn remove_key(&mut self, id: Uuid) {
        if let Some(ix) = self.key_index.remove(&id) {
            if let Some(v) = self.keys.get_mut(&ix) {
                v.retain(|k| k.row.id != id);
                if v.is_empty() {
                    self.keys.remove(&ix);
                }
            }
        }
    }

    fn put_key(&mut self, row: KeyRow) {
        let Ok(digest) = <Digest>::try_from(row.key_hash.as_slice()) else {
            tracing::warn!(key_id = %row.id, "stored key digest has the wrong length; key ignored");
            return;
        };
        self.remove_key(row.id);
        let ix = index_of(&digest);
        self.negative.remove(&digest);
        self.key_index.insert(row.id, ix);
        self.keys
            .entry(ix)
            .or_default()
            .push(Arc::new(KeyEntry { row, digest }));
    }
}

/// The cache; cheap to share.
#[derive(Default)]
pub struct Cache {
    state: RwLock<State>,
}

impl Cache {
    // A poisoned lock only means a panic elsewhere mid-update; the maps stay consistent
    // enough to serve (each update is a few inserts), so keep going.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces everything (after a listener (re)connect).
    pub fn replace_all(
        &self,
        users: Vec<UserRow>,
        keys: Vec<KeyRow>,
        revoked: Vec<Uuid>,
        session_ttl: Duration,
    ) {
        let mut s = State::default();
        for u in users {
            s.users.insert(u.id, Arc::new(u));
        }
        for k in keys {
            s.put_key(k);
        }
        let until = Instant::now() + session_ttl;
        for sid in revoked {
            s.revoked_sessions.insert(sid, until);
        }
        *self.write() = s;
    }

    pub fn user(&self, id: Uuid) -> Option<Arc<UserRow>> {
        self.read().users.get(&id).cloned()
    }

    pub fn put_user(&self, u: UserRow) {
        self.write().users.insert(u.id, Arc::new(u));
    }

    /// Forgets an account and its keys (deleted; keys go with it by cascade).
    pub fn remove_user(&self, id: Uuid) {
        let mut s = self.write();
        s.users.remove(&id);
        let keys: Vec<Uuid> = s
            .keys
            .values()
            .flatten()
            .filter(|k| k.row.user_id == id)
            .map(|k| k.row.id)
            .collect();
        for k in keys {
            s.remove_key(k);
        }
    }

    pub fn put_key(&self, row: KeyRow) {
        self.write().put_key(row);
    }

    pub fn remove_key(&self, id: Uuid) {
        self.write().remove_key(id);
    }

    /// The key with this digest, confirmed in constant time.
    pub fn key(&self, digest: &Digest) -> Option<Arc<KeyEntry>> {
        let s = self.read();
        let candidates = s.keys.get(&index_of(digest))?;
        let mut found = None;
        for k in candidates {
            if digests_equal(&k.digest, digest) {
                found = Some(k.clone());
            }
        }
        found
    }

    pub fn is_known_missing(&self, digest: &Digest) -> bool {
        self.read()
            .negative
            .get(digest)
            .is_some_and(|t| t.elapsed() < NEGATIVE_TTL)
    }

    pub fn note_missing(&self, digest: Digest) {
        let mut s = self.write();
        if s.negative.len() >= NEGATIVE_CAP {
            s.negative.retain(|_, t| t.elapsed() < NEGATIVE_TTL);
            if s.negative.len() >= NEGATIVE_CAP {
                s.negative.clear();
            }
        }
        s.negative.insert(digest, Instant::now());
    }

    pub fn revoke_session(&self, sid: Uuid, for_: Duration) {
        let mut s = self.write();
        let now = Instant::now();
        s.revoked_sessions.retain(|_, until| *until > now);
        s.revoked_sessions.insert(sid, now + for_);
    }

    pub fn is_session_revoked(&self, sid: Uuid) -> bool {
        self.read()
            .revoked_sessions
            .get(&sid)
            .is_some_and(|until| *until > Instant::now())
    }
}
