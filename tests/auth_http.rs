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
        ("LOG_LEVEL", "warn".into()),
        ("DATABASE_URL", db_url.into()),
        ("JWT_SECRET", SECRET.into()),
        ("ADMIN_PASSWORD", ROOT_PW.into()),
        ("DB_ACQUIRE_TIMEOUT", "1000".into()),
    ]
}

fn with(mut base: Vec<(&'static str, String)>, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
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

async fn send(c: &reqwest::Client, method: &str, url: String, token: Option<&str>, body: B) -> Resp {
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
            .post("/auth/login", None, json!({"username": user, "password": pw}))
            .await;
        assert_eq!(r.status, 200, "login {user}: {}", r.text);
        assert_eq!(r.body["token_type"], "bearer");
        (
            r.body["access_token"].as_str().expect("access").to_owned(),
            r.body["refresh_token"].as_str().expect("refresh").to_owned(),
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
    assert_error(&g.post("/auth/register", Some(&user), reg("x1", "USER")).await, 403, "forbidden");
    assert_error(&g.get("/auth/users", &user).await, 403, "forbidden");
    assert_error(&g.get(&u(&admin_id), &user).await, 403, "forbidden");
    assert_error(&g.get(&u(&user_id), &user).await, 403, "forbidden");
    assert_error(&g.patch(&u(&user_id), &user, json!({"role": "ADMIN"})).await, 403, "forbidden");
    assert_error(&g.patch(&u(&victim), &user, json!({"enabled": false})).await, 403, "forbidden");
    assert_error(&g.delete(&u(&victim), &user).await, 403, "forbidden");

    // ADMIN: USER and ADMIN accounts, never a SUPER_ADMIN, never their own role.
    assert_eq!(g.post("/auth/register", Some(&admin), reg("a-made-user", "USER")).await.status, 201);
    assert_eq!(g.post("/auth/register", Some(&admin), reg("a-made-admin", "ADMIN")).await.status, 201);
    assert_error(&g.post("/auth/register", Some(&admin), reg("a-made-super", "SUPER_ADMIN")).await, 403, "forbidden");
    let list = g.get("/auth/users", &admin).await;
    assert_eq!(list.status, 200, "{}", list.text);
    let names: BTreeSet<&str> = list.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert!(names.contains("superadmin") && names.contains("a-made-admin"), "{names:?}");
    assert!(!list.text.contains("argon2") && !list.text.contains("password"), "{}", list.text);
    assert_eq!(g.get(&u(&super2), &admin).await.status, 200, "ADMIN may read a SUPER_ADMIN");
    let r = g.patch(&u(&victim), &admin, json!({"email": "v@example.com"})).await;
    assert_eq!((r.status, r.body["email"].as_str()), (200, Some("v@example.com")), "{}", r.text);
    assert_eq!(g.patch(&u(&victim), &admin, json!({"role": "ADMIN"})).await.status, 200);
    assert_error(&g.patch(&u(&victim), &admin, json!({"role": "SUPER_ADMIN"})).await, 403, "forbidden");
    assert_error(&g.patch(&u(&super2), &admin, json!({"email": "s@example.com"})).await, 403, "forbidden");
    assert_error(&g.patch(&u(&super2), &admin, json!({"enabled": false})).await, 403, "forbidden");
    assert_error(&g.patch(&u(&super2), &admin, json!({"password": "another-pass-1"})).await, 403, "forbidden");
    assert_error(&g.delete(&u(&super2), &admin).await, 403, "forbidden");
    assert_error(&g.patch(&u(&admin_id), &admin, json!({"role": "USER"})).await, 403, "forbidden");
    assert_error(&g.patch(&u(&admin_id), &admin, json!({"role": "ADMIN"})).await, 403, "forbidden");
    let r = g.delete(&u(&victim), &admin).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_error(&g.get(&u(&victim), &admin).await, 404, "not_found");
    assert_error(&g.get(&u(&Uuid::new_v4().to_string()), &admin).await, 404, "not_found");
    assert_error(&g.get("/auth/users/not-a-uuid", &admin).await, 404, "not_found");

    // SUPER_ADMIN: everything but their own role.
    let super3 = {
        let r = g.post("/auth/register", Some(&root), reg("super3", "SUPER_ADMIN")).await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["id"].as_str().expect("id").to_owned()
    };
    let r = g.patch(&u(&user_id), &root, json!({"role": "SUPER_ADMIN"})).await;
    assert_eq!((r.status, r.body["role"].as_str()), (200, Some("SUPER_ADMIN")), "{}", r.text);
    assert_error(&g.patch(&u(&root_id), &root, json!({"role": "ADMIN"})).await, 403, "forbidden");
    assert_error(&g.patch(&u(&root_id), &root, json!({"role": "SUPER_ADMIN"})).await, 403, "forbidden");
    for id in [&super2, &super3, &user_id] {
        let r = g.patch(&u(id), &root, json!({"role": "ADMIN"})).await;
        assert_eq!(r.status, 200, "demote another SUPER_ADMIN: {}", r.text);
    }
    // The last SUPER_ADMIN stays, whoever asks (the operator's key may change roles).
    assert_error(&g.patch(&u(&root_id), ADMIN, json!({"role": "ADMIN"})).await, 409, "conflict");
    assert_error(&g.patch(&u(&root_id), ADMIN, json!({"enabled": false})).await, 409, "conflict");
    assert_error(&g.delete(&u(&root_id), ADMIN).await, 409, "conflict");
    assert_error(&g.delete(&u(&root_id), &root).await, 409, "conflict");
    let r = g.get(&u(&root_id), ADMIN).await;
    assert_eq!((r.body["role"].as_str(), r.body["enabled"].as_bool()), (Some("SUPER_ADMIN"), Some(true)));
    // With a second one, the first may go.
    assert_eq!(g.patch(&u(&super2), ADMIN, json!({"role": "SUPER_ADMIN"})).await.status, 200);
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
        .post("/auth/login", None, json!({"username": "alice", "password": PW}))
        .await;
    assert_eq!(login.status, 200, "{}", login.text);
    assert_eq!(login.body["expires_in"], 900);
    assert_eq!(
        login.headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let a1 = login.body["access_token"].as_str().expect("access").to_owned();
    let r1 = login.body["refresh_token"].as_str().expect("refresh").to_owned();

    let p = g.get("/auth/profile", &a1).await;
    assert_eq!((p.status, p.body["username"].as_str()), (200, Some("alice")), "{}", p.text);
    assert!(!p.text.contains("argon2") && !p.text.contains("password_hash"));
    let p = g.patch("/auth/profile", &a1, json!({"email": "alice@example.com"})).await;
    assert_eq!((p.status, p.body["email"].as_str()), (200, Some("alice@example.com")));
    assert_error(&g.patch("/auth/profile", &a1, json!({"role": "ADMIN"})).await, 400, "invalid_request");
    assert_eq!(g.get("/v1/models", &a1).await.status, 200);

    // Refresh rotates; presenting a used refresh token revokes the whole session.
    let r = g.post("/auth/refresh", None, json!({"refresh_token": r1})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let a2 = r.body["access_token"].as_str().expect("access").to_owned();
    let r2 = r.body["refresh_token"].as_str().expect("refresh").to_owned();
    assert_ne!(r1, r2);
    assert_eq!(g.get("/auth/profile", &a2).await.status, 200);
    let reuse = g.post("/auth/refresh", None, json!({"refresh_token": r1})).await;
    assert_error(&reuse, 401, "invalid_refresh_token");
    assert_error(&g.post("/auth/refresh", None, json!({"refresh_token": r2})).await, 401, "invalid_refresh_token");
    assert_error(&g.get("/auth/profile", &a2).await, 401, "token_revoked");
    assert_error(&g.get("/v1/models", &a1).await, 401, "token_revoked");

    // Logout ends this session only.
    let (a3, r3) = g.login("alice", PW).await;
    let (a4, r4) = g.login("alice", PW).await;
    let out = g.post("/auth/logout", Some(&a3), json!({})).await;
    assert_eq!(out.status, 200, "{}", out.text);
    assert_error(&g.get("/auth/profile", &a3).await, 401, "token_revoked");
    assert_error(&g.post("/auth/refresh", None, json!({"refresh_token": r3})).await, 401, "invalid_refresh_token");
    assert_eq!(g.get("/auth/profile", &a4).await.status, 200);

    // A password change ends every other session; the answer is a fresh pair.
    let wrong = g
        .post("/auth/change-password", Some(&a4), json!({"current_password": "not-it-123", "new_password": "new-password-1"}))
        .await;
    assert_error(&wrong, 401, "invalid_credentials");
    let changed = g
        .post("/auth/change-password", Some(&a4), json!({"current_password": PW, "new_password": "new-password-1"}))
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let a5 = changed.body["access_token"].as_str().expect("access").to_owned();
    assert_error(&g.get("/auth/profile", &a4).await, 401, "token_revoked");
    assert_error(&g.post("/auth/refresh", None, json!({"refresh_token": r4})).await, 401, "invalid_refresh_token");
    assert_eq!(g.get("/auth/profile", &a5).await.status, 200);
    assert_error(
        &g.post("/auth/login", None, json!({"username": "alice", "password": PW})).await,
        401,
        "invalid_credentials",
    );
    let (a6, _) = g.login("alice", "new-password-1").await;

    // A role change by an administrator ends every session.
    let r = g.patch(&format!("/auth/users/{alice}"), ADMIN, json!({"role": "ADMIN"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_error(&g.get("/auth/profile", &a5).await, 401, "token_revoked");
    assert_error(&g.get("/v1/models", &a6).await, 401, "token_revoked");

    // So does disabling; a disabled account cannot log in or refresh, with the same answer
    // as a wrong password.
    let (a7, r7) = g.login("alice", "new-password-1").await;
    let r = g.patch(&format!("/auth/users/{alice}"), ADMIN, json!({"enabled": false})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_error(&g.get("/auth/profile", &a7).await, 401, "token_revoked");
    let disabled = g
        .post("/auth/login", None, json!({"username": "alice", "password": "new-password-1"}))
        .await;
    let wrong = g
        .post("/auth/login", None, json!({"username": "alice", "password": "wrong-password-9"}))
        .await;
    assert_error(&disabled, 401, "invalid_credentials");
    assert_eq!(disabled.text, wrong.text);
    assert_error(&g.post("/auth/refresh", None, json!({"refresh_token": r7})).await, 401, "invalid_refresh_token");

    // Logout everywhere.
    let r = g.patch(&format!("/auth/users/{alice}"), ADMIN, json!({"enabled": true})).await;
    assert_eq!(r.status, 200);
    let (a8, _) = g.login("alice", "new-password-1").await;
    let (a9, r9) = g.login("alice", "new-password-1").await;
    assert_eq!(g.post("/auth/logout", Some(&a8), json!({"all": true})).await.status, 200);
    assert_error(&g.get("/auth/profile", &a9).await, 401, "token_revoked");
    assert_error(&g.post("/auth/refresh", None, json!({"refresh_token": r9})).await, 401, "invalid_refresh_token");

    // Deleting the account ends its sessions too.
    let (a10, _) = g.login("alice", "new-password-1").await;
    assert_eq!(g.delete(&format!("/auth/users/{alice}"), ADMIN).await.status, 200);
    let gone = g.get("/auth/profile", &a10).await;
    assert_eq!(gone.status, 401, "{}", gone.text);
    // Endpoints that need a session refuse other credentials.
    assert_error(&g.get("/auth/profile", KEY).await, 403, "forbidden");
    assert_error(&g.post("/auth/logout", None, json!({})).await, 401, "invalid_api_key");
    drop(g);
}
