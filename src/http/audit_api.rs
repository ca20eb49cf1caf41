//! The audit log's admin API (ADMIN and SUPER_ADMIN): `GET /admin/audit/requests`,
//! `GET /admin/audit/activity` (filters, cursor paging) and `GET /admin/usage` (daily
//! totals), plus the activity records of the admin routes themselves.

use std::net::IpAddr;

use http::StatusCode;

use crate::audit::query::QueryError;
use crate::audit::record::ActivityEntry;
use crate::audit::Audit;
use crate::body::Body;
use crate::error::{json_response, GatewayError};
use crate::principal::Principal;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    Requests,
    Activity,
    Usage,
}

impl From<QueryError> for GatewayError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Invalid { param, reason } => GatewayError::InvalidRequest {
                message: reason,
                param: Some(param),
            },
            QueryError::Unavailable => {
                GatewayError::Unavailable("The audit log cannot be read right now; retry shortly.")
            }
        }
    }
}

pub async fn answer(
    audit: Option<&Audit>,
    q: Query,
    query: Option<&str>,
) -> Result<http::Response<Body>, GatewayError> {
    let Some(audit) = audit else {
        return Err(GatewayError::Conflict(
            "The audit log is off on this gateway (AUDIT_ENABLED=false).".into(),
        ));
    };
    let v = match q {
        Query::Requests => audit.requests(query).await?,
        Query::Activity => audit.activity_log(query).await?,
        Query::Usage => audit.usage(query).await?,
    };
    Ok(json_response(StatusCode::OK, &v))
}

/// The server an admin action created, for its activity record (the route's path names
/// none): set by the handler as a response extension.
#[derive(Clone, Debug)]
pub struct ActionTarget(pub String);

/// Records an admin route's action with its caller, target and result.
pub fn record_admin_action(
    audit: Option<&Audit>,
    action: &str,
    who: Option<&Principal>,
    client: IpAddr,
    request_id: String,
    target: &str,
    status: StatusCode,
) {
    let Some(audit) = audit else { return };
    let outcome = if status.is_success() {
        "success"
    } else if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
        "denied"
    } else {
        "failure"
    };
    let mut e = ActivityEntry::new(action, outcome)
        .by(who)
        .detail(serde_json::json!({ "status": status.as_u16() }));
    if !target.is_empty() {
        e = e.target(format!("backend:{target}"));
    }
    e.client_addr = Some(client.to_string());
    e.request_id = Some(request_id);
    audit.activity(e);
}
