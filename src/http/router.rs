//! Method + path dispatch. Every response gets the request id and, when allowed, CORS headers.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

use super::auth::{check_admin_key, check_api_key};
use super::body::Body;
use super::error::GatewayError;
use super::{admin, cors, models, ops, request_id};
use crate::app::AppState;
use crate::proxy::{self, Endpoint};

pub async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let rid = request_id::from_client(req.headers().get("x-request-id"));
    let span = tracing::info_span!(
        "request",
        request_id = %rid,
        method = %req.method(),
        path = %req.uri().path(),
        peer = %peer,
        model = tracing::field::Empty,
        backend = tracing::field::Empty,
        stream = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    let allow = cors::allowed_origin(&state.cfg, req.headers());
    let mut resp = async {
        if req.method() == Method::OPTIONS {
            return cors::preflight(&state.cfg, allow.clone());
        }
        route(&state, req, &rid)
            .await
            .unwrap_or_else(GatewayError::into_response)
    }
    .instrument(span.clone())
    .await;
    span.record("status", resp.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    cors::decorate(&state.cfg, allow, &mut resp);
    resp
}

async fn route(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    rid: &str,
) -> Result<Response<Body>, GatewayError> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let user = || {
        check_api_key(
            &state.cfg.api_keys,
            &state.cfg.admin_api_keys,
            req.headers(),
        )
    };
    let admin = || check_admin_key(&state.cfg.admin_api_keys, req.headers());
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => Ok(ops::healthz(state)),
        (&Method::GET, "/readyz") => Ok(ops::readyz(state)),
        (&Method::GET, "/v1/models") => user().map(|_| models::list(state)),
        (&Method::GET, "/v1/models/discovery/stats") => {
            user().map(|_| admin::discovery_stats(state))
        }
        (&Method::POST, "/v1/models/discovery/refresh") => {
            admin()?;
            Ok(admin::discovery_refresh(state).await)
        }
        (&Method::GET, "/admin/backends") => admin().map(|_| admin::backends(state)),
        (&Method::POST, p) if p.starts_with("/admin/backends/") => {
            admin()?;
            let rest = &p["/admin/backends/".len()..];
            match rest.rsplit_once('/') {
                Some((id, "drain")) if !id.is_empty() => {
                    Ok(admin::set_drain(state, id, true).await)
                }
                Some((id, "undrain")) if !id.is_empty() => {
                    Ok(admin::set_drain(state, id, false).await)
                }
                _ => Err(GatewayError::UnknownRoute),
            }
        }
        (&Method::GET, p) if p.starts_with("/v1/models/") => {
            user()?;
            Ok(models::one(state, &p["/v1/models/".len()..]))
        }
        (&Method::POST, p) => match Endpoint::from_path(p) {
            Some(ep) => {
                user()?;
                proxy::forward(state.clone(), ep, req, rid.to_owned()).await
            }
            None => Err(GatewayError::UnknownRoute),
        },
        (_, p)
            if Endpoint::from_path(p).is_some()
                || matches!(p, "/healthz" | "/readyz" | "/v1/models") =>
        {
            Err(GatewayError::MethodNotAllowed)
        }
        _ => Err(GatewayError::UnknownRoute),
    }
}
