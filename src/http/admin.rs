//! Admin and discovery endpoints: `/admin/backends` (list, add, inspect, drain, undrain,
//! remove) and `/v1/models/discovery/{stats,refresh}`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use llmmux_actors::discovery::DiscoveryStats;
use llmmux_actors::registry::MembershipError;
use llmmux_actors::table::{BackendEntry, BackendId, HealthState};
use serde_json::{json, Value};

use crate::body::Body;
use crate::config::ServerOptions;
use crate::error::{json_response, GatewayError};
use crate::state::AppState;
use crate::upstream::spec_from_options;

/// Largest `POST /admin/backends` body.
const MAX_ADMIN_BODY: usize = 64 * 1024;

fn server_json(e: &BackendEntry, now: Instant) -> Value {
    let h = &e.handle;
    let ejection = match e.health() {
        HealthState::Ejected { until, ejections } => {
            json!({"ejections": ejections, "remaining_ms": until.saturating_duration_since(now).as_millis() as u64})
        }
        _ => Value::Null,
    };
    json!({
        "id": h.id.as_str(),
        "url": &*h.base_url,
        "health": e.health().label(),
        "reason": match e.health() { HealthState::Down { reason } => json!(reason), _ => Value::Null },
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
        "ejections_total": h.ejections_total.load(Ordering::Relaxed),
        "consecutive_failures": h.consecutive_failures.load(Ordering::Relaxed),
        "failure_rate": h.failure_rate(),
    })
}

pub fn backends(state: &AppState) -> Response<Body> {
    let table = state.proxy.registry.table.load();
    let now = Instant::now();
    let servers: Vec<_> = table
        .backends
        .values()
        .map(|e| server_json(e, now))
        .collect();
    let supervision: Vec<_> = state
        .lifecycle
        .supervision
        .lock()
        .map(|r| r.iter().map(|c| json!({"child": c.key, "running": c.running, "restarts": c.restarts, "last_restart_ms": c.last_restart_ms})).collect())
        .unwrap_or_default();
    let retries: Vec<_> = state
        .proxy
        .budgets
        .snapshot()
        .into_iter()
        .map(|(model, retries, denied)| json!({"model": model, "retries": retries, "denied": denied}))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "generation": table.generation,
            "servers": servers,
            "retries": retries,
            "tool_calls": state.proxy.toolcalls.snapshot(),
            "supervision": supervision,
        }),
    )
}

fn not_found(id: &str) -> GatewayError {
    GatewayError::NotFound {
        what: "server",
        id: id.to_owned(),
    }
}

pub fn backend(state: &AppState, id: &str) -> Result<Response<Body>, GatewayError> {
    let table = state.proxy.registry.table.load();
    let e = table
        .backends
        .get(&BackendId::new(id))
        .ok_or_else(|| not_found(id))?;
    Ok(json_response(
        StatusCode::OK,
        &server_json(e, Instant::now()),
    ))
}

/// `POST /admin/backends`: the same options as a YAML `servers:` entry.
pub async fn add_backend(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|_| GatewayError::BodyTooLarge(MAX_ADMIN_BODY))?
        .to_bytes();
    let opts: ServerOptions = serde_json::from_slice(&body)
        .map_err(|e| GatewayError::InvalidJson(e.to_string().chars().take(200).collect()))?;
    let cfg = state.config.load();
    let spec = spec_from_options(&opts, &cfg).map_err(|problems| GatewayError::InvalidRequest {
        message: problems.join("; "),
        param: None,
    })?;
    let id = spec.id.clone();
    match state.proxy.registry.add(spec).await {
        Ok(Ok(())) => {}
        Ok(Err(e @ (MembershipError::DuplicateId(_) | MembershipError::DuplicateUrl(_)))) => {
            return Err(GatewayError::Conflict(e.to_string()))
        }
        Err(_) => {
            return Err(GatewayError::Unavailable(
                "The registry is restarting; retry shortly.",
            ))
        }
    }
    let table = state.proxy.registry.table.load();
    let entry = table
        .backends
        .get(&id)
        .map(|e| server_json(e, Instant::now()))
        .unwrap_or_else(|| json!({"id": id.as_str()}));
    let mut resp = json_response(StatusCode::CREATED, &entry);
    resp.extensions_mut()
        .insert(super::audit_api::ActionTarget(id.as_str().to_owned()));
    Ok(resp)
}

/// `DELETE /admin/backends/{id}`: drain (requests in flight finish, up to
/// `SHUTDOWN_GRACE`), then remove the server and stop its health checks.
pub async fn remove_backend(state: &AppState, id: &str) -> Result<Response<Body>, GatewayError> {
    let grace = state.config.load().shutdown_grace;
    match state
        .proxy
        .registry
        .drain_and_remove(BackendId::new(id), grace)
        .await
    {
        Ok(true) => Ok(json_response(
            StatusCode::OK,
            &json!({"id": id, "deleted": true}),
        )),
        Ok(false) => Err(not_found(id)),
        Err(_) => Err(GatewayError::Unavailable(
            "The registry is restarting; retry shortly.",
        )),
    }
}

pub async fn set_drain(state: &AppState, id: &str, drained: bool) -> Response<Body> {
    match state
        .proxy
        .registry
        .set_drain(BackendId::new(id), drained)
        .await
    {
        Ok(true) => json_response(StatusCode::OK, &json!({"id": id, "drained": drained})),
        Ok(false) => not_found(id).into_response(),
        Err(_) => {
            GatewayError::Unavailable("The registry is restarting; retry shortly.").into_response()
        }
    }
}

fn stats_json(state: &AppState, s: &DiscoveryStats) -> Value {
    let enabled = state
        .proxy
        .registry
        .table
        .load()
        .backends
        .values()
        .any(|e| e.discovered);
    json!({
        "enabled": enabled,
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

pub fn discovery_stats(state: &AppState) -> Response<Body> {
    json_response(StatusCode::OK, &stats_json(state, &state.discovery.stats()))
}

pub async fn discovery_refresh(state: &AppState) -> Response<Body> {
    let timeout = state.config.load().health_probe_timeout + Duration::from_secs(5);
    match state.discovery.refresh(timeout).await {
        Some(s) => json_response(StatusCode::OK, &stats_json(state, &s)),
        None => GatewayError::Unavailable(
            "Discovery is restarting or did not finish in time; retry shortly.",
        )
        .into_response(),
    }
}

/// `POST /admin/reload`: 200 with what changed, or 400 with every problem (the running
/// configuration stays).
pub async fn reload(state: &AppState) -> Result<Response<Body>, GatewayError> {
    match crate::reload::reload(state).await {
        Ok(report) => Ok(json_response(StatusCode::OK, &report.to_json())),
        Err(crate::reload::ReloadError::Invalid(errors)) => Err(GatewayError::InvalidRequest {
            message: format!(
                "The new configuration was refused; the old one keeps serving. {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            param: None,
        }),
        Err(crate::reload::ReloadError::NoSource) => Err(GatewayError::Conflict(
            "This gateway was started without a configuration source to reload.".into(),
        )),
        Err(crate::reload::ReloadError::Registry) => Err(GatewayError::Unavailable(
            "The registry is restarting; retry shortly.",
        )),
    }
}

/// `POST /admin/faults/crash/{actor}` (builds with the `fault-injection` feature only): crash
/// one live actor of the kind (`registry`, `discovery`, `health`, `stream`).
#[cfg(feature = "fault-injection")]
pub async fn crash(state: &AppState, actor: &str) -> Result<Response<Body>, GatewayError> {
    let kind: crate::faults::ActorKind = actor.parse().map_err(|_| GatewayError::NotFound {
        what: "actor kind",
        id: actor.to_owned(),
    })?;
    let crashed = state.faults.crash(kind).await;
    Ok(json_response(
        StatusCode::OK,
        &json!({"actor": actor, "crashed": crashed}),
    ))
}
