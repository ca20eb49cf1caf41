//! Method + path dispatch over a `matchit` route table. Every route declares its methods
//! and who may call it; `HEAD` works wherever `GET` does, a known path with another method
//! gets 405 with `Allow`. Every response gets the request id, CORS headers when allowed, and
//! carries the request's outcome record until its body is done.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use http::{header, HeaderValue, Method, Request, Response, Version};
use hyper::body::Incoming;
use tracing::Instrument;

use super::accounts::Endpoint as Account;
use super::audit_api::{self, Query as AuditQuery};
use super::auth::Access;
use super::conn::RequestGuard;
use super::{admin, cors, models, ops, request_id};
use crate::body::{Body, OutcomeBody};
use crate::error::GatewayError;
use crate::outcome::Outcome;
use crate::proxy::{self, Endpoint};
use crate::state::AppState;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Healthz,
    Readyz,
    Metrics,
    Models,
    Model,
    DiscoveryStats,
    DiscoveryRefresh,
    Proxy(Endpoint),
    Backends,
    Backend,
    BackendDrain,
    BackendUndrain,
    Reload,
    Audit(AuditQuery),
    Account(Account),
    /// Fault injection (chaos suite only): crash one actor of a kind.
    #[cfg(feature = "fault-injection")]
    Crash,
}

struct Def {
    pattern: &'static str,
    route: Route,
    methods: &'static [Method],
    access: Access,
}

const GET: &[Method] = &[Method::GET];
const POST: &[Method] = &[Method::POST];

fn defs() -> Vec<(&'static str, Def)> {
    let d = |route, methods, access| Def {
        pattern: "",
        route,
        methods,
        access,
    };
    let mut v = vec![
        ("/healthz", d(Route::Healthz, GET, Access::Public)),
        ("/readyz", d(Route::Readyz, GET, Access::Public)),
        ("/metrics", d(Route::Metrics, GET, Access::Public)),
        ("/v1/models", d(Route::Models, GET, Access::Client)),
        ("/v1/models/{*id}", d(Route::Model, GET, Access::Client)),
        (
            "/v1/models/discovery/stats",
            d(Route::DiscoveryStats, GET, Access::Client),
        ),
        (
            "/v1/models/discovery/refresh",
            d(Route::DiscoveryRefresh, POST, Access::Client),
        ),
        (
            "/admin/backends",
            d(Route::Backends, &[Method::GET, Method::POST], Access::Admin),
        ),
        ("/admin/reload", d(Route::Reload, POST, Access::Admin)),
        (
            "/admin/audit/requests",
            d(Route::Audit(AuditQuery::Requests), GET, Access::Admin),
        ),
        (
            "/admin/audit/activity",
            d(Route::Audit(AuditQuery::Activity), GET, Access::Admin),
        ),
        (
            "/admin/usage",
            d(Route::Audit(AuditQuery::Usage), GET, Access::Admin),
        ),
        (
            "/auth/login",
            d(Route::Account(Account::Login), POST, Access::Public),
        ),
        (
            "/auth/refresh",
            d(Route::Account(Account::Refresh), POST, Access::Public),
        ),
        (
            "/auth/logout",
            d(Route::Account(Account::Logout), POST, Access::Authenticated),
        ),
        (
            "/auth/profile",
            d(
                Route::Account(Account::Profile),
                &[Method::GET, Method::PATCH],
                Access::Authenticated,
            ),
        ),
        (
            "/auth/change-password",
            d(
                Route::Account(Account::ChangePassword),
                POST,
                Access::Authenticated,
            ),
        ),
        (
            "/auth/register",
            d(Route::Account(Account::Register), POST, Access::Admin),
        ),
        (
            "/auth/users",
            d(Route::Account(Account::Users), GET, Access::Admin),
        ),
        (
            "/auth/users/{id}",
            d(
                Route::Account(Account::User),
                &[Method::GET, Method::PATCH, Method::DELETE],
                Access::Admin,
            ),
        ),
        (
            "/auth/api-keys",
            d(
                Route::Account(Account::Keys),
                &[Method::GET, Method::POST],
                Access::Authenticated,
            ),
        ),
        (
            "/auth/api-keys/{id}",
            d(
                Route::Account(Account::Key),
                &[Method::GET, Method::PATCH, Method::DELETE],
                Access::Authenticated,
            ),
        ),
        #[cfg(feature = "fault-injection")]
        (
            "/admin/faults/crash/{actor}",
            d(Route::Crash, POST, Access::Admin),
        ),
        (
            "/admin/backends/{id}",
            d(
                Route::Backend,
                &[Method::GET, Method::DELETE],
                Access::Admin,
            ),
        ),
        (
            "/admin/backends/{id}/drain",
            d(Route::BackendDrain, POST, Access::Admin),
        ),
        (
            "/admin/backends/{id}/undrain",
            d(Route::BackendUndrain, POST, Access::Admin),
        ),
    ];
    for ep in Endpoint::ALL {
        v.push((ep.path(), d(Route::Proxy(ep), POST, Access::Client)));
    }
    v
}

static ROUTES: LazyLock<matchit::Router<Def>> = LazyLock::new(|| {
    let mut r = matchit::Router::new();
    for (path, mut def) in defs() {
        def.pattern = path;
        // The table is static and tested; a conflict is a programming error caught by
        // `route_table_builds` before it could ship.
        let _ = r.insert(path, def);
    }
    r
});

fn allow_header(methods: &[Method]) -> HeaderValue {
    let mut names: Vec<&str> = methods.iter().map(Method::as_str).collect();
    if methods.contains(&Method::GET) {
        names.push("HEAD");
    }
    names.push("OPTIONS");
    HeaderValue::from_str(&names.join(", ")).unwrap_or(HeaderValue::from_static("OPTIONS"))
}

/// Connection facts the handler needs.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Marks the request in progress on its connection until the response body is done.
    pub request: RequestGuard,
}

pub async fn handle(
    state: Arc<AppState>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Response<Body> {
    let rid = request_id::from_client(req.headers().get("x-request-id"));
    let span = request_span(&rid, &req, conn.peer);
    let outcome = Outcome::begin(
        rid.clone(),
        req.method().clone(),
        req.uri().path(),
        conn.peer.ip(),
        state.sinks.clone(),
        span.clone(),
    );
    let cfg = state.config.load();
    let allow = cors::allowed_origin(&cfg, req.headers());
    let mut resp = async {
        match dispatch(&state, req, &outcome).await {
            Ok(r) => r,
            Err(e) => {
                outcome.fail(e.code());
                e.into_response()
            }
        }
    }
    .instrument(span.clone())
    .await;
    span.record("status", resp.status().as_u16());
    outcome.respond(resp.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    cors::decorate(&cfg, allow, &mut resp);
    resp.map(|b| OutcomeBody::wrap(b, outcome, conn.request))
}

/// The span every line logged while the request runs carries. At error level, so it exists
/// whatever LOG_LEVEL is. Only exported spans get the attributes tracing backends read;
/// the outcome fills them in at the end.
fn request_span(rid: &str, req: &Request<Incoming>, peer: SocketAddr) -> tracing::Span {
    if !crate::telemetry::exporting_spans() {
        return tracing::error_span!("request", request_id = %rid);
    }
    let empty = tracing::field::Empty;
    tracing::error_span!(
        "request",
        request_id = %rid,
        method = %req.method(),
        path = %req.uri().path(),
        peer = %peer,
        model = empty,
        backend = empty,
        stream = empty,
        status = empty,
        "otel.name" = empty,
        "otel.kind" = "server",
        "otel.status_code" = empty,
        "http.request.method" = %req.method(),
        "http.response.status_code" = empty,
        "gen_ai.operation.name" = empty,
        "gen_ai.system" = empty,
        "gen_ai.request.model" = empty,
        "gen_ai.usage.input_tokens" = empty,
        "gen_ai.usage.output_tokens" = empty,
        "error.type" = empty,
        "llmmux.backend" = empty,
        "llmmux.attempts" = empty,
    )
}

async fn dispatch(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    outcome: &Outcome,
) -> Result<Response<Body>, GatewayError> {
    if req.version() == Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        return Err(GatewayError::InvalidRequest {
            message: "HTTP/1.1 requests need a Host header.".into(),
            param: None,
        });
    }
    let cfg = state.config.load();
    let path = req.uri().path().to_owned();
    let Ok(found) = ROUTES.at(&path) else {
        return Err(GatewayError::UnknownRoute);
    };
    let def = found.value;
    outcome.update(|r| r.route = def.pattern);
    let method = req.method().clone();
    if method == Method::OPTIONS {
        let allow = cors::allowed_origin(&cfg, req.headers());
        let mut resp = cors::preflight(&cfg, allow);
        resp.headers_mut()
            .insert(header::ALLOW, allow_header(def.methods));
        return Ok(resp);
    }
    let as_get = method == Method::HEAD && def.methods.contains(&Method::GET);
    if !def.methods.contains(&method) && !as_get {
        let mut resp = GatewayError::MethodNotAllowed.into_response();
        resp.headers_mut()
            .insert(header::ALLOW, allow_header(def.methods));
        return Ok(resp);
    }
    let method = if as_get { Method::GET } else { method };
    let peer_ip = outcome.client_ip();
    let id = found.params.get("id").map(str::to_owned);
    let id = id.as_deref().unwrap_or("");
    let action = admin_action(def.route, &method);
    let auth = state.auth.load();
    // A refused credential (unknown, expired, revoked) fails in `identify` with no caller;
    // a known one without the right role fails in `permit` with its caller.
    let (caller, permitted) = match auth
        .identify(state.identity.as_ref(), def.access, req.headers())
        .await
    {
        Ok(caller) => (
            caller.clone(),
            auth.permit(state.identity.as_ref(), def.access, caller),
        ),
        Err(e) => (None, Err(e)),
    };
    let principal = match permitted {
        Ok(p) => Arc::new(p),
        Err(e) => {
            // A refused attempt at an admin change is part of the activity log too.
            if let Some(action) = action {
                audit_api::record_admin_action(
                    state.audit.as_ref(),
                    action,
                    caller.as_ref(),
                    peer_ip,
                    outcome.id(),
                    id,
                    e.status(),
                );
            }
            return Err(e);
        }
    };
    outcome.update(|r| r.principal = Some(principal.clone()));
    let result = route(
        state,
        &cfg,
        def,
        found.params.get("actor"),
        method,
        id,
        principal.clone(),
        req,
        outcome,
    )
    .await;
    if let Some(action) = action {
        let (status, created) = match &result {
            Ok(r) => (
                r.status(),
                r.extensions().get::<audit_api::ActionTarget>().cloned(),
            ),
            Err(e) => (e.status(), None),
        };
        let id = created.as_ref().map_or(id, |t| t.0.as_str());
        audit_api::record_admin_action(
            state.audit.as_ref(),
            action,
            Some(&principal),
            peer_ip,
            outcome.id(),
            id,
            status,
        );
    }
    result
}

/// The activity-log name of an admin route that changes something.
fn admin_action(route: Route, method: &Method) -> Option<&'static str> {
    match (route, method) {
        (Route::Backends, &Method::POST) => Some("backend_add"),
        (Route::Backend, &Method::DELETE) => Some("backend_remove"),
        (Route::BackendDrain, _) => Some("backend_drain"),
        (Route::BackendUndrain, _) => Some("backend_undrain"),
        (Route::Reload, _) => Some("config_reload"),
        (Route::DiscoveryRefresh, _) => Some("discovery_refresh"),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn route(
    state: &Arc<AppState>,
    cfg: &crate::config::ValidatedConfig,
    def: &Def,
    actor: Option<&str>,
    method: Method,
    id: &str,
    principal: Arc<crate::principal::Principal>,
    req: Request<Incoming>,
    outcome: &Outcome,
) -> Result<Response<Body>, GatewayError> {
    let peer_ip = outcome.client_ip();
    // Only the fault-injection build has a route with an actor parameter.
    #[cfg(not(feature = "fault-injection"))]
    let _ = actor;
    match (def.route, method) {
        (Route::Healthz, _) => Ok(ops::healthz(state, req.headers()).await),
        (Route::Readyz, _) => Ok(ops::readyz(state)),
        (Route::Metrics, _) if cfg.metrics_port.is_some() => Err(GatewayError::UnknownRoute),
        (Route::Metrics, _) => ops::metrics(state, cfg, req.headers()),
        (Route::Models, _) => Ok(models::list(state, &principal)),
        (Route::Model, _) => Ok(models::one(state, &principal, id)),
        (Route::DiscoveryStats, _) => Ok(admin::discovery_stats(state)),
        (Route::DiscoveryRefresh, _) => Ok(admin::discovery_refresh(state).await),
        (Route::Proxy(_), _) if state.audit.as_ref().is_some_and(|a| !a.accepting()) => {
            Err(GatewayError::Unavailable(
                "The audit log cannot record requests right now (its spool is full); retry shortly.",
            ))
        }
        (Route::Audit(q), _) => {
            audit_api::answer(state.audit.as_ref(), q, req.uri().query()).await
        }
        (Route::Proxy(ep), _) => {
            let gate = proxy::Gate {
                principal: &principal,
                identity: state.identity.as_ref(),
                metrics: &state.metrics,
            };
            proxy::forward(&state.proxy, cfg, &state.lifecycle, ep, req, outcome, gate).await
        }
        (Route::Account(a), _) => {
            super::accounts::handle(state.identity.as_ref(), a, &principal, peer_ip, id, req).await
        }
        (Route::Backends, Method::POST) => admin::add_backend(state, req).await,
        (Route::Backends, _) => Ok(admin::backends(state)),
        (Route::Backend, Method::DELETE) => admin::remove_backend(state, id).await,
        (Route::Backend, _) => admin::backend(state, id),
        (Route::BackendDrain, _) => Ok(admin::set_drain(state, id, true).await),
        (Route::BackendUndrain, _) => Ok(admin::set_drain(state, id, false).await),
        (Route::Reload, _) => admin::reload(state).await,
        #[cfg(feature = "fault-injection")]
        (Route::Crash, _) => admin::crash(state, actor.unwrap_or("")).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table_builds() {
        let mut r = matchit::Router::new();
        for (path, def) in defs() {
            r.insert(path, def)
                .unwrap_or_else(|e| panic!("{path}: {e}"));
        }
        let m = r
            .at("/v1/models/meta-llama/Llama-3.1-8B")
            .expect("model id with /");
        assert_eq!(m.value.route, Route::Model);
        assert_eq!(m.params.get("id"), Some("meta-llama/Llama-3.1-8B"));
        assert_eq!(
            r.at("/v1/models/discovery/stats")
                .expect("stats")
                .value
                .route,
            Route::DiscoveryStats
        );
        assert!(!r
            .at("/v1/models")
            .expect("models")
            .value
            .methods
            .contains(&Method::POST));
        assert!(r.at("/nope").is_err());
    }
}
