//! Authentication of static keys (`API_KEYS`, `ADMIN_API_KEYS`) and who may call what.
//!
//! Keys are compared as SHA-256 digests in constant time, so neither the content nor the
//! length of a configured key leaks through timing.

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, Secret};
use crate::error::GatewayError;
use crate::principal::Principal;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, readiness).
    Public,
    /// Any valid credential (open when no client key is configured).
    Client,
    /// An admin credential.
    Admin,
}

type KeyDigest = [u8; 32];

fn digest(s: &str) -> KeyDigest {
    Sha256::digest(s.as_bytes()).into()
}

/// The static keys in force, as digests.
pub struct Authenticator {
    client: Vec<KeyDigest>,
    admin: Vec<KeyDigest>,
}

impl Authenticator {
    pub fn new(cfg: &Config) -> Self {
        let d = |keys: &[Secret]| keys.iter().map(|k| digest(k.expose())).collect();
        Self {
            client: d(&cfg.api_keys),
            admin: d(&cfg.admin_api_keys),
        }
    }

    /// Index of the key matching `token`, checking every key (no early exit).
    fn find(keys: &[KeyDigest], token: &KeyDigest) -> Option<usize> {
        keys.iter().enumerate().fold(None, |hit, (i, k)| {
            if bool::from(k.ct_eq(token)) {
                Some(i)
            } else {
                hit
            }
        })
    }

    /// The caller of a route with the given access rule.
    pub fn authorize(
        &self,
        access: Access,
        headers: &HeaderMap,
    ) -> Result<Principal, GatewayError> {
        if access == Access::Public {
            return Ok(Principal::anonymous());
        }
        let token = bearer(headers)?;
        let principal = token.map(digest).and_then(|t| {
            if let Some(i) = Self::find(&self.admin, &t) {
                Some(Principal::admin_static_key(i))
            } else {
                Self::find(&self.client, &t).map(Principal::static_key)
            }
        });
        match (access, principal) {
            (Access::Admin, _) if self.admin.is_empty() => Err(GatewayError::Forbidden(
                "The admin API is disabled: set ADMIN_API_KEYS to enable it.",
            )),
            (Access::Admin, Some(p)) if p.is_admin() => Ok(p),
            (Access::Admin, Some(_)) => Err(GatewayError::Forbidden(
                "This credential may not use the admin API.",
            )),
            (_, Some(p)) => Ok(p),
            // An open gateway (no client keys) takes any token: SDKs always send one.
            (Access::Client, None) if self.client.is_empty() => Ok(Principal::anonymous()),
            _ => Err(GatewayError::Unauthorized),
        }
    }
}

/// Static keys shorter than this get a start-up warning: they are guessable or typed.
pub const MIN_STATIC_KEY_CHARS: usize = 32;

/// One warning line per short static key, naming it by position (never by its value), for
/// the caller to log at start-up.
pub fn short_key_warnings(cfg: &Config) -> Vec<String> {
    let short = |name: &str, id: &str, keys: &[Secret]| -> Vec<String> {
        keys.iter()
            .enumerate()
            .filter(|(_, k)| k.expose().chars().count() < MIN_STATIC_KEY_CHARS)
            .map(|(i, _)| {
                format!(
                    "{name} entry {id}:{i} is shorter than {MIN_STATIC_KEY_CHARS} characters; \
                     use a long random key (or database keys)"
                )
            })
            .collect()
    };
    let mut out = short("API_KEYS", "static", &cfg.api_keys);
    out.extend(short("ADMIN_API_KEYS", "admin-static", &cfg.admin_api_keys));
    out
}

/// The bearer token, if any. Two `Authorization` headers are ambiguous: 400.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::InvalidRequest {
            message: "Send exactly one Authorization header.".into(),
            param: None,
        });
    }
    Ok(first
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()))
        .filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(
                http::header::AUTHORIZATION,
                v.parse().expect("valid header"),
            );
        }
        m
    }

    fn auth(client: &[&str], admin: &[&str]) -> Authenticator {
        let d = |v: &[&str]| v.iter().map(|k| digest(k)).collect();
        Authenticator {
            client: d(client),
            admin: d(admin),
        }
    }

    #[test]
    fn access_rules() {
        let a = auth(&["sk-a"], &["sk-adm"]);
        assert_eq!(
            a.authorize(Access::Client, &h(&["Bearer sk-a"]))
                .expect("client")
                .key_id,
            "static:0"
        );
        assert!(a.authorize(Access::Client, &h(&["bearer sk-adm"])).is_ok());
        assert!(a.authorize(Access::Client, &h(&["Bearer sk-b"])).is_err());
        assert!(a.authorize(Access::Client, &h(&["Basic sk-a"])).is_err());
        assert!(a.authorize(Access::Client, &HeaderMap::new()).is_err());
        assert!(matches!(
            a.authorize(Access::Admin, &h(&["Bearer sk-a"])),
            Err(GatewayError::Forbidden(_))
        ));
        assert!(matches!(
            a.authorize(Access::Admin, &h(&["Bearer nope"])),
            Err(GatewayError::Unauthorized)
        ));
        assert!(a.authorize(Access::Admin, &h(&["Bearer sk-adm"])).is_ok());
        assert!(matches!(
            a.authorize(Access::Client, &h(&["Bearer sk-a", "Bearer sk-a"])),
            Err(GatewayError::InvalidRequest { .. })
        ));
        let open = auth(&[], &[]);
        assert!(open.authorize(Access::Client, &HeaderMap::new()).is_ok());
        assert!(open
            .authorize(Access::Client, &h(&["Bearer EMPTY"]))
            .is_ok());
        assert!(matches!(
            open.authorize(Access::Admin, &h(&["Bearer x"])),
            Err(GatewayError::Forbidden(_))
        ));
    }
}
