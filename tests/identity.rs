//! Users, roles, sessions, API keys and limits against a real PostgreSQL (one database per
//! test; a throwaway server for the test that stops it) and Redis.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use llmmux::config::{Config, Sources};
use llmmux::identity::limits::RateLimiter;
use llmmux::identity::{
    bootstrap, no_activity, ActivityEvent, AuthError, Identity, IdentityError, IdentitySettings,
};
use llmmux::principal::{CredentialKind, Limits, Principal, Role};
use llmmux::storage::{self, Db, DbSettings};
use serde_json::{json, Value};
use uuid::Uuid;

use common::eventually;
use common::pg::{TestDb, ThrowawayPg};

const SECRET: &str = "test-jwt-secret-0123456789abcdef-0123456789";
const ADMIN_PW: &str = "bootstrap-password-1";
const PW: &str = "password-123";

fn ip() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

fn b(v: Value) -> Bytes {
    Bytes::from(v.to_string())
}

fn load(
    vars: &[(&str, &str)],
) -> Result<llmmux::config::ValidatedConfig, Vec<llmmux::config::ConfigError>> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = move |k: &str| map.get(k).cloned();
    Config::load(&Sources {
        env: &env,
        file: None,
    })
}

fn settings(url: &str, extra: &[(&str, &str)]) -> IdentitySettings {
    let mut vars = vec![
        ("DATABASE_URL", url),
        ("JWT_SECRET", SECRET),
        ("ADMIN_PASSWORD", ADMIN_PW),
        ("LOGIN_LOCKOUT_BASE", "300"),
        ("LOG_LEVEL", "warn"),
    ];
    vars.extend_from_slice(extra);
    let cfg = load(&vars).expect("valid identity config");
    IdentitySettings::from_config(&cfg).expect("identity settings")
}

type Events = Arc<Mutex<Vec<ActivityEvent>>>;

struct Env {
    db: TestDb,
    id: Identity,
    events: Events,
    op: Principal,
}

async fn start(url: &str, extra: &[(&str, &str)], events: &Events) -> Identity {
    let sink = events.clone();
    Identity::start(
        settings(url, extra),
        Arc::new(move |e| sink.lock().expect("events").push(e)),
    )
    .await
    .expect("identity starts")
}

async fn env_with(extra: &[(&str, &str)]) -> Env {
    let db = TestDb::create().await;
    storage::migrate(&db.url()).await.expect("migrate");
    let events = Events::default();
    let id = start(&db.url(), extra, &events).await;
    Env {
        db,
        id,
        events,
        op: Principal::admin_static_key(0),
    }
}

async fn env() -> Env {
    env_with(&[]).await
}

impl Env {
    async fn register(&self, name: &str, role: Role) -> Uuid {
        let r = self
            .id
            .register(
                &self.op,
                ip(),
                b(json!({"username": name, "password": PW, "role": role.as_str()})),
            )
            .await
            .expect("register");
        assert_eq!(r.status, 201);
        Uuid::parse_str(r.body["id"].as_str().expect("id")).expect("uuid")
    }

    async fn login(&self, name: &str, pw: &str) -> (String, String) {
        let r = self
            .id
            .login(ip(), b(json!({"username": name, "password": pw})))
            .await
            .expect("login");
        (
            r.body["access_token"].as_str().expect("access").to_owned(),
            r.body["refresh_token"]
                .as_str()
                .expect("refresh")
                .to_owned(),
        )
    }

    async fn session(&self, name: &str) -> (Principal, String) {
        self.session_with(name, PW).await
    }

    async fn session_with(&self, name: &str, pw: &str) -> (Principal, String) {
        let (access, _) = self.login(name, pw).await;
        (
            self.id.authenticate(&access).await.expect("session"),
            access,
        )
    }

    async fn key(&self, caller: &Principal, body: Value) -> (Uuid, String) {
        let r = self
            .id
            .create_key(caller, ip(), &[], b(body))
            .await
            .expect("create key");
        assert_eq!(r.status, 201);
        (
            Uuid::parse_str(r.body["id"].as_str().expect("id")).expect("uuid"),
            r.body["key"].as_str().expect("secret").to_owned(),
        )
    }
}

// === migrations ===

#[tokio::test]
async fn concurrent_migrations_apply_once_and_changed_files_are_refused() {
    let db = TestDb::create().await;
    let url = db.url();
    let (a, b2) = tokio::join!(storage::migrate(&url), storage::migrate(&url));
    let (a, b2) = (a.expect("first"), b2.expect("second"));
    assert_eq!(
        a.len() + b2.len(),
        storage::MIGRATIONS.len(),
        "each migration applied exactly once: {a:?} {b2:?}"
    );
    let c = db.client().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n as usize, storage::MIGRATIONS.len());
    assert!(storage::migrate(&db.url()).await.expect("again").is_empty());
    c.execute(
        "UPDATE schema_migrations SET checksum = 'x' WHERE version = 1",
        &[],
    )
    .await
    .expect("tamper");
    assert!(matches!(
        storage::migrate(&db.url()).await,
        Err(storage::StorageError::ChecksumMismatch { .. })
    ));
}

// === configuration ===

#[test]
fn identity_settings_are_validated() {
    let errs = |vars: &[(&str, &str)]| -> Vec<String> {
        load(vars)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.name)
            .collect()
    };
    let url = "postgres://postgres@127.0.0.1:5432/x";
    assert!(errs(&[("DATABASE_URL", url)]).contains(&"JWT_SECRET".to_owned()));
    assert!(errs(&[("DATABASE_URL", url), ("JWT_SECRET", "too-short")])
        .contains(&"JWT_SECRET".to_owned()));
    assert!(errs(&[
        ("DATABASE_URL", url),
        ("JWT_SECRET", SECRET),
        ("JWT_ACCESS_TTL", "3600000")
    ])
    .contains(&"JWT_ACCESS_TTL".to_owned()));
    assert!(errs(&[("ADMIN_PASSWORD", "long-enough-pw")]).contains(&"ADMIN_PASSWORD".to_owned()));
    assert!(errs(&[("REDIS_URL", "http://x")]).contains(&"REDIS_URL".to_owned()));
    let ok = load(&[("DATABASE_URL", url), ("JWT_SECRET", SECRET)]).expect("valid");
    assert_eq!(ok.jwt_access_ttl, Duration::from_secs(900));
    let masked = ok.render_masked();
    assert!(!masked.contains(SECRET) && !masked.contains("127.0.0.1:5432"));
    let cfg = load(&[("API_KEYS", "short,0123456789012345678901234567890123")]).expect("valid");
    let warnings = llmmux::http::auth::short_key_warnings(&cfg);
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("static:0") && !warnings[0].contains("short,"));
}

// === bootstrap ===

#[tokio::test]
async fn first_admin_is_created_once_and_create_admin_resets() {
    let e = env().await;
    let (p, _) = e.session_with("superadmin", ADMIN_PW).await;
    assert_eq!(p.role, Role::SuperAdmin);
    assert!(p.is_admin());
    // A second replica starting on the same database creates nobody.
    let other = start(&e.db.url(), &[], &Events::default()).await;
    let list = other.list_users(&e.op, ip(), &[]).await.expect("list");
    assert_eq!(list.body["data"].as_array().expect("data").len(), 1);

    let u = e.register("carol", Role::User).await;
    let db = Db::new(&DbSettings {
        url: llmmux::config::Secret::new(e.db.url()),
        pool_size: 2,
        acquire_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_secs(5),
    })
    .expect("pool");
    let out = bootstrap::create_admin(&db, "carol", "new-password-9", &no_activity())
        .await
        .expect("reset");
    assert_eq!(out, bootstrap::AdminOutcome::Reset);
    let (access, _) = e.login("carol", "new-password-9").await;
    let p = e.id.authenticate(&access).await.expect("carol");
    assert_eq!((p.user_id, p.role), (Some(u), Role::SuperAdmin));
    let out = bootstrap::create_admin(&db, "dave", "another-pass-1", &no_activity())
        .await
        .expect("create");
    assert_eq!(out, bootstrap::AdminOutcome::Created);
    assert!(
        bootstrap::create_admin(&db, "bad name", "another-pass-1", &no_activity())
            .await
            .is_err()
    );
}

// === RBAC (S5) ===

#[derive(Clone, Copy, Debug)]
enum Act {
    Create,
    ChangeRole,
    Promote,
    Disable,
    Delete,
    ResetPassword,
}

/// The policy table, written out independently of the code.
fn expected(actor: Role, target: Role, act: Act) -> u16 {
    if actor == Role::User {
        return 403;
    }
    let sa_only = target == Role::SuperAdmin || matches!(act, Act::Promote);
    if actor == Role::Admin && sa_only {
        return 403;
    }
    if matches!(act, Act::Create) {
        201
    } else {
        200
    }
}

#[tokio::test]
async fn role_action_target_matrix() {
    let e = env().await;
    e.register("m-super", Role::SuperAdmin).await;
    e.register("m-admin", Role::Admin).await;
    e.register("m-user", Role::User).await;
    let actors = [
        ("operator", Role::SuperAdmin, e.op.clone()),
        ("super", Role::SuperAdmin, e.session("m-super").await.0),
        ("admin", Role::Admin, e.session("m-admin").await.0),
        ("user", Role::User, e.session("m-user").await.0),
    ];
    let mut n = 0;
    for (aname, arole, actor) in &actors {
        for target in [Role::User, Role::Admin, Role::SuperAdmin] {
            for act in [
                Act::Create,
                Act::ChangeRole,
                Act::Promote,
                Act::Disable,
                Act::Delete,
                Act::ResetPassword,
            ] {
                n += 1;
                let tname = format!("t{n}");
                let status = if let Act::Create = act {
                    let r =
                        e.id.register(
                            actor,
                            ip(),
                            b(json!({"username": tname, "password": PW, "role": target.as_str()})),
                        )
                        .await;
                    r.map(|r| r.status).unwrap_or_else(|e| e.status())
                } else {
                    let tid = e.register(&tname, target).await.to_string();
                    let patch = match act {
                        Act::ChangeRole => {
                            json!({"role": if target == Role::User { "ADMIN" } else { "USER" }})
                        }
                        Act::Promote => json!({"role": "SUPER_ADMIN"}),
                        Act::Disable => json!({"enabled": false}),
                        Act::ResetPassword => json!({"password": "reset-password-1"}),
                        _ => json!({}),
                    };
                    let r = if let Act::Delete = act {
                        e.id.delete_user(actor, ip(), &tid).await
                    } else {
                        e.id.update_user(actor, ip(), &tid, b(patch)).await
                    };
                    r.map(|r| r.status).unwrap_or_else(|e| e.status())
                };
                let want = expected(*arole, target, act);
                assert_eq!(status, want, "{aname} {act:?} {target:?}");
            }
        }
        let list = e.id.list_users(actor, ip(), &[]).await;
        let get =
            e.id.get_user(actor, ip(), &Uuid::new_v4().to_string())
                .await;
        if *arole == Role::User {
            assert_eq!(list.map(|r| r.status).unwrap_or_else(|e| e.status()), 403);
            assert_eq!(get.map(|r| r.status).unwrap_or_else(|e| e.status()), 403);
        } else {
            assert_eq!(list.map(|r| r.status).unwrap_or_else(|e| e.status()), 200);
            assert_eq!(get.map(|r| r.status).unwrap_or_else(|e| e.status()), 404);
        }
    }
}

#[tokio::test]
async fn own_role_is_fixed_and_the_last_super_admin_stays() {
    let e = env().await;
    let (root, _) = e.session_with("superadmin", ADMIN_PW).await;
    let root_id = root.user_id.expect("id").to_string();
    for role in ["ADMIN", "USER", "SUPER_ADMIN"] {
        let r =
            e.id.update_user(&root, ip(), &root_id, b(json!({"role": role})))
                .await;
        assert_eq!(r.err().map(|e| e.status()), Some(403), "self role {role}");
    }
    // The operator key may change anyone, but not remove the only SUPER_ADMIN.
    for patch in [json!({"role": "ADMIN"}), json!({"enabled": false})] {
        let r = e.id.update_user(&e.op, ip(), &root_id, b(patch)).await;
        assert_eq!(
            r.err(),
            Some(IdentityError::Conflict(
                "The last SUPER_ADMIN cannot be removed, disabled or demoted."
            ))
        );
    }
    assert_eq!(
        e.id.delete_user(&root, ip(), &root_id)
            .await
            .err()
            .map(|e| e.status()),
        Some(409)
    );
    // With a second one, the first may go.
    e.register("second-root", Role::SuperAdmin).await;
    let r =
        e.id.update_user(&e.op, ip(), &root_id, b(json!({"role": "ADMIN"})))
            .await
            .expect("demote");
    assert_eq!(r.body["role"], "ADMIN");
}

// === IDOR (S6) ===

/// No body may carry a password hash or a key digest.
fn assert_clean(v: &Value) {
    let s = v.to_string();
    assert!(
        !s.contains("argon2") && !s.contains("password_hash") && !s.contains("key_hash"),
        "leak: {s}"
    );
}

#[tokio::test]
async fn users_cannot_reach_each_others_records() {
    let e = env().await;
    let a_id = e.register("alice", Role::User).await;
    e.register("bob", Role::User).await;
    let (alice, _) = e.session("alice").await;
    let (bob, _) = e.session("bob").await;
    let (key_id, secret) = e.key(&alice, json!({"name": "a-key"})).await;
    let kid = key_id.to_string();
    let status = |r: Result<llmmux::identity::Reply, IdentityError>| match r {
        Ok(r) => {
            assert_clean(&r.body);
            assert!(!r.body.to_string().contains(&secret), "secret shown again");
            r.status
        }
        Err(e) => e.status(),
    };
    assert_eq!(status(e.id.get_key(&bob, ip(), &kid).await), 404);
    assert_eq!(
        status(
            e.id.update_key(&bob, ip(), &kid, b(json!({"enabled": false})))
                .await
        ),
        404
    );
    assert_eq!(status(e.id.delete_key(&bob, ip(), &kid).await), 404);
    let q = vec![("user_id".to_owned(), a_id.to_string())];
    assert_eq!(status(e.id.list_keys(&bob, ip(), &q).await), 404);
    assert_eq!(
        status(
            e.id.create_key(&bob, ip(), &q, b(json!({"name": "x"})))
                .await
        ),
        404
    );
    assert_eq!(
        status(e.id.get_user(&bob, ip(), &a_id.to_string()).await),
        403
    );
    for probe in ["1", "2", "00000000-0000-0000-0000-000000000001", "../keys"] {
        assert_eq!(status(e.id.get_key(&bob, ip(), probe).await), 404);
    }
    let mine = e.id.list_keys(&bob, ip(), &[]).await.expect("bob's keys");
    assert_eq!(mine.body["data"].as_array().map(Vec::len), Some(0));
    // The owner and an administrator see it, without the secret.
    assert_eq!(status(e.id.get_key(&alice, ip(), &kid).await), 200);
    assert_eq!(status(e.id.get_key(&e.op, ip(), &kid).await), 200);
    assert_eq!(status(e.id.list_keys(&e.op, ip(), &q).await), 200);
    assert_eq!(status(e.id.get_profile(&alice, ip()).await), 200);
    assert_eq!(status(e.id.list_users(&e.op, ip(), &[]).await), 200);
    // Still alice's.
    assert!(e.id.authenticate(&secret).await.is_ok());
}

// === key scope (S7, S20) ===

#[tokio::test]
async fn keys_never_exceed_their_owner() {
    let e = env().await;
    let uid = e.register("scoped", Role::User).await.to_string();
    e.id.update_user(
        &e.op,
        ip(),
        &uid,
        b(json!({"models": ["qwen*"], "rpm_limit": 10, "tpm_limit": 1000})),
    )
    .await
    .expect("restrict");
    let (user, _) = e.session("scoped").await;
    assert_eq!(user.models, Some(vec!["qwen*".to_owned()]));
    let deny = |r: Result<llmmux::identity::Reply, IdentityError>| r.err().map(|e| e.status());
    for body in [
        json!({"name": "k", "models": ["llama-3"]}),
        json!({"name": "k", "models": ["*"]}),
        json!({"name": "k", "rpm_limit": 11}),
        json!({"name": "k", "tpm_limit": 1001}),
    ] {
        assert_eq!(
            deny(e.id.create_key(&user, ip(), &[], b(body.clone())).await),
            Some(403),
            "{body}"
        );
    }
    for body in [
        json!({"name": "k", "role": "ADMIN"}),
        json!({"name": "k", "admin": true}),
    ] {
        assert_eq!(
            deny(e.id.create_key(&user, ip(), &[], b(body)).await),
            Some(400)
        );
    }
    let (kid, secret) = e
        .key(
            &user,
            json!({"name": "k", "models": ["qwen3-8b"], "rpm_limit": 5}),
        )
        .await;
    let p = e.id.authenticate(&secret).await.expect("key");
    assert_eq!(p.kind, CredentialKind::ApiKey);
    assert!(!p.is_admin() && p.role == Role::User);
    assert!(p.may_use("qwen3-8b") && !p.may_use("qwen3-32b") && !p.may_use("llama"));
    assert_eq!(
        p.limits,
        Limits {
            rpm: Some(5),
            tpm: Some(1000)
        }
    );
    // A key cannot administer, nor mint keys.
    assert_eq!(
        deny(
            e.id.register(&p, ip(), b(json!({"username": "x", "password": PW})))
                .await
        ),
        Some(403)
    );
    assert_eq!(deny(e.id.list_users(&p, ip(), &[]).await), Some(403));
    assert_eq!(
        deny(
            e.id.create_key(&p, ip(), &[], b(json!({"name": "x"})))
                .await
        ),
        Some(403)
    );
    // Raising a key above its owner later is refused too.
    assert_eq!(
        deny(
            e.id.update_key(&user, ip(), &kid.to_string(), b(json!({"rpm_limit": 50})))
                .await
        ),
        Some(403)
    );
    // A key without its own list gets the owner's; narrowing the owner narrows the key.
    let (_, open) = e.key(&user, json!({"name": "open"})).await;
    let p = e.id.authenticate(&open).await.expect("open key");
    assert!(p.may_use("qwen3-32b") && !p.may_use("llama"));
    e.id.update_user(&e.op, ip(), &uid, b(json!({"models": ["qwen3-8b"]})))
        .await
        .expect("narrow");
    let p = e.id.authenticate(&open).await.expect("open key");
    assert!(p.may_use("qwen3-8b") && !p.may_use("qwen3-32b"));
    // An ADMIN cannot mint a key for a SUPER_ADMIN.
    let sa = e.register("sa2", Role::SuperAdmin).await;
    e.register("adm", Role::Admin).await;
    let (adm, _) = e.session("adm").await;
    let q = vec![("user_id".to_owned(), sa.to_string())];
    assert_eq!(
        deny(
            e.id.create_key(&adm, ip(), &q, b(json!({"name": "x"})))
                .await
        ),
        Some(403)
    );
}

// === key storage (S8) ===

#[tokio::test]
async fn stored_keys_reveal_nothing_and_near_misses_fail() {
    let e = env().await;
    e.register("holder", Role::User).await;
    let (holder, _) = e.session("holder").await;
    let (_, refresh) = e.login("holder", PW).await;
    let mut secrets = Vec::new();
    for i in 0..100 {
        secrets.push(e.key(&holder, json!({"name": format!("k{i}")})).await.1);
    }
    let c = e.db.client().await;
    let mut dump = String::new();
    for table in ["users", "api_keys", "refresh_tokens", "schema_migrations"] {
        let sql = match table {
            "users" => "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') FROM users t",
            "api_keys" => "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') FROM api_keys t",
            "refresh_tokens" => "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') FROM refresh_tokens t",
            _ => "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') FROM schema_migrations t",
        };
        let s: String = c.query_one(sql, &[]).await.expect("dump").get(0);
        dump.push_str(&s);
    }
    assert!(!dump.contains(PW) && !dump.contains(ADMIN_PW));
    for s in secrets.iter().chain([&refresh]) {
        let random = s
            .strip_prefix("sk-llmmux-")
            .or_else(|| s.strip_prefix("rt-"))
            .expect("prefix");
        for w in random.as_bytes().windows(8) {
            let w = std::str::from_utf8(w).expect("ascii");
            assert!(
                !dump.contains(w),
                "an 8-character piece of a secret is stored"
            );
        }
    }
    let k = &secrets[0];
    assert!(e.id.authenticate(k).await.is_ok());
    let mut wrong = k.clone();
    let last = wrong.pop().expect("char");
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(e.id.authenticate(&wrong).await, Err(AuthError::Invalid));
    let same_start = format!("{}{}", &k[..20], "x".repeat(k.len() - 20));
    assert_eq!(
        e.id.authenticate(&same_start).await,
        Err(AuthError::Invalid)
    );
    assert_eq!(
        e.id.authenticate("sk-llmmux-").await,
        Err(AuthError::Invalid)
    );
}

// === JWT forgery and clock skew (S2, S3, R37) ===

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn sign(secret: &str, header: &Value, claims: &Value) -> String {
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, msg.as_bytes());
    format!("{msg}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

#[tokio::test]
async fn forged_and_skewed_tokens() {
    let e = env().await;
    let uid = e.register("jwt-user", Role::User).await;
    let other = e.register("jwt-other", Role::User).await;
    let (_, real) = e.session("jwt-user").await;
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let claims = |iat: i64, exp: i64| {
        json!({"sub": uid, "sid": Uuid::new_v4(), "ver": 0, "iat": iat, "exp": exp,
               "iss": "llmmux", "aud": "llmmux"})
    };
    let t = now();
    let ok = sign(SECRET, &hs, &claims(t, t + 600));
    assert_eq!(
        e.id.authenticate(&ok).await.expect("valid").user_id,
        Some(uid)
    );

    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims(t, t + 600).to_string())
    );
    let mut no_exp = claims(t, 0);
    no_exp.as_object_mut().expect("obj").remove("exp");
    let mut no_aud = claims(t, t + 600);
    no_aud.as_object_mut().expect("obj").remove("aud");
    let (h, rest) = real.split_once('.').expect("jwt");
    let (_, sig) = rest.split_once('.').expect("jwt");
    let mut tampered_claims = claims(t, t + 600);
    tampered_claims["sub"] = json!(other);
    let tampered = format!(
        "{h}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(tampered_claims.to_string())
    );
    let forged = [
        ("alg none", none),
        (
            "wrong secret",
            sign(
                "another-secret-0123456789abcdef-0123",
                &hs,
                &claims(t, t + 600),
            ),
        ),
        ("tampered payload", tampered),
        (
            "HS512 header",
            sign(SECRET, &json!({"alg": "HS512"}), &claims(t, t + 600)),
        ),
        (
            "RS256 header",
            sign(SECRET, &json!({"alg": "RS256"}), &claims(t, t + 600)),
        ),
        ("missing exp", sign(SECRET, &hs, &no_exp)),
        ("missing aud", sign(SECRET, &hs, &no_aud)),
        (
            "lifetime beyond the TTL",
            sign(SECRET, &hs, &claims(t, t + 86_400)),
        ),
        ("garbage", "a.b.c".to_owned()),
    ];
    for (what, token) in forged {
        assert_eq!(
            e.id.authenticate(&token).await,
            Err(AuthError::Invalid),
            "{what}"
        );
    }
    // ±30 s of skew is tolerated, ±120 s is not.
    let skewed = |iat: i64, exp: i64| sign(SECRET, &hs, &claims(iat, exp));
    assert!(
        e.id.authenticate(&skewed(t + 30, t + 600)).await.is_ok(),
        "iat +30"
    );
    assert!(
        e.id.authenticate(&skewed(t - 600, t - 30)).await.is_ok(),
        "exp -30"
    );
    let mut nbf = claims(t, t + 600);
    nbf["nbf"] = json!(t + 30);
    assert!(
        e.id.authenticate(&sign(SECRET, &hs, &nbf)).await.is_ok(),
        "nbf +30"
    );
    nbf["nbf"] = json!(t + 120);
    assert_eq!(
        e.id.authenticate(&sign(SECRET, &hs, &nbf)).await,
        Err(AuthError::NotYetValid)
    );
    assert_eq!(
        e.id.authenticate(&skewed(t + 120, t + 600)).await,
        Err(AuthError::NotYetValid)
    );
    assert_eq!(
        e.id.authenticate(&skewed(t - 720, t - 120)).await,
        Err(AuthError::Expired)
    );
    // A valid signature for a stale token version is revoked, not accepted.
    let mut old = claims(t, t + 600);
    old["ver"] = json!(-1);
    assert_eq!(
        e.id.authenticate(&sign(SECRET, &hs, &old)).await,
        Err(AuthError::Revoked)
    );
}

// === revocation (S4) ===

#[tokio::test]
async fn changes_revoke_tokens_and_keys_at_once() {
    let e = env().await;
    let uid = e.register("rev", Role::User).await.to_string();
    let (p, token) = e.session("rev").await;
    let (kid, key) = e.key(&p, json!({"name": "k"})).await;

    // Logout of one session leaves the others.
    let (_, second) = e.session("rev").await;
    e.id.logout(&p, ip(), Bytes::new()).await.expect("logout");
    assert_eq!(e.id.authenticate(&token).await, Err(AuthError::Revoked));
    assert!(e.id.authenticate(&second).await.is_ok());

    // Password change: every older token dies; the answer carries a working pair.
    let (p2, t2) = e.session("rev").await;
    let r =
        e.id.change_password(
            &p2,
            ip(),
            b(json!({"current_password": PW, "new_password": "changed-pass-1"})),
        )
        .await
        .expect("change");
    assert_eq!(e.id.authenticate(&t2).await, Err(AuthError::Revoked));
    assert_eq!(e.id.authenticate(&second).await, Err(AuthError::Revoked));
    let fresh = r.body["access_token"].as_str().expect("token").to_owned();
    assert!(
        e.id.authenticate(&fresh).await.is_ok(),
        "the new pair works"
    );
    assert!(
        e.id.authenticate(&key).await.is_ok(),
        "keys survive a password change"
    );

    // Role change by an administrator.
    e.id.update_user(&e.op, ip(), &uid, b(json!({"role": "ADMIN"})))
        .await
        .expect("promote");
    assert_eq!(e.id.authenticate(&fresh).await, Err(AuthError::Revoked));
    let (_, t4) = e.session_with("rev", "changed-pass-1").await;
    // Logout everywhere.
    let p4 = e.id.authenticate(&t4).await.expect("t4");
    e.id.logout(&p4, ip(), b(json!({"all": true})))
        .await
        .expect("logout all");
    assert_eq!(e.id.authenticate(&t4).await, Err(AuthError::Revoked));
    // Disable: sessions and keys stop.
    let (_, t5) = e.session_with("rev", "changed-pass-1").await;
    e.id.update_user(&e.op, ip(), &uid, b(json!({"enabled": false})))
        .await
        .expect("disable");
    assert_eq!(e.id.authenticate(&t5).await, Err(AuthError::Revoked));
    assert_eq!(e.id.authenticate(&key).await, Err(AuthError::Invalid));
    e.id.update_user(&e.op, ip(), &uid, b(json!({"enabled": true})))
        .await
        .expect("enable");
    assert!(e.id.authenticate(&key).await.is_ok());
    // Key disable and delete.
    e.id.update_key(&e.op, ip(), &kid.to_string(), b(json!({"enabled": false})))
        .await
        .expect("off");
    assert_eq!(e.id.authenticate(&key).await, Err(AuthError::Invalid));
    e.id.update_key(&e.op, ip(), &kid.to_string(), b(json!({"enabled": true})))
        .await
        .expect("on");
    assert!(e.id.authenticate(&key).await.is_ok());
    e.id.delete_key(&e.op, ip(), &kid.to_string())
        .await
        .expect("delete");
    assert_eq!(e.id.authenticate(&key).await, Err(AuthError::Invalid));
}

#[tokio::test]
async fn revocation_reaches_another_replica_within_a_second() {
    let e = env().await;
    let b_events = Events::default();
    let other = start(&e.db.url(), &[], &b_events).await;
    assert!(other.wait_listening(Duration::from_secs(5)).await);
    assert!(e.id.wait_listening(Duration::from_secs(5)).await);
    let uid = e.register("twin", Role::User).await.to_string();
    let (p, token) = e.session("twin").await;
    let (kid, key) = e.key(&p, json!({"name": "k"})).await;
    let (kid2, key2) = e.key(&p, json!({"name": "k2"})).await;
    assert!(other.authenticate(&token).await.is_ok());
    assert!(other.authenticate(&key).await.is_ok());
    assert!(other.authenticate(&key2).await.is_ok());

    let within = |what: &'static str, id: &Identity, cred: String, want: AuthError| {
        let id = id.clone();
        async move {
            let t = Instant::now();
            let ok = eventually(Duration::from_secs(1), || {
                let (id, cred) = (id.clone(), cred.clone());
                async move { id.authenticate(&cred).await == Err(want) }
            })
            .await;
            assert!(ok, "{what} not seen by the other replica within 1 s");
            t.elapsed()
        }
    };
    e.id.delete_key(&p, ip(), &kid.to_string())
        .await
        .expect("delete");
    within("key delete", &other, key, AuthError::Invalid).await;
    e.id.update_key(&p, ip(), &kid2.to_string(), b(json!({"enabled": false})))
        .await
        .expect("off");
    within("key disable", &other, key2, AuthError::Invalid).await;
    e.id.logout(&p, ip(), Bytes::new()).await.expect("logout");
    within("logout", &other, token, AuthError::Revoked).await;
    let (_, t2) = e.session("twin").await;
    assert!(other.authenticate(&t2).await.is_ok());
    e.id.update_user(&e.op, ip(), &uid, b(json!({"enabled": false})))
        .await
        .expect("disable");
    within("disable", &other, t2, AuthError::Revoked).await;
}

// === database taken away (R27, R29) ===

#[tokio::test]
async fn cached_credentials_survive_a_database_outage() {
    let mut pg = ThrowawayPg::start();
    let db = TestDb::create_on(&pg.server()).await;
    storage::migrate(&db.url()).await.expect("migrate");
    let id = start(&db.url(), &[], &Events::default()).await;
    let op = Principal::admin_static_key(0);
    id.register(&op, ip(), b(json!({"username": "u", "password": PW})))
        .await
        .expect("register");
    let r = id
        .login(ip(), b(json!({"username": "u", "password": PW})))
        .await
        .expect("login");
    let token = r.body["access_token"].as_str().expect("token").to_owned();
    let p = id.authenticate(&token).await.expect("session");
    let r = id
        .create_key(&p, ip(), &[], b(json!({"name": "k"})))
        .await
        .expect("key");
    let key = r.body["key"].as_str().expect("secret").to_owned();
    assert!(id.authenticate(&key).await.is_ok());

    pg.stop();
    assert!(
        id.authenticate(&key).await.is_ok(),
        "cached key keeps working"
    );
    assert!(
        id.authenticate(&token).await.is_ok(),
        "cached session keeps working"
    );
    let (unknown, _) = llmmux::identity::secrets::new_api_key().expect("random");
    let t = Instant::now();
    assert_eq!(id.authenticate(&unknown).await, Err(AuthError::Unavailable));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "503 took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let r = id
        .login(ip(), b(json!({"username": "u", "password": PW})))
        .await;
    assert_eq!(r.err(), Some(IdentityError::Unavailable));
    assert!(t.elapsed() < Duration::from_secs(3));

    pg.resume();
    assert!(pg.wait_ready(Duration::from_secs(30)).await);
    let back = eventually(Duration::from_secs(10), || {
        let (id, unknown) = (id.clone(), unknown.clone());
        async move { id.authenticate(&unknown).await == Err(AuthError::Invalid) }
    })
    .await;
    assert!(back, "lookups recover after the database is back");
    assert!(id.wait_listening(Duration::from_secs(10)).await);
    assert!(id
        .login(ip(), b(json!({"username": "u", "password": PW})))
        .await
        .is_ok());
    drop(db);
}

// === hostile input (S1, S13) ===

#[tokio::test]
async fn sql_metacharacters_are_plain_data() {
    let e = env().await;
    e.register("meta", Role::User).await;
    let (p, _) = e.session("meta").await;
    let nasty = [
        "' OR 1=1--",
        "\" OR \"\"=\"",
        "'; DROP TABLE users;--",
        "x' UNION SELECT password_hash FROM users--",
        ";SELECT pg_sleep(5)",
        "\\'; \\\\ $1 %_ ‘’ “” `",
        "${jndi:x} {{7*7}} <script>",
    ];
    for s in nasty {
        let t = Instant::now();
        // Stored verbatim where free text is allowed...
        let r =
            e.id.create_key(&p, ip(), &[], b(json!({"name": s})))
                .await
                .expect("key");
        assert_eq!(r.body["name"], s);
        let k = r.body["id"].as_str().expect("id").to_owned();
        let back = e.id.get_key(&p, ip(), &k).await.expect("get");
        assert_eq!(back.body["name"], s);
        // ...refused where it is not, and never an internal error.
        for (what, res) in [
            (
                "login",
                e.id.login(ip(), b(json!({"username": s, "password": s})))
                    .await,
            ),
            (
                "register",
                e.id.register(&e.op, ip(), b(json!({"username": s, "password": PW})))
                    .await,
            ),
            (
                "email",
                e.id.update_profile(&p, ip(), b(json!({"email": s}))).await,
            ),
            (
                "model",
                e.id.create_key(&p, ip(), &[], b(json!({"name": "m", "models": [s]})))
                    .await,
            ),
            ("get user", e.id.get_user(&e.op, ip(), s).await),
            (
                "role filter",
                e.id.list_users(&e.op, ip(), &[("role".into(), s.into())])
                    .await,
            ),
        ] {
            let status = res.map(|r| r.status).unwrap_or_else(|e| e.status());
            assert!(
                matches!(status, 200 | 201 | 400 | 401 | 404),
                "{what} {s:?} -> {status}"
            );
        }
        let r =
            e.id.list_users(&e.op, ip(), &[("q".into(), s.chars().take(60).collect())])
                .await
                .expect("search");
        assert_eq!(r.body["data"].as_array().map(Vec::len), Some(0), "{s}");
        assert_eq!(
            e.id.authenticate(&format!("sk-llmmux-{s}")).await,
            Err(AuthError::Invalid)
        );
        assert_eq!(
            e.id.authenticate(&format!("a.{s}.b")).await,
            Err(AuthError::Invalid)
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{s:?} took {:?}",
            t.elapsed()
        );
    }
    // CRLF, huge strings, wrong types and unknown fields are 400 with a message.
    for body in [
        json!({"name": "a\r\nX-Injected: 1"}),
        json!({"name": "x".repeat(10_000)}),
        json!({"name": 5}),
        json!({"name": "ok", "owner": "someone"}),
        json!(["not", "an", "object"]),
    ] {
        let r = e.id.create_key(&p, ip(), &[], b(body.clone())).await;
        match r {
            Err(IdentityError::BadRequest(m)) => assert!(!m.is_empty() && !m.contains('\n'), "{m}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    let huge = Bytes::from(vec![b' '; 100_000]);
    assert!(matches!(
        e.id.login(ip(), huge).await,
        Err(IdentityError::BadRequest(_))
    ));
    let c = e.db.client().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("users")
        .get(0);
    assert_eq!(n, 2, "the tables are intact");
}

// === rate limits (S11) ===

fn limited(rpm: Option<u32>, tpm: Option<u64>) -> Principal {
    Principal {
        kind: CredentialKind::ApiKey,
        user_id: Some(Uuid::new_v4()),
        key_id: Uuid::new_v4().to_string(),
        role: Role::User,
        models: None,
        limits: Limits { rpm, tpm },
    }
}

fn header<'a>(h: &'a [(http::HeaderName, http::HeaderValue)], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.to_str().ok())
}

#[tokio::test]
async fn per_key_limits_locally() {
    let e = env().await;
    e.register("lim", Role::User).await;
    let (p, _) = e.session("lim").await;
    let (_, key) = e
        .key(&p, json!({"name": "k", "rpm_limit": 5, "tpm_limit": 100}))
        .await;
    let kp = e.id.authenticate(&key).await.expect("key");
    for i in 0..5 {
        let a = e.id.admit(&kp).expect("within the limit");
        assert_eq!(header(&a.headers, "x-ratelimit-limit-requests"), Some("5"));
        assert_eq!(
            header(&a.headers, "x-ratelimit-remaining-requests"),
            Some((4 - i).to_string().as_str())
        );
    }
    let over = e.id.admit(&kp).expect_err("sixth request");
    assert!(over.retry_after > Duration::ZERO && over.retry_after_secs() >= 1);
    assert_eq!(
        header(&over.headers, "x-ratelimit-remaining-requests"),
        Some("0")
    );
    assert!(header(&over.headers, "x-ratelimit-reset-requests").is_some());
    let g = llmmux::error::GatewayError::RateLimited {
        retry_after_secs: over.retry_after_secs(),
        headers: over.headers.clone(),
    }
    .into_response();
    assert_eq!(g.status(), 429);
    assert!(
        g.headers().contains_key("retry-after")
            && g.headers().contains_key("x-ratelimit-limit-requests")
    );

    // Tokens: charged after the answer; the next request waits.
    let local = RateLimiter::local();
    let t = limited(None, Some(100));
    assert!(local.admit(&t).is_ok());
    local.record_tokens(&t, 60, 50);
    let over = local.admit(&t).expect_err("over the token limit");
    assert_eq!(
        header(&over.headers, "x-ratelimit-remaining-tokens"),
        Some("0")
    );
    // Others are unaffected; unlimited principals get no headers.
    assert!(local.admit(&limited(Some(1), Some(100))).is_ok());
    assert!(local
        .admit(&Principal::static_key(0))
        .expect("no limits")
        .headers
        .is_empty());
}

#[tokio::test]
async fn limits_are_shared_through_redis() {
    let prefix = format!("llmmux-test-{}:", Uuid::new_v4());
    let url = "redis://127.0.0.1:6379";
    let interval = Duration::from_millis(50);
    let a = RateLimiter::with_redis(url, &prefix, interval).expect("a");
    let b2 = RateLimiter::with_redis(url, &prefix, interval).expect("b");
    let p = limited(Some(10), None);
    for _ in 0..10 {
        assert!(a.admit(&p).is_ok());
    }
    assert!(a.admit(&p).is_err());
    // Wait until A's counts are in Redis.
    let client = redis::Client::open(url).expect("redis");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis up");
    let pattern = format!("{prefix}rl:{}:*:r", p.key_id);
    let synced = eventually(Duration::from_secs(3), || {
        let (mut conn, pattern) = (conn.clone(), pattern.clone());
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            let mut total = 0u64;
            for k in keys {
                let v: Option<u64> = redis::cmd("GET")
                    .arg(&k)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(None);
                total += v.unwrap_or(0);
            }
            total >= 10
        }
    })
    .await;
    assert!(synced, "A pushed its counts");
    // B has never seen the key: it may admit within one sync interval, then refuses.
    let mut extra = 0;
    let refused = eventually(Duration::from_secs(2), || {
        let ok = b2.admit(&p).is_ok();
        if ok {
            extra += 1;
        }
        async move { !ok }
    })
    .await;
    assert!(refused, "B learns the shared count");
    assert!(
        extra <= 3,
        "over-admission bounded by one interval: {extra}"
    );
    // A hears back B's extra admissions too.
    assert!(a.admit(&p).is_err());
}

// === login throttling and enumeration (S9, S16) ===

#[tokio::test]
async fn failed_logins_are_throttled_uniformly() {
    let e = env_with(&[("LOGIN_MAX_FAILURES_PER_IP", "12")]).await;
    e.register("victim", Role::User).await;
    let attempt = |user: &str, pw: &str, from: IpAddr| {
        let (id, body) = (e.id.clone(), b(json!({"username": user, "password": pw})));
        async move { id.login(from, body).await }
    };
    // Unknown user and wrong password look the same.
    let unknown = attempt("nobody-here", "wrong-password", IpAddr::from([10, 9, 9, 9])).await;
    let wrong = attempt("victim", "wrong-password", IpAddr::from([10, 9, 9, 8])).await;
    assert_eq!(unknown.clone().err(), wrong.clone().err());
    assert_eq!(unknown.err().map(|e| e.status()), Some(401));
    // 5 failures from rotating addresses lock the account, even for the right password.
    for i in 1..4u8 {
        let r = attempt("victim", "wrong-password", IpAddr::from([10, 0, 0, i])).await;
        assert_eq!(r.err().map(|e| e.status()), Some(401));
    }
    let r = attempt("VICTIM", "wrong-password", IpAddr::from([10, 0, 0, 9])).await;
    assert_eq!(r.err().map(|e| e.status()), Some(401));
    let locked = attempt("victim", PW, IpAddr::from([10, 0, 1, 1])).await;
    let Err(IdentityError::Throttled { retry_after }) = locked else {
        panic!("expected 429, got {locked:?}");
    };
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(300));
    // The lock expires (LOGIN_LOCKOUT_BASE = 300 ms), then the right password works.
    let opened = eventually(Duration::from_secs(3), || {
        let f = attempt("victim", PW, IpAddr::from([10, 0, 1, 1]));
        async move { f.await.is_ok() }
    })
    .await;
    assert!(opened);
    // Per address: many unknown names from one client lock that client out.
    let from = IpAddr::from([192, 0, 2, 7]);
    let mut throttled = None;
    for i in 0..30 {
        match attempt(&format!("ghost{i}"), "wrong-password", from).await {
            Err(IdentityError::Throttled { .. }) => {
                throttled = Some(i);
                break;
            }
            Err(e) => assert_eq!(e.status(), 401),
            Ok(_) => panic!("unknown user logged in"),
        }
    }
    assert_eq!(
        throttled,
        Some(12),
        "locked after LOGIN_MAX_FAILURES_PER_IP failures"
    );
    assert!(matches!(
        attempt("victim", PW, from).await,
        Err(IdentityError::Throttled { .. })
    ));
    // Timing: known and unknown names cost about the same (one argon2 check each).
    let mut known = Vec::new();
    let mut ghost = Vec::new();
    for i in 0..4u8 {
        let t = Instant::now();
        let _ = attempt("victim", "bad-password-x", IpAddr::from([172, 16, 0, i])).await;
        known.push(t.elapsed());
        let t = Instant::now();
        let _ = attempt(
            &format!("ghost-x{i}"),
            "bad-password-x",
            IpAddr::from([172, 16, 1, i]),
        )
        .await;
        ghost.push(t.elapsed());
    }
    known.sort();
    ghost.sort();
    let (k, g) = (known[2].as_secs_f64(), ghost[2].as_secs_f64());
    assert!(
        k / g < 3.0 && g / k < 3.0,
        "known {k:.4}s vs unknown {g:.4}s"
    );
}

// === refresh rotation ===

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_session() {
    let e = env().await;
    e.register("ref", Role::User).await;
    let (access, r1) = e.login("ref", PW).await;
    let next =
        e.id.refresh(ip(), b(json!({"refresh_token": r1})))
            .await
            .expect("rotate");
    assert_eq!(next.body["token_type"], "bearer");
    assert_eq!(next.body["expires_in"], 900);
    let r2 = next.body["refresh_token"].as_str().expect("r2").to_owned();
    let a2 = next.body["access_token"].as_str().expect("a2").to_owned();
    assert_ne!(r1, r2);
    assert!(e.id.authenticate(&a2).await.is_ok());
    assert!(e.id.authenticate(&access).await.is_ok(), "same session");
    // r1 again: stolen. The family dies, r2 included, and its access tokens.
    let reuse = e.id.refresh(ip(), b(json!({"refresh_token": r1}))).await;
    assert_eq!(reuse.err().map(|e| e.status()), Some(401));
    assert_eq!(
        e.id.refresh(ip(), b(json!({"refresh_token": r2})))
            .await
            .err()
            .map(|e| e.status()),
        Some(401)
    );
    assert_eq!(e.id.authenticate(&a2).await, Err(AuthError::Revoked));
    assert!(e
        .id
        .refresh(ip(), b(json!({"refresh_token": "rt-nope"})))
        .await
        .is_err());
    assert!(matches!(
        e.id.refresh(ip(), b(json!({"refresh_token": 5}))).await,
        Err(IdentityError::BadRequest(_))
    ));
}

// === activity events ===

#[tokio::test]
async fn activity_is_reported_without_secrets() {
    let e = env().await;
    e.register("act", Role::User).await;
    let _ =
        e.id.login(
            ip(),
            b(json!({"username": "act", "password": "wrong-pass-77"})),
        )
        .await;
    let _ =
        e.id.login(
            ip(),
            b(json!({"username": "pw-in-name-field", "password": "x"})),
        )
        .await;
    let (p, token) = e.session("act").await;
    let (_, key) = e.key(&p, json!({"name": "k"})).await;
    let uid = p.user_id.expect("id").to_string();
    e.id.update_user(
        &e.op,
        ip(),
        &uid,
        b(json!({"role": "ADMIN", "password": "reset-pass-88"})),
    )
    .await
    .expect("update");
    let events = e.events.lock().expect("events").clone();
    let find = |action: &str, outcome: &str| {
        events
            .iter()
            .any(|ev| ev.action == action && ev.outcome == outcome)
    };
    assert!(find("admin_bootstrap", "success"));
    assert!(find("login", "failure") && find("login", "success"));
    assert!(find("user_create", "success") && find("key_create", "success"));
    assert!(find("user_update", "success") && find("user_role_change", "success"));
    let fail = events
        .iter()
        .find(|ev| ev.action == "login" && ev.outcome == "failure")
        .expect("failure");
    assert_eq!(fail.client_ip, Some(ip()));
    let all = format!("{events:?}");
    for secret in [
        PW,
        ADMIN_PW,
        "wrong-pass-77",
        "reset-pass-88",
        "pw-in-name-field",
        key.as_str(),
        token.as_str(),
    ] {
        assert!(!all.contains(secret), "an event carries a secret");
    }
}

/// A start whose start-up migration could not run (the database was down then) migrates
/// before it reads anything, even when the database is back, without its schema, by the
/// time the service starts: the first admin is created after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_the_schema_pending_migrates_before_anything_else() {
    let db = TestDb::create().await;
    let events = Events::default();
    let sink = events.clone();
    let mut s = settings(&db.url(), &[]);
    s.schema_pending = true;
    let id = Identity::start(s, Arc::new(move |e| sink.lock().expect("events").push(e)))
        .await
        .expect("starts on a database without the schema");
    let ready = eventually(Duration::from_secs(10), || async {
        id.login(
            ip(),
            b(json!({"username": "superadmin", "password": ADMIN_PW})),
        )
        .await
        .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(ready, "the first admin can log in once the schema is there");
    let pending = storage::migrate(&db.url()).await.expect("migrate");
    assert!(pending.is_empty(), "migrations left: {pending:?}");
}
