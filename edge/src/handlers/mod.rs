//! Request handlers and the helpers they share: reading bodies within the limit, and
//! building FHIR responses and Spine OperationOutcomes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;

use crate::config::EdgeConfig;
use crate::core_client::CoreClient;
use crate::error::EdgeError;
use crate::fhir::Format;
use crate::fhir::outcome::{self, Issue, OperationOutcome, Severity};
use crate::headers::{self, Checked, Policy};
use crate::jwt::Operation;

pub mod metadata;
pub mod publish;
pub mod subscription;

/// What every handler needs.
#[derive(Debug)]
pub struct AppState {
    /// Configuration.
    pub config: EdgeConfig,
    /// Core's gRPC clients.
    pub core: CoreClient,
    /// The per-ASID rate limit.
    pub limiter: crate::ratelimit::RateLimiter,
}

/// The context of one request.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Request id: the OperationOutcome `id` and the log correlation id.
    pub request_id: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// The verified TLS client certificate (mutual TLS), if any.
    pub client_certificate: Option<crate::tls::PeerCertificate>,
    /// The address of the connection's peer, when known.
    pub peer_addr: Option<std::net::IpAddr>,
}

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// Builds the OperationOutcome response of an error.
pub fn error_response(error: &EdgeError, format: Format, request_id: &str) -> HttpResponse {
    let (status, issue_code) = error.http();
    let body = outcome::write(
        format,
        &OperationOutcome {
            id: request_id.to_string(),
            issues: vec![Issue {
                severity: Severity::Error,
                code: issue_code,
                spine_code: error.code,
                diagnostics: Some(error.diagnostics.clone()),
            }],
        },
    );
    if status.is_server_error() {
        tracing::warn!(request_id, status = status.as_u16(), code = %error.code, "request failed");
    } else {
        tracing::info!(request_id, status = status.as_u16(), code = %error.code, "request refused");
    }
    let mut response = fhir_response(status, format, body);
    if let Some(retry) = error.retry_after
        && let Ok(value) = HeaderValue::from_str(&retry.as_secs().max(1).to_string())
    {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

/// Builds an information OperationOutcome body for success notices (deprecated events).
pub fn notices_body(notices: &[pb::Notice], format: Format, request_id: &str) -> Option<Vec<u8>> {
    if notices.is_empty() {
        return None;
    }
    let issues = notices
        .iter()
        .map(|n| Issue {
            severity: Severity::Information,
            code: "informational",
            spine_code: n.spine_code.parse().unwrap_or(SpineCode::Deprecated),
            diagnostics: Some(n.diagnostics.clone()),
        })
        .collect();
    Some(outcome::write(
        format,
        &OperationOutcome {
            id: request_id.to_string(),
            issues,
        },
    ))
}

/// A response with a FHIR body.
pub fn fhir_response(status: StatusCode, format: Format, body: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
}

/// A response without a body.
pub fn empty_response(status: StatusCode) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A request body as the server hands it over, still unread. Handlers read it (with
/// [`read_body`]) only after the Spine headers, the JWT and the rate limit have passed, so
/// that an unauthenticated or throttled client never has its body buffered.
pub trait RequestBody: Body<Error: Into<Box<dyn std::error::Error + Send + Sync>>> {}

impl<B> RequestBody for B where B: Body<Error: Into<Box<dyn std::error::Error + Send + Sync>>> {}

/// Reads the request body, refusing more than `limit` bytes with `413`.
pub async fn read_body(body: impl RequestBody, limit: usize) -> Result<Bytes, EdgeError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
                || std::error::Error::source(&*e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                Err(too_large_error(limit))
            } else {
                Err(EdgeError::new(
                    SpineCode::BadRequest,
                    "the request body could not be read",
                ))
            }
        }
    }
}

/// The `413` error.
pub fn too_large_error(limit: usize) -> EdgeError {
    EdgeError::with_status(
        SpineCode::InvalidRequestMessage,
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than the {limit}-byte limit"),
    )
}

/// Checks the Spine headers with the configured policy, then the caller's rate limit.
pub fn check_headers(
    state: &AppState,
    headers: &HeaderMap,
    op: Operation,
    ctx: &Ctx,
) -> Result<Checked, EdgeError> {
    let request_id = ctx.request_id.as_str();
    let config = &state.config;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    let checked = headers::check(
        headers,
        op,
        Policy {
            service_asid: &config.service_asid,
            now,
            skew: config.clock_skew.as_secs() as i64,
        },
        request_id,
    )?;
    let mut checked = checked;
    if let Some(chain) = &ctx.client_certificate
        && let Some((leaf, intermediates)) = chain.0.split_first()
    {
        checked.caller.client_certificate.clone_from(leaf);
        checked.caller.client_certificate_chain = intermediates.to_vec();
    }
    // Charged to what the edge verified (the certificate, else the peer address), never
    // to the ASID the request names.
    let key = match ctx.client_certificate.as_ref().and_then(|c| c.0.first()) {
        Some(leaf) => state.limiter.certificate_key(leaf),
        None => crate::ratelimit::RateLimiter::address_key(
            ctx.peer_addr
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        ),
    };
    if let Err(wait) = state.limiter.check(key) {
        crate::metrics::metrics().rate_limited.inc();
        return Err(EdgeError {
            retry_after: Some(wait.max(Duration::from_secs(1))),
            ..EdgeError::with_status(
                SpineCode::BadRequest,
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests from this client; slow down and retry after the Retry-After delay",
            )
        });
    }
    Ok(checked)
}
