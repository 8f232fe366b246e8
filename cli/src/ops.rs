//! The operations endpoint: `GET /metrics` (Prometheus/OpenMetrics text of every service
//! in the process), `GET /livez` (the process answers) and `GET /readyz` (every readiness
//! check passes: the store is open and healthy, MESH reachable). Serve it on an operator
//! port, never on the public API port.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::console::Console;

fn respond(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            nems_runtime::ops::encode(),
        ),
        ("GET", "/livez") => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ok\n".to_string(),
        ),
        ("GET", "/readyz") => {
            let failures = nems_runtime::ops::readiness();
            if failures.is_empty() {
                (
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    "ready\n".to_string(),
                )
            } else {
                let text: String = failures
                    .iter()
                    .map(|(name, why)| format!("{name}: {why}\n"))
                    .collect();
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    text,
                )
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: use /metrics, /livez or /readyz (and /console/ where core runs)\n"
                .to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

/// Serves the operations endpoint on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    serve_with_console(listener, shutdown, Arc::default()).await;
}

/// [`serve`], with the operations console under `/console/` once `console` holds one (set
/// when core's operator API is up; `crate::console`).
pub async fn serve_with_console(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    console: Arc<OnceLock<Console>>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            () = &mut shutdown => return,
        };
        let console = console.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let console = console.clone();
            async move {
                let path = req.uri().path();
                if (path == "/console" || path.starts_with("/console/"))
                    && let Some(console) = console.get()
                {
                    return Ok::<_, Infallible>(console.handle(req, peer).await);
                }
                Ok::<_, Infallible>(respond(&req))
            }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
