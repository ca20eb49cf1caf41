//! Admin and discovery endpoints: `/admin/backends` (+ drain/undrain) and
//! `/v1/models/discovery/{stats,refresh}`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use llmmux_actors::discovery::DiscoveryStats;
use llmmux_actors::table::{BackendId, HealthState};
use serde_json::json;

use super::body::Body;
use super::error::{json_response, GatewayError};
use crate::app::AppState;

pub fn backends(state: &AppState) -> Response<Body> {
    let table = state.registry.table.load();
    let now = Instant::now();
    let servers: Vec<_> = table
        .backends
        .values()
        .map(|e| {
            let h = &e.handle;
            let ejection = match &e.health {
                HealthState::Ejected { until, ejections } => json!({"ejections": ejections, "remaining_ms": until.saturating_duration_since(now).as_millis() as u64}),
                _ => serde_json::Value::Null,
            };
            json!({
                "id": h.id.as_str(),
                "url": &*h.base_url,
                "health": e.health.label(),
                "reason": match &e.health { HealthState::Down { reason } => json!(reason), _ => serde_json::Value::Null },
                "ejection": ejection,
                "drained": e.drained,
                "routable": e.routable(),
                "models": e.models.iter().map(|m| &*m.id).collect::<Vec<_>>(),
                "model_source": format!("{:?}", e.model_source).to_lowercase(),
                "discovered": e.discovered,
                "in_flight": h.in_flight.load(Ordering::Relaxed),
                "max_in_flight": h.max_in_flight,
                "requests_total": h.requests_total.load(Ordering::Relaxed),
                "failures_total": h.failures_total.load(Ordering::Relaxed),
                "consecutive_failures": h.consecutive_failures.load(Ordering::Relaxed),
            })
        })
        .collect();
    let supervision: Vec<_> = state
        .supervision
        .lock()
        .map(|r| r.iter().map(|c| json!({"child": c.key, "running": c.running, "restarts": c.restarts, "last_restart_ms": c.last_restart_ms})).collect())
        .unwrap_or_default();
    json_response(
        StatusCode::OK,
        &json!({
            "generation": table.generation,
            "servers": servers,
            "retries": {"active": state.retry.active_retries(), "total": state.retry.total_retries(), "denied": state.retry.denied()},
            "tool_calls": state.toolcalls.snapshot(),
            "supervision": supervision,
        }),
    )
}

pub async fn set_drain(state: &AppState, id: &str, drained: bool) -> Response<Body> {
    match state.registry.set_drain(BackendId::new(id), drained).await {
        Ok(true) => json_response(StatusCode::OK, &json!({"id": id, "drained": drained})),
        Ok(false) => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": {"message": format!("No server with id `{id}`."), "type": "invalid_request_error", "param": "id", "code": "not_found"}}),
        ),
        Err(_) => {
            GatewayError::Unavailable("The registry is restarting; retry shortly.").into_response()
        }
    }
}

fn stats_json(s: &DiscoveryStats) -> serde_json::Value {
    json!({
        "enabled": true,
        "interval_ms": s.interval_ms,
        "rounds": s.rounds,
        "last_round_unix": s.last_round_unix,
        "last_round_ms": s.last_round_ms,
        "servers": s.servers.iter().map(|v| json!({
            "id": v.id, "polls": v.polls, "failures": v.failures,
            "consecutive_failures": v.consecutive_failures, "last_success_unix": v.last_success_unix,
            "last_error": v.last_error, "models": v.models,
        })).collect::<Vec<_>>(),
    })
}

fn disabled() -> Response<Body> {
    json_response(StatusCode::OK, &json!({"enabled": false, "servers": []}))
}

pub fn discovery_stats(state: &AppState) -> Response<Body> {
    match &state.discovery {
        Some(d) => json_response(StatusCode::OK, &stats_json(&d.stats())),
        None => disabled(),
    }
}

pub async fn discovery_refresh(state: &AppState) -> Response<Body> {
    let Some(d) = &state.discovery else {
        return disabled();
    };
    let timeout = state.cfg.health_probe_timeout + Duration::from_secs(5);
    match d.refresh(timeout).await {
        Some(s) => json_response(StatusCode::OK, &stats_json(&s)),
        None => GatewayError::Unavailable(
            "Discovery is restarting or did not finish in time; retry shortly.",
        )
        .into_response(),
    }
}
