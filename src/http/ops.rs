//! Liveness (`/healthz`) and readiness (`/readyz`). Neither names a backend address.

use std::sync::atomic::Ordering;

use http::{Response, StatusCode};
use serde_json::json;

use super::body::Body;
use super::error::json_response;
use crate::app::AppState;

fn summary(state: &AppState) -> serde_json::Value {
    let table = state.registry.table.load();
    let healthy: Vec<&str> = table
        .backends
        .values()
        .filter(|e| e.routable())
        .map(|e| e.handle.id.as_str())
        .collect();
    let unhealthy: Vec<&str> = table
        .backends
        .values()
        .filter(|e| !e.routable())
        .map(|e| e.handle.id.as_str())
        .collect();
    json!({
        "servers": {"total": table.backends.len(), "healthy": healthy.len(), "healthy_ids": healthy, "unhealthy_ids": unhealthy},
        "models": table.by_model.len(),
        "uptime_s": state.started.elapsed().as_secs(),
    })
}

pub fn healthz(state: &AppState) -> Response<Body> {
    let mut v = summary(state);
    v["status"] = json!("ok");
    json_response(StatusCode::OK, &v)
}

pub fn readyz(state: &AppState) -> Response<Body> {
    let mut v = summary(state);
    let reason = if state.escalated.load(Ordering::Acquire) {
        Some("actor tree stopped")
    } else if state.draining.load(Ordering::Acquire) {
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
