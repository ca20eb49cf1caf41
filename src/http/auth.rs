//! Who is calling, and may they call this route.
//!
//! Static keys (`API_KEYS`, `ADMIN_API_KEYS`) are checked first, as SHA-256 digests in
//! constant time (neither content nor length leaks through timing); any other bearer token
//! goes to the identity service (JWT sessions, database keys) when `DATABASE_URL` is set.
//! The gateway is open (any token, or none) only without client keys and without a store.

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, Secret};
use crate::error::GatewayError;
use crate::identity::Identity;
use crate::principal::Principal;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, readiness, login).
    Public,
    /// Any valid credential (anyone on an open gateway).
    Client,
    /// A real credential, even on an open gateway (account and key management).
    Authenticated,
    /// An admin credential: `ADMIN_API_KEYS`, or an ADMIN / SUPER_ADMIN session.
    Admin,
}

/// What the static keys make of a request's credential.
enum Lookup<'a> {
    None,
    Static(Principal),
    /// Not a static key: maybe a session or a database key.
    Other(&'a str),
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

    fn lookup<'h>(&self, headers: &'h HeaderMap) -> Result<Lookup<'h>, GatewayError> {
        let Some(token) = bearer(headers)? else {
            return Ok(Lookup::None);
        };
        if self.client.is_empty() && self.admin.is_empty() {
            // Nothing to compare with: no digest (a SHA-256 per request on deployments with
            // database keys only). Whether static keys exist is configuration, not a secret.
            return Ok(Lookup::Other(token));
        }
        let t = digest(token);
        Ok(if let Some(i) = Self::find(&self.admin, &t) {
            Lookup::Static(Principal::admin_static_key(i))
        } else if let Some(i) = Self::find(&self.client, &t) {
            Lookup::Static(Principal::static_key(i))
        } else {
            Lookup::Other(token)
        })
    }

    /// The caller of a route with the given access rule. Sessions and database keys are
    /// checked by `identity` (cached; 503 when it cannot tell in time).
    pub async fn authorize(
        &self,
        identity: Option<&Identity>,
        access: Access,
        headers: &HeaderMap,
    ) -> Result<Principal, GatewayError> {
        let caller = self.identify(identity, access, headers).await?;
        self.permit(identity, access, caller)
    }

    /// Who presented the credential, if anyone did (errors: a malformed header, an
    /// unreachable store). Public routes need no one.
    pub async fn identify(
        &self,
        identity: Option<&Identity>,
        access: Access,
        headers: &HeaderMap,
    ) -> Result<Option<Principal>, GatewayError> {
        if access == Access::Public {
            return Ok(Some(Principal::anonymous()));
        }
        Ok(match self.lookup(headers)? {
            Lookup::Static(p) => Some(p),
            Lookup::Other(token) => match identity {
                Some(id) => Some(id.authenticate(token).await?),
                None => None,
            },
            Lookup::None => None,
        })
    }

    /// Whether `caller` may use a route with the given access rule.
    pub fn permit(
        &self,
        identity: Option<&Identity>,
        access: Access,
        caller: Option<Principal>,
    ) -> Result<Principal, GatewayError> {
        let open = self.client.is_empty() && identity.is_none();
        match (access, caller) {
            (Access::Public, _) => Ok(Principal::anonymous()),
            (Access::Admin, _) if self.admin.is_empty() && identity.is_none() => {
                Err(GatewayError::Forbidden(
                    "The admin API is disabled: set ADMIN_API_KEYS or DATABASE_URL to enable it.",
                ))
            }
            (Access::Admin, Some(p)) if p.is_admin() => Ok(p),
            (Access::Admin, Some(_)) => Err(GatewayError::Forbidden(
                "This credential may not use the admin API.",
            )),
            (_, Some(p)) => Ok(p),
            // An open gateway takes any token: SDKs always send one.
            (Access::Client, None) if open => Ok(Principal::anonymous()),
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

    fn run(a: &Authenticator, access: Access, h: &HeaderMap) -> Result<Principal, GatewayError> {
        futures_util::FutureExt::now_or_never(a.authorize(None, access, h))
            .expect("no identity: ready at once")
    }

    #[test]
    fn access_rules() {
        let a = auth(&["sk-a"], &["sk-adm"]);
        assert_eq!(
            run(&a, Access::Client, &h(&["Bearer sk-a"]))
                .expect("client")
                .key_id,
            "static:0"
        );
        assert!(run(&a, Access::Client, &h(&["bearer sk-adm"])).is_ok());
        assert!(run(&a, Access::Client, &h(&["Bearer sk-b"])).is_err());
        assert!(run(&a, Access::Client, &h(&["Basic sk-a"])).is_err());
        assert!(run(&a, Access::Client, &HeaderMap::new()).is_err());
        assert!(matches!(
            run(&a, Access::Admin, &h(&["Bearer sk-a"])),
            Err(GatewayError::Forbidden(_))
        ));
        assert!(matches!(
            run(&a, Access::Admin, &h(&["Bearer nope"])),
            Err(GatewayError::Unauthorized)
        ));
        assert!(run(&a, Access::Admin, &h(&["Bearer sk-adm"])).is_ok());
        assert!(matches!(
            run(&a, Access::Client, &h(&["Bearer sk-a", "Bearer sk-a"])),
            Err(GatewayError::InvalidRequest { .. })
        ));
        let open = auth(&[], &[]);
        assert!(run(&open, Access::Client, &HeaderMap::new()).is_ok());
        assert!(run(&open, Access::Client, &h(&["Bearer EMPTY"])).is_ok());
        assert!(matches!(
            run(&open, Access::Authenticated, &HeaderMap::new()),
            Err(GatewayError::Unauthorized)
        ));
        assert!(matches!(
            run(&open, Access::Admin, &h(&["Bearer x"])),
            Err(GatewayError::Forbidden(_))
        ));
    }
}
