//! Password hashing: argon2id (m = 19 MiB, t = 2, p = 1, the OWASP minimum), computed on
//! the blocking pool behind a small semaphore, so a burst of logins can neither stall the
//! async workers nor take more than `permits × 19 MiB` of memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// Longest a login waits for a hashing slot before the gateway answers 503.
const QUEUE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("too many password checks in progress")]
    Busy,
    #[error("password hashing failed")]
    Hashing,
}

/// argon2id hashes computed by this process (not verifications), for tests and metrics.
static HASHES: AtomicU64 = AtomicU64::new(0);

/// How many password hashes this process has computed.
pub fn hashes_computed() -> u64 {
    HASHES.load(Ordering::Relaxed)
}

/// The PHC string of `password` under a fresh salt (the caller runs it off the async
/// workers).
fn hash_now(password: &str) -> Result<String, PasswordError> {
    HASHES.fetch_add(1, Ordering::Relaxed);
    argon2()?
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|_| PasswordError::Hashing)
}

/// One hash on the blocking pool, without a [`Passwords`] service (whose start-up costs
/// a hash of its own): for one-off tools such as `llmmux create-admin`.
pub async fn hash_once(password: String) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || hash_now(&password))
        .await
        .map_err(|_| PasswordError::Hashing)?
}

fn argon2() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(19 * 1024, 2, 1, None).map_err(|_| PasswordError::Hashing)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes and verifies passwords off the async workers.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// A hash of a random password with the live parameters: unknown users are verified
    /// against it, so a login for a missing account costs as much as one for a real one.
    dummy: Arc<str>,
}

impl Passwords {
    pub async fn new(concurrency: usize) -> Result<Passwords, PasswordError> {
        let p = Passwords {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: Arc::from(""),
        };
        let random = super::secrets::new_refresh_token().map_err(|_| PasswordError::Hashing)?;
        let dummy = p.hash(random).await?;
        Ok(Passwords {
            dummy: Arc::from(dummy),
            ..p
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = tokio::time::timeout(QUEUE_WAIT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| PasswordError::Busy)?
            .map_err(|_| PasswordError::Busy)?;
        tokio::task::spawn_blocking(move || {
            let r = f();
            drop(permit);
            r
        })
        .await
        .map_err(|_| PasswordError::Hashing)?
    }

    /// The PHC string of `password` under a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.blocking(move || hash_now(&password)).await
    }

    /// Whether `password` matches `hash`; `None` checks against the dummy hash (and is
    /// always false).
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        let real = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.to_string());
        let ok = self
            .blocking(move || {
                Ok(argon2()?
                    .verify_password(password.as_bytes(), hash.as_str())
                    .is_ok())
            })
            .await?;
        Ok(ok && real)
    }
}
