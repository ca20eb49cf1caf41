//! Who is calling: the result of authentication, carried by the request's outcome record.
//!
//! One type for every kind of credential (static keys from the configuration, JWT sessions,
//! API keys from the database), so the router, the rate limiter and the outcome record
//! never care which one it was. A principal never holds a secret.

use std::fmt;

use uuid::Uuid;

/// Account roles, in increasing order of rights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    User,
    Admin,
    SuperAdmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "USER",
            Role::Admin => "ADMIN",
            Role::SuperAdmin => "SUPER_ADMIN",
        }
    }

    /// Parses the stored and the API spelling (`USER`, `ADMIN`, `SUPER_ADMIN`).
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "USER" => Some(Role::User),
            "ADMIN" => Some(Role::Admin),
            "SUPER_ADMIN" => Some(Role::SuperAdmin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which kind of credential authenticated the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// No credential: the gateway is open (no `API_KEYS`).
    Anonymous,
    /// An `API_KEYS` entry.
    StaticKey,
    /// An `ADMIN_API_KEYS` entry: the operator's credential, SUPER_ADMIN level.
    AdminStaticKey,
    /// A JWT access token from `/auth/login`.
    Session,
    /// An API key stored in the database (`sk-llmmux-...`).
    ApiKey,
}

/// Per-credential limits; `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub kind: CredentialKind,
    /// The account behind a session or a database key.
    pub user_id: Option<Uuid>,
    /// `static:N` for the N-th `API_KEYS` entry, `admin-static:N` for `ADMIN_API_KEYS`,
    /// the key's UUID for a database key, `session:<uuid>` for a JWT session,
    /// `anonymous` when the gateway is open. Never the secret.
    pub key_id: String,
    /// Effective role. Database keys act as USER whatever their owner's role: they are
    /// inference credentials and cannot manage accounts.
    pub role: Role,
    /// Models the credential may use, as globs (`*` any run, `?` one character,
    /// case-sensitive). `None`: every model; an empty list: none.
    pub models: Option<Vec<String>>,
    pub limits: Limits,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self {
            kind: CredentialKind::Anonymous,
            user_id: None,
            key_id: "anonymous".into(),
            role: Role::User,
            models: None,
            limits: Limits::default(),
        }
    }

    /// The N-th `API_KEYS` entry: every model, no limits.
    pub fn static_key(index: usize) -> Self {
        Self {
            kind: CredentialKind::StaticKey,
            key_id: format!("static:{index}"),
            ..Self::anonymous()
        }
    }

    /// The N-th `ADMIN_API_KEYS` entry: the operator, SUPER_ADMIN level.
    pub fn admin_static_key(index: usize) -> Self {
        Self {
            kind: CredentialKind::AdminStaticKey,
            key_id: format!("admin-static:{index}"),
            role: Role::SuperAdmin,
            ..Self::anonymous()
        }
    }

    /// Short label for logs.
    pub fn label(&self) -> &str {
        &self.key_id
    }

    /// May this credential call admin routes (`/admin/*`, `/auth/users*`)?
    pub fn is_admin(&self) -> bool {
        match self.kind {
            CredentialKind::AdminStaticKey => true,
            CredentialKind::Session => self.role >= Role::Admin,
            _ => false,
        }
    }

    /// May this credential use `model`?
    pub fn may_use(&self, model: &str) -> bool {
        match &self.models {
            None => true,
            Some(globs) => globs.iter().any(|g| glob_match(g, model)),
        }
    }

    /// Whose counters a request is charged to: the key for keys, the account for sessions
    /// (so opening more sessions gains nothing).
    pub fn limit_subject(&self) -> std::borrow::Cow<'_, str> {
        match (self.kind, self.user_id) {
            (CredentialKind::Session, Some(u)) => format!("user:{u}").into(),
            _ => self.key_id.as_str().into(),
        }
    }
}

/// Case-sensitive, unlike the tool-call family rules: model ids are case-sensitive on vLLM,
/// and a permission must not match more than it says.
pub fn glob_match(glob: &str, text: &str) -> bool {
    crate::glob::matches(glob, text, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_case_sensitive_and_anchored() {
        assert!(glob_match("qwen*", "qwen3-8b"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("qwen*", "Qwen3"));
        assert!(!glob_match("qwen", "qwen3"));
        assert!(glob_match(
            "meta-llama/*-Instruct",
            "meta-llama/Llama-3.1-8B-Instruct"
        ));
    }

    #[test]
    fn admin_rights_by_kind() {
        assert!(Principal::admin_static_key(0).is_admin());
        assert!(!Principal::static_key(0).is_admin());
        let mut p = Principal::anonymous();
        p.kind = CredentialKind::ApiKey;
        p.role = Role::SuperAdmin;
        assert!(!p.is_admin(), "database keys never administer");
        p.kind = CredentialKind::Session;
        assert!(p.is_admin());
        p.models = Some(vec!["a*".into()]);
        assert!(p.may_use("ab") && !p.may_use("b"));
        p.models = Some(Vec::new());
        assert!(!p.may_use("ab"), "an empty list allows nothing");
    }
}
