//! The audit log end to end: records of every request and admin action reach PostgreSQL (or
//! the local journal) off the hot path, and none is lost or duplicated when the database
//! goes away, the gateway is SIGKILLed with records spooled, the writer actor panics, the
//! spool fills up, or the gateway is stopped with records queued.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::child::*;
use common::pg::{TestDb, ThrowawayPg};
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "test-jwt-secret-0123456789abcdef-0123456789";

fn db_vars(url: &str, s: &llmmux::sim::SimHandle) -> Vec<(&'static str, String)> {
    vec![
        ("BACKENDS", backends("m", &[s])),
        ("API_KEYS", KEY.into()),
        ("ADMIN_API_KEYS", ADMIN.into()),
        ("DATABASE_URL", url.into()),
        ("JWT_SECRET", SECRET.into()),
        ("DB_ACQUIRE_TIMEOUT", "500".into()),
        ("DB_STATEMENT_TIMEOUT", "1000".into()),
        ("HEALTH_PROBE_TIMEOUT", "5000".into()),
    ]
}

async fn fast_sim() -> llmmux::sim::SimHandle {
    sim_with(&["m"], |c| {
        c.ttft_ms = 0;
        c.token_delay_ms = 0;
        c.completion_tokens = 3;
    })
    .await
}

/// Sends `ids` chat requests (x-request-id `{prefix}{i}`), `conc` at a time, at most `rate`
/// per second; the statuses seen.
async fn send_load(
    addr: &str,
    prefix: &str,
    ids: std::ops::Range<usize>,
    conc: usize,
    rate: Option<u32>,
) -> HashMap<u16, usize> {
    use futures_util::StreamExt;
    let c = client();
    let start = tokio::time::Instant::now();
    let statuses = futures_util::stream::iter(ids.map(|i| {
        let (c, url) = (c.clone(), format!("http://{addr}/v1/chat/completions"));
        let id = format!("{prefix}{i}");
        async move {
            if let Some(r) = rate {
                let at = start + Duration::from_secs_f64(i as f64 / f64::from(r));
                tokio::time::sleep_until(at).await;
            }
            match c
                .post(url)
                .bearer_auth(KEY)
                .header("x-request-id", id)
                .json(&chat("m", i % 2 == 0))
                .send()
                .await
            {
                Ok(r) => {
                    let s = r.status().as_u16();
                    let _ = r.bytes().await;
                    s
                }
                Err(_) => 0,
            }
        }
    }))
    .buffer_unordered(conc)
    .collect::<Vec<u16>>()
    .await;
    let mut by = HashMap::new();
    for s in statuses {
        *by.entry(s).or_insert(0) += 1;
    }
    by
}

/// request_id -> rows, for the chat requests whose id starts with `prefix`.
async fn audited(db: &TestDb, prefix: &str) -> HashMap<String, i64> {
    let c = db.client().await;
    c.query(
        "SELECT request_id, count(*) FROM audit_requests WHERE request_id LIKE $1 GROUP BY 1",
        &[&format!("{prefix}%")],
    )
    .await
    .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    .unwrap_or_default()
}

async fn until_audited(
    db: &TestDb,
    prefix: &str,
    n: usize,
    within: Duration,
) -> HashMap<String, i64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = audited(db, prefix).await;
        if got.len() >= n || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn exactly_once(got: &HashMap<String, i64>, prefix: &str, n: usize) {
    let missing: Vec<usize> = (0..n)
        .filter(|i| !got.contains_key(&format!("{prefix}{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} records missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let dup: Vec<_> = got.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        dup.is_empty(),
        "records stored more than once: {:?}",
        &dup[..dup.len().min(5)]
    );
    assert_eq!(got.len(), n);
}

async fn metric(addr: &str, name: &str) -> f64 {
    let text = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_through_a_ten_second_database_outage_land_exactly_once() {
    let mut pg = ThrowawayPg::start();
    let db = TestDb::create_on(&pg.server()).await;
    let s = fast_sim().await;
    let (_child, addr) = serve(llmmux(), &db_vars(&db.url(), &s));
    // 10,000 requests over about 25 s; the database is away from 6 s to 16 s.
    let load = tokio::spawn({
        let addr = addr.clone();
        async move { send_load(&addr, "outage-", 0..10_000, 32, Some(400)).await }
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    pg.stop();
    let stopped = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let spooled = metric(&addr, "llmmux_audit_spooled_total").await;
    pg.resume();
    assert!(
        pg.wait_ready(Duration::from_secs(30)).await,
        "database back"
    );
    println!(
        "database away for {:?}; {spooled} records spooled meanwhile",
        stopped.elapsed()
    );
    let statuses = load.await.expect("load");
    assert_eq!(
        statuses.get(&200),
        Some(&10_000),
        "every request served: {statuses:?}"
    );
    assert!(spooled > 0.0, "the outage sent records to the spool");
    let got = until_audited(&db, "outage-", 10_000, Duration::from_secs(60)).await;
    exactly_once(&got, "outage-", 10_000);
    assert_eq!(metric(&addr, "llmmux_audit_dropped_total").await, 0.0);
    assert_eq!(
        metric(&addr, "llmmux_audit_spool_bytes").await,
        0.0,
        "spool replayed and freed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_to_the_spool_survive_sigkill_and_are_replayed_once() {
    let mut pg = ThrowawayPg::start();
    let db = TestDb::create_on(&pg.server()).await;
    let s = fast_sim().await;
    let dir = scratch_dir("sigkill");
    let mut vars = db_vars(&db.url(), &s);
    vars.push(("AUDIT_SPOOL_DIR", dir.join("spool").display().to_string()));
    let (child, addr) = serve(llmmux(), &vars);
    pg.stop();
    let statuses = send_load(&addr, "kill-", 0..500, 16, None).await;
    assert_eq!(statuses.get(&200), Some(&500), "{statuses:?}");
    // Wait until every record is synced to the spool (none left in memory: the count alone
    // includes the start's activity records, so it reaches 500 one request record early),
    // then kill without warning.
    assert!(
        eventually(Duration::from_secs(30), || {
            let addr = addr.clone();
            async move {
                metric(&addr, "llmmux_audit_spooled_total").await >= 500.0
                    && metric(&addr, "llmmux_audit_queue_depth").await == 0.0
            }
        })
        .await,
        "500 records spooled"
    );
    drop(child); // SIGKILL
    pg.resume();
    assert!(
        pg.wait_ready(Duration::from_secs(30)).await,
        "database back"
    );
    let (_again, _) = serve(llmmux(), &vars);
    let got = until_audited(&db, "kill-", 500, Duration::from_secs(30)).await;
    exactly_once(&got, "kill-", 500);
    let left: u64 = std::fs::read_dir(dir.join("spool"))
        .expect("spool dir")
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(
        eventually(Duration::from_secs(10), || async {
            std::fs::read_dir(dir.join("spool"))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .all(|e| !e.file_name().to_string_lossy().ends_with(".spool"))
                })
                .unwrap_or(false)
        })
        .await,
        "replayed segments are deleted ({left} bytes were left)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_panics_under_traffic_and_no_record_is_lost() {
    let db = TestDb::create().await;
    let s = fast_sim().await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&s])),
        ("DATABASE_URL", db.url()),
        ("JWT_SECRET", SECRET.into()),
    ])
    .await;
    let addr = app.addr.to_string();
    let load = tokio::spawn({
        let addr = addr.clone();
        async move { send_load(&addr, "panic-", 0..3_000, 16, Some(1_000)).await }
    });
    let restarts = || {
        app.state
            .lifecycle
            .supervision
            .lock()
            .ok()
            .and_then(|r| r.iter().find(|c| c.key == "audit").map(|c| c.restarts))
            .unwrap_or(0)
    };
    for n in 1..=3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let crashed = app
            .state
            .faults
            .crash(llmmux::faults::ActorKind::Audit)
            .await;
        assert!(crashed, "the writer was running at crash {n}");
        // The next crash goes to the replacement, not to the writer already dying.
        let restarted = eventually(Duration::from_secs(20), || async { restarts() >= n }).await;
        assert!(
            restarted,
            "the supervisor restarted the writer after crash {n}"
        );
    }
    let statuses = load.await.expect("load");
    assert_eq!(statuses.get(&200), Some(&3_000), "{statuses:?}");
    let got = until_audited(&db, "panic-", 3_000, Duration::from_secs(30)).await;
    exactly_once(&got, "panic-", 3_000);
    assert_eq!(restarts(), 3, "three restarts, one per crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_in_reject_mode_refuses_requests_until_room_returns() {
    let mut pg = ThrowawayPg::start();
    let db = TestDb::create_on(&pg.server()).await;
    let s = fast_sim().await;
    let mut vars = db_vars(&db.url(), &s);
    vars.extend([
        ("AUDIT_ON_FULL", "reject".to_owned()),
        ("AUDIT_SPOOL_MAX_BYTES", "1048576".to_owned()),
        ("AUDIT_BODIES", "true".to_owned()),
    ]);
    let (_child, addr) = serve(llmmux(), &vars);
    pg.stop();
    // 32 KiB bodies fill the 1 MiB spool after about 30 requests.
    let big = "x".repeat(32 * 1024);
    let c = client();
    let mut served = 0;
    let mut refused = None;
    for i in 0..400 {
        let r = c
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(KEY)
            .header("x-request-id", format!("full-{i}"))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": big}]}))
            .send()
            .await
            .expect("answered");
        match r.status().as_u16() {
            200 => served += 1,
            503 => {
                refused = Some(r.json::<Value>().await.expect("json"));
                break;
            }
            other => panic!("unexpected status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("requests refused once the spool is full");
    assert_eq!(refused["error"]["type"], "server_error");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("audit"),
        "{refused}"
    );
    assert!(served >= 10, "served {served} before the spool filled");
    pg.resume();
    assert!(
        pg.wait_ready(Duration::from_secs(30)).await,
        "database back"
    );
    let ok_again = eventually(Duration::from_secs(30), || {
        let (c, addr) = (c.clone(), addr.clone());
        async move {
            c.post(format!("http://{addr}/v1/chat/completions"))
                .bearer_auth(KEY)
                .json(&chat("m", false))
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        }
    })
    .await;
    assert!(ok_again, "requests served again once the spool drained");
    // Everything accepted before the refusal was kept, bodies included.
    let got = until_audited(&db, "full-", served, Duration::from_secs(30)).await;
    let ok_rows = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM audit_requests WHERE request_id LIKE 'full-%' AND status = 200 AND length(request_body) > 32000",
            &[],
        )
        .await
        .expect("count")
        .get::<_, i64>(0);
    assert_eq!(ok_rows as usize, served, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_records_queued_loses_none() {
    let db = TestDb::create().await;
    let s = fast_sim().await;
    let mut vars = db_vars(&db.url(), &s);
    // The longest flush interval and one batch for everything: the last records are
    // usually still queued in memory when the signal comes right after the load.
    vars.push(("AUDIT_FLUSH_INTERVAL", "100".into()));
    vars.push(("AUDIT_BATCH_SIZE", "50000".into()));
    vars.push(("AUDIT_QUEUE_CAPACITY", "100000".into()));
    let (child, addr) = serve(llmmux(), &vars);
    let statuses = send_load(&addr, "term-", 0..1_000, 32, None).await;
    assert_eq!(statuses.get(&200), Some(&1_000));
    assert_eq!(child.stop(), Some(0), "clean exit");
    let got = audited(&db, "term-").await;
    exactly_once(&got, "term-", 1_000);
}

async fn admin_get(addr: &str, path: &str, key: &str) -> (u16, Value) {
    let r = client()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("get");
    let st = r.status().as_u16();
    (st, r.json::<Value>().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_query_requests_activity_and_usage_with_filters_and_paging() {
    let db = TestDb::create().await;
    let s = fast_sim().await;
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&s])),
        ("DATABASE_URL", db.url()),
        ("JWT_SECRET", SECRET.into()),
    ])
    .await;
    let addr = app.addr.to_string();
    let statuses = send_load(&addr, "q-", 0..25, 4, None).await;
    assert_eq!(statuses.get(&200), Some(&25));
    let c = client();
    // An admin action and a refused one.
    let id = id_of(&s);
    let r = c
        .post(format!("http://{addr}/admin/backends/{id}/drain"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("drain");
    assert_eq!(r.status(), 200);
    let _ = c
        .post(format!("http://{addr}/admin/backends/{id}/undrain"))
        .bearer_auth(ADMIN)
        .send()
        .await;
    // A client key refused at an admin route, and a server added (its new id is the target).
    let r = c
        .post(format!("http://{addr}/admin/backends/{id}/drain"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("refused drain");
    assert_eq!(r.status(), 403);
    let r = c
        .post(format!("http://{addr}/admin/backends/{id}/drain"))
        .bearer_auth("sk-not-a-key-of-this-gateway")
        .send()
        .await
        .expect("unknown key drain");
    assert_eq!(r.status(), 401);
    let extra = fast_sim().await;
    let r = c
        .post(format!("http://{addr}/admin/backends"))
        .bearer_auth(ADMIN)
        .json(&json!({"url": extra.base_url(), "models": ["x"], "discover": false}))
        .send()
        .await
        .expect("add");
    assert_eq!(r.status(), 201);
    let added: Value = r.json().await.expect("added json");
    until_audited(&db, "q-", 25, Duration::from_secs(10)).await;
    // Pages of 10 over the 25 chat requests: 10, 10, 5, each record once.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for expected in [10, 10, 5] {
        let mut path = "/admin/audit/requests?model=m&limit=10".to_owned();
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let (st, page) = admin_get(&addr, &path, ADMIN).await;
        assert_eq!(st, 200, "{page}");
        assert_eq!(page["object"], "list");
        let data = page["data"].as_array().expect("data");
        assert_eq!(data.len(), expected, "{page}");
        assert_eq!(page["has_more"], expected == 10 && seen.len() < 20);
        for d in data {
            assert_eq!(d["model"], "m");
            assert_eq!(d["status"], 200);
            assert_eq!(d["key_id"], "static:0");
            seen.push(d["request_id"].as_str().unwrap_or("").to_owned());
        }
        after = page["last_id"].as_str().map(str::to_owned);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 25);
    // Filters: status that matches nothing, a time window in the future.
    let (_, none) = admin_get(&addr, "/admin/audit/requests?status=500", ADMIN).await;
    assert_eq!(none["data"].as_array().map(Vec::len), Some(0));
    let (_, none) = admin_get(&addr, "/admin/audit/requests?since=2999-01-01", ADMIN).await;
    assert_eq!(none["data"].as_array().map(Vec::len), Some(0));
    // Bad filters are 400 with the parameter named.
    let (st, bad) = admin_get(&addr, "/admin/audit/requests?since=yesterday", ADMIN).await;
    assert_eq!(st, 400);
    assert_eq!(bad["error"]["param"], "since");
    let (st, bad) = admin_get(
        &addr,
        "/admin/audit/requests?user_id=1%3BDROP%20TABLE%20users",
        ADMIN,
    )
    .await;
    assert_eq!(st, 400, "{bad}");
    // A client key is not an admin.
    let (st, _) = admin_get(&addr, "/admin/audit/requests", KEY).await;
    assert_eq!(st, 403);
    // Usage: daily totals per model.
    let (st, usage) = admin_get(&addr, "/admin/usage?group_by=model", ADMIN).await;
    assert_eq!(st, 200, "{usage}");
    let row = usage["data"]
        .as_array()
        .and_then(|d| d.iter().find(|r| r["model"] == "m"))
        .cloned()
        .expect("a row for m");
    assert_eq!(row["requests"], 25);
    assert!(
        usage["data"]
            .as_array()
            .is_some_and(|d| d.iter().all(|r| !r["model"].is_null())),
        "usage counts model requests only: {usage}"
    );
    assert!(row["completion_tokens"].as_i64().unwrap_or(0) >= 25 * 3);
    // Activity: the drain, the undrain and the start-up configuration, with the actor.
    let found = eventually(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move {
            let (_, acts) =
                admin_get(&addr, "/admin/audit/activity?action=backend_drain", ADMIN).await;
            acts["data"].as_array().is_some_and(|d| d.len() == 3)
        }
    })
    .await;
    assert!(
        found,
        "the drain and the two refused ones are in the activity log"
    );
    let (_, acts) = admin_get(&addr, "/admin/audit/activity?action=backend_drain", ADMIN).await;
    let drain = acts["data"]
        .as_array()
        .and_then(|d| d.iter().find(|a| a["outcome"] == "success"))
        .cloned()
        .expect("the drain");
    assert_eq!(drain["actor_key_id"], "admin-static:0");
    assert_eq!(drain["target"], format!("backend:{id}"));
    assert_eq!(drain["outcome"], "success");
    let denied = acts["data"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|a| a["outcome"] == "denied" && !a["actor_key_id"].is_null())
        })
        .cloned()
        .expect("a denied drain by a known key");
    assert!(
        acts["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|a| a["outcome"] == "denied"
                && a["actor_key_id"].is_null()
                && a["detail"]["status"] == 401)),
        "the unknown key's attempt is recorded: {acts}"
    );
    assert_eq!(denied["actor_key_id"], "static:0");
    assert_eq!(denied["target"], format!("backend:{id}"));
    let (_, adds) = admin_get(&addr, "/admin/audit/activity?action=backend_add", ADMIN).await;
    assert_eq!(
        adds["data"][0]["target"],
        format!("backend:{}", added["id"].as_str().unwrap_or("?")),
        "{adds}"
    );
    let (_, start) = admin_get(&addr, "/admin/audit/activity?action=config_start", ADMIN).await;
    let text = start.to_string();
    assert!(
        text.contains("DATABASE_URL=****"),
        "config at start, masked"
    );
    assert!(
        !text.contains(SECRET) && !text.contains(KEY),
        "no secret in the activity log"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_database_the_journal_records_and_answers() {
    let s = fast_sim().await;
    let dir = scratch_dir("journal");
    let journal = dir.join("audit.jsonl");
    let app = gateway(&[
        ("BACKENDS", backends("m", &[&s])),
        ("AUDIT_JOURNAL_PATH", journal.display().to_string()),
    ])
    .await;
    let addr = app.addr.to_string();
    let statuses = send_load(&addr, "j-", 0..30, 4, None).await;
    assert_eq!(statuses.get(&200), Some(&30));
    let lines = || {
        std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["request"]["request_id"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("j-"))
            })
            .count()
    };
    assert!(
        eventually(Duration::from_secs(5), || async { lines() == 30 }).await,
        "30 request lines in the journal, got {}",
        lines()
    );
    let (_, page) = admin_get(&addr, "/admin/audit/requests?limit=5", ADMIN).await;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(5));
    assert_eq!(page["has_more"], true);
    // Walking the cursor visits every request once, newest first.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = after
            .as_ref()
            .map_or(String::new(), |a| format!("&after={a}"));
        let (_, page) = admin_get(&addr, &format!("/admin/audit/requests?limit=7{q}"), ADMIN).await;
        for r in page["data"].as_array().expect("data") {
            if let Some(id) = r["request_id"].as_str().filter(|i| i.starts_with("j-")) {
                seen.push((
                    r["created_at"].as_str().unwrap_or("").to_owned(),
                    id.to_owned(),
                ));
            }
        }
        if page["has_more"] != true {
            break;
        }
        after = page["last_id"].as_str().map(str::to_owned);
        assert!(seen.len() <= 30, "the cursor loops: {seen:?}");
    }
    let unique: std::collections::HashSet<_> = seen.iter().map(|(_, id)| id).collect();
    assert_eq!((seen.len(), unique.len()), (30, 30), "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].0 >= w[1].0),
        "newest first: {seen:?}"
    );
    app.shutdown().await;
}

/// A request record as the writer stores it, made at `ts_us`.
fn stored_request(n: u32, ts_us: i64) -> llmmux::audit::record::AuditRecord {
    use llmmux::audit::record::{AuditRecord, RequestEntry};
    AuditRecord::Request(RequestEntry::sample(u128::from(n) + 1, ts_us))
}

/// The audit store of a migrated test database.
async fn pg_audit(db: &TestDb) -> llmmux::audit::pg::PgAudit {
    use llmmux::storage::{Db, DbSettings};
    llmmux::storage::migrate::migrate(&db.url())
        .await
        .expect("migrations apply");
    llmmux::audit::pg::PgAudit::new(
        Db::new(&DbSettings {
            url: llmmux::config::Secret::new(db.url()),
            pool_size: 2,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        })
        .expect("pool"),
        30,
    )
}

/// Every column of both tables reads back as written by the binary COPY: text with
/// multibyte characters, every optional value both set and absent, counts past what the
/// columns hold clamped, and JSON detail.
#[tokio::test]
async fn records_read_back_column_for_column() {
    use llmmux::audit::record::{ActivityEntry, AuditRecord, RequestEntry};
    let db = TestDb::create().await;
    let pg = pg_audit(&db).await;
    let now = llmmux::audit::record::micros(std::time::SystemTime::now());
    let user = uuid::Uuid::from_u128(0xabc);
    let full = RequestEntry {
        id: uuid::Uuid::from_u128(7),
        ts_us: now,
        request_id: "req-ü-7".into(),
        user_id: Some(user),
        key_id: Some("key-1".into()),
        client_addr: "[::1]:443".into(),
        method: "POST".into(),
        endpoint: "/v1/completions".into(),
        model: Some("qwen/Qwen3 – 8B".into()),
        backend: Some("gpu-3".into()),
        stream: true,
        status: 502,
        error_type: Some("upstream_error".into()),
        attempts: u32::MAX,
        latency_ms: 12.625,
        ttft_ms: Some(0.5),
        prompt_tokens: Some(u64::MAX),
        completion_tokens: Some(9),
        request_body: Some("{\"q\":\"日本\"}".into()),
        response_body: Some(String::new()),
    };
    let bare = RequestEntry {
        id: uuid::Uuid::from_u128(8),
        user_id: None,
        key_id: None,
        model: None,
        backend: None,
        error_type: None,
        ttft_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        request_body: None,
        response_body: None,
        ..full.clone()
    };
    let mut act = ActivityEntry::new("key.create", "denied");
    act.actor_user_id = Some(user);
    act.target = Some("key-1".into());
    act.detail = serde_json::json!({"rpm_limit": 10, "models": ["a", "b"]});
    pg.store(&[
        AuditRecord::Request(full.clone()),
        AuditRecord::Request(bare.clone()),
        AuditRecord::Activity(act.clone()),
    ])
    .await
    .expect("write");
    let c = db.client().await;
    let rows = c
        .query(
            "SELECT id, (extract(epoch FROM ts) * 1000000)::int8, request_id, user_id, key_id, \
             client_addr, method, endpoint, model, backend, stream, status, error_type, attempts, \
             latency_ms, ttft_ms, prompt_tokens, completion_tokens, request_body, response_body \
             FROM audit_requests ORDER BY id",
            &[],
        )
        .await
        .expect("read requests");
    assert_eq!(rows.len(), 2);
    for (row, want) in rows.iter().zip([&full, &bare]) {
        let got = RequestEntry {
            id: row.get(0),
            ts_us: row.get(1),
            request_id: row.get(2),
            user_id: row.get(3),
            key_id: row.get(4),
            client_addr: row.get(5),
            method: row.get(6),
            endpoint: row.get(7),
            model: row.get(8),
            backend: row.get(9),
            stream: row.get(10),
            status: u16::try_from(row.get::<_, i32>(11)).expect("status"),
            error_type: row.get(12),
            attempts: u32::try_from(row.get::<_, i32>(13)).expect("attempts"),
            latency_ms: row.get(14),
            ttft_ms: row.get(15),
            prompt_tokens: row.get::<_, Option<i64>>(16).map(|n| n as u64),
            completion_tokens: row.get::<_, Option<i64>>(17).map(|n| n as u64),
            request_body: row.get(18),
            response_body: row.get(19),
        };
        let clamped = RequestEntry {
            attempts: i32::MAX as u32,
            prompt_tokens: want.prompt_tokens.map(|n| n.min(i64::MAX as u64)),
            ..(*want).clone()
        };
        assert_eq!(got, clamped);
    }
    let row = c
        .query_one(
            "SELECT id, action, outcome, actor_user_id, actor_key_id, target, client_addr, \
             request_id, detail FROM audit_activity",
            &[],
        )
        .await
        .expect("read activity");
    assert_eq!(row.get::<_, uuid::Uuid>(0), act.id);
    assert_eq!(row.get::<_, String>(1), act.action);
    assert_eq!(row.get::<_, String>(2), act.outcome);
    assert_eq!(row.get::<_, Option<uuid::Uuid>>(3), act.actor_user_id);
    assert_eq!(row.get::<_, Option<String>>(4), None);
    assert_eq!(row.get::<_, Option<String>>(5), act.target);
    assert_eq!(row.get::<_, Option<String>>(6), None);
    assert_eq!(row.get::<_, Option<String>>(7), None);
    assert_eq!(row.get::<_, serde_json::Value>(8), act.detail);
}

/// A batch written again (its first write committed but the answer was lost, or a spooled
/// batch replayed) fails the COPY and goes again skipping the rows already there:
/// every record once, the new ones included, and no error for the writer to retry forever.
#[tokio::test]
async fn a_batch_written_twice_stores_each_record_once() {
    use llmmux::audit::record::{ActivityEntry, AuditRecord};
    let db = TestDb::create().await;
    let pg = pg_audit(&db).await;
    let now = llmmux::audit::record::micros(std::time::SystemTime::now());
    let activity = AuditRecord::Activity(ActivityEntry::new("key.create", "success"));
    let first: Vec<AuditRecord> = (0..3)
        .map(|n| stored_request(n, now))
        .chain([activity.clone()])
        .collect();
    pg.store(&first).await.expect("first write");
    pg.store(&first).await.expect("the same batch again");
    let mut second = first.clone();
    second.extend((3..5).map(|n| stored_request(n, now)));
    pg.store(&second)
        .await
        .expect("a batch with old and new rows");
    let c = db.client().await;
    let count = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.expect("count").get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM audit_requests").await, 5);
    assert_eq!(
        count("SELECT count(DISTINCT id) FROM audit_requests").await,
        5
    );
    assert_eq!(count("SELECT count(*) FROM audit_activity").await, 1);
}
