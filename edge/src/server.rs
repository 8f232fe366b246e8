//! The edge's HTTP server: a hyper 1 accept loop (HTTP/1.1 and HTTP/2, TCP_NODELAY, a
//! connection limit (connections over it are answered `503`), a header-read timeout against
//! slow clients, a per-connection HTTP/2 stream limit and keep-alive PINGs that drop dead
//! peers) serving the router behind tower-http layers: request id (a client's own only if it
//! is a FHIR id), tracing (spans name the route, never the URI), whole-request timeout and
//! body-size limit. The bare `408`/`413` answers of those layers are turned into Spine
//! OperationOutcomes.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use nems_proto::spine::SpineCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{MakeSpan, TraceLayer};
use tracing::Span;

use crate::config::EdgeConfig;
use crate::core_client::CoreClient;
use crate::error::EdgeError;
use crate::fhir::Format;
use crate::handlers::{AppState, error_response, too_large_error};
use crate::router;
use crate::tls::Stream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeRunError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The core channel could not be built.
    #[error("core channel: {0}")]
    Core(#[from] tonic::transport::Error),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Replaces the `408` and `413` answers of the tower-http layers (empty, or tower-http's
/// `text/plain` "length limit exceeded") with Spine OperationOutcomes whose `id` is the
/// request id, and boxes every body. The handlers' own answers carry a FHIR media type and
/// pass unchanged.
fn fix_layer_errors<B>(response: Response<B>, max_body: usize) -> Response<BoxBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let fhir = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/fhir+"));
    let error = match response.status() {
        StatusCode::REQUEST_TIMEOUT if !fhir => Some(EdgeError::with_status(
            SpineCode::BadRequest,
            StatusCode::REQUEST_TIMEOUT,
            "the request took too long to arrive or to process",
        )),
        StatusCode::PAYLOAD_TOO_LARGE if !fhir => Some(too_large_error(max_body)),
        _ => None,
    };
    match error {
        Some(e) => {
            let request_id = response.headers().get(router::REQUEST_ID).cloned();
            let id = request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
            let mut fixed = error_response(&e, Format::Xml, &id);
            if let Some(value) = request_id {
                fixed.headers_mut().insert(router::REQUEST_ID, value);
            }
            fixed.map(|b| b.map_err(|never| match never {}).boxed_unsync())
        }
        None => response.map(|b| b.map_err(Into::into).boxed_unsync()),
    }
}

/// The tracing span of each request: method, route label and request id. Never the URI:
/// a refused search carries its criteria (NHS numbers) in the query, and an unknown path may
/// carry anything.
#[derive(Debug, Clone, Copy, Default)]
struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let request_id = request
            .headers()
            .get(router::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| router::is_fhir_id(v))
            .unwrap_or_default();
        tracing::debug_span!(
            "request",
            method = %request.method(),
            route = router::label(request.method(), request.uri().path()),
            request_id,
        )
    }
}

/// Drops a client `X-Request-ID` that is not a FHIR id, so that the request-id layer puts a
/// UUID in its place: the id is the OperationOutcome `id` and is echoed in the header, and
/// both must be the same valid value.
fn drop_invalid_request_id<B>(mut request: Request<B>) -> Request<B> {
    let valid = request
        .headers()
        .get(router::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .is_some_and(router::is_fhir_id);
    if !valid {
        request.headers_mut().remove(router::REQUEST_ID);
    }
    request
}

/// Most connections being answered `503` at once (beyond the connection limit).
const MAX_REFUSALS: usize = 256;

/// Builds the gRPC server of `BundleService` (with reflection) on `listener`; the future
/// serves until `stop` turns true.
fn serve_grpc(
    state: Arc<AppState>,
    listener: TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>> + Send, EdgeRunError> {
    use nems_proto::v1::bundle_service_server::BundleServiceServer;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(nems_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(nems_proto::ERROR_DETAILS_DESCRIPTOR_SET)
            .with_service_name(nems_proto::service_names::BUNDLE)
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    let v1 = reflection()
        .build_v1()
        .map_err(|e| EdgeRunError::Config(format!("reflection: {e}")))?;
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| EdgeRunError::Config(format!("reflection: {e}")))?;
    let mut builder = tonic::transport::Server::builder()
        .timeout(state.config.request_timeout)
        .concurrency_limit_per_connection(state.config.http2_max_concurrent_streams as usize);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| EdgeRunError::Config(format!("edge.tls: {e}")))?;
    }
    // The bundle plus the request's other fields.
    let max_message = state.config.max_body_bytes + 64 * 1024;
    let addr = listener.local_addr()?;
    let router = builder.add_service(v1).add_service(v1alpha).add_service(
        BundleServiceServer::new(crate::grpc::Bundles { state })
            .max_decoding_message_size(max_message),
    );
    tracing::info!(%addr, "edge serving gRPC (BundleService)");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Ok(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stop.wait_for(|s| *s).await;
    }))
}

/// The peer address of a request's connection (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::IpAddr);

/// Answers the requests of a connection over the connection limit with `503`, an
/// OperationOutcome and `Retry-After`, then closes it; bounded by `timeout`.
async fn refuse(stream: TcpStream, acceptor: Option<TlsAcceptor>, timeout: Duration) {
    let work = async {
        let io = match acceptor {
            None => Stream::Plain(stream),
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(tls) => Stream::Tls(Box::new(tls)),
                Err(_) => return,
            },
        };
        let service = hyper::service::service_fn(|_request| async {
            let error = EdgeError {
                retry_after: Some(Duration::from_secs(1)),
                ..EdgeError::with_status(
                    SpineCode::InternalServerError,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the service is at its connection limit; retry after 1 second",
                )
            };
            let request_id = uuid::Uuid::new_v4().to_string();
            let mut response = error_response(&error, Format::Xml, &request_id);
            let headers = response.headers_mut();
            headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            if let Ok(value) = http::HeaderValue::from_str(&request_id) {
                headers.insert(router::REQUEST_ID, value);
            }
            Ok::<_, Infallible>(response)
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(false)
            .timer(TokioTimer::new())
            .header_read_timeout(timeout);
        let _ = builder.serve_connection(TokioIo::new(io), service).await;
    };
    let _ = tokio::time::timeout(timeout, work).await;
}

/// Serves the edge on `listener` (and `BundleService` on `edge.grpc_listen`, when set)
/// until `shutdown` completes, then lets open requests finish (up to 10 s).
pub async fn run(
    config: EdgeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), EdgeRunError> {
    config.validate().map_err(EdgeRunError::Config)?;
    let grpc = match config.grpc_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| EdgeRunError::Config(format!("edge.grpc_listen {addr}: {e}")))?,
        ),
        None => None,
    };
    run_with_grpc(config, listener, grpc, shutdown).await
}

/// [`run`] with the gRPC listener bound by the caller (`None`: no gRPC API; tests bind
/// port 0).
pub async fn run_with_grpc(
    config: EdgeConfig,
    listener: TcpListener,
    grpc: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), EdgeRunError> {
    config.validate().map_err(EdgeRunError::Config)?;
    let grpc_tls = match (&grpc, &config.tls) {
        (Some(_), Some(tls)) => Some(
            tls.to_tonic()
                .map_err(|e| EdgeRunError::Config(format!("edge.tls: {e}")))?,
        ),
        _ => None,
    };
    let core_tls = match &config.core_tls {
        Some(tls) => Some(
            tls.to_tonic()
                .map_err(|e| EdgeRunError::Config(format!("edge.core_tls: {e}")))?,
        ),
        None => None,
    };
    let acceptor = match &config.tls {
        Some(tls) => Some(crate::tls::acceptor(tls).map_err(EdgeRunError::Config)?),
        None => None,
    };
    let core = CoreClient::connect_lazy(&config.core_url, config.core_timeout, core_tls)?;
    let max_body = config.max_body_bytes;
    let request_timeout = config.request_timeout;
    let header_timeout = config.header_read_timeout;
    let max_header = config.max_header_bytes;
    let max_connections = config.max_connections;
    let http2_streams = config.http2_max_concurrent_streams;
    let http2_ping_interval = config.http2_keep_alive_interval;
    let http2_ping_timeout = config.http2_keep_alive_timeout;
    let limiter =
        crate::ratelimit::RateLimiter::new(config.rate_limit_per_asid, config.rate_limit_burst);
    let state = Arc::new(AppState {
        config,
        core,
        limiter,
    });
    let (grpc_stop, grpc_stopped) = tokio::sync::watch::channel(false);
    let grpc_task = match grpc {
        Some(grpc) => Some(tokio::spawn(serve_grpc(
            state.clone(),
            grpc,
            grpc_tls,
            grpc_stopped,
        )?)),
        None => None,
    };
    let service = ServiceBuilder::new()
        .map_request(drop_invalid_request_id)
        .layer(SetRequestIdLayer::new(
            router::REQUEST_ID
                .parse()
                .map_err(|_| EdgeRunError::Config("request id header".into()))?,
            MakeRequestUuid,
        ))
        // Outside the propagation layer, so that the request id is on the answers it fixes.
        .map_response(move |response| fix_layer_errors(response, max_body))
        .layer(PropagateRequestIdLayer::new(
            router::REQUEST_ID
                .parse()
                .map_err(|_| EdgeRunError::Config("request id header".into()))?,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(RequestSpan))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(RequestBodyLimitLayer::new(max_body))
        .service_fn(move |req: Request<_>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(router::route(state, req).await) }
        });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // Room for a block over the limit to be parsed and answered with an OperationOutcome
        // by the router; only a block over 4× the limit gets hyper's bare 431.
        .max_buf_size(max_header.saturating_mul(4).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_header.saturating_mul(4) as u32)
        // hyper's default is 200 requests at once per connection.
        .max_concurrent_streams(http2_streams)
        // Dead peers are found by an unanswered PING and dropped, freeing their slot.
        .keep_alive_interval(http2_ping_interval)
        .keep_alive_timeout(http2_ping_timeout);
    let connections = Arc::new(Semaphore::new(max_connections));
    // Connections over the limit are answered 503 (a few at a time) rather than left
    // waiting unanswered in the kernel's backlog.
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let graceful = GracefulShutdown::new();
    tracing::info!(addr = %listener.local_addr()?, "edge serving HTTP");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            crate::metrics::metrics().connections_refused.inc();
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    refuse(stream, acceptor, header_timeout).await;
                    drop(refusal);
                });
            }
            // Beyond both bounds the connection is closed at once.
            continue;
        };
        let service = service.clone();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let io = match acceptor {
                None => Stream::Plain(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                        Ok(Err(e)) => {
                            tracing::info!(error = %e, "tls handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::info!("tls handshake timed out");
                            return;
                        }
                    }
                }
            };
            let peer = io.peer_certificate();
            let service = tower::ServiceBuilder::new()
                .layer(tower_http::add_extension::AddExtensionLayer::new(peer))
                .layer(tower_http::add_extension::AddExtensionLayer::new(PeerAddr(
                    peer_addr.ip(),
                )))
                .service(service);
            let connection =
                builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("edge shutting down");
    grpc_stop.send_replace(true);
    if let Some(task) = grpc_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "edge gRPC server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "edge gRPC server task failed"),
            Ok(Ok(())) => {}
        }
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("edge shutdown timed out with connections still open");
        }
    }
    tracing::info!("edge stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tower::ServiceExt;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata};

    use super::*;

    /// A tracing subscriber that writes down the name and fields of every span and event.
    #[derive(Debug, Clone, Default)]
    struct Recorder(Arc<Mutex<String>>);

    impl Recorder {
        fn text(&self) -> String {
            self.0.lock().unwrap().clone()
        }
    }

    impl Visit for &Recorder {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let line = format!("{}={value:?}\n", field.name());
            self.0.lock().unwrap().push_str(&line);
        }
    }

    impl tracing::Subscriber for Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            let name = format!("span {}\n", span.metadata().name());
            self.0.lock().unwrap().push_str(&name);
            span.record(&mut &*self);
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, values: &Record<'_>) {
            values.record(&mut &*self);
        }
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            event.record(&mut &*self);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    /// Sends a refused search (criteria with an NHS number in the query) through a
    /// `TraceLayer` with `make_span`, and returns what was recorded.
    async fn trace_search<M>(make_span: M) -> String
    where
        M: MakeSpan<http_body_util::Empty<Bytes>> + Clone,
    {
        let recorder = Recorder::default();
        let _guard = tracing::subscriber::set_default(recorder.clone());
        let service = ServiceBuilder::new()
            .layer(TraceLayer::new_for_http().make_span_with(make_span))
            .service_fn(|_request: Request<_>| async {
                Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
            });
        let request = Request::get(
            "/STU3/Subscription?criteria=/Bundle?Patient.identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919",
        )
        .header(router::REQUEST_ID, "req-span-1")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        recorder.text()
    }

    #[tokio::test]
    async fn request_spans_name_the_route_not_the_query() {
        let recorded = trace_search(RequestSpan).await;
        assert!(recorded.contains("span request\n"), "{recorded}");
        assert!(recorded.contains("method=GET\n"), "{recorded}");
        assert!(
            recorded.contains("route=\"subscription_search\"\n"),
            "{recorded}"
        );
        assert!(
            recorded.contains("request_id=\"req-span-1\"\n"),
            "{recorded}"
        );
        assert!(!recorded.contains("9434765919"), "{recorded}");
        assert!(!recorded.contains("criteria"), "{recorded}");
        // The recorder does see URIs: tower-http's default span records this one whole.
        let default = trace_search(tower_http::trace::DefaultMakeSpan::new()).await;
        assert!(default.contains("9434765919"), "{default}");
    }

    #[test]
    fn only_fhir_request_ids_are_kept() {
        let with = |value: &str| {
            Request::get("/STU3/metadata")
                .header(router::REQUEST_ID, value)
                .body(())
                .unwrap()
        };
        let kept = drop_invalid_request_id(with("client-id.1"));
        assert_eq!(kept.headers()[router::REQUEST_ID], "client-id.1");
        for bad in ["has space", "under_score", "<b>", &"x".repeat(65)] {
            let dropped = drop_invalid_request_id(with(bad));
            assert!(dropped.headers().get(router::REQUEST_ID).is_none(), "{bad}");
        }
    }

    #[test]
    fn bare_layer_errors_become_operation_outcomes() {
        let bare = Response::builder()
            .status(StatusCode::PAYLOAD_TOO_LARGE)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let fixed = fix_layer_errors(bare, 1024);
        assert_eq!(fixed.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            fixed
                .headers()
                .get(CONTENT_TYPE)
                .unwrap()
                .to_str()
                .unwrap()
                .contains("fhir+xml")
        );
        let ok = Response::builder()
            .status(StatusCode::OK)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        assert!(
            fix_layer_errors(ok, 1024)
                .headers()
                .get(CONTENT_TYPE)
                .is_none()
        );
    }

    #[tokio::test]
    async fn tower_http_text_413_becomes_an_operation_outcome_with_the_request_id() {
        // tower-http's own answer when `Content-Length` is over the limit.
        let plain = Response::builder()
            .status(StatusCode::PAYLOAD_TOO_LARGE)
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(router::REQUEST_ID, "req-413")
            .body(http_body_util::Full::new(Bytes::from_static(
                b"length limit exceeded",
            )))
            .unwrap();
        let fixed = fix_layer_errors(plain, 3 * 1024 * 1024);
        assert_eq!(fixed.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(fixed.headers()[router::REQUEST_ID], "req-413");
        let body = fixed.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("<id value=\"req-413\"/>"), "{body}");
        assert!(body.contains("INVALID_REQUEST_MESSAGE"), "{body}");
        assert!(body.contains("3145728-byte limit"), "{body}");
    }
}
