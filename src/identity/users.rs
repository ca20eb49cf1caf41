//! Account administration: `POST /auth/register`, `GET /auth/users`,
//! `GET/PATCH/DELETE /auth/users/{id}`. Every change is checked against [`policy`]
//! before it is made, and the last enabled SUPER_ADMIN is protected under a row lock.

use std::net::IpAddr;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::input::{self, nullable, Query};
use super::policy::{self, Action};
use super::store::{self, NewUser, UserChange, UserRow};
use super::{admin, parse_id, user_json, Identity, IdentityError, Reply};
use crate::principal::{Principal, Role};
use uuid::Uuid;

const LAST_SUPER_ADMIN: IdentityError =
    IdentityError::Conflict("The last SUPER_ADMIN cannot be removed, disabled or demoted.");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    username: String,
    #[serde(default)]
    email: Option<String>,
    password: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    rpm_limit: Option<i64>,
    #[serde(default)]
    tpm_limit: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
    /// A password reset by an administrator.
    #[serde(default)]
    password: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    rpm_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    tpm_limit: Option<Option<i64>>,
}

fn forbidden(why: &'static str) -> IdentityError {
    IdentityError::Forbidden(why)
}

/// What a patch does to `target`, as policy actions.
fn actions_for(
    actor: policy::Actor,
    uid: Uuid,
    target: &UserRow,
    role: Option<Role>,
    enabled: Option<bool>,
    password: bool,
    edits: bool,
) -> Vec<Action> {
    let mut actions = Vec::new();
    if let Some(r) = role.filter(|r| *r != target.role) {
        actions.push(Action::ChangeRole(r));
    } else if role.is_some() && actor.user_id == Some(uid) {
        // Restating one's own role is still a request to set it.
        actions.push(Action::ChangeRole(target.role));
    }
    if let Some(e) = enabled.filter(|e| *e != target.enabled) {
        actions.push(Action::SetEnabled(e));
    }
    if password {
        actions.push(Action::ResetPassword);
    }
    // A patch that changes nothing is still a request to edit the account.
    if edits || actions.is_empty() {
        actions.push(Action::Edit);
    }
    actions
}

impl Identity {
    /// 403 (and a `denied` event) unless every action is allowed on `target`.
    fn authorise_update(
        &self,
        caller: &Principal,
        ip: IpAddr,
        actor: policy::Actor,
        uid: Uuid,
        target: &UserRow,
        actions: &[Action],
    ) -> Result<(), IdentityError> {
        for a in actions {
            if let Err(why) = policy::check(actor, Some((uid, target.role)), *a) {
                self.event(
                    "user_update",
                    Some(caller),
                    Some(ip),
                    Some(format!("user:{uid}")),
                    "denied",
                    json!({"action": format!("{a:?}")}),
                );
                return Err(forbidden(why));
            }
        }
        Ok(())
    }

    /// `POST /auth/register {username, email?, password, role?, models?, rpm_limit?,
    /// tpm_limit?}` (administrators): 201 with the new account.
    pub async fn register(
        &self,
        caller: &Principal,
        ip: IpAddr,
        body: Bytes,
    ) -> Result<Reply, IdentityError> {
        let actor = admin(caller)?;
        let b: RegisterBody = input::parse(&body)?;
        let username = input::username(&b.username)?;
        input::password(&b.password, "password")?;
        let email = input::email(b.email)?;
        let role = match &b.role {
            Some(r) => input::role(r)?,
            None => Role::User,
        };
        let models = input::models(b.models.unwrap_or_default())?;
        let rpm = input::rpm(b.rpm_limit)?;
        let tpm = input::tpm(b.tpm_limit)?;
        if let Err(why) = policy::check(actor, None, Action::Create(role)) {
            self.event(
                "user_create",
                Some(caller),
                Some(ip),
                None,
                "denied",
                json!({"role": role.as_str()}),
            );
            return Err(forbidden(why));
        }
        let hash = self.inner.passwords.hash(b.password).await?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let new = NewUser {
            username: &username,
            email: email.as_deref(),
            password_hash: &hash,
            role,
            models: &models,
            rpm_limit: rpm,
            tpm_limit: tpm,
        };
        let Some(u) = store::insert_user(&tx, &new).await? else {
            return Err(IdentityError::Conflict("A user with this username exists."));
        };
        store::notify(&tx, &format!("u:{}", u.id)).await?;
        tx.commit().await?;
        self.inner.cache.put_user(u.clone());
        self.event(
            "user_create",
            Some(caller),
            Some(ip),
            Some(format!("user:{}", u.id)),
            "success",
            json!({"username": u.username, "role": role.as_str()}),
        );
        Ok(Reply::created(user_json(&u)))
    }

    /// `GET /auth/users?limit=&offset=&role=&q=` (administrators).
    pub async fn list_users(
        &self,
        caller: &Principal,
        _ip: IpAddr,
        query: &[(String, String)],
    ) -> Result<Reply, IdentityError> {
        admin(caller)?;
        let q = Query::new(query, &["limit", "offset", "role", "q"])?;
        let limit = q.number("limit", 100, 1000)?;
        let offset = q.number("offset", 0, i64::from(i32::MAX))?;
        let role = q.get("role").map(input::role).transpose()?;
        let contains = q.get("q");
        if contains.is_some_and(|s| s.len() > 64 || s.chars().any(char::is_control)) {
            return Err(IdentityError::BadRequest(
                "q: at most 64 characters, no control characters.".into(),
            ));
        }
        let c = self.client().await?;
        let users = store::list_users(&c, role, contains, limit, offset).await?;
        let data: Vec<Value> = users.iter().map(user_json).collect();
        Ok(Reply::ok(
            json!({"object": "list", "data": data, "limit": limit, "offset": offset}),
        ))
    }

    /// `GET /auth/users/{id}` (administrators).
    pub async fn get_user(
        &self,
        caller: &Principal,
        _ip: IpAddr,
        id: &str,
    ) -> Result<Reply, IdentityError> {
        admin(caller)?;
        let uid = parse_id(id, "user")?;
        let c = self.client().await?;
        match store::user_by_id(&c, uid).await? {
            Some(u) => Ok(Reply::ok(user_json(&u))),
            None => Err(IdentityError::not_found("user", id)),
        }
    }

    /// `PATCH /auth/users/{id} {role?, enabled?, password?, email?, models?, rpm_limit?,
    /// tpm_limit?}` (administrators). A role change, a disable or a password reset ends
    /// every session of the account.
    pub async fn update_user(
        &self,
        caller: &Principal,
        ip: IpAddr,
        id: &str,
        body: Bytes,
    ) -> Result<Reply, IdentityError> {
        let actor = admin(caller)?;
        let uid = parse_id(id, "user")?;
        let b: UserPatch = input::parse(&body)?;
        let role = b.role.as_deref().map(input::role).transpose()?;
        if let Some(p) = &b.password {
            input::password(p, "password")?;
        }
        let email = b.email.map(input::email).transpose()?;
        let models = match b.models {
            Some(m) => Some(input::models(m.unwrap_or_default())?),
            None => None,
        };
        let rpm = b.rpm_limit.map(input::rpm).transpose()?;
        let tpm = b.tpm_limit.map(input::tpm).transpose()?;

        let edits = email.is_some() || models.is_some() || rpm.is_some() || tpm.is_some();
        let (enabled, reset) = (b.enabled, b.password.is_some());
        let plan = |target: &UserRow| actions_for(actor, uid, target, role, enabled, reset, edits);
        // Authorise against the current row before spending a hash on a reset...
        let target = {
            let c = self.client().await?;
            store::user_by_id(&c, uid)
                .await?
                .ok_or_else(|| IdentityError::not_found("user", id))?
        };
        self.authorise_update(caller, ip, actor, uid, &target, &plan(&target))?;
        let hash = match b.password {
            Some(p) => Some(self.inner.passwords.hash(p).await?),
            None => None,
        };
        // ...and decide again on the row as it is now, locked until the change commits:
        // it may have changed during the hash (a promotion, another demotion).
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        store::lock_account_admin(&tx).await?;
        let target = store::user_by_id_for_update(&tx, uid)
            .await?
            .ok_or_else(|| IdentityError::not_found("user", id))?;
        let actions = plan(&target);
        self.authorise_update(caller, ip, actor, uid, &target, &actions)?;
        let removes = actions
            .iter()
            .any(|a| policy::removes_super_admin(target.role, target.enabled, *a));
        if removes {
            let supers = store::lock_super_admins(&tx).await?;
            if supers.iter().all(|s| *s == uid) {
                return Err(LAST_SUPER_ADMIN);
            }
        }
        let revoke = actions.iter().any(|a| {
            matches!(
                a,
                Action::ChangeRole(_) | Action::SetEnabled(false) | Action::ResetPassword
            )
        });
        let change = UserChange {
            email: email.as_ref().map(|e| e.as_deref()),
            role,
            enabled: b.enabled,
            password_hash: hash.as_deref(),
            models: models.as_deref(),
            rpm_limit: rpm,
            tpm_limit: tpm,
            revoke_tokens: revoke,
        };
        let Some(u) = store::update_user(&tx, uid, &change).await? else {
            return Err(IdentityError::not_found("user", id));
        };
        store::notify(&tx, &format!("u:{uid}")).await?;
        tx.commit().await?;
        self.inner.cache.put_user(u.clone());
        let fields: Vec<&str> = [
            ("role", role.is_some()),
            ("enabled", b.enabled.is_some()),
            ("password", hash.is_some()),
            ("email", email.is_some()),
            ("models", models.is_some()),
            ("rpm_limit", rpm.is_some()),
            ("tpm_limit", tpm.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect();
        self.event(
            "user_update",
            Some(caller),
            Some(ip),
            Some(format!("user:{uid}")),
            "success",
            json!({"fields": fields}),
        );
        if target.role != u.role {
            self.event(
                "user_role_change",
                Some(caller),
                Some(ip),
                Some(format!("user:{uid}")),
                "success",
                json!({"from": target.role.as_str(), "to": u.role.as_str()}),
            );
        }
        Ok(Reply::ok(user_json(&u)))
    }

    /// `DELETE /auth/users/{id}` (administrators); the account's keys and sessions go
    /// with it.
    pub async fn delete_user(
        &self,
        caller: &Principal,
        ip: IpAddr,
        id: &str,
    ) -> Result<Reply, IdentityError> {
        let actor = admin(caller)?;
        let uid = parse_id(id, "user")?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        store::lock_account_admin(&tx).await?;
        let target = store::user_by_id_for_update(&tx, uid)
            .await?
            .ok_or_else(|| IdentityError::not_found("user", id))?;
        if let Err(why) = policy::check(actor, Some((uid, target.role)), Action::Delete) {
            self.event(
                "user_delete",
                Some(caller),
                Some(ip),
                Some(format!("user:{uid}")),
                "denied",
                json!({}),
            );
            return Err(forbidden(why));
        }
        if policy::removes_super_admin(target.role, target.enabled, Action::Delete) {
            let supers = store::lock_super_admins(&tx).await?;
            if supers.iter().all(|s| *s == uid) {
                return Err(LAST_SUPER_ADMIN);
            }
        }
        let keys = store::key_ids_of(&tx, uid).await?;
        store::delete_user(&tx, uid).await?;
        store::notify(&tx, &format!("u:{uid}")).await?;
        tx.commit().await?;
        self.inner.cache.remove_user(uid);
        self.event(
            "user_delete",
            Some(caller),
            Some(ip),
            Some(format!("user:{uid}")),
            "success",
            json!({"username": target.username, "keys_deleted": keys.len()}),
        );
        Ok(Reply::ok(json!({"id": uid, "deleted": true})))
    }
}
