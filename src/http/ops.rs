//! Liveness (`/healthz`) and readiness (`/readyz`). Unauthenticated callers get the status
//! and counts only; the per-server detail needs an admin credential. Neither names a
//! backend address.

use http::{HeaderMap, Response, StatusCode};
use serde_json::json;
use sha2::Digest;

use super::auth::Access;
use crate::body::Body;
use crate::error::json_response;
use crate::state::AppState;

fn summary(state: &AppState, detail: bool) -> serde_json::Value {
    let table = state.proxy.registry.table.load();
    let healthy = table.backends.values().filter(|e| e.routable()).count();
    let mut v = json!({
        "servers": {"total": table.backends.len(), "healthy": healthy},
        "models": table.by_model.len(),
        "uptime_s": state.lifecycle.started.elapsed().as_secs(),
    });
    if detail {
        let ids = |routable: bool| -> Vec<&str> {
            table
                .backends
                .values()
                .filter(|e| e.routable() == routable)
                .map(|e| e.handle.id.as_str())
                .collect()
        };
        v["servers"]["healthy_ids"] = json!(ids(true));
        v["servers"]["unhealthy_ids"] = json!(ids(false));
    }
    v
}

pub async fn healthz(state: &AppState, headers: &HeaderMap) -> Response<Body> {
    let admin = headers.contains_key(http::header::AUTHORIZATION)
        && state
            .auth
            .load()
            .authorize(state.identity.as_ref(), Access::Admin, headers)
            .await
            .is_ok();
    let mut v = summary(state, admin);
    v["status"] = json!("ok");
    json_response(StatusCode::OK, &v)
}

pub fn readyz(state: &AppState) -> Response<Body> {
    let mut v = summary(state, false);
    let reason = if state.lifecycle.is_escalated() {
        Some("actor tree stopped")
    } else if state.lifecycle.is_draining() {
        Some("draining")
    } else if v["servers"]["healthy"] == json!(0) {
        Some("no healthy server")
    } else {
        None
    };
    match reason {
        Some(r) => {
            v["status"] = json!("not_ready");
            v["reason"] = json!(r);
            let mut resp = json_response(StatusCode::SERVICE_UNAVAILABLE, &v);
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(5));
            resp
        }
        None => {
            v["status"] = json!("ready");
            json_response(StatusCode::OK, &v)
        }
    }
}

/// `GET /metrics`: open, or behind `METRICS_KEY`.
pub fn metrics(
    state: &AppState,
    cfg: &crate::config::Config,
    headers: &HeaderMap,
) -> Result<Response<Body>, crate::error::GatewayError> {
    if let Some(key) = &cfg.metrics_key {
        let expected = format!("Bearer {}", key.expose());
        let given = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let same = sha2::Sha256::digest(given) == sha2::Sha256::digest(expected.as_bytes());
        if !same {
            return Err(crate::error::GatewayError::Unauthorized);
        }
    }
    Ok(metrics_response(state))
}

pub fn metrics_response(state: &AppState) -> Response<Body> {
    let mut resp = Response::new(crate::body::full(state.metrics.encode()));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    resp
}
