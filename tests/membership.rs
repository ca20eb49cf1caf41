//! Membership and compatibility (core-hardening items 9, 10, 12): discovery refresh by any
//! client, coalesced; per-server options for engines and providers other than vLLM; stable
//! server ids; servers added and removed at runtime through the admin API.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_client_may_refresh_discovery_and_a_burst_costs_one_round() {
    let s = sim(&["m"]).await;
    let app = gateway(&[
        ("VLLM_SERVERS", servers(&[&s])),
        ("DISCOVERY_INTERVAL", "600000".into()),
    ])
    .await;
    // The first scheduled poll runs at start; wait for it.
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.stats().models_requests >= 1
        })
        .await
    );
    let before = s.stats().models_requests;
    let burst: Vec<_> = (0..10)
        .map(|_| {
            client()
                .post(url(&app, "/v1/models/discovery/refresh"))
                .bearer_auth(KEY)
                .send()
        })
        .collect();
    for r in futures_util::future::join_all(burst).await {
        let r = r.expect("sent");
        assert_eq!(r.status(), 200, "a client key may refresh");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["servers"][0]["models"][0], "m");
    }
    let polls = s.stats().models_requests - before;
    assert_eq!(
        polls, 1,
        "ten concurrent refreshes share one round of polls"
    );
    let r = client()
        .post(url(&app, "/v1/models/discovery/refresh"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 401, "a credential is still needed");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_of_other_engines_and_providers_are_health_checked_their_way() {
    // SGLang / llama.cpp: a health route. Ollama: no /health, probe /v1/models. A hosted
    // provider: a bearer key on every call, no health route, passive health only.
    let sglang = sim(&["sg"]).await;
    let ollama = sim_with(&["ol"], |c| c.health_path = None).await;
    let hosted = sim_with(&["ho"], |c| {
        c.health_path = None;
        c.api_key = Some("provider-key".into());
    })
    .await;
    let keyfile = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(keyfile.path(), "provider-key\n").expect("write key");
    let yaml = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(
        yaml.path(),
        format!(
            "servers:\n\
             - url: {}\n  name: sglang-a\n  models: [sg]\n  discover: false\n\
             - url: {}\n  models: [ol]\n  health: models\n\
             - url: {}\n  name: provider\n  models: [ho]\n  discover: false\n  health: none\n  api_key_file: {}\n  headers:\n    X-Org: team-1\n",
            sglang.base_url(),
            ollama.base_url(),
            hosted.base_url(),
            keyfile.path().display()
        ),
    )
    .expect("write yaml");
    let app = gateway_with_file(&[], Some(yaml.path().to_path_buf())).await;
    let ok = app
        .state
        .proxy
        .registry
        .table
        .wait_for(Duration::from_secs(5), |t| {
            t.backends.len() == 3
                && t.backends
                    .values()
                    .filter(|e| e.handle.id.as_str() != "provider")
                    .all(|e| *e.health() == llmmux_actors::table::HealthState::Healthy)
        })
        .await;
    assert!(
        ok,
        "sglang (/health) and ollama (/v1/models) probed healthy"
    );
    for model in ["sg", "ol", "ho"] {
        let r = post(&app, "/v1/chat/completions", &chat(model, false)).await;
        assert_eq!(r.status(), 200, "{model}");
    }
    let seen = hosted.stats().last_headers;
    let header = |name: &str| seen.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(
        header("authorization").as_deref(),
        Some("Bearer provider-key")
    );
    assert_eq!(header("x-org").as_deref(), Some("team-1"));
    assert_eq!(
        hosted.stats().health_probes,
        0,
        "health: none sends no probe"
    );
    let ids: Vec<String> = app
        .state
        .proxy
        .registry
        .table
        .load()
        .backends
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert!(ids.contains(&"sglang-a".to_string()) && ids.contains(&id_of(&ollama)));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_added_and_removed_through_the_admin_api() {
    let a = sim(&["m"]).await;
    let extra = sim(&["x"]).await;
    let app = gateway(&[("BACKENDS", backends("m", &[&a]))]).await;
    let c = client();
    let r = c
        .post(url(&app, "/admin/backends"))
        .bearer_auth(ADMIN)
        .json(&json!({"url": extra.base_url(), "models": ["x"], "discover": false}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.expect("json");
    let id = v["id"].as_str().expect("id").to_owned();
    assert_eq!(id, id_of(&extra), "the id comes from the URL");
    assert_eq!(
        post(&app, "/v1/chat/completions", &chat("x", false))
            .await
            .status(),
        200
    );
    let again = c
        .post(url(&app, "/admin/backends"))
        .bearer_auth(ADMIN)
        .json(&json!({"url": extra.base_url(), "models": ["x"]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(again.status(), 409, "the same URL twice");
    let bad = c
        .post(url(&app, "/admin/backends"))
        .bearer_auth(ADMIN)
        .json(&json!({"url": "ftp://nope", "health": "sometimes"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), 400);
    // Its health actor runs under the root supervisor.
    let supervised = |app: &llmmux::app::App, id: &str| {
        app.state
            .lifecycle
            .supervision
            .lock()
            .expect("report")
            .iter()
            .any(|c| c.key == format!("health-{id}") && c.running)
    };
    assert!(eventually(Duration::from_secs(2), || async { supervised(&app, &id) }).await);
    let r = c
        .delete(url(&app, &format!("/admin/backends/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(
        post(&app, "/v1/chat/completions", &chat("x", false))
            .await
            .status(),
        404,
        "its model is gone"
    );
    assert!(
        eventually(Duration::from_secs(2), || async { !supervised(&app, &id) }).await,
        "its health actor stopped"
    );
    let r = c
        .delete(url(&app, &format!("/admin/backends/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 404);
    app.shutdown().await;
}
