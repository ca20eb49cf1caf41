//! The per-request and per-chunk costs of the hot path, each alone: authentication of a
//! static key, the routing decision, preparing a request body (scan + rewrite), and SSE
//! parse + re-emit of a stream. Tool-call repair has its own bench (`toolcall`).
//!
//! Run: `cargo bench --bench hotpath`. Throughput is per request (element) or per chunk.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use eventsource_stream::Eventsource;
use futures_util::{FutureExt, StreamExt};
use llmmux::config::{Config, Sources};
use llmmux::http::auth::{Access, Authenticator};
use llmmux::proxy::{prepare, pump, sse::SseEvents, sse_guard::SseGuard, Endpoint};
use llmmux_actors::backend::{
    BackendHandle, BackendId, BackendSpec, HealthCheck, Origin, PassivePolicy,
};
use llmmux_actors::breaker::{Breaker, HealthState};
use llmmux_actors::slot::Slot;
use llmmux_actors::table::{BackendEntry, ModelCard, RoutingTable};
use rand::SeedableRng;

fn config(vars: &[(&str, &str)]) -> llmmux::config::ValidatedConfig {
    let env = |k: &str| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    };
    Config::load(&Sources {
        env: &env,
        file: None,
    })
    .unwrap_or_else(|e| panic!("config: {e:?}"))
}

fn auth(c: &mut Criterion) {
    let keys: Vec<String> = (0..8).map(|i| format!("sk-bench-{i:032}")).collect();
    let joined = keys.join(",");
    let cfg = config(&[("API_KEYS", &joined), ("BACKENDS", "m:127.0.0.1:9")]);
    let a = Authenticator::new(&cfg);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {}", keys[5]))
            .unwrap_or_else(|_| panic!("header")),
    );
    let mut g = c.benchmark_group("auth");
    g.throughput(Throughput::Elements(1));
    g.bench_function("static key of 8", |b| {
        b.iter(|| {
            black_box(
                a.authorize(None, Access::Client, black_box(&headers))
                    .now_or_never()
                    .is_some_and(|r| r.is_ok()),
            )
        })
    });
    g.finish();
}

fn table(servers: usize) -> RoutingTable {
    let slot = Slot::default();
    let backends: BTreeMap<_, _> = (0..servers)
        .map(|i| {
            let spec = BackendSpec {
                id: BackendId::new(format!("s{i}")),
                base_url: format!("http://10.0.0.{i}:8000").into(),
                static_models: vec![],
                discover: false,
                max_in_flight: 512,
                health: HealthCheck::Passive,
                passive: PassivePolicy::default(),
                ext: Arc::new(()),
                origin: Origin::Config,
                revision: 0,
            };
            let mut e = BackendEntry::new(
                Arc::new(BackendHandle::new(&spec, slot.clone())),
                vec![ModelCard::bare("m")],
                false,
            );
            e.breaker = Breaker::new(HealthState::Healthy);
            (spec.id, e)
        })
        .collect();
    RoutingTable::new(1, backends)
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    for n in [2, 16] {
        let t = table(n);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        g.bench_function(format!("p2c pick of {n} servers"), |b| {
            b.iter(|| black_box(t.pick("m", &[], &mut rng).is_ok()))
        });
    }
    g.finish();
}

fn request(c: &mut Criterion) {
    let chat = Bytes::from(
        r#"{"model":"qwen3-8b","messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Write a haiku about gateways."}],"temperature":0.7,"max_tokens":256,"stream":true}"#,
    );
    let none = BTreeMap::new();
    let aliases: BTreeMap<String, String> =
        [("gpt-4o-mini".to_owned(), "qwen3-8b".to_owned())].into();
    let aliased = Bytes::from(String::from_utf8_lossy(&chat).replace("qwen3-8b", "gpt-4o-mini"));
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    g.bench_function("prepare stream (usage injected)", |b| {
        b.iter(|| black_box(prepare::prepare(Endpoint::Chat, chat.clone(), &none).is_ok()))
    });
    g.bench_function("prepare stream + alias", |b| {
        b.iter(|| black_box(prepare::prepare(Endpoint::Chat, aliased.clone(), &aliases).is_ok()))
    });
    let plain = Bytes::from(String::from_utf8_lossy(&chat).replace(r#","stream":true"#, ""));
    g.bench_function("prepare whole (passed through)", |b| {
        b.iter(|| black_box(prepare::prepare(Endpoint::Chat, plain.clone(), &none).is_ok()))
    });
    g.finish();
}

fn sse(c: &mut Criterion) {
    let chunk = |t: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-b7c8eea327e86bda\",\"object\":\"chat.completion.chunk\",\"created\":1795543872,\"model\":\"qwen3-8b\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{t}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        )
    };
    const N: usize = 1000;
    let chunks: Vec<Bytes> = (0..N)
        .map(|i| Bytes::from(chunk(&format!("tok{i} "))))
        .collect();
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("guard + decode + forward, per chunk", |b| {
        b.iter(|| {
            let upstream =
                futures_util::stream::iter(chunks.iter().cloned().map(Ok::<_, std::io::Error>));
            let mut events = SseEvents::new(SseGuard::new(upstream, 4 << 20));
            let mut n = 0usize;
            while let Some(Some(Ok(ev))) = events.next().now_or_never() {
                n += ev
                    .frame()
                    .cloned()
                    .unwrap_or_else(|| pump::frame(ev.data()))
                    .len();
            }
            black_box(n)
        })
    });
    // The decoder before issue #13, for comparison.
    g.bench_function("guard + eventsource-stream + re-emit, per chunk", |b| {
        b.iter(|| {
            let upstream =
                futures_util::stream::iter(chunks.iter().cloned().map(Ok::<_, std::io::Error>));
            let mut events = SseGuard::new(upstream, 4 << 20).eventsource();
            let mut n = 0usize;
            while let Some(Some(Ok(ev))) = events.next().now_or_never() {
                n += pump::frame(ev.data.as_bytes()).len();
            }
            black_box(n)
        })
    });
    g.finish();
}

/// One audit record as a journal or spool line: the hand-written request line against
/// serde's derive (the same bytes).
fn audit_line(c: &mut Criterion) {
    use llmmux::audit::record::{write_lines, AuditRecord, RequestEntry};
    let rec = AuditRecord::Request(RequestEntry {
        id: uuid::Uuid::from_u128(0x0193_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b),
        ts_us: 1_796_631_920_149_669,
        request_id: "0f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
        user_id: None,
        key_id: Some("static:3f9a".into()),
        client_addr: "127.0.0.1".into(),
        method: "POST".into(),
        endpoint: "/v1/chat/completions".into(),
        model: Some("meta-llama/Llama-3.1-8B-Instruct".into()),
        backend: Some("gpu-a-8000".into()),
        stream: false,
        status: 200,
        error_type: None,
        attempts: 1,
        latency_ms: 12.345_678,
        ttft_ms: Some(3.25),
        prompt_tokens: Some(17),
        completion_tokens: Some(16),
        request_body: None,
        response_body: None,
    });
    let batch = vec![rec; 100];
    let mut g = c.benchmark_group("audit line");
    g.throughput(Throughput::Elements(batch.len() as u64));
    let mut buf = Vec::with_capacity(64 << 10);
    g.bench_function("write_lines, per record", |b| {
        b.iter(|| {
            buf.clear();
            write_lines(black_box(&batch), &mut buf).expect("write");
            black_box(buf.len())
        })
    });
    g.bench_function("serde derive, per record", |b| {
        b.iter(|| {
            buf.clear();
            for r in black_box(&batch) {
                serde_json::to_writer(&mut buf, r).expect("write");
                buf.push(b'\n');
            }
            black_box(buf.len())
        })
    });
    g.finish();
}

criterion_group!(benches, auth, routing, request, sse, audit_line);
criterion_main!(benches);
