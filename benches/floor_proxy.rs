//! The floor of the committed stack: a reverse proxy made of nothing but what the gateway
//! is built on (tokio's multi-thread runtime, a hyper HTTP/1.1 server connection per
//! client, the gateway's upstream client as `upstream::build_clients` makes it), forwarding
//! each POST to one server and relaying its body frame by frame as it arrives (so streams
//! show the stack's time to first token too). No parsing, routing, auth,
//! audit, tracing or actors. Run beside the gateway and nginx on the same mock, it shows
//! how much of the gateway's CPU per request its foundations take before any of its own
//! work (issue #13).
//!
//! Run: `cargo bench --bench floor_proxy -- LISTEN UPSTREAM_URL [hyper|reqwest]`, e.g.
//! `cargo bench --bench floor_proxy -- 127.0.0.1:19002 http://127.0.0.1:19000 hyper`;
//! `hyper` (the default) is the gateway's hyper-util client, `reqwest` the reqwest client
//! the gateway used on this path before (its control-plane client, configured alike).
//! Without arguments (as `cargo bench` runs every bench) it prints this usage and exits.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use llmmux::upstream::UpstreamClient;

enum Upstream {
    Reqwest(reqwest::Client),
    Gateway(Box<UpstreamClient>),
}

type Relay = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

impl Upstream {
    /// The server's answer: its content type and its body, relayed as it arrives.
    async fn post(
        &self,
        url: &str,
        uri: &hyper::Uri,
        body: Bytes,
    ) -> Option<(hyper::header::HeaderValue, Relay)> {
        let resp: hyper::Response<Relay> = match self {
            Upstream::Reqwest(c) => {
                let resp = c
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .ok()?;
                hyper::Response::from(resp).map(|b| b.map_err(Into::into).boxed())
            }
            Upstream::Gateway(c) => {
                let mut headers = hyper::HeaderMap::new();
                headers.insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                let resp = c.post(uri.clone(), headers, body).await.ok()?;
                resp.map(|b| b.map_err(Into::into).boxed())
            }
        };
        let (parts, body) = resp.into_parts();
        let ct = parts.headers.get("content-type").cloned();
        Some((
            ct.unwrap_or(hyper::header::HeaderValue::from_static("application/json")),
            body,
        ))
    }
}

/// The gateway's clients, as `serve` builds them with default settings.
fn gateway_clients() -> Option<(UpstreamClient, reqwest::Client)> {
    let env = |k: &str| (k == "BACKENDS").then(|| "m=http://127.0.0.1:9".to_owned());
    let cfg = llmmux::config::Config::load(&llmmux::config::Sources {
        env: &env,
        file: None,
    })
    .ok()?;
    llmmux::upstream::build_clients(&cfg).ok()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        println!(
            "floor_proxy: cargo bench --bench floor_proxy -- LISTEN UPSTREAM_URL [hyper|reqwest]"
        );
        return;
    };
    let Some((gateway, control)) = gateway_clients() else {
        eprintln!("floor_proxy: cannot build the gateway's clients");
        return;
    };
    let client = match args.get(2).map(String::as_str) {
        Some("reqwest") => Upstream::Reqwest(control),
        _ => Upstream::Gateway(Box::new(gateway)),
    };
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        eprintln!("floor_proxy: no runtime");
        return;
    };
    let listen = listen.clone();
    let url: Arc<str> = format!("{}/v1/chat/completions", upstream.trim_end_matches('/')).into();
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        eprintln!("floor_proxy: bad upstream URL {upstream}");
        return;
    };
    let client = Arc::new(client);
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("floor_proxy: bind {listen}: {e}");
                return;
            }
        };
        println!("floor_proxy listening on {listen}");
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (client, url, uri) = (client.clone(), url.clone(), uri.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (client, url, uri) = (client.clone(), url.clone(), uri.clone());
                    async move {
                        let body = req.into_body().collect().await.map(|c| c.to_bytes());
                        let answer = match body {
                            Ok(b) => client.post(&url, &uri, b).await,
                            Err(_) => None,
                        };
                        let (ct, body) = answer.unwrap_or_else(|| {
                            let empty = Full::new(Bytes::new()).map_err(|e| match e {}).boxed();
                            (
                                hyper::header::HeaderValue::from_static("application/json"),
                                empty,
                            )
                        });
                        let mut resp = hyper::Response::new(body);
                        resp.headers_mut().insert("content-type", ct);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
