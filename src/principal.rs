//! Who is calling: the result of authentication, carried by the request's outcome record.

/// An authenticated caller. Static keys are named by their position in the configuration,
/// never by their secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// `static:N` for the N-th `API_KEYS` entry, `admin-static:N` for `ADMIN_API_KEYS`,
    /// `anonymous` when the gateway is open.
    pub key_id: String,
    pub admin: bool,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self {
            key_id: "anonymous".into(),
            admin: false,
        }
    }

    /// Short label for logs.
    pub fn label(&self) -> &str {
        &self.key_id
    }
}
