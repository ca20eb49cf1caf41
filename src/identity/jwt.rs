//! Access tokens: JWT, HS256 only, with `exp`, `iat`, `iss` and `aud` required and a
//! leeway of 60 s for clock skew between replicas and clients.
//!
//! `jsonwebtoken` does the parsing and claim checks; its crypto back ends (aws-lc or the
//! RustCrypto RSA/EC stack) are far more than HS256 needs, so HMAC comes from `ring`,
//! already linked for TLS, through a provider that knows no other algorithm. Revocation
//! lives outside the token: `ver` must equal the account's current token version and the
//! session `sid` must not be logged out; both are checked against the cache.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::hmac;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Issuer and audience of every token.
const ISSUER: &str = "llmmux";
/// Allowed clock skew in seconds, for `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("invalid token")]
    Invalid,
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The account id.
    pub sub: Uuid,
    /// The session (refresh-token family) the token belongs to.
    pub sid: Uuid,
    /// The account's token version when the token was issued.
    pub ver: i64,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
}

// === HS256-only provider ===

struct Hs256(hmac::Key);

impl signature::Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(hmac::sign(&self.0, msg).as_ref().to_vec())
    }
}

impl signature::Verifier<Vec<u8>> for Hs256 {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        // ring compares tags in constant time.
        hmac::verify(&self.0, msg, sig).map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

fn signer(alg: &Algorithm, key: &EncodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    match alg {
        Algorithm::HS256 => Ok(Box::new(Hs256(hmac::Key::new(
            hmac::HMAC_SHA256,
            key.as_bytes(),
        )))),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    match alg {
        Algorithm::HS256 => Ok(Box::new(Hs256(hmac::Key::new(
            hmac::HMAC_SHA256,
            key.try_get_as_bytes()?,
        )))),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    // JWKs are never used: keys are a configured shared secret.
    key_utils: KeyUtils::new_unimplemented(),
};

fn install_provider() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // Fails only if a provider is installed already, which then serves HS256 as well.
        let _ = PROVIDER.install_default();
    });
}

// === Jwt ===

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Issues and checks access tokens under one secret.
pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl Jwt {
    pub fn new(secret: &str, ttl: Duration) -> Result<Jwt, JwtError> {
        install_provider();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        Ok(Jwt {
            encoding: EncodingKey::from_secret(secret.as_bytes()).map_err(|_| JwtError::Invalid)?,
            decoding: DecodingKey::from_secret(secret.as_bytes()).map_err(|_| JwtError::Invalid)?,
            validation,
            ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A signed access token for the account `sub` in session `sid`.
    pub fn issue(&self, sub: Uuid, sid: Uuid, ver: i64) -> Result<String, JwtError> {
        let iat = now_secs();
        let claims = Claims {
            sub,
            sid,
            ver,
            iat,
            exp: iat + self.ttl.as_secs().max(1),
            iss: ISSUER.into(),
            aud: ISSUER.into(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| JwtError::Invalid)
    }

    /// The claims of a valid token.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                _ => JwtError::Invalid,
            })?;
        let c = data.claims;
        let now = now_secs();
        if c.iat > now + LEEWAY_SECS {
            return Err(JwtError::NotYetValid);
        }
        // We never issue tokens that live longer than the TTL; one that claims to was not
        // made by this configuration.
        if c.exp.saturating_sub(c.iat) > self.ttl.as_secs().max(1) {
            return Err(JwtError::Invalid);
        }
        Ok(c)
    }
}

/// Cheap shape test that routes a bearer token to JWT verification.
pub fn looks_like_jwt(token: &str) -> bool {
    token.len() < 4096 && token.bytes().filter(|&b| b == b'.').count() == 2
}
