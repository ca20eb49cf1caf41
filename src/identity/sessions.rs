//! Session endpoints: login, refresh (rotating), logout, the caller's profile and
//! password.
//!
//! A session is a refresh-token family. Each refresh uses its token up and issues the
//! next one; presenting a used token means it was copied, so the whole family is revoked
//! (and its access tokens refused by every replica until they expire).

use std::net::IpAddr;

use bytes::Bytes;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::input::{self, nullable};
use super::store::{self, UserChange, UserRow};
use super::{secrets, session_user, user_json, Identity, IdentityError, Reply};
use crate::principal::Principal;

/// Longest username or password read at login; longer input is refused before hashing.
const MAX_LOGIN_FIELD: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogoutBody {
    /// Every session of the account, not only this one.
    #[serde(default)]
    all: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileBody {
    #[serde(default, deserialize_with = "nullable")]
    email: Option<Option<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    current_password: String,
    new_password: String,
}

impl Identity {
    /// A new session for `user`: the token pair as login returns it.
    async fn new_session(&self, user: &UserRow) -> Result<serde_json::Value, IdentityError> {
        let family = Uuid::new_v4();
        let refresh = secrets::new_refresh_token()?;
        let expires = Utc::now()
            + chrono::Duration::from_std(self.inner.settings.refresh_ttl)
                .map_err(|_| IdentityError::Internal)?;
        let c = self.client().await?;
        store::insert_refresh(
            &c,
            &self.inner.pepper.digest(&refresh),
            family,
            user.id,
            expires,
        )
        .await?;
        self.token_pair(user, family, refresh)
    }

    fn token_pair(
        &self,
        user: &UserRow,
        family: Uuid,
        refresh: String,
    ) -> Result<serde_json::Value, IdentityError> {
        let access = self.inner.jwt.issue(user.id, family, user.token_version)?;
        Ok(json!({
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self.inner.jwt.ttl().as_secs(),
            "refresh_token": refresh,
        }))
    }

    /// `POST /auth/login {username, password}`. Wrong name and wrong password get the same
    /// answer in about the same time (unknown names are checked against a dummy hash).
    pub async fn login(&self, ip: IpAddr, body: Bytes) -> Result<Reply, IdentityError> {
        let b: LoginBody = input::parse(&body)?;
        if b.username.len() > MAX_LOGIN_FIELD || b.password.len() > MAX_LOGIN_FIELD {
            return Err(IdentityError::BadRequest(
                "username or password too long.".into(),
            ));
        }
        if let Some(wait) = self.inner.throttle.check(&b.username, ip) {
            self.event(
                "login",
                None,
                Some(ip),
                None,
                "denied",
                json!({"reason": "throttled"}),
            );
            return Err(IdentityError::Throttled { retry_after: wait });
        }
        // A name no account can have (a NUL, which PostgreSQL text cannot even hold, or
        // any other character outside the username rules) is an unknown user: same answer,
        // same cost, no query.
        let found = if input::username_problem(&b.username).is_err() {
            None
        } else {
            let c = self.client().await?;
            store::user_for_login(&c, &b.username).await?
        };
        let (user, hash) = match found {
            Some((u, h)) => (Some(u), Some(h)),
            None => (None, None),
        };
        let matches = self.inner.passwords.verify(b.password, hash).await?;
        let user = match user {
            Some(u) if matches && u.enabled => u,
            other => {
                self.inner.throttle.failure(&b.username, ip);
                let reason = match &other {
                    None => "unknown_user",
                    Some(u) if !u.enabled => "disabled",
                    Some(_) => "bad_password",
                };
                // The attempted name is recorded only when it is an account: a name that
                // matches none may be a password typed into the wrong field.
                self.event(
                    "login",
                    None,
                    Some(ip),
                    other.as_ref().map(|u| format!("user:{}", u.id)),
                    "failure",
                    json!({"reason": reason}),
                );
                return Err(IdentityError::BAD_LOGIN);
            }
        };
        self.inner.throttle.success(&b.username);
        {
            let c = self.client().await?;
            store::touch_login(&c, user.id).await?;
        }
        let pair = self.new_session(&user).await?;
        self.emit(super::ActivityEvent {
            action: "login",
            actor_user_id: Some(user.id),
            actor_key_id: None,
            target: Some(format!("user:{}", user.id)),
            outcome: "success",
            client_ip: Some(ip),
            detail: json!({"username": user.username}),
        });
        Ok(Reply::ok(pair))
    }

    /// `POST /auth/refresh {refresh_token}`: a new token pair; the old refresh token is
    /// used up.
    pub async fn refresh(&self, ip: IpAddr, body: Bytes) -> Result<Reply, IdentityError> {
        let b: RefreshBody = input::parse(&body)?;
        if b.refresh_token.len() > MAX_LOGIN_FIELD {
            return Err(IdentityError::BAD_REFRESH);
        }
        let digest = self.inner.pepper.digest(&b.refresh_token);
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let Some(row) = store::refresh_for_update(&tx, &digest).await? else {
            return Err(IdentityError::BAD_REFRESH);
        };
        if row.used && !row.revoked {
            store::revoke_family(&tx, row.family_id).await?;
            store::notify(&tx, &format!("s:{}", row.family_id)).await?;
            tx.commit().await?;
            self.inner
                .cache
                .revoke_session(row.family_id, self.session_ttl());
            tracing::warn!(user_id = %row.user_id, "refresh token reused; session revoked");
            self.event(
                "refresh",
                None,
                Some(ip),
                Some(format!("user:{}", row.user_id)),
                "denied",
                json!({"reason": "reused_refresh_token", "session": row.family_id}),
            );
            return Err(IdentityError::BAD_REFRESH);
        }
        if row.used || row.revoked || row.expires_at <= Utc::now() {
            return Err(IdentityError::BAD_REFRESH);
        }
        let user = match store::user_by_id(&tx, row.user_id).await? {
            Some(u) if u.enabled => u,
            _ => return Err(IdentityError::BAD_REFRESH),
        };
        store::mark_refresh_used(&tx, &digest).await?;
        let next = secrets::new_refresh_token()?;
        let expires = Utc::now()
            + chrono::Duration::from_std(self.inner.settings.refresh_ttl)
                .map_err(|_| IdentityError::Internal)?;
        store::insert_refresh(
            &tx,
            &self.inner.pepper.digest(&next),
            row.family_id,
            user.id,
            expires,
        )
        .await?;
        tx.commit().await?;
        Ok(Reply::ok(self.token_pair(&user, row.family_id, next)?))
    }

    /// `POST /auth/logout {all?}`: ends this session, or with `all: true` every session
    /// of the account (all its access tokens stop working).
    pub async fn logout(
        &self,
        caller: &Principal,
        ip: IpAddr,
        body: Bytes,
    ) -> Result<Reply, IdentityError> {
        let user_id = session_user(caller)?;
        let b: LogoutBody = input::parse(&body)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if b.all {
            let change = UserChange {
                revoke_tokens: true,
                ..UserChange::default()
            };
            let Some(u) = store::update_user(&tx, user_id, &change).await? else {
                return Err(IdentityError::not_found("user", &user_id.to_string()));
            };
            store::notify(&tx, &format!("u:{user_id}")).await?;
            tx.commit().await?;
            self.inner.cache.put_user(u);
        } else {
            let sid = caller
                .key_id
                .strip_prefix("session:")
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or(IdentityError::Internal)?;
            store::revoke_family(&tx, sid).await?;
            store::notify(&tx, &format!("s:{sid}")).await?;
            tx.commit().await?;
            self.inner.cache.revoke_session(sid, self.session_ttl());
        }
        self.event(
            "logout",
            Some(caller),
            Some(ip),
            Some(format!("user:{user_id}")),
            "success",
            json!({"all": b.all}),
        );
        Ok(Reply::ok(json!({"logged_out": true, "all": b.all})))
    }

    /// `GET /auth/profile`.
    pub async fn get_profile(
        &self,
        caller: &Principal,
        _ip: IpAddr,
    ) -> Result<Reply, IdentityError> {
        let id = session_user(caller)?;
        let c = self.client().await?;
        match store::user_by_id(&c, id).await? {
            Some(u) => Ok(Reply::ok(user_json(&u))),
            None => Err(IdentityError::not_found("user", &id.to_string())),
        }
    }

    /// `PATCH /auth/profile {email?}`: what users may change about themselves (role,
    /// limits and models are for administrators).
    pub async fn update_profile(
        &self,
        caller: &Principal,
        ip: IpAddr,
        body: Bytes,
    ) -> Result<Reply, IdentityError> {
        let id = session_user(caller)?;
        let b: ProfileBody = input::parse(&body)?;
        let email = match b.email {
            Some(e) => Some(input::email(e)?),
            None => None,
        };
        let change = UserChange {
            email: email.as_ref().map(|e| e.as_deref()),
            ..UserChange::default()
        };
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let Some(u) = store::update_user(&tx, id, &change).await? else {
            return Err(IdentityError::not_found("user", &id.to_string()));
        };
        store::notify(&tx, &format!("u:{id}")).await?;
        tx.commit().await?;
        self.inner.cache.put_user(u.clone());
        self.event(
            "user_update",
            Some(caller),
            Some(ip),
            Some(format!("user:{id}")),
            "success",
            json!({"fields": ["email"], "self": true}),
        );
        Ok(Reply::ok(user_json(&u)))
    }

    /// `POST /auth/change-password {current_password, new_password}`: every other session
    /// ends; the answer carries a fresh token pair for this client.
    pub async fn change_password(
        &self,
        caller: &Principal,
        ip: IpAddr,
        body: Bytes,
    ) -> Result<Reply, IdentityError> {
        let id = session_user(caller)?;
        let b: PasswordBody = input::parse(&body)?;
        input::password(&b.new_password, "new_password")?;
        if b.current_password.len() > MAX_LOGIN_FIELD {
            return Err(IdentityError::BadRequest(
                "current_password too long.".into(),
            ));
        }
        // Guessing the current password through this endpoint is throttled like login.
        let throttle_name = format!("id:{id}");
        if let Some(wait) = self.inner.throttle.check(&throttle_name, ip) {
            return Err(IdentityError::Throttled { retry_after: wait });
        }
        let hash = {
            let c = self.client().await?;
            store::password_hash(&c, id).await?
        };
        if hash.is_none() {
            return Err(IdentityError::not_found("user", &id.to_string()));
        }
        if !self
            .inner
            .passwords
            .verify(b.current_password, hash)
            .await?
        {
            self.inner.throttle.failure(&throttle_name, ip);
            self.event(
                "password_change",
                Some(caller),
                Some(ip),
                Some(format!("user:{id}")),
                "failure",
                json!({"reason": "bad_password"}),
            );
            return Err(IdentityError::Unauthorized {
                code: "invalid_credentials",
                message: "The current password is wrong.",
            });
        }
        self.inner.throttle.success(&throttle_name);
        let new_hash = self.inner.passwords.hash(b.new_password).await?;
        let change = UserChange {
            password_hash: Some(&new_hash),
            revoke_tokens: true,
            ..UserChange::default()
        };
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let Some(u) = store::update_user(&tx, id, &change).await? else {
            return Err(IdentityError::not_found("user", &id.to_string()));
        };
        store::notify(&tx, &format!("u:{id}")).await?;
        tx.commit().await?;
        drop(c);
        self.inner.cache.put_user(u.clone());
        self.event(
            "password_change",
            Some(caller),
            Some(ip),
            Some(format!("user:{id}")),
            "success",
            json!({}),
        );
        Ok(Reply::ok(self.new_session(&u).await?))
    }
}
