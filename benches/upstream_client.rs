//! The upstream client alone: the gateway's hot-path client (`upstream::UpstreamClient`,
//! hyper-util) against reqwest configured alike (the control plane's client, which served
//! proxied requests too until this measurement), on the same hyper connection code
//! underneath, each sending whole-answer POSTs to one in-process HTTP/1.1 server that
//! answers a fixed body. Both share the server, so the difference between them is
//! reqwest's layers (URL handling, redirect and retry services). Issue #13 asked for
//! this measurement.
//!
//! Run: `cargo bench --bench upstream_client` (c=1 and c=64, per request).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::future::join_all;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use llmmux::upstream::UpstreamClient;

const ANSWER: &str = r#"{"id":"cmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
const REQUEST: &str =
    r#"{"model":"m","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}"#;

/// An HTTP/1.1 server on its own thread and runtime that reads each body and answers
/// `ANSWER`.
fn server() -> SocketAddr {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        let mut resp =
                            hyper::Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    addr
}

/// The gateway's clients (hot path, control plane), as `serve` builds them by default.
fn gateway_clients() -> (UpstreamClient, reqwest::Client) {
    let env = |k: &str| (k == "BACKENDS").then(|| "m=http://127.0.0.1:9".to_owned());
    let cfg = llmmux::config::Config::load(&llmmux::config::Sources {
        env: &env,
        file: None,
    })
    .unwrap_or_else(|e| panic!("config: {e:?}"));
    llmmux::upstream::build_clients(&cfg).expect("clients")
}

async fn via_reqwest(c: &reqwest::Client, url: &reqwest::Url) -> usize {
    let resp = c
        .post(url.clone())
        .header("content-type", "application/json")
        .body(Bytes::from_static(REQUEST.as_bytes()))
        .send()
        .await
        .expect("reqwest send");
    resp.bytes().await.expect("reqwest body").len()
}

async fn via_direct(c: &UpstreamClient, uri: &hyper::Uri) -> usize {
    let mut headers = hyper::HeaderMap::new();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    let resp = c
        .post(uri.clone(), headers, Bytes::from_static(REQUEST.as_bytes()))
        .await
        .expect("direct send");
    resp.into_body()
        .collect()
        .await
        .expect("direct body")
        .to_bytes()
        .len()
}

fn clients(c: &mut Criterion) {
    let addr = server();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let url: reqwest::Url = format!("http://{addr}/v1/chat/completions")
        .parse()
        .expect("url");
    let uri: hyper::Uri = url.as_str().parse().expect("uri");
    let (direct, rq) = gateway_clients();
    // Both answer the same bytes before anything is timed.
    let (a, b) = rt.block_on(async {
        (
            via_reqwest(&rq, &url).await,
            via_direct(&direct, &uri).await,
        )
    });
    assert_eq!(a, ANSWER.len());
    assert_eq!(b, ANSWER.len());

    for concurrency in [1usize, 64] {
        let mut g = c.benchmark_group(format!("upstream_client_c{concurrency}"));
        g.throughput(Throughput::Elements(concurrency as u64));
        g.bench_function("reqwest", |b| {
            b.to_async(&rt)
                .iter(|| async { join_all((0..concurrency).map(|_| via_reqwest(&rq, &url))).await })
        });
        g.bench_function("hyper_util", |b| {
            b.to_async(&rt).iter(|| async {
                join_all((0..concurrency).map(|_| via_direct(&direct, &uri))).await
            })
        });
        g.finish();
    }
}

criterion_group!(benches, clients);
criterion_main!(benches);
