//! CORS per `ENABLE_CORS` / `CORS_ORIGIN`: an exact allowlist (echoed with `Vary: Origin`) or
//! `*`. An unlisted origin gets no CORS headers at all; `Origin` is never reflected blindly.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::{empty, Body};
use crate::config::{Config, CorsOrigins};

/// The `Access-Control-Allow-Origin` value for this request, if any.
pub fn allowed_origin(cfg: &Config, headers: &HeaderMap) -> Option<HeaderValue> {
    if !cfg.enable_cors {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?;
    match &cfg.cors_origins {
        CorsOrigins::Any => Some(HeaderValue::from_static("*")),
        CorsOrigins::List(list) => {
            let o = origin.to_str().ok()?.to_ascii_lowercase();
            list.contains(&o).then(|| origin.clone())
        }
    }
}

pub fn decorate(cfg: &Config, allow: Option<HeaderValue>, resp: &mut Response<Body>) {
    let h = resp.headers_mut();
    // The answer depends on Origin whenever a list is in force, also for origins not on
    // it, so caches never serve one origin's answer to another.
    if cfg.enable_cors && matches!(cfg.cors_origins, CorsOrigins::List(_)) {
        let has_origin = h.get_all(header::VARY).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("origin"))
            })
        });
        if !has_origin {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
    let Some(allow) = allow else { return };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("x-request-id, retry-after, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"),
    );
}

pub fn preflight(cfg: &Config, allow: Option<HeaderValue>) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    if allow.is_some() {
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, PATCH, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-request-id, openai-organization, openai-project, x-stainless-os, x-stainless-lang, x-stainless-package-version, x-stainless-runtime, x-stainless-runtime-version, x-stainless-arch, x-stainless-retry-count, x-stainless-timeout"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    decorate(cfg, allow, &mut resp);
    resp
}
