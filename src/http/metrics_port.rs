//! `METRICS_PORT`: a listener of its own that serves only `GET /metrics`, for scrapers on
//! a network the API is not exposed to.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;

use crate::body::Body;
use crate::error::GatewayError;
use crate::state::AppState;

fn answer(state: &AppState, req: &Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => super::ops::metrics_response(state),
        (_, "/metrics") => {
            let mut r = GatewayError::MethodNotAllowed.into_response();
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r
        }
        _ => GatewayError::UnknownRoute.into_response(),
    }
}

pub async fn serve(listener: TcpListener, state: Arc<AppState>) {
    let builder = Arc::new(Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: the main listener logs it; just do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let (state, builder) = (state.clone(), builder.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = answer(&state, &req);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
