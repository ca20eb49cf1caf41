//! API key endpoints: `POST /auth/api-keys`, `GET /auth/api-keys`,
//! `GET/PATCH/DELETE /auth/api-keys/{id}`.
//!
//! Users manage their own keys; administrators anyone's (`?user_id=`), except that an
//! ADMIN cannot touch a SUPER_ADMIN's keys. Another user's key is "not found" (404), so
//! ids cannot be probed. A key may not ask for models or limits beyond its owner's (403).

use std::net::IpAddr;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::input::{self, nullable, Query};
use super::policy::{self, Action};
use super::store::{self, KeyChange, KeyRow, NewKey, UserRow};
use super::{key_json, parse_id, scope, secrets, Identity, IdentityError, Reply};
use crate::principal::{CredentialKind, Principal};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    rpm_limit: Option<i64>,
    #[serde(default)]
    tpm_limit: Option<i64>,
    #[serde(default)]
    expires_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    rpm_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    tpm_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
}

/// Who manages keys, and whether they may act for others.
struct KeyCaller {
    actor: policy::Actor,
    admin: bool,
}

fn key_caller(p: &Principal) -> Result<KeyCaller, IdentityError> {
    match p.kind {
        CredentialKind::Session | CredentialKind::AdminStaticKey => Ok(KeyCaller {
            actor: policy::Actor {
                role: p.role,
                user_id: p.user_id,
            },
            admin: p.is_admin(),
        }),
        CredentialKind::ApiKey => Err(IdentityError::Forbidden(
            "API keys cannot manage keys; log in to get an access token.",
        )),
        _ => Err(IdentityError::Forbidden(
            "Keys are managed with a user session or an admin key.",
        )),
    }
}

/// The key's models and limits must stay within the owner's.
fn within_owner(
    owner: &UserRow,
    models: Option<&[String]>,
    rpm: Option<Option<i32>>,
    tpm: Option<Option<i64>>,
) -> Result<(), IdentityError> {
    // An empty list means "whatever the owner may use" (see `scope::effective_models`).
    if models.is_some_and(|m| m.iter().any(|g| !scope::covered(&owner.models, g))) {
        return Err(IdentityError::Forbidden(
            "models: the key asks for models its owner may not use.",
        ));
    }
    if let (Some(Some(k)), Some(o)) = (rpm, owner.rpm_limit) {
        if k > o {
            return Err(IdentityError::Forbidden(
                "rpm_limit: a key may not exceed its owner's limit.",
            ));
        }
    }
    if let (Some(Some(k)), Some(o)) = (tpm, owner.tpm_limit) {
        if k > o {
            return Err(IdentityError::Forbidden(
                "tpm_limit: a key may not exceed its owner's limit.",
            ));
        }
    }
    Ok(())
}

impl Identity {
    /// The owner a key request acts on: `user_id` for administrators (and for oneself),
    /// otherwise the caller. A non-administrator naming someone else gets 404.
    async fn key_owner(
        &self,
        kc: &KeyCaller,
        user_id: Option<&str>,
    ) -> Result<UserRow, IdentityError> {
        let target = match (user_id, kc.actor.user_id) {
            (Some(id), me) => {
                let uid = parse_id(id, "user")?;
                if !kc.admin && me != Some(uid) {
                    return Err(IdentityError::not_found("user", id));
                }
                uid
            }
            (None, Some(me)) => me,
            (None, None) => {
                return Err(IdentityError::BadRequest(
                    "user_id: required when the caller has no account (admin key).".into(),
                ))
            }
        };
        let c = self.client().await?;
        store::user_by_id(&c, target)
            .await?
            .ok_or_else(|| IdentityError::not_found("user", &target.to_string()))
    }

    /// A key the caller may see: its own, or any for administrators; else 404.
    async fn visible_key(
        &self,
        kc: &KeyCaller,
        id: &str,
    ) -> Result<(KeyRow, UserRow), IdentityError> {
        let kid = parse_id(id, "API key")?;
        let c = self.client().await?;
        let key = store::key_by_id(&c, kid)
            .await?
            .filter(|k| kc.admin || kc.actor.user_id == Some(k.user_id))
            .ok_or_else(|| IdentityError::not_found("API key", id))?;
        let owner = store::user_by_id(&c, key.user_id)
            .await?
            .ok_or_else(|| IdentityError::not_found("API key", id))?;
        Ok((key, owner))
    }

    fn may_manage(
        &self,
        kc: &KeyCaller,
        caller: &Principal,
        ip: IpAddr,
        owner: &UserRow,
        action: &'static str,
    ) -> Result<(), IdentityError> {
        policy::check(kc.actor, Some((owner.id, owner.role)), Action::ManageKeys).map_err(|why| {
            self.event(
                action,
                Some(caller),
                Some(ip),
                Some(format!("user:{}", owner.id)),
                "denied",
                json!({}),
            );
            IdentityError::Forbidden(why)
        })
    }

    /// `POST /auth/api-keys[?user_id=] {name, models?, rpm_limit?, tpm_limit?,
    /// expires_at?}`: 201 with the secret `key`, shown only in this answer.
    pub async fn create_key(
        &self,
        caller: &Principal,
        ip: IpAddr,
        query: &[(String, String)],
        body: Bytes,
    ) -> Result<Reply, IdentityError> {
        let kc = key_caller(caller)?;
        let q = Query::new(query, &["user_id"])?;
        let b: CreateBody = input::parse(&body)?;
        let name = input::name(&b.name)?;
        let models = input::models(b.models.unwrap_or_default())?;
        let rpm = input::rpm(b.rpm_limit)?;
        let tpm = input::tpm(b.tpm_limit)?;
        let expires_at = input::expires_at(b.expires_at)?;
        let owner = self.key_owner(&kc, q.get("user_id")).await?;
        self.may_manage(&kc, caller, ip, &owner, "key_create")?;
        within_owner(&owner, Some(&models), Some(rpm), Some(tpm))?;
        let (secret, display) = secrets::new_api_key()?;
        let digest = self.inner.pepper.digest(&secret);
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let row = store::insert_key(
            &tx,
            &NewKey {
                user_id: owner.id,
                name: &name,
                key_hash: &digest,
                display_prefix: &display,
                models: &models,
                rpm_limit: rpm,
                tpm_limit: tpm,
                expires_at,
            },
        )
        .await?;
        store::notify(&tx, &format!("k:{}", row.id)).await?;
        tx.commit().await?;
        self.inner.cache.put_key(row.clone());
        self.event(
            "key_create",
            Some(caller),
            Some(ip),
            Some(format!("key:{}", row.id)),
            "success",
            json!({"owner": owner.id, "name": row.name}),
        );
        let mut body = key_json(&row);
        body["key"] = Value::String(secret);
        Ok(Reply::created(body))
    }

    /// `GET /auth/api-keys[?user_id=&limit=&offset=]`: the caller's keys; administrators
    /// may name an account, and the operator's admin key without `user_id` sees all.
    pub async fn list_keys(
        &self,
        caller: &Principal,
        _ip: IpAddr,
        query: &[(String, String)],
    ) -> Result<Reply, IdentityError> {
        let kc = key_caller(caller)?;
        let q = Query::new(query, &["user_id", "limit", "offset"])?;
        let limit = q.number("limit", 100, 1000)?;
        let offset = q.number("offset", 0, i64::from(i32::MAX))?;
        let user: Option<Uuid> = match (q.get("user_id"), kc.actor.user_id) {
            (None, None) => None,
            (user_id, _) => Some(self.key_owner(&kc, user_id).await?.id),
        };
        let c = self.client().await?;
        let keys = store::list_keys(&c, user, limit, offset).await?;
        let data: Vec<Value> = keys.iter().map(key_json).collect();
        Ok(Reply::ok(
            json!({"object": "list", "data": data, "limit": limit, "offset": offset}),
        ))
    }

    /// `GET /auth/api-keys/{id}`.
    pub async fn get_key(
        &self,
        caller: &Principal,
        _ip: IpAddr,
        id: &str,
    ) -> Result<Reply, IdentityError> {
        let kc = key_caller(caller)?;
        let (key, _) = self.visible_key(&kc, id).await?;
        Ok(Reply::ok(key_json(&key)))
    }

    /// `PATCH /auth/api-keys/{id} {name?, enabled?, models?, rpm_limit?, tpm_limit?,
    /// expires_at?}`; `null` clears a field.
    pub async fn update_key(
        &self,
        caller: &Principal,
        ip: IpAddr,
        id: &str,
        body: Bytes,
    ) -> Result<Reply, IdentityError> {
        let kc = key_caller(caller)?;
        let b: KeyPatch = input::parse(&body)?;
        let name = b.name.as_deref().map(input::name).transpose()?;
        let models = match b.models {
            Some(m) => Some(input::models(m.unwrap_or_default())?),
            None => None,
        };
        let rpm = b.rpm_limit.map(input::rpm).transpose()?;
        let tpm = b.tpm_limit.map(input::tpm).transpose()?;
        let expires_at = b.expires_at.map(input::expires_at).transpose()?;
        let (key, owner) = self.visible_key(&kc, id).await?;
        self.may_manage(&kc, caller, ip, &owner, "key_update")?;
        within_owner(&owner, models.as_deref(), rpm, tpm)?;
        let change = KeyChange {
            name: name.as_deref(),
            enabled: b.enabled,
            models: models.as_deref(),
            rpm_limit: rpm,
            tpm_limit: tpm,
            expires_at,
        };
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let Some(row) = store::update_key(&tx, key.id, &change).await? else {
            return Err(IdentityError::not_found("API key", id));
        };
        store::notify(&tx, &format!("k:{}", row.id)).await?;
        tx.commit().await?;
        self.inner.cache.put_key(row.clone());
        self.event(
            "key_update",
            Some(caller),
            Some(ip),
            Some(format!("key:{}", row.id)),
            "success",
            json!({"owner": owner.id, "enabled": row.enabled}),
        );
        Ok(Reply::ok(key_json(&row)))
    }

    /// `DELETE /auth/api-keys/{id}`: the key stops working on every replica.
    pub async fn delete_key(
        &self,
        caller: &Principal,
        ip: IpAddr,
        id: &str,
    ) -> Result<Reply, IdentityError> {
        let kc = key_caller(caller)?;
        let (key, owner) = self.visible_key(&kc, id).await?;
        self.may_manage(&kc, caller, ip, &owner, "key_delete")?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        store::delete_key(&tx, key.id).await?;
        store::notify(&tx, &format!("k:{}", key.id)).await?;
        tx.commit().await?;
        self.inner.cache.remove_key(key.id);
        self.event(
            "key_delete",
            Some(caller),
            Some(ip),
            Some(format!("key:{}", key.id)),
            "success",
            json!({"owner": owner.id, "name": key.name}),
        );
        Ok(Reply::ok(json!({"id": key.id, "deleted": true})))
    }
}
