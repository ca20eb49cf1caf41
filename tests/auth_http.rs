//! Identity over HTTP: the real `llmmux` binary as a child process on 127.0.0.1:0, a
//! database of its own per test on the machine's PostgreSQL (or a throwaway server for
//! the tests that take the database away), a simulated vLLM in the test process, and a
//! real HTTP client. Every wait polls a condition with a deadline.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use uuid::Uuid;

use common::child::{llmmux, serve, Running};
use common::pg::{TestDb, ThrowawayPg};
use common::{eventually, servers, sim, ADMIN, KEY};

const SECRET: &str = "auth-http-jwt-secret-0123456789abcdef-xyz";
const ROOT_PW: &str = "root-password-0001";
const PW: &str = "password-1234";

// === harness ===

/// A gateway child process.
struct Gw {
    run: Running,
    addr: String,
}

/// Variables of every test gateway: static keys, the simulated server, quick probes.
fn vars(db_url: &str, sim: &llmmux::sim::SimHandle) -> Vec<(&'static str, String)> {
    vec![
        ("API_KEYS", KEY.into()),
        ("ADMIN_API_KEYS", ADMIN.into()),
        ("VLLM_SERVERS", servers(&[sim])),
        ("HEALTH_CHECK_INTERVAL", "200".into()),
        ("DISCOVERY_INTERVAL", "200".into()),
        ("CONNECT_TIMEOUT", "500".into()),
        ("REQUEST_TIMEOUT", "5000".into()),
        ("SHUTDOWN_GRACE", "500".into()),
        ("LOG_LEVEL", "info".into()),
        ("DATABASE_URL", db_url.into()),
        ("JWT_SECRET", SECRET.into()),
        ("ADMIN_PASSWORD", ROOT_PW.into()),
        ("DB_ACQUIRE_TIMEOUT", "1000".into()),
    ]
}

fn with(
    mut base: Vec<(&'static str, String)>,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    for (k, v) in extra {
        base.retain(|(b, _)| b != k);
        base.push((k, v.to_string()));
    }
    base
}

async fn spawn_gw(vars: Vec<(&'static str, String)>) -> Gw {
    let (run, addr) = tokio::task::spawn_blocking(move || serve(llmmux(), &vars))
        .await
        .expect("spawn");
    let gw = Gw { run, addr };
    gw.models_ready().await;
    gw
}

async fn gateway(db: &TestDb, sim: &llmmux::sim::SimHandle, extra: &[(&'static str, &str)]) -> Gw {
    spawn_gw(with(vars(&db.url(), sim), extra)).await
}

/// A response, read whole.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HeaderMap,
    text: String,
    body: Value,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address is local).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .local_address(IpAddr::from(ip))
        .build()
        .expect("client")
}

/// The body of a request: JSON, raw text, or none.
enum B {
    None,
    Json(Value),
    Raw(String),
}

async fn send(
    c: &reqwest::Client,
    method: &str,
    url: String,
    token: Option<&str>,
    body: B,
) -> Resp {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut r = c.request(m, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r = match body {
        B::None => r,
        B::Json(v) => r.json(&v),
        B::Raw(s) => r.header("content-type", "application/json").body(s),
    };
    let resp = r.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        text,
        body,
    }
}

impl Gw {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn req(&self, method: &str, path: &str, token: Option<&str>, body: B) -> Resp {
        send(&client(), method, self.url(path), token, body).await
    }

    async fn get(&self, path: &str, token: &str) -> Resp {
        self.req("GET", path, Some(token), B::None).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.req("POST", path, token, B::Json(body)).await
    }

    async fn patch(&self, path: &str, token: &str, body: Value) -> Resp {
        self.req("PATCH", path, Some(token), B::Json(body)).await
    }

    async fn delete(&self, path: &str, token: &str) -> Resp {
        self.req("DELETE", path, Some(token), B::None).await
    }

    /// Waits until the simulated server's model is routable (discovery and health).
    async fn models_ready(&self) {
        let ok = eventually(Duration::from_secs(15), || async {
            let r = self.get("/v1/models", KEY).await;
            r.status == 200 && r.text.contains("\"m\"")
        })
        .await;
        assert!(ok, "the gateway at {} never listed the model", self.addr);
    }

    async fn login(&self, user: &str, pw: &str) -> (String, String) {
        let r = self
            .post(
                "/auth/login",
                None,
                json!({"username": user, "password": pw}),
            )
            .await;
        assert_eq!(r.status, 200, "login {user}: {}", r.text);
        assert_eq!(r.body["token_type"], "bearer");
        (
            r.body["access_token"].as_str().expect("access").to_owned(),
            r.body["refresh_token"]
                .as_str()
                .expect("refresh")
                .to_owned(),
        )
    }

    /// Registers `name` with the operator's key; its id.
    async fn register(&self, name: &str, role: &str) -> String {
        let r = self
            .post(
                "/auth/register",
                Some(ADMIN),
                json!({"username": name, "password": PW, "role": role}),
            )
            .await;
        assert_eq!(r.status, 201, "register {name}: {}", r.text);
        r.body["id"].as_str().expect("id").to_owned()
    }

    async fn create_key(&self, token: &str, body: Value) -> (String, String) {
        let r = self.post("/auth/api-keys", Some(token), body).await;
        assert_eq!(r.status, 201, "create key: {}", r.text);
        (
            r.body["id"].as_str().expect("id").to_owned(),
            r.body["key"].as_str().expect("secret").to_owned(),
        )
    }

    async fn chat(&self, token: &str, model: &str) -> Resp {
        self.post(
            "/v1/chat/completions",
            Some(token),
            json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
    }
}

/// The OpenAI error envelope, exactly: `{"error": {"message", "type", "param", "code"}}`.
#[track_caller]
fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "expected {status} {code}: {}", r.text);
    let top = r.body.as_object().expect("a JSON object");
    assert_eq!(top.len(), 1, "only `error`: {}", r.text);
    let e = r.body["error"].as_object().expect("error object");
    let keys: BTreeSet<&str> = e.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["message", "type", "param", "code"]),
        "{}",
        r.text
    );
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        r.text
    );
    assert!(e["type"].is_string(), "{}", r.text);
    assert!(e["param"].is_null() || e["param"].is_string(), "{}", r.text);
    assert_eq!(e["code"], code, "{}", r.text);
    if status == 401 {
        assert_eq!(
            r.headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer realm=\"llmmux\""),
            "401 without WWW-Authenticate: {}",
            r.text
        );
    }
}

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

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("json")
}

/// Polls `cond` until it holds or `within` passes; how long it took.
async fn within<F, Fut>(limit: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === (a) the role matrix ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix_over_http() {
    let db = TestDb::create().await;
    let s = sim(&["m"]).await;
    let g = gateway(&db, &s, &[]).await;
    let (root, _) = g.login("superadmin", ROOT_PW).await;
    let root_id = g.get("/auth/profile", &root).await.body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let admin_id = g.register("admin1", "ADMIN").await;
    let user_id = g.register("user1", "USER").await;
    let super2 = g.register("super2", "SUPER_ADMIN").await;
    let victim = g.register("victim", "USER").await;
    let (admin, _) = g.login("admin1", PW).await;
    let (user, _) = g.login("user1", PW).await;
    let u = |id: &str| format!("/auth/users/{id}");
    let reg = |name: &str, role: &str| json!({"username": name, "password": PW, "role": role});

    // USER: no account administration at all, not even of their own record.
    assert_error(
        &g.post("/auth/register", Some(&user), reg("x1", "USER"))
            .await,
        403,
        "forbidden",
    );
    assert_error(&g.get("/auth/users", &user).await, 403, "forbidden");
    assert_error(&g.get(&u(&admin_id), &user).await, 403, "forbidden");
    assert_error(&g.get(&u(&user_id), &user).await, 403, "forbidden");
    assert_error(
        &g.patch(&u(&user_id), &user, json!({"role": "ADMIN"})).await,
        403,
        "forbidden",
    );
    assert_error(
        &g.patch(&u(&victim), &user, json!({"enabled": false})).await,
        403,
        "forbidden",
    );
    assert_error(&g.delete(&u(&victim), &user).await, 403, "forbidden");

    // ADMIN: USER and ADMIN accounts, never a SUPER_ADMIN, never their own role.
    assert_eq!(
        g.post("/auth/register", Some(&admin), reg("a-made-user", "USER"))
            .await
            .status,
        201
    );
    assert_eq!(
        g.post("/auth/register", Some(&admin), reg("a-made-admin", "ADMIN"))
            .await
            .status,
        201
    );
    assert_error(
        &g.post(
            "/auth/register",
            Some(&admin),
            reg("a-made-super", "SUPER_ADMIN"),
        )
        .await,
        403,
        "forbidden",
    );
    let list = g.get("/auth/users", &admin).await;
    assert_eq!(list.status, 200, "{}", list.text);
    let names: BTreeSet<&str> = list.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert!(
        names.contains("superadmin") && names.contains("a-made-admin"),
        "{names:?}"
    );
    assert!(
        !list.text.contains("argon2") && !list.text.contains("password"),
        "{}",
        list.text
    );
    assert_eq!(
        g.get(&u(&super2), &admin).await.status,
        200,
        "ADMIN may read a SUPER_ADMIN"
    );
    let r = g
        .patch(&u(&victim), &admin, json!({"email": "v@example.com"}))
        .await;
    assert_eq!(
        (r.status, r.body["email"].as_str()),
        (200, Some("v@example.com")),
        "{}",
        r.text
    );
    assert_eq!(
        g.patch(&u(&victim), &admin, json!({"role": "ADMIN"}))
            .await
            .status,
        200
    );
    assert_error(
        &g.patch(&u(&victim), &admin, json!({"role": "SUPER_ADMIN"}))
            .await,
        403,
        "forbidden",
    );
    assert_error(
        &g.patch(&u(&super2), &admin, json!({"email": "s@example.com"}))
            .await,
        403,
        "forbidden",
    );
    assert_error(
        &g.patch(&u(&super2), &admin, json!({"enabled": false}))
            .await,
        403,
        "forbidden",
    );
    assert_error(
        &g.patch(&u(&super2), &admin, json!({"password": "another-pass-1"}))
            .await,
        403,
        "forbidden",
    );
    assert_error(&g.delete(&u(&super2), &admin).await, 403, "forbidden");
    assert_error(
        &g.patch(&u(&admin_id), &admin, json!({"role": "USER"}))
            .await,
        403,
        "forbidden",
    );
    assert_error(
        &g.patch(&u(&admin_id), &admin, json!({"role": "ADMIN"}))
            .await,
        403,
        "forbidden",
    );
    let r = g.delete(&u(&victim), &admin).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_error(&g.get(&u(&victim), &admin).await, 404, "not_found");
    assert_error(
        &g.get(&u(&Uuid::new_v4().to_string()), &admin).await,
        404,
        "not_found",
    );
    assert_error(
        &g.get("/auth/users/not-a-uuid", &admin).await,
        404,
        "not_found",
    );

    // SUPER_ADMIN: everything but their own role.
    let super3 = {
        let r = g
            .post("/auth/register", Some(&root), reg("super3", "SUPER_ADMIN"))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["id"].as_str().expect("id").to_owned()
    };
    let r = g
        .patch(&u(&user_id), &root, json!({"role": "SUPER_ADMIN"}))
        .await;
    assert_eq!(
        (r.status, r.body["role"].as_str()),
        (200, Some("SUPER_ADMIN")),
        "{}",
        r.text
    );
    assert_error(
        &g.patch(&u(&root_id), &root, json!({"role": "ADMIN"})).await,
        403,
        "forbidden",
    );
    assert_error(
        &g.patch(&u(&root_id), &root, json!({"role": "SUPER_ADMIN"}))
            .await,
        403,
        "forbidden",
    );
    for id in [&super2, &super3, &user_id] {
        let r = g.patch(&u(id), &root, json!({"role": "ADMIN"})).await;
        assert_eq!(r.status, 200, "demote another SUPER_ADMIN: {}", r.text);
    }
    // The last SUPER_ADMIN stays, whoever asks (the operator's key may change roles).
    assert_error(
        &g.patch(&u(&root_id), ADMIN, json!({"role": "ADMIN"})).await,
        409,
        "conflict",
    );
    assert_error(
        &g.patch(&u(&root_id), ADMIN, json!({"enabled": false}))
            .await,
        409,
        "conflict",
    );
    assert_error(&g.delete(&u(&root_id), ADMIN).await, 409, "conflict");
    assert_error(&g.delete(&u(&root_id), &root).await, 409, "conflict");
    let r = g.get(&u(&root_id), ADMIN).await;
    assert_eq!(
        (r.body["role"].as_str(), r.body["enabled"].as_bool()),
        (Some("SUPER_ADMIN"), Some(true))
    );
    // With a second one, the first may go.
    assert_eq!(
        g.patch(&u(&super2), ADMIN, json!({"role": "SUPER_ADMIN"}))
            .await
            .status,
        200
    );
    assert_eq!(g.delete(&u(&root_id), ADMIN).await.status, 200);
    drop(g);
}

// === (b) sessions ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_flows_and_what_ends_them() {
    let db = TestDb::create().await;
    let s = sim(&["m"]).await;
    let g = gateway(&db, &s, &[]).await;
    let alice = g.register("alice", "USER").await;
    let login = g
        .post(
            "/auth/login",
            None,
            json!({"username": "alice", "password": PW}),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.text);
    assert_eq!(login.body["expires_in"], 900);
    assert_eq!(
        login
            .headers
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let a1 = login.body["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let r1 = login.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();

    let p = g.get("/auth/profile", &a1).await;
    assert_eq!(
        (p.status, p.body["username"].as_str()),
        (200, Some("alice")),
        "{}",
        p.text
    );
    assert!(!p.text.contains("argon2") && !p.text.contains("password_hash"));
    let p = g
        .patch("/auth/profile", &a1, json!({"email": "alice@example.com"}))
        .await;
    assert_eq!(
        (p.status, p.body["email"].as_str()),
        (200, Some("alice@example.com"))
    );
    assert_error(
        &g.patch("/auth/profile", &a1, json!({"role": "ADMIN"}))
            .await,
        400,
        "invalid_request",
    );
    assert_eq!(g.get("/v1/models", &a1).await.status, 200);

    // Refresh rotates; presenting a used refresh token revokes the whole session.
    let r = g
        .post("/auth/refresh", None, json!({"refresh_token": r1}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let a2 = r.body["access_token"].as_str().expect("access").to_owned();
    let r2 = r.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_ne!(r1, r2);
    assert_eq!(g.get("/auth/profile", &a2).await.status, 200);
    let reuse = g
        .post("/auth/refresh", None, json!({"refresh_token": r1}))
        .await;
    assert_error(&reuse, 401, "invalid_refresh_token");
    assert_error(
        &g.post("/auth/refresh", None, json!({"refresh_token": r2}))
            .await,
        401,
        "invalid_refresh_token",
    );
    assert_error(&g.get("/auth/profile", &a2).await, 401, "token_revoked");
    assert_error(&g.get("/v1/models", &a1).await, 401, "token_revoked");

    // Logout ends this session only.
    let (a3, r3) = g.login("alice", PW).await;
    let (a4, r4) = g.login("alice", PW).await;
    let out = g.post("/auth/logout", Some(&a3), json!({})).await;
    assert_eq!(out.status, 200, "{}", out.text);
    assert_error(&g.get("/auth/profile", &a3).await, 401, "token_revoked");
    assert_error(
        &g.post("/auth/refresh", None, json!({"refresh_token": r3}))
            .await,
        401,
        "invalid_refresh_token",
    );
    assert_eq!(g.get("/auth/profile", &a4).await.status, 200);

    // A password change ends every other session; the answer is a fresh pair.
    let wrong = g
        .post(
            "/auth/change-password",
            Some(&a4),
            json!({"current_password": "not-it-123", "new_password": "new-password-1"}),
        )
        .await;
    assert_error(&wrong, 401, "invalid_credentials");
    let changed = g
        .post(
            "/auth/change-password",
            Some(&a4),
            json!({"current_password": PW, "new_password": "new-password-1"}),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let a5 = changed.body["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    assert_error(&g.get("/auth/profile", &a4).await, 401, "token_revoked");
    assert_error(
        &g.post("/auth/refresh", None, json!({"refresh_token": r4}))
            .await,
        401,
        "invalid_refresh_token",
    );
    assert_eq!(g.get("/auth/profile", &a5).await.status, 200);
    assert_error(
        &g.post(
            "/auth/login",
            None,
            json!({"username": "alice", "password": PW}),
        )
        .await,
        401,
        "invalid_credentials",
    );
    let (a6, _) = g.login("alice", "new-password-1").await;

    // A role change by an administrator ends every session.
    let r = g
        .patch(
            &format!("/auth/users/{alice}"),
            ADMIN,
            json!({"role": "ADMIN"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_error(&g.get("/auth/profile", &a5).await, 401, "token_revoked");
    assert_error(&g.get("/v1/models", &a6).await, 401, "token_revoked");

    // So does disabling; a disabled account cannot log in or refresh, with the same answer
    // as a wrong password.
    let (a7, r7) = g.login("alice", "new-password-1").await;
    let r = g
        .patch(
            &format!("/auth/users/{alice}"),
            ADMIN,
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_error(&g.get("/auth/profile", &a7).await, 401, "token_revoked");
    let disabled = g
        .post(
            "/auth/login",
            None,
            json!({"username": "alice", "password": "new-password-1"}),
        )
        .await;
    let wrong = g
        .post(
            "/auth/login",
            None,
            json!({"username": "alice", "password": "wrong-password-9"}),
        )
        .await;
    assert_error(&disabled, 401, "invalid_credentials");
    assert_eq!(disabled.text, wrong.text);
    assert_error(
        &g.post("/auth/refresh", None, json!({"refresh_token": r7}))
            .await,
        401,
        "invalid_refresh_token",
    );

    // Logout everywhere.
    let r = g
        .patch(
            &format!("/auth/users/{alice}"),
            ADMIN,
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(r.status, 200);
    let (a8, _) = g.login("alice", "new-password-1").await;
    let (a9, r9) = g.login("alice", "new-password-1").await;
    assert_eq!(
        g.post("/auth/logout", Some(&a8), json!({"all": true}))
            .await
            .status,
        200
    );
    assert_error(&g.get("/auth/profile", &a9).await, 401, "token_revoked");
    assert_error(
        &g.post("/auth/refresh", None, json!({"refresh_token": r9}))
            .await,
        401,
        "invalid_refresh_token",
    );

    // Deleting the account ends its sessions too.
    let (a10, _) = g.login("alice", "new-password-1").await;
    assert_eq!(
        g.delete(&format!("/auth/users/{alice}"), ADMIN)
            .await
            .status,
        200
    );
    let gone = g.get("/auth/profile", &a10).await;
    assert_eq!(gone.status, 401, "{}", gone.text);
    // Endpoints that need a session refuse other credentials.
    assert_error(&g.get("/auth/profile", KEY).await, 403, "forbidden");
    assert_error(
        &g.post("/auth/logout", None, json!({})).await,
        401,
        "invalid_api_key",
    );
    drop(g);
}

// === (c) two gateways, one database ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_gateway_reaches_the_other_within_a_second() {
    let db = TestDb::create().await;
    let s = sim(&["m"]).await;
    let a = gateway(&db, &s, &[]).await;
    let b = gateway(&db, &s, &[]).await;
    let bob = a.register("bob", "USER").await;
    let (session, _) = a.login("bob", PW).await;
    let (key_id, key) = a.create_key(&session, json!({"name": "k1"})).await;
    let (_, key2) = a.create_key(&session, json!({"name": "k2"})).await;
    // B has never seen these: it finds them in the database.
    assert_eq!(b.chat(&key, "m").await.status, 200);
    assert_eq!(b.chat(&key2, "m").await.status, 200);
    assert_eq!(b.get("/v1/models", &session).await.status, 200);

    // A key revoked (disabled) on A stops on B within 1 s.
    let r = a
        .patch(
            &format!("/auth/api-keys/{key_id}"),
            &session,
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let took = within(Duration::from_secs(1), || async {
        b.get("/v1/models", &key).await.status == 401
    })
    .await;
    assert!(
        took.is_some(),
        "B still accepts a key disabled on A after 1 s"
    );
    assert_error(&b.chat(&key, "m").await, 401, "invalid_api_key");
    assert_eq!(
        b.chat(&key2, "m").await.status,
        200,
        "the other key is untouched"
    );

    // A key deleted on A, and a session logged out on A: the same.
    let (k3_id, k3) = a.create_key(&session, json!({"name": "k3"})).await;
    let (other_session, _) = a.login("bob", PW).await;
    assert_eq!(b.chat(&k3, "m").await.status, 200);
    assert_eq!(b.get("/v1/models", &other_session).await.status, 200);
    let r = a.delete(&format!("/auth/api-keys/{k3_id}"), &session).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = a
        .post("/auth/logout", Some(&other_session), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let took = within(Duration::from_secs(1), || async {
        b.get("/v1/models", &k3).await.status == 401
            && b.get("/v1/models", &other_session).await.status == 401
    })
    .await;
    assert!(
        took.is_some(),
        "B still accepts a key deleted / a session logged out on A after 1 s"
    );
    assert_eq!(
        b.get("/v1/models", &session).await.status,
        200,
        "the other session is untouched"
    );

    // Disabling the account on A stops its session and its other keys on B within 1 s.
    let r = a
        .patch(
            &format!("/auth/users/{bob}"),
            ADMIN,
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let took = within(Duration::from_secs(1), || async {
        b.get("/v1/models", &session).await.status == 401
            && b.get("/v1/models", &key2).await.status == 401
    })
    .await;
    assert!(
        took.is_some(),
        "B still serves a user disabled on A after 1 s"
    );
    assert_error(
        &b.get("/auth/profile", &session).await,
        401,
        "token_revoked",
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_limits_are_shared_through_redis() {
    let db = TestDb::create().await;
    let s = sim(&["m"]).await;
    let prefix = format!("llmmux-authhttp-{}:", Uuid::new_v4());
    let extra = [
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("RATE_LIMIT_SYNC_INTERVAL", "50"),
    ];
    let a = gateway(&db, &s, &extra).await;
    let b = gateway(&db, &s, &extra).await;
    a.register("carol", "USER").await;
    let (session, _) = a.login("carol", PW).await;
    let (_, key) = a
        .create_key(&session, json!({"name": "shared", "rpm_limit": 10}))
        .await;
    for i in 0..10 {
        let r = a.chat(&key, "m").await;
        assert_eq!(r.status, 200, "request {i} on A: {}", r.text);
    }
    let r = a.chat(&key, "m").await;
    assert_error(&r, 429, "rate_limit_exceeded");
    // B learns A's count from Redis: it may admit within one sync interval, then refuses.
    // Without sharing it would admit 10 more.
    let extra_admitted = std::sync::atomic::AtomicUsize::new(0);
    let refused = eventually(Duration::from_secs(3), || async {
        let r = b.chat(&key, "m").await;
        if r.status == 200 {
            extra_admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r.status == 429
    })
    .await;
    let extra_admitted = extra_admitted.into_inner();
    assert!(refused, "B never refused ({extra_admitted} admitted)");
    assert!(
        extra_admitted <= 3,
        "B over-admitted {extra_admitted} (bounded by one sync interval)"
    );
    assert_eq!(a.chat(&key, "m").await.status, 429);
    drop((a, b));
}

// === (d) the database taken away ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_serves_known_credentials_and_503s_the_rest() {
    let mut pg = ThrowawayPg::start();
    let db = TestDb::create_on(&pg.server()).await;
    let s = sim(&["m"]).await;
    let g = spawn_gw(vars(&db.url(), &s)).await;
    g.register("dave", "USER").await;
    let (session, _) = g.login("dave", PW).await;
    let (_, key) = g.create_key(&session, json!({"name": "k"})).await;
    assert_eq!(g.chat(&key, "m").await.status, 200);
    let (unknown, _) = llmmux::identity::secrets::new_api_key().expect("random");

    pg.stop();
    // Known credentials keep being served from the cache.
    assert_eq!(
        g.chat(&key, "m").await.status,
        200,
        "a cached key works during the outage"
    );
    assert_eq!(
        g.get("/v1/models", &session).await.status,
        200,
        "a cached session works"
    );
    assert_eq!(g.chat(KEY, "m").await.status, 200, "static keys work");
    // Unknown keys and new logins: a clear 503 within 2 s, nothing internal in it.
    let port = pg.port.to_string();
    let clean = |r: &Resp| {
        for bad in [
            "127.0.0.1",
            port.as_str(),
            "SELECT",
            "postgres",
            "SQLSTATE",
            "users",
            "refused",
        ] {
            assert!(!r.text.contains(bad), "{bad:?} in {}", r.text);
        }
    };
    let t = Instant::now();
    let r = g.chat(&unknown, "m").await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "503 took {:?}",
        t.elapsed()
    );
    assert_error(&r, 503, "unavailable");
    clean(&r);
    let t = Instant::now();
    let r = g
        .post(
            "/auth/login",
            None,
            json!({"username": "dave", "password": PW}),
        )
        .await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "503 took {:?}",
        t.elapsed()
    );
    assert_error(&r, 503, "unavailable");
    assert!(r.headers.contains_key("retry-after"));
    clean(&r);
    let r = g
        .post("/auth/api-keys", Some(&session), json!({"name": "k2"}))
        .await;
    assert_error(&r, 503, "unavailable");
    clean(&r);

    pg.resume();
    assert!(pg.wait_ready(Duration::from_secs(30)).await);
    let back = eventually(Duration::from_secs(15), || async {
        g.post(
            "/auth/login",
            None,
            json!({"username": "dave", "password": PW}),
        )
        .await
        .status
            == 200
    })
    .await;
    assert!(back, "logins work again once the database is back");
    assert_error(&g.chat(&unknown, "m").await, 401, "invalid_api_key");
    let (_, key2) = g.create_key(&session, json!({"name": "k3"})).await;
    assert_eq!(g.chat(&key2, "m").await.status, 200);
    drop(g);
    drop(db);
}

// === (e) bad input ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_400_never_a_500() {
    let db = TestDb::create().await;
    let s = sim(&["m"]).await;
    let g = gateway(&db, &s, &[]).await;
    let erin = g.register("erin", "USER").await;
    let (session, _) = g.login("erin", PW).await;
    let (key_id, _) = g.create_key(&session, json!({"name": "k"})).await;
    let huge = "x".repeat(10_000);
    let sqls = [
        "'; DROP TABLE users; --",
        "\" OR \"1\"=\"1",
        "' OR '1'='1",
        "admin'--",
        "%",
        "_",
        "\\",
        "1; SELECT pg_sleep(10)",
        "$$; DROP TABLE api_keys; $$",
    ];
    // (method, path, token, body) → 400
    let mut cases: Vec<(&str, String, Option<String>, B)> = Vec::new();
    let user_path = format!("/auth/users/{erin}");
    let key_path = format!("/auth/api-keys/{key_id}");
    let targets: Vec<(&str, String, Option<String>)> = vec![
        ("POST", "/auth/login".into(), None),
        ("POST", "/auth/refresh".into(), None),
        ("POST", "/auth/register".into(), Some(ADMIN.into())),
        ("PATCH", user_path.clone(), Some(ADMIN.into())),
        ("POST", "/auth/api-keys".into(), Some(session.clone())),
        ("PATCH", key_path.clone(), Some(session.clone())),
        ("PATCH", "/auth/profile".into(), Some(session.clone())),
        (
            "POST",
            "/auth/change-password".into(),
            Some(session.clone()),
        ),
        ("POST", "/auth/logout".into(), Some(session.clone())),
    ];
    for (m, p, t) in &targets {
        for raw in [
            "{\"username\":",
            "{]",
            "[]",
            "null",
            "\"text\"",
            "42",
            "{\"a\":1}{",
            "{\"username\":\"\\ud800\"}",
        ] {
            cases.push((m, p.clone(), t.clone(), B::Raw(raw.into())));
        }
        cases.push((
            m,
            p.clone(),
            t.clone(),
            B::Json(json!({"unknown_field": 1})),
        ));
    }
    let wrong_types = [
        (
            "POST",
            "/auth/login",
            None,
            json!({"username": 5, "password": true}),
        ),
        (
            "POST",
            "/auth/refresh",
            None,
            json!({"refresh_token": ["x"]}),
        ),
        (
            "POST",
            "/auth/register",
            Some(ADMIN),
            json!({"username": "t", "password": PW, "role": 1}),
        ),
        (
            "POST",
            "/auth/register",
            Some(ADMIN),
            json!({"username": "t", "password": PW, "rpm_limit": "10"}),
        ),
        (
            "POST",
            "/auth/register",
            Some(ADMIN),
            json!({"username": "t", "password": PW, "models": "m"}),
        ),
        (
            "PATCH",
            user_path.as_str(),
            Some(ADMIN),
            json!({"enabled": "yes"}),
        ),
        (
            "PATCH",
            user_path.as_str(),
            Some(ADMIN),
            json!({"rpm_limit": 1.5}),
        ),
        (
            "PATCH",
            user_path.as_str(),
            Some(ADMIN),
            json!({"tpm_limit": -1}),
        ),
        (
            "PATCH",
            user_path.as_str(),
            Some(ADMIN),
            json!({"rpm_limit": 99_999_999_999u64}),
        ),
        (
            "PATCH",
            user_path.as_str(),
            Some(ADMIN),
            json!({"role": "ROOT"}),
        ),
        (
            "POST",
            "/auth/api-keys",
            Some(session.as_str()),
            json!({"name": 1}),
        ),
        (
            "POST",
            "/auth/api-keys",
            Some(session.as_str()),
            json!({"name": "k", "expires_at": "tomorrow"}),
        ),
        (
            "POST",
            "/auth/api-keys",
            Some(session.as_str()),
            json!({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}),
        ),
        (
            "POST",
            "/auth/api-keys",
            Some(session.as_str()),
            json!({"name": "k", "models": [1, 2]}),
        ),
        (
            "POST",
            "/auth/api-keys",
            Some(session.as_str()),
            json!({"name": "k\r\nX-Injected: 1"}),
        ),
        (
            "PATCH",
            key_path.as_str(),
            Some(session.as_str()),
            json!({"enabled": 0}),
        ),
        (
            "POST",
            "/auth/logout",
            Some(session.as_str()),
            json!({"all": "true"}),
        ),
        (
            "PATCH",
            "/auth/profile",
            Some(session.as_str()),
            json!({"email": 7}),
        ),
        (
            "POST",
            "/auth/change-password",
            Some(session.as_str()),
            json!({"current_password": PW, "new_password": 12345678}),
        ),
        // Oversized fields.
        (
            "POST",
            "/auth/login",
            None,
            json!({"username": huge, "password": PW}),
        ),
        (
            "POST",
            "/auth/login",
            None,
            json!({"username": "erin", "password": huge}),
        ),
        (
            "POST",
            "/auth/register",
            Some(ADMIN),
            json!({"username": huge, "password": PW}),
        ),
        (
            "POST",
            "/auth/register",
            Some(ADMIN),
            json!({"username": "t2", "password": huge}),
        ),
        (
            "POST",
            "/auth/register",
            Some(ADMIN),
            json!({"username": "t3", "password": PW, "email": format!("{huge}@x.io")}),
        ),
        (
            "POST",
            "/auth/api-keys",
            Some(session.as_str()),
            json!({"name": huge}),
        ),
        (
            "POST",
            "/auth/api-keys",
            Some(session.as_str()),
            json!({"name": "k", "models": vec!["m"; 101]}),
        ),
        (
            "POST",
            "/auth/api-keys",
            Some(session.as_str()),
            json!({"name": "k", "models": [huge]}),
        ),
        (
            "PATCH",
            "/auth/profile",
            Some(session.as_str()),
            json!({"email": format!("{huge}@x.io")}),
        ),
        (
            "POST",
            "/auth/change-password",
            Some(session.as_str()),
            json!({"current_password": PW, "new_password": huge}),
        ),
        (
            "POST",
            "/auth/change-password",
            Some(session.as_str()),
            json!({"current_password": PW, "new_password": "short"}),
        ),
        // Control characters (a NUL cannot even be stored in PostgreSQL text).
        (
            "POST",
            "/auth/register",
            Some(ADMIN),
            json!({"username": "nul\u{0}name", "password": PW}),
        ),
        (
            "POST",
            "/auth/register",
            Some(ADMIN),
            json!({"username": "t4", "password": "pass\u{0}word-1"}),
        ),
        (
            "POST",
            "/auth/api-keys",
            Some(session.as_str()),
            json!({"name": "k\u{0}"}),
        ),
    ];
    for (m, p, t, body) in wrong_types {
        cases.push((m, p.to_owned(), t.map(str::to_owned), B::Json(body)));
    }
    // Names allow `_` (and `.`, `-`, `@`): every other metacharacter is refused.
    for sql in sqls.iter().filter(|s| **s != "_") {
        cases.push((
            "POST",
            "/auth/register".into(),
            Some(ADMIN.into()),
            B::Json(json!({"username": sql, "password": PW})),
        ));
        cases.push((
            "PATCH",
            user_path.clone(),
            Some(ADMIN.into()),
            B::Json(json!({"role": sql})),
        ));
        cases.push((
            "POST",
            "/auth/api-keys".into(),
            Some(session.clone()),
            B::Json(json!({"name": "k", "models": [format!("m {sql}")]})),
        ));
    }
    let n = cases.len();
    for (m, p, t, body) in cases {
        let shown = match &body {
            B::Raw(s) => s.chars().take(60).collect::<String>(),
            B::Json(v) => v.to_string().chars().take(60).collect(),
            B::None => String::new(),
        };
        let r = g.req(m, &p, t.as_deref(), body).await;
        assert_eq!(r.status, 400, "{m} {p} {shown}: {}", r.text);
        assert_error(&r, 400, r.body["error"]["code"].as_str().unwrap_or("?"));
        let code = r.body["error"]["code"].as_str().unwrap_or("");
        assert!(
            code == "invalid_request" || code == "invalid_json",
            "{code}"
        );
        assert!(
            !r.text.contains("SQLSTATE") && !r.text.contains("panicked"),
            "{}",
            r.text
        );
    }
    assert!(n > 100, "{n} cases");

    // Bodies over the limit: 413, not read further.
    let big = format!(
        "{{\"username\":\"{}\",\"password\":\"x\"}}",
        "y".repeat(70_000)
    );
    let r = g
        .req("POST", "/auth/login", None, B::Raw(big.clone()))
        .await;
    assert_error(&r, 413, "request_too_large");
    let r = g
        .req("POST", "/auth/register", Some(ADMIN), B::Raw(big))
        .await;
    assert_error(&r, 413, "request_too_large");

    // SQL metacharacters where text is allowed are plain data.
    for (i, sql) in sqls.iter().enumerate() {
        let r = g
            .post("/auth/api-keys", Some(&session), json!({"name": sql}))
            .await;
        assert_eq!(
            (r.status, r.body["name"].as_str()),
            (201, Some(sql.trim())),
            "{}",
            r.text
        );
        let email = format!("o'hara{i}@example.com");
        let r = g
            .patch("/auth/profile", &session, json!({"email": email}))
            .await;
        assert_eq!(r.body["email"].as_str(), Some(email.as_str()), "{}", r.text);
        // A login with it as the name or password: the uniform 401.
        let r = g
            .post(
                "/auth/login",
                None,
                json!({"username": sql, "password": sql}),
            )
            .await;
        assert_error(&r, 401, "invalid_credentials");
        let q: String = form_urlencoded::byte_serialize(sql.as_bytes()).collect();
        let r = g.get(&format!("/auth/users?q={q}"), ADMIN).await;
        assert_eq!(
            (r.status, r.body["data"].as_array().map(Vec::len)),
            (200, Some(0)),
            "q={sql}: {}",
            r.text
        );
        let r = g.get(&format!("/auth/users/{q}"), ADMIN).await;
        assert_error(&r, 404, "not_found");
        let r = g.get(&format!("/auth/api-keys/{q}"), &session).await;
        assert_error(&r, 404, "not_found");
    }
    // A NUL in a login name is a failed login, not a database error.
    let r = g
        .post(
            "/auth/login",
            None,
            json!({"username": "erin\u{0}", "password": PW}),
        )
        .await;
    assert_error(&r, 401, "invalid_credentials");
    // Query strings: unknown, repeated, malformed.
    for q in [
        "limit=abc",
        "limit=-1",
        "limit=100000",
        "role=ROOT",
        "nope=1",
        "limit=1&limit=2",
        "q=%00",
    ] {
        let r = g.get(&format!("/auth/users?{q}"), ADMIN).await;
        assert_error(&r, 400, "invalid_request");
    }
    let r = g
        .get("/auth/api-keys?user_id=%27%20OR%201%3D1", &session)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    // Everything is still there.
    let r = g.get("/auth/users", ADMIN).await;
    assert_eq!(
        (r.status, r.body["data"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{}",
        r.text
    );
    let r = g.get("/auth/api-keys", &session).await;
    assert_eq!(
        r.body["data"].as_array().map(Vec::len),
        Some(1 + sqls.len()),
        "{}",
        r.text
    );
    drop(g);
}

// === (f) forged tokens ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_401_with_www_authenticate() {
    let db = TestDb::create().await;
    let s = sim(&["m"]).await;
    let g = gateway(&db, &s, &[]).await;
    g.register("frank", "USER").await;
    let (real, _) = g.login("frank", PW).await;
    let base = claims_of(&real);
    let t = now();
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let claims = |iat: i64, exp: i64| {
        let mut c = base.clone();
        c["iat"] = json!(iat);
        c["exp"] = json!(exp);
        c
    };
    // The control: a token we sign with the right secret and claims is accepted, so the
    // refusals below are about what was forged.
    let good = sign(SECRET, &hs, &claims(t, t + 600));
    assert_eq!(g.get("/auth/profile", &good).await.status, 200);
    let mut no_exp = claims(t, 0);
    no_exp.as_object_mut().expect("obj").remove("exp");
    let (h, rest) = real.split_once('.').expect("jwt");
    let sig = rest.split_once('.').expect("jwt").1;
    let mut other = claims(t, t + 600);
    other["sub"] = json!(Uuid::new_v4());
    let tampered = format!("{h}.{}.{sig}", URL_SAFE_NO_PAD.encode(other.to_string()));
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims(t, t + 600).to_string())
    );
    let forged: Vec<(&str, String, &str)> = vec![
        (
            "wrong signature",
            sign(
                "some-other-secret-0123456789abcdefgh",
                &hs,
                &claims(t, t + 600),
            ),
            "invalid_api_key",
        ),
        ("tampered payload", tampered, "invalid_api_key"),
        ("alg none", none, "invalid_api_key"),
        (
            "alg none, signed",
            sign(SECRET, &json!({"alg": "none"}), &claims(t, t + 600)),
            "invalid_api_key",
        ),
        (
            "HS512 header",
            sign(SECRET, &json!({"alg": "HS512"}), &claims(t, t + 600)),
            "invalid_api_key",
        ),
        (
            "RS256 header",
            sign(SECRET, &json!({"alg": "RS256"}), &claims(t, t + 600)),
            "invalid_api_key",
        ),
        ("missing exp", sign(SECRET, &hs, &no_exp), "invalid_api_key"),
        (
            "expired",
            sign(SECRET, &hs, &claims(t - 900, t - 120)),
            "token_expired",
        ),
        (
            "lifetime beyond the TTL",
            sign(SECRET, &hs, &claims(t, t + 86_400)),
            "invalid_api_key",
        ),
        ("garbage", "a.b.c".into(), "invalid_api_key"),
        ("not base64", "%%%.&&&.***".into(), "invalid_api_key"),
        ("no dots", "eyJhbGciOiJIUzI1NiJ9".into(), "invalid_api_key"),
        (
            "fake key",
            "sk-llmmux-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            "invalid_api_key",
        ),
    ];
    for (what, token, code) in &forged {
        for path in ["/auth/profile", "/v1/models"] {
            let r = g.get(path, token).await;
            assert_eq!(r.status, 401, "{what} on {path}: {}", r.text);
            assert_error(&r, 401, code);
        }
        let r = g.chat(token, "m").await;
        assert_error(&r, 401, code);
    }
    // No credential, another scheme, two headers.
    let r = g.req("GET", "/v1/models", None, B::None).await;
    assert_error(&r, 401, "invalid_api_key");
    let r = client()
        .get(g.url("/v1/models"))
        .header("authorization", format!("Basic {real}"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    drop(g);
}

// === (g) login throttling ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_name_and_address_uniformly() {
    let db = TestDb::create().await;
    let s = sim(&["m"]).await;
    let g = gateway(
        &db,
        &s,
        &[
            ("LOGIN_MAX_FAILURES", "3"),
            ("LOGIN_MAX_FAILURES_PER_IP", "6"),
            ("LOGIN_LOCKOUT_BASE", "60000"),
        ],
    )
    .await;
    g.register("victim", "USER").await;
    g.register("other", "USER").await;
    let login = |from: [u8; 4], user: &'static str, pw: &'static str| {
        let url = g.url("/auth/login");
        async move {
            send(
                &client_from(from),
                "POST",
                url,
                None,
                B::Json(json!({"username": user, "password": pw})),
            )
            .await
        }
    };
    let one = [127, 0, 0, 1];
    let two = [127, 0, 0, 2];
    // Wrong password and unknown name: the same answer.
    let v1 = login(one, "victim", "wrong-pass-1").await;
    let g1 = login(one, "ghost", "wrong-pass-1").await;
    assert_error(&v1, 401, "invalid_credentials");
    assert_eq!((v1.status, &v1.text), (g1.status, &g1.text));
    assert_eq!(login(one, "victim", "wrong-pass-2").await.text, v1.text);
    assert_eq!(login(one, "ghost", "wrong-pass-2").await.text, v1.text);
    assert_eq!(login(one, "victim", "wrong-pass-3").await.text, v1.text);
    // Three failures lock the name, from any address, even with the right password.
    let locked = login(two, "victim", PW).await;
    assert_error(&locked, 429, "rate_limit_exceeded");
    let wait: u64 = locked
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!((1..=60).contains(&wait), "{wait}");
    // An unknown name is locked the same way: a lock says nothing about existence.
    assert_eq!(login(two, "ghost", "wrong-pass-3").await.text, v1.text);
    let ghost_locked = login(two, "ghost", "wrong-pass-4").await;
    assert_error(&ghost_locked, 429, "rate_limit_exceeded");
    assert_eq!(ghost_locked.body, locked.body);
    // Six failures lock the address (127.0.0.1 has five), whatever the names.
    let three = [127, 0, 0, 3];
    for user in ["n1", "n2", "n3", "n4", "n5", "n6"] {
        assert_eq!(login(three, user, "wrong-pass-1").await.status, 401);
    }
    assert_error(&login(three, "other", PW).await, 429, "rate_limit_exceeded");
    assert_eq!(
        login([127, 0, 0, 4], "other", PW).await.status,
        200,
        "another address is not locked"
    );
    assert_eq!(
        login(one, "other", PW).await.status,
        200,
        "five failures do not lock an address"
    );
    drop(g);
}

// === (h) no secrets in logs ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_even_at_trace() {
    let db = TestDb::create().await;
    let s = sim(&["m"]).await;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = lines.clone();
    // Trust authentication ignores the password in the URL; it must not be logged anyway.
    let db_url = db.url().replace("postgres@", "postgres:db-password-5678@");
    let pepper = "auth-http-pepper-0123456789abcdef-0123456789";
    let vars = with(
        vars(&db_url, &s),
        &[("LOG_LEVEL", "trace"), ("API_KEY_PEPPER", pepper)],
    );
    let (run, addr) = tokio::task::spawn_blocking(move || {
        let mut cmd = llmmux();
        cmd.arg("serve")
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("LOG_FORMAT", "json");
        for (k, v) in &vars {
            cmd.env(k, v);
        }
        Running::spawn_capturing(cmd, true, move |line| {
            seen.lock().expect("lines").push(line.to_owned());
            let v: Value = serde_json::from_str(line).ok()?;
            (v["fields"]["message"] == "llmmux listening")
                .then(|| v["fields"]["addr"].as_str().map(str::to_owned))?
        })
    })
    .await
    .expect("spawn");
    let g = Gw { run, addr };
    g.models_ready().await;
    let (root, root_refresh) = g.login("superadmin", ROOT_PW).await;
    let user_pw = "user-secret-pass-77";
    let new_pw = "user-secret-pass-88";
    let r = g
        .post(
            "/auth/register",
            Some(&root),
            json!({"username": "gina", "password": user_pw}),
        )
        .await;
    assert_eq!(r.status, 201);
    let (access, refresh) = g.login("gina", user_pw).await;
    let (_, key) = g.create_key(&access, json!({"name": "k"})).await;
    assert_eq!(g.chat(&key, "m").await.status, 200);
    assert_eq!(g.chat(&access, "m").await.status, 200);
    let r = g
        .post("/auth/refresh", None, json!({"refresh_token": refresh}))
        .await;
    let access2 = r.body["access_token"].as_str().expect("access").to_owned();
    let refresh2 = r.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let r = g
        .post(
            "/auth/change-password",
            Some(&access2),
            json!({"current_password": user_pw, "new_password": new_pw}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let access3 = r.body["access_token"].as_str().expect("access").to_owned();
    // Failed attempts carry secrets too.
    g.post(
        "/auth/login",
        None,
        json!({"username": "gina", "password": "typo-of-the-pass"}),
    )
    .await;
    g.post("/auth/refresh", None, json!({"refresh_token": refresh}))
        .await;
    g.get(
        "/v1/models",
        "sk-llmmux-not-a-real-key-but-secret-looking-xyz",
    )
    .await;
    // Stop it, and read everything it wrote until its pipes close.
    let Gw { run, .. } = g;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &run.pid().to_string()])
        .status();
    let rest = tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        while let Ok(l) = run.1.recv_timeout(Duration::from_secs(10)) {
            rest.push(l);
        }
        rest
    })
    .await
    .expect("drain");
    let mut all = lines.lock().expect("lines").clone();
    all.extend(rest);
    assert!(all.len() > 50, "trace logging produced {} lines", all.len());
    let key_random = key.trim_start_matches("sk-llmmux-");
    let secrets = [
        ("ADMIN_PASSWORD", ROOT_PW),
        ("password", user_pw),
        ("new password", new_pw),
        ("typed password", "typo-of-the-pass"),
        ("access token", access.as_str()),
        (
            "access token signature",
            access.rsplit('.').next().unwrap_or(""),
        ),
        ("refreshed access token", access2.as_str()),
        ("access token after the password change", access3.as_str()),
        ("root access token", root.as_str()),
        ("refresh token", refresh.as_str()),
        ("rotated refresh token", refresh2.as_str()),
        ("root refresh token", root_refresh.as_str()),
        ("API key", key.as_str()),
        ("API key random part", key_random),
        ("unknown key", "not-a-real-key-but-secret-looking"),
        ("JWT_SECRET", SECRET),
        ("API_KEY_PEPPER", pepper),
        ("database password", "db-password-5678"),
        ("password hash", "$argon2id$"),
    ];
    for (what, secret) in secrets {
        assert!(secret.len() >= 8, "{what}");
        if let Some(line) = all.iter().find(|l| l.contains(secret)) {
            panic!(
                "{what} in the log: {}",
                line.chars().take(400).collect::<String>()
            );
        }
    }
}

// === (i) API keys ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_models_limits_expiry_and_revocation() {
    let db = TestDb::create().await;
    let s = sim(&["m", "other"]).await;
    let g = gateway(&db, &s, &[]).await;
    let hank = g.register("hank", "USER").await;
    let (session, _) = g.login("hank", PW).await;
    let r = g
        .post(
            "/auth/api-keys",
            Some(&session),
            json!({"name": "scoped", "models": ["m"], "rpm_limit": 3}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let key = r.body["key"].as_str().expect("secret").to_owned();
    let key_id = r.body["id"].as_str().expect("id").to_owned();
    assert!(
        key.starts_with("sk-llmmux-") && key.len() >= "sk-llmmux-".len() + 22,
        "{key}"
    );
    assert!(key.starts_with(
        r.body["key_name"]
            .as_str()
            .expect("key_name")
            .trim_end_matches("...")
    ));
    assert_eq!(
        r.headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    // The secret is shown once: never in listings or reads.
    let list = g.get("/auth/api-keys", &session).await;
    assert_eq!(
        list.body["data"].as_array().map(Vec::len),
        Some(1),
        "{}",
        list.text
    );
    assert!(!list.text.contains(&key[12..]), "{}", list.text);
    let one = g.get(&format!("/auth/api-keys/{key_id}"), &session).await;
    assert!(
        one.status == 200 && !one.text.contains(&key[12..]),
        "{}",
        one.text
    );

    // Models: only the allowed ones are listed, and the others are refused before any
    // server is called.
    let models = g.get("/v1/models", &key).await;
    let ids: Vec<&str> = models.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["m"], "{}", models.text);
    let before = s.stats().inference_requests;
    let r = g.chat(&key, "other").await;
    assert_error(&r, 403, "model_not_allowed");
    assert_eq!(r.body["error"]["param"], "model");
    assert_eq!(
        s.stats().inference_requests,
        before,
        "no backend was called"
    );

    // Requests per minute: three, then 429 with Retry-After and x-ratelimit-*.
    for i in 0..3 {
        let r = g.chat(&key, "m").await;
        assert_eq!(r.status, 200, "{i}: {}", r.text);
        let h = |n: &str| {
            r.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(h("x-ratelimit-limit-requests").as_deref(), Some("3"));
        assert_eq!(
            h("x-ratelimit-remaining-requests"),
            Some((2 - i).to_string())
        );
    }
    let r = g.chat(&key, "m").await;
    assert_error(&r, 429, "rate_limit_exceeded");
    let h = |n: &str| {
        r.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry: u64 = h("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    // Sliding window: until the next window plus the decay of this one's count (< 2 min).
    assert!((1..=120).contains(&retry), "{retry}");
    assert_eq!(h("x-ratelimit-limit-requests").as_deref(), Some("3"));
    assert_eq!(h("x-ratelimit-remaining-requests").as_deref(), Some("0"));
    assert!(h("x-ratelimit-reset-requests").is_some(), "{:?}", r.headers);
    assert_eq!(
        g.chat(KEY, "m").await.status,
        200,
        "other credentials are not limited"
    );

    // Expiry: a key that expires in 2 s works, then gets 401.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, expiring) = g
        .create_key(&session, json!({"name": "short-lived", "expires_at": soon}))
        .await;
    assert_eq!(g.get("/v1/models", &expiring).await.status, 200);
    let expired = eventually(Duration::from_secs(10), || async {
        g.get("/v1/models", &expiring).await.status == 401
    })
    .await;
    assert!(expired, "the key still works after its expiry");
    assert_error(&g.chat(&expiring, "m").await, 401, "invalid_api_key");

    // Revocation: disabled → 401 at once; enabled again → works; deleted → 401 and gone.
    let (k2_id, k2) = g.create_key(&session, json!({"name": "revocable"})).await;
    assert_eq!(g.chat(&k2, "m").await.status, 200);
    let k2_path = format!("/auth/api-keys/{k2_id}");
    assert_eq!(
        g.patch(&k2_path, &session, json!({"enabled": false}))
            .await
            .status,
        200
    );
    assert_error(&g.chat(&k2, "m").await, 401, "invalid_api_key");
    assert_eq!(
        g.patch(&k2_path, &session, json!({"enabled": true}))
            .await
            .status,
        200
    );
    assert_eq!(g.chat(&k2, "m").await.status, 200);
    assert_eq!(g.delete(&k2_path, &session).await.status, 200);
    assert_error(&g.chat(&k2, "m").await, 401, "invalid_api_key");
    assert_error(&g.get(&k2_path, &session).await, 404, "not_found");

    // Another user sees none of it; a key manages nothing.
    g.register("ivy", "USER").await;
    let (ivy, _) = g.login("ivy", PW).await;
    assert_error(
        &g.get(&format!("/auth/api-keys/{key_id}"), &ivy).await,
        404,
        "not_found",
    );
    assert_error(
        &g.delete(&format!("/auth/api-keys/{key_id}"), &ivy).await,
        404,
        "not_found",
    );
    assert_error(
        &g.get(&format!("/auth/api-keys?user_id={hank}"), &ivy).await,
        404,
        "not_found",
    );
    assert_error(
        &g.post("/auth/api-keys", Some(&key), json!({"name": "x"}))
            .await,
        403,
        "forbidden",
    );
    assert_error(&g.get("/auth/users", &key).await, 403, "forbidden");

    // A key never exceeds its owner.
    let r = g
        .patch(
            &format!("/auth/users/{hank}"),
            ADMIN,
            json!({"models": ["m"], "rpm_limit": 5}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (session, _) = g.login("hank", PW).await;
    assert_error(
        &g.post(
            "/auth/api-keys",
            Some(&session),
            json!({"name": "x", "models": ["*"]}),
        )
        .await,
        403,
        "forbidden",
    );
    assert_error(
        &g.post(
            "/auth/api-keys",
            Some(&session),
            json!({"name": "x", "rpm_limit": 10}),
        )
        .await,
        403,
        "forbidden",
    );
    let (_, narrow) = g.create_key(&session, json!({"name": "inherits"})).await;
    assert_error(&g.chat(&narrow, "other").await, 403, "model_not_allowed");
    // Administrators manage anyone's keys.
    let r = g
        .post(
            &format!("/auth/api-keys?user_id={hank}"),
            Some(ADMIN),
            json!({"name": "by-ops"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    drop(g);
}

// === defects: the last SUPER_ADMIN under concurrency ===

/// Enabled SUPER_ADMINs, as the operator sees them.
async fn supers(g: &Gw) -> usize {
    let r = g.get("/auth/users?role=SUPER_ADMIN", ADMIN).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|u| u["enabled"] == true)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_demotions_of_the_last_two_super_admins_leave_one() {
    let db = TestDb::create().await;
    let s = sim(&["m"]).await;
    let g = gateway(&db, &s, &[]).await;
    let (root, _) = g.login("superadmin", ROOT_PW).await;
    let root_id = g.get("/auth/profile", &root).await.body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let s2 = g.register("s2", "SUPER_ADMIN").await;
    let ids = [root_id.clone(), s2.clone()];
    for round in 0..8 {
        assert_eq!(supers(&g).await, 2, "round {round}");
        // Two administrators at once, each demoting (or disabling, or deleting) one of the
        // last two.
        let change = |i: usize| {
            let path = format!("/auth/users/{}", ids[i]);
            let g = &g;
            async move {
                match round % 3 {
                    0 => g.patch(&path, ADMIN, json!({"role": "ADMIN"})).await,
                    1 => g.patch(&path, ADMIN, json!({"enabled": false})).await,
                    _ if i == 0 => g.patch(&path, ADMIN, json!({"role": "USER"})).await,
                    _ => {
                        g.patch(&path, ADMIN, json!({"enabled": false, "role": "ADMIN"}))
                            .await
                    }
                }
            }
        };
        let (a, b) = tokio::join!(change(0), change(1));
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 409],
            "round {round}: {} / {}",
            a.text,
            b.text
        );
        let loser = if a.status == 409 { &b } else { &a };
        assert_error(if a.status == 409 { &a } else { &b }, 409, "conflict");
        assert_eq!(
            supers(&g).await,
            1,
            "round {round}: exactly one SUPER_ADMIN left"
        );
        // Restore the demoted one.
        let id = loser.body["id"].as_str().expect("id");
        let r = g
            .patch(
                &format!("/auth/users/{id}"),
                ADMIN,
                json!({"role": "SUPER_ADMIN", "enabled": true}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // The same with the two SUPER_ADMINs' own sessions, each demoting the other.
    let (root, _) = g.login("superadmin", ROOT_PW).await;
    let (s2_session, _) = g.login("s2", PW).await;
    let (p_s2, p_root) = (
        format!("/auth/users/{s2}"),
        format!("/auth/users/{root_id}"),
    );
    let (a, b) = tokio::join!(
        g.patch(&p_s2, &root, json!({"role": "ADMIN"})),
        g.patch(&p_root, &s2_session, json!({"role": "ADMIN"})),
    );
    assert!(
        a.status == 200 || b.status == 200,
        "{} / {}",
        a.text,
        b.text
    );
    assert!(a.status != b.status, "{} / {}", a.text, b.text);
    assert_eq!(supers(&g).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_admin_that_changed_during_the_request_is_still_protected() {
    // update_user used to decide on a row read before hashing the new password: a patch
    // that demotes a *disabled* SUPER_ADMIN is not a removal, but if meanwhile that
    // account is enabled and the other SUPER_ADMIN demoted, it is the last one.
    let db = TestDb::create().await;
    let s = sim(&["m"]).await;
    let g = gateway(
        &db,
        &s,
        &[
            ("PASSWORD_HASH_CONCURRENCY", "1"),
            ("LOGIN_MAX_FAILURES_PER_IP", "1000"),
            ("LOGIN_MAX_FAILURES", "1000"),
        ],
    )
    .await;
    let (root, _) = g.login("superadmin", ROOT_PW).await;
    let root_id = g.get("/auth/profile", &root).await.body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let x = g.register("x-super", "SUPER_ADMIN").await;
    assert_eq!(
        g.patch(
            &format!("/auth/users/{x}"),
            ADMIN,
            json!({"enabled": false})
        )
        .await
        .status,
        200
    );
    // Queue password hashes so the patch below waits for its own.
    let url = g.url("/auth/login");
    let queue: Vec<_> = (0..40)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                send(
                    &client(),
                    "POST",
                    url,
                    None,
                    B::Json(json!({"username": format!("nobody{i}"), "password": "wrong-pass-1"})),
                )
                .await
                .status
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let patch_url = g.url(&format!("/auth/users/{x}"));
    let stale = tokio::spawn(async move {
        send(
            &client(),
            "PATCH",
            patch_url,
            Some(ADMIN),
            B::Json(json!({"role": "ADMIN", "password": "reset-password-1"})),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Meanwhile: x is enabled again, and root is demoted (x is still there).
    assert_eq!(
        g.patch(&format!("/auth/users/{x}"), ADMIN, json!({"enabled": true}))
            .await
            .status,
        200
    );
    let r = g
        .patch(
            &format!("/auth/users/{root_id}"),
            ADMIN,
            json!({"role": "ADMIN"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        !stale.is_finished(),
        "the patch was meant to be still hashing"
    );
    let r = stale.await.expect("patch");
    for q in queue {
        assert_eq!(q.await.expect("login"), 401);
    }
    assert_error(&r, 409, "conflict");
    assert_eq!(
        supers(&g).await,
        1,
        "x is the last SUPER_ADMIN and stays one"
    );
}

// === defects: create-admin, and a start without the database ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_admin_hashes_the_password_once() {
    use llmmux::identity::bootstrap::{create_admin, AdminOutcome};
    use llmmux::identity::password::hashes_computed;
    let db = TestDb::create().await;
    llmmux::storage::migrate(&db.url()).await.expect("migrate");
    let pool = llmmux::storage::Db::new(&llmmux::storage::DbSettings {
        url: llmmux::config::Secret::new(db.url()),
        pool_size: 2,
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
    })
    .expect("pool");
    let hook = llmmux::identity::no_activity();
    let before = hashes_computed();
    let out = create_admin(&pool, "ops", "ops-password-1", &hook)
        .await
        .expect("created");
    assert_eq!(out, AdminOutcome::Created);
    assert_eq!(
        hashes_computed() - before,
        1,
        "one argon2 hash per create-admin"
    );
    let before = hashes_computed();
    let out = create_admin(&pool, "ops", "ops-password-2", &hook)
        .await
        .expect("reset");
    assert_eq!(out, AdminOutcome::Reset);
    assert_eq!(hashes_computed() - before, 1);
    // And the hash is the password's: the gateway logs in with it.
    let s = sim(&["m"]).await;
    let g = gateway(&db, &s, &[]).await;
    let (t, _) = g.login("ops", "ops-password-2").await;
    assert_eq!(g.get("/auth/profile", &t).await.body["role"], "SUPER_ADMIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_starts_with_the_database_down_and_bootstraps_when_it_is_back() {
    let mut pg = ThrowawayPg::start();
    let db = TestDb::create_on(&pg.server()).await;
    pg.stop();
    let s = sim(&["m"]).await;
    // It starts (spawn_gw waits for it to list the model with the static key)...
    let g = spawn_gw(vars(&db.url(), &s)).await;
    assert_eq!(
        g.chat(KEY, "m").await.status,
        200,
        "static keys work without the database"
    );
    // ...and what needs the database answers 503, quickly.
    let t = Instant::now();
    let r = g
        .post(
            "/auth/login",
            None,
            json!({"username": "superadmin", "password": ROOT_PW}),
        )
        .await;
    assert_error(&r, 503, "unavailable");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let (unknown, _) = llmmux::identity::secrets::new_api_key().expect("random");
    assert_error(&g.chat(&unknown, "m").await, 503, "unavailable");

    pg.resume();
    assert!(pg.wait_ready(Duration::from_secs(30)).await);
    let ok = eventually(Duration::from_secs(20), || async {
        g.post(
            "/auth/login",
            None,
            json!({"username": "superadmin", "password": ROOT_PW}),
        )
        .await
        .status
            == 200
    })
    .await;
    assert!(
        ok,
        "the first SUPER_ADMIN was created once the database came back"
    );
    let (root, _) = g.login("superadmin", ROOT_PW).await;
    let r = g
        .post(
            "/auth/register",
            Some(&root),
            json!({"username": "late", "password": PW}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (late, _) = g.login("late", PW).await;
    let (_, key) = g.create_key(&late, json!({"name": "k"})).await;
    assert_eq!(g.chat(&key, "m").await.status, 200);
    assert_error(&g.chat(&unknown, "m").await, 401, "invalid_api_key");
    drop(g);
    drop(db);
}

// === the official `openai` Python SDK against database keys and sessions ===

const SDK_SCRIPT: &str = r#"
import sys, openai
from openai import OpenAI
base, key, session, model = sys.argv[1:5]
msgs = [{"role": "user", "content": "hi"}]
c = OpenAI(base_url=base, api_key=key, max_retries=0)
r = c.chat.completions.create(model=model, messages=msgs)
assert r.choices[0].message.content, r
ids = [m.id for m in c.models.list()]
assert ids == [model], ids
try:
    c.chat.completions.create(model="other", messages=msgs)
    raise SystemExit("a model outside the key's list was served")
except openai.PermissionDeniedError as e:
    assert e.code == "model_not_allowed", e.code
c.chat.completions.create(model=model, messages=msgs)
try:
    c.chat.completions.create(model=model, messages=msgs)
    raise SystemExit("the third request of a 2 rpm key was served")
except openai.RateLimitError as e:
    h = e.response.headers
    assert int(h["retry-after"]) >= 1, dict(h)
    assert h["x-ratelimit-remaining-requests"] == "0", dict(h)
    assert e.code == "rate_limit_exceeded", e.code
s = OpenAI(base_url=base, api_key=session, max_retries=0)
assert [m.id for m in s.models.list()] == ["m", "other"]
try:
    OpenAI(base_url=base, api_key="sk-llmmux-not-a-key", max_retries=0).models.list()
    raise SystemExit("an unknown key was accepted")
except openai.AuthenticationError as e:
    assert e.code == "invalid_api_key", e.code
print("sdk ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_with_database_keys_and_sessions() {
    let python = std::env::var("LLMMUX_PYTHON").expect(
        "LLMMUX_PYTHON must point to a Python with the `openai` package (bash .ci/test sets it up)",
    );
    let db = TestDb::create().await;
    let s = sim(&["m", "other"]).await;
    let g = gateway(&db, &s, &[]).await;
    g.register("sdk", "USER").await;
    let (session, _) = g.login("sdk", PW).await;
    let (_, key) = g
        .create_key(
            &session,
            json!({"name": "sdk", "models": ["m"], "rpm_limit": 2}),
        )
        .await;
    let out = tokio::process::Command::new(&python)
        .args(["-c", SDK_SCRIPT, &g.url("/v1"), &key, &session, "m"])
        .output()
        .await
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sdk ok"));
}
