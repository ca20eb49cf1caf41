//! Random credentials and their stored digests.
//!
//! API keys and refresh tokens are high-entropy random strings, so a keyed fast hash is
//! the right way to store them (argon2 is for low-entropy passwords only): the database
//! holds `HMAC-SHA-256(pepper, secret)`, and a dump of it without the pepper is useless.
//! Lookups go through an 8-byte slice of that digest; the full digest is then compared in
//! constant time, so no comparison leaks how much of a guess was right.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::TryRngCore;
use ring::hmac;
use subtle::ConstantTimeEq;

/// Every database API key starts with this, so scanners and people recognise it.
pub const KEY_PREFIX: &str = "sk-llmmux-";
/// Random characters of a key shown in listings after [`KEY_PREFIX`] (24 of 256 bits).
const DISPLAY_CHARS: usize = 4;
/// Random bytes in a key or refresh token (256 bits; at least 128 are required).
const RANDOM_BYTES: usize = 32;

pub type Digest = [u8; 32];

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed")]
pub struct RandomError;

/// `n` bytes from the operating system, base64url without padding.
fn random_token() -> Result<String, RandomError> {
    let mut bytes = [0u8; RANDOM_BYTES];
    OsRng.try_fill_bytes(&mut bytes).map_err(|_| RandomError)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A new API key: the secret (shown once) and its non-secret display prefix.
pub fn new_api_key() -> Result<(String, String), RandomError> {
    let random = random_token()?;
    let display = format!("{KEY_PREFIX}{}", &random[..DISPLAY_CHARS]);
    Ok((format!("{KEY_PREFIX}{random}"), display))
}

/// A new opaque refresh token.
pub fn new_refresh_token() -> Result<String, RandomError> {
    Ok(format!("rt-{}", random_token()?))
}

/// The server-side HMAC key for stored credentials.
pub struct Pepper(hmac::Key);

impl Pepper {
    /// From `API_KEY_PEPPER`, or derived from the JWT secret under a fixed label (so the
    /// two keys differ even when only one secret is configured).
    pub fn new(pepper: Option<&str>, jwt_secret: &str) -> Pepper {
        let raw = match pepper {
            Some(p) => p.as_bytes().to_vec(),
            None => {
                let k = hmac::Key::new(hmac::HMAC_SHA256, jwt_secret.as_bytes());
                hmac::sign(&k, b"llmmux api-key pepper v1")
                    .as_ref()
                    .to_vec()
            }
        };
        Pepper(hmac::Key::new(hmac::HMAC_SHA256, &raw))
    }

    pub fn digest(&self, secret: &str) -> Digest {
        let tag = hmac::sign(&self.0, secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// The lookup index of a digest: its first 8 bytes.
pub fn index_of(d: &Digest) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

pub fn digests_equal(a: &Digest, b: &Digest) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_prefixed() {
        let (a, display) = new_api_key().expect("random");
        let (b, _) = new_api_key().expect("random");
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 43);
        assert_ne!(a, b);
        assert!(a.starts_with(&display) && display.len() == KEY_PREFIX.len() + 4);
        let p = Pepper::new(None, "0123456789abcdef0123456789abcdef");
        assert!(digests_equal(&p.digest(&a), &p.digest(&a)));
        assert!(!digests_equal(&p.digest(&a), &p.digest(&b)));
        let other = Pepper::new(Some("another pepper of at least 32 bytes!"), "x");
        assert!(!digests_equal(&p.digest(&a), &other.digest(&a)));
    }
}
