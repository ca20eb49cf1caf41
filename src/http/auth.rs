//! Static API keys (`API_KEYS`, `ADMIN_API_KEYS`) checked in constant time.

use http::HeaderMap;

use super::error::GatewayError;
use crate::config::Secret;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compare without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn matches_any(keys: &[Secret], token: &str) -> bool {
    keys.iter().fold(false, |hit, k| {
        hit | ct_eq(k.expose().as_bytes(), token.as_bytes())
    })
}

/// Inference and read-only routes: open when no key is configured.
pub fn check_api_key(
    keys: &[Secret],
    admin_keys: &[Secret],
    headers: &HeaderMap,
) -> Result<(), GatewayError> {
    if keys.is_empty() {
        return Ok(());
    }
    match bearer(headers) {
        Some(t) if matches_any(keys, t) || matches_any(admin_keys, t) => Ok(()),
        _ => Err(GatewayError::Unauthorized),
    }
}

/// Admin routes: only `ADMIN_API_KEYS`; with none configured the admin API is off.
pub fn check_admin_key(admin_keys: &[Secret], headers: &HeaderMap) -> Result<(), GatewayError> {
    if admin_keys.is_empty() {
        return Err(GatewayError::Forbidden(
            "The admin API is disabled: set ADMIN_API_KEYS to enable it.",
        ));
    }
    match bearer(headers) {
        Some(t) if matches_any(admin_keys, t) => Ok(()),
        _ => Err(GatewayError::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(
            http::header::AUTHORIZATION,
            v.parse().expect("valid header"),
        );
        m
    }

    #[test]
    fn keys() {
        let keys = vec![Secret::new("sk-a")];
        assert!(check_api_key(&[], &[], &HeaderMap::new()).is_ok());
        assert!(check_api_key(&keys, &[], &h("Bearer sk-a")).is_ok());
        assert!(check_api_key(&keys, &[], &h("bearer sk-a")).is_ok());
        assert!(check_api_key(&keys, &[], &h("Bearer sk-b")).is_err());
        assert!(check_api_key(&keys, &[], &h("Basic sk-a")).is_err());
        assert!(check_api_key(&keys, &[], &HeaderMap::new()).is_err());
        assert!(check_admin_key(&[], &h("Bearer sk-a")).is_err());
        assert!(check_admin_key(&keys, &h("Bearer sk-a")).is_ok());
    }
}
