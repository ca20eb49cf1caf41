//! `/auth/*`: login, sessions, profile, users and API keys. The identity service does the
//! work; this module reads bodies and queries and maps its answers to HTTP.

use std::net::IpAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::{json_response, GatewayError};
use crate::identity::{Identity, IdentityError, Reply};
use crate::principal::Principal;

/// Largest body of an account request.
const MAX_BODY: usize = 64 * 1024;

/// Which `/auth/*` endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Refresh,
    Logout,
    Profile,
    ChangePassword,
    Register,
    Users,
    User,
    Keys,
    Key,
}

async fn read(req: Request<Incoming>) -> Result<Bytes, GatewayError> {
    http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| GatewayError::BodyTooLarge(MAX_BODY))
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// One `/auth/*` call. `caller` is `None` only for login and refresh.
pub async fn handle(
    identity: Option<&Identity>,
    endpoint: Endpoint,
    caller: &Principal,
    ip: IpAddr,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let Some(idy) = identity else {
        return Err(GatewayError::NotEnabled(
            "User accounts and API keys need DATABASE_URL (and JWT_SECRET).",
        ));
    };
    let method = req.method().clone();
    let q = query(&req);
    use Endpoint as E;
    let reply: Result<Reply, IdentityError> = match (endpoint, method) {
        (E::Login, _) => idy.login(ip, read(req).await?).await,
        (E::Refresh, _) => idy.refresh(ip, read(req).await?).await,
        (E::Logout, _) => idy.logout(caller, ip, read(req).await?).await,
        (E::Profile, Method::PATCH) => idy.update_profile(caller, ip, read(req).await?).await,
        (E::Profile, _) => idy.get_profile(caller, ip).await,
        (E::ChangePassword, _) => idy.change_password(caller, ip, read(req).await?).await,
        (E::Register, _) => idy.register(caller, ip, read(req).await?).await,
        (E::Users, _) => idy.list_users(caller, ip, &q).await,
        (E::User, Method::PATCH) => idy.update_user(caller, ip, id, read(req).await?).await,
        (E::User, Method::DELETE) => idy.delete_user(caller, ip, id).await,
        (E::User, _) => idy.get_user(caller, ip, id).await,
        (E::Keys, Method::POST) => idy.create_key(caller, ip, &q, read(req).await?).await,
        (E::Keys, _) => idy.list_keys(caller, ip, &q).await,
        (E::Key, Method::PATCH) => idy.update_key(caller, ip, id, read(req).await?).await,
        (E::Key, Method::DELETE) => idy.delete_key(caller, ip, id).await,
        (E::Key, _) => idy.get_key(caller, ip, id).await,
    };
    let r = reply.map_err(GatewayError::from)?;
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    let mut resp = json_response(status, &r.body);
    // Tokens and new keys are secrets: no cache may keep them.
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}
