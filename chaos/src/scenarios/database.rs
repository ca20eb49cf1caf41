//! The database goes away under load (issue 12 scenario 9), on a throwaway PostgreSQL
//! instance this scenario starts (never the machine's server).
//!
//! Covered: the identity store (database API keys cached in the gateway, unknown keys,
//! recovery) and the audit log (every chat request sent before, during and after the
//! outage is in it afterwards, counted through `/admin/usage`).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::fmt_ms;
use crate::client::{Background, Chat, Load, Tally};
use crate::error::{ChaosError, Result};
use crate::harness::{wait_until, Ctx, Gateway, Sim};
use crate::pg::ThrowawayPg;
use crate::report::Row;

const ADMIN_PASSWORD: &str = "chaos-admin-password-0123";

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ChaosError::Pg(format!("blocking task: {e}")))?
}

async fn login(ctx: &Ctx, gw: &Gateway) -> Result<String> {
    let v: Value = ctx
        .http
        .post(format!("{}/auth/login", gw.base()))
        .json(&serde_json::json!({"username": "superadmin", "password": ADMIN_PASSWORD}))
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .json()
        .await?;
    v["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ChaosError::Protocol(format!("login: {v}")))
}

/// Create a database API key; None while the database cannot be written.
async fn create_key(ctx: &Ctx, gw: &Gateway, token: &str) -> Option<String> {
    let r = ctx
        .http
        .post(format!("{}/auth/api-keys", gw.base()))
        .bearer_auth(token)
        .json(&serde_json::json!({"name": "chaos"}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    v["key"].as_str().map(str::to_owned)
}

/// PostgreSQL is stopped (`pg_ctl stop -m fast`) for 10 s (short: 2 s) while clients use
/// a database API key the gateway has already seen.
///
/// Pass: 0 errors for the cached key during and after the outage; a login (which needs
/// the database) gets 503 within the 2 s acquire timeout + 100 ms, and an unknown key is
/// refused (401 from the in-memory key table, or 503) as fast: no hang, no 500; after
/// PostgreSQL is back, a new key can be created within 5 s, and every chat request sent
/// (before, during and after the outage) is in the audit log within 10 s.
/// Figure: login → 503 time; PostgreSQL back → first key created.
pub async fn outage(ctx: &Ctx) -> Result<Row> {
    let mut row = Row::new("db-outage", "PostgreSQL stopped under load");
    let pg = blocking(ThrowawayPg::start).await?;
    let pg_port = pg.port;
    let sim = Sim::start(ctx, "a", &["--model", "m", "--tokens", "8"]).await?;
    let gw = Gateway::start(
        ctx,
        &[
            ("BACKENDS", format!("m:{}", sim.addr())),
            ("DATABASE_URL", pg.url()),
            (
                "JWT_SECRET",
                "chaos-jwt-secret-0123456789abcdefghijklmnop".into(),
            ),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
        ],
    )
    .await?;
    gw.wait_healthy(1, Duration::from_secs(10)).await?;
    let token = login(ctx, &gw).await?;
    let key = create_key(ctx, &gw, &token)
        .await
        .ok_or_else(|| ChaosError::Protocol("could not create an API key".into()))?;
    // An unknown key of the same shape: the same prefix, the random part reversed.
    let unknown = match key.split_once('-') {
        Some((p, rest)) => format!("{p}-{}", rest.chars().rev().collect::<String>()),
        None => format!("{key}x"),
    };
    let load = Load {
        chat: Chat::new(&gw.base(), &key, "m", false).max_tokens(8),
        concurrency: 4,
        total: None,
        duration: None,
        stream_every: 2,
        backoff_on_reject: None,
    };
    // Warm the key cache, then keep the load running through the outage.
    let warm = crate::client::drive(
        &ctx.http,
        &Load {
            total: Some(4),
            ..load.clone()
        },
        Default::default(),
    )
    .await;
    row.check(
        Tally::of(&warm).failed() == 0,
        "the key did not work before the outage",
    );
    let bg = Background::start(&ctx.http, load);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut pg = blocking(move || {
        let mut pg = pg;
        pg.stop().map(|_| pg)
    })
    .await?;
    let t = Instant::now();
    let unknown_status = crate::client::send(
        &ctx.http,
        &Chat::new(&gw.base(), &unknown, "m", false).timeout(Duration::from_secs(30)),
    )
    .await;
    let unknown_took = t.elapsed();
    let t = Instant::now();
    let login_status = ctx
        .http
        .post(format!("{}/auth/login", gw.base()))
        .json(&serde_json::json!({"username": "superadmin", "password": ADMIN_PASSWORD}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    let login_took = t.elapsed();
    tokio::time::sleep(ctx.window(2_000, 10_000)).await;
    pg = blocking(move || {
        let mut pg = pg;
        pg.resume().map(|_| pg)
    })
    .await?;
    let recovered = wait_until(ctx.deadline(Duration::from_secs(5)), || async {
        create_key(ctx, &gw, &token).await.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = bg.finish().await;
    let tally = Tally::of(&samples);
    row.tally(&tally);
    row.check(
        tally.failed() == 0,
        format!("{} errors with the cached key", tally.failed()),
    );
    // The gateway holds the whole key table (reloaded on every LISTEN reconnect), so an
    // unknown key may be refused from memory (401) or fail fast (503); never a hang or 500.
    row.check(
        matches!(
            unknown_status.verdict,
            crate::client::Verdict::Http(401 | 503, _)
        ),
        format!(
            "unknown key during the outage: {:?}",
            unknown_status.verdict
        ),
    );
    row.check(
        login_status == 503,
        format!("login during the outage answered {login_status}"),
    );
    row.check(
        login_took <= ctx.deadline(Duration::from_millis(2_100)),
        format!("login answered after {}", fmt_ms(login_took)),
    );
    row.check(
        unknown_took <= ctx.deadline(Duration::from_millis(2_100)),
        format!("unknown key answered after {}", fmt_ms(unknown_took)),
    );
    row.check(
        recovered.is_some(),
        "keys could not be created after recovery",
    );
    // Every chat request made before, during and after the outage is in the audit log
    // once the spool is replayed (the writer backs off up to 5 s between replay attempts).
    let sent = (warm.len() + samples.len()) as u64;
    let mut audited = 0;
    let landed = wait_until(ctx.deadline(Duration::from_secs(10)), || {
        let gw = &gw;
        async move { gw.audited_requests("m").await.is_ok_and(|n| n >= sent) }
    })
    .await;
    if let Ok(n) = gw.audited_requests("m").await {
        audited = n;
    }
    row.check(
        landed.is_some() && audited == sent,
        format!("audit log has {audited} of the {sent} chat requests"),
    );
    drop(pg);
    row.evidence = format!(
        "throwaway PostgreSQL (port {pg_port}) stopped {} s; unknown key got {:?}; {audited} of {sent} requests in the audit log after recovery",
        ctx.window(2_000, 10_000).as_secs(),
        unknown_status.verdict
    );
    row.figure = format!(
        "login → 503 in {}; unknown key refused in {}; PostgreSQL back → key created in {}",
        fmt_ms(login_took),
        fmt_ms(unknown_took),
        recovered.map_or("never".into(), fmt_ms)
    );
    Ok(row)
}
