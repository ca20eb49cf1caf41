//! The `llmmux` binary as a child process: exit codes, config validation messages, serving
//! behind a simulated vLLM server, the Docker healthcheck command, and SIGTERM.

mod common;

use std::time::Duration;

use common::child::*;
use common::*;

#[test]
fn check_config_reports_every_problem_and_exits_2() {
    let out = llmmux()
        .args(["check-config"])
        .env("PORT", "eighty")
        .env("MAX_ATTEMPTS", "0")
        .env("CORS_ORIGIN", "null")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for name in ["PORT", "MAX_ATTEMPTS", "CORS_ORIGIN"] {
        assert!(
            err.lines().any(|l| l.contains(name)),
            "{name} not named in:\n{err}"
        );
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn check_config_prints_effective_config_with_secrets_masked() {
    let out = llmmux()
        .args(["check-config"])
        .env("BACKENDS", "m:127.0.0.1:9")
        .env("API_KEYS", "sk-very-secret")
        .env("VLLM_API_KEY", "vk-hidden")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BACKENDS=m=http://127.0.0.1:9"), "{text}");
    assert!(
        !text.contains("sk-very-secret") && !text.contains("vk-hidden"),
        "{text}"
    );
}

#[test]
fn serve_without_backends_exits_2_and_suggests_the_demo() {
    let out = llmmux().args(["serve"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("llmmux demo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_answers_healthcheck_and_stops_cleanly_on_sigterm() {
    let s = sim(&["m"]).await;
    let mut cmd = llmmux();
    cmd.env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("BACKENDS", backends("m", &[&s]))
        .env("API_KEYS", KEY)
        .env("LOG_FORMAT", "json");
    let (child, addr) = Running::spawn_until(cmd, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["fields"]["message"] == "llmmux listening")
            .then(|| v["fields"]["addr"].as_str().map(str::to_owned))?
    });
    let base = format!("http://{addr}");
    let r = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat("m", false))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let hc = llmmux()
        .args(["healthcheck", "--url", &format!("{base}/healthz")])
        .status()
        .expect("healthcheck runs");
    assert!(hc.success());
    assert_eq!(child.stop(), Some(0), "clean exit on SIGTERM");
    let hc = llmmux()
        .args(["healthcheck", "--url", &format!("{base}/healthz")])
        .status()
        .expect("healthcheck runs");
    assert!(!hc.success(), "healthcheck fails once the gateway is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_simulated_models_and_repairs_tool_calls() {
    let mut cmd = llmmux();
    cmd.args(["demo"]).env("PORT", "0");
    let (child, addr) = Running::spawn_until(cmd, addr_after("gateway on"));
    let base = format!("http://{addr}");
    let c = client();
    let ok = eventually(Duration::from_secs(10), || {
        let c = c.clone();
        let u = format!("{base}/v1/models");
        async move {
            match c.get(u).bearer_auth("sk-demo").send().await {
                Ok(r) => r
                    .text()
                    .await
                    .is_ok_and(|t| t.contains("qwen3-8b") && t.contains("llama-3.1-8b-instruct")),
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(ok, "demo lists its models");
    let req = serde_json::json!({"model": "qwen3-8b", "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]});
    let v: serde_json::Value = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("sk-demo")
        .json(&req)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather",
        "{v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    // The embedded default keeps an audit journal: the admin key reads it back.
    let audited = eventually(Duration::from_secs(5), || {
        let c = c.clone();
        let u = format!("{base}/admin/audit/requests?model=qwen3-8b");
        async move {
            let Ok(r) = c.get(u).bearer_auth("sk-demo-admin").send().await else {
                return false;
            };
            r.json::<serde_json::Value>().await.is_ok_and(|v| {
                v["data"].as_array().is_some_and(|d| {
                    d.iter()
                        .any(|r| r["endpoint"] == "/v1/chat/completions" && r["status"] == 200)
                })
            })
        }
    })
    .await;
    assert!(audited, "the demo's request is in its audit journal");
    assert_eq!(child.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_vllm_subcommand_serves_like_vllm() {
    let mut cmd = llmmux();
    cmd.args([
        "sim-vllm", "--port", "0", "--model", "tiny", "--tokens", "3",
    ]);
    let (child, addr) = Running::spawn_until(cmd, addr_after("listening on"));
    let v: serde_json::Value = client()
        .get(format!("http://{addr}/v1/models"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(v["data"][0]["id"], "tiny");
    assert_eq!(v["data"][0]["owned_by"], "vllm");
    let r = client()
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(child.stop(), Some(0));
}

#[test]
fn text_logs_written_to_a_pipe_have_no_colour_codes() {
    let mut cmd = llmmux();
    cmd.args(["serve"])
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("BACKENDS", "m:127.0.0.1:9");
    let (child, line) = Running::spawn_until(cmd, |line| {
        line.contains("llmmux listening").then(|| line.to_owned())
    });
    assert!(!line.contains('\u{1b}'), "colour codes in {line:?}");
    assert!(line.contains("INFO"), "{line}");
    assert_eq!(child.stop(), Some(0));
}
