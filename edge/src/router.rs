//! Exact NEMS paths → handlers (decisions.md §1, §7): search is `400 BAD_REQUEST`, `PUT`
//! is `405 MSG_RESOURCE_ID_FAIL`, other methods on known paths `405`, unknown paths `404`,
//! each with a Spine OperationOutcome.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, StatusCode};
use nems_proto::spine::SpineCode;

use crate::error::EdgeError;
use crate::fhir::Format;
use crate::handlers::{self, AppState, Ctx, HttpResponse, RequestBody, error_response};
use crate::negotiate::{Formats, response_format};

/// The header carrying the request id (set by the request-id layer).
pub const REQUEST_ID: &str = "x-request-id";

enum Route<'p> {
    Metadata,
    Publish,
    Subscriptions,
    Subscription(&'p str),
    History,
    Unknown,
}

/// The metrics label of a request.
fn route_label(route: &Route<'_>, method: &Method) -> &'static str {
    match (route, method) {
        (Route::Metadata, &Method::GET) => "metadata",
        (Route::Publish, &Method::POST) => "publish",
        (Route::Subscriptions, &Method::POST) => "subscription_create",
        (Route::Subscriptions, &Method::GET) => "subscription_search",
        (Route::Subscription(_), &Method::GET) => "subscription_read",
        (Route::Subscription(_), &Method::DELETE) => "subscription_delete",
        (Route::History, _) => "subscription_history",
        (Route::Unknown, _) => "unknown",
        _ => "method_not_allowed",
    }
}

/// The metrics and tracing label of a `method` request to `path`: never the path itself,
/// which on an unknown route may carry anything, an NHS number included.
pub fn label(method: &Method, path: &str) -> &'static str {
    route_label(&route_of(path), method)
}

/// Whether a client's `X-Request-ID` can be used as the request id: it becomes the
/// OperationOutcome `id`, so it must be a FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
pub fn is_fhir_id(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn route_of(path: &str) -> Route<'_> {
    let Some(rest) = path.strip_prefix("/STU3/") else {
        return Route::Unknown;
    };
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        ["metadata"] => Route::Metadata,
        ["Events", "1", "$process-message" | "%24process-message"] => Route::Publish,
        ["Subscription"] => Route::Subscriptions,
        ["Subscription", id] => Route::Subscription(id),
        ["Subscription", _, "_history", ..] => Route::History,
        _ => Route::Unknown,
    }
}

fn method_not_allowed(method: &Method, allowed: &str) -> EdgeError {
    if method == Method::PUT {
        // 405 with `issue.code` `forbidden`, from the Spine table.
        return EdgeError::new(
            SpineCode::MsgResourceIdFail,
            "NEMS does not update subscriptions: delete it and create a new one",
        );
    }
    EdgeError::with_status(
        SpineCode::BadRequest,
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not supported here; use {allowed}"),
    )
}

fn id_is_well_formed(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Size of the request line and header block as sent (`name: value\r\n` per field).
fn header_block_bytes(parts: &http::request::Parts) -> usize {
    let line = parts.method.as_str().len() + parts.uri.to_string().len() + 12;
    parts.headers.iter().fold(line, |total, (name, value)| {
        total + name.as_str().len() + value.len() + 4
    })
}

/// Routes one request.
pub async fn route(state: Arc<AppState>, req: Request<impl RequestBody>) -> HttpResponse {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    // The server's request-id layers have put a valid id in the header; a fresh one is
    // only a fallback, and the answer carries whichever is used.
    let request_id = parts
        .headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_fhir_id(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
    let ctx = Ctx {
        request_id,
        query: parts.uri.query().map(str::to_string),
        client_certificate: parts
            .extensions
            .get::<Option<crate::tls::PeerCertificate>>()
            .cloned()
            .flatten(),
        peer_addr: parts
            .extensions
            .get::<crate::server::PeerAddr>()
            .map(|p| p.0),
    };
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let route = route_of(&path);
    let route_name = route_label(&route, &method);
    // Errors answered here follow `_format` and `Accept` where they can, XML otherwise.
    let formats = match route {
        Route::Publish => Formats::XmlOnly,
        _ => Formats::XmlOrJson,
    };
    let error_format = response_format(&parts.headers, ctx.query.as_deref(), formats, Format::Xml)
        .unwrap_or(Format::Xml);
    let header_limit = state.config.max_header_bytes;
    let mut response = if header_block_bytes(&parts) > header_limit {
        let error = EdgeError::with_status(
            SpineCode::InvalidRequestMessage,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request headers are larger than the {header_limit}-byte limit"),
        );
        error_response(&error, error_format, &ctx.request_id)
    } else {
        match (route, &method) {
            (Route::Metadata, &Method::GET) => {
                handlers::metadata::get(&state, &parts.headers, &ctx)
            }
            (Route::Metadata, m) => {
                error_response(&method_not_allowed(m, "GET"), error_format, &ctx.request_id)
            }
            (Route::Publish, &Method::POST) => {
                handlers::publish::publish(&state, &parts.headers, body, &ctx).await
            }
            (Route::Publish, m) => error_response(
                &method_not_allowed(m, "POST"),
                error_format,
                &ctx.request_id,
            ),
            (Route::Subscriptions, &Method::POST) => {
                handlers::subscription::create(&state, &parts.headers, body, &ctx).await
            }
            (Route::Subscriptions, &Method::GET) => error_response(
                &EdgeError::new(
                    SpineCode::BadRequest,
                    "Malformed request syntax. NEMS Search command invalid syntax: subscriptions cannot be searched",
                ),
                error_format,
                &ctx.request_id,
            ),
            (Route::Subscriptions, m) => error_response(
                &method_not_allowed(m, "POST"),
                error_format,
                &ctx.request_id,
            ),
            (Route::Subscription(id), m)
                if (m == Method::GET || m == Method::DELETE) && !id_is_well_formed(id) =>
            {
                error_response(
                    &EdgeError::new(
                        SpineCode::BadRequest,
                        "Malformed request syntax: a subscription id is 32 hexadecimal characters",
                    ),
                    error_format,
                    &ctx.request_id,
                )
            }
            (Route::Subscription(id), &Method::GET) => {
                handlers::subscription::read(&state, &parts.headers, id, body, &ctx).await
            }
            (Route::Subscription(id), &Method::DELETE) => {
                handlers::subscription::delete(&state, &parts.headers, id, &ctx).await
            }
            (Route::Subscription(_), m) => error_response(
                &method_not_allowed(m, "GET or DELETE"),
                error_format,
                &ctx.request_id,
            ),
            (Route::History, _) => error_response(
                &EdgeError::new(
                    SpineCode::BadRequest,
                    "versioned reads (_history) are not supported",
                ),
                error_format,
                &ctx.request_id,
            ),
            (Route::Unknown, _) => error_response(
                &EdgeError::with_status(
                    SpineCode::NoRecordFound,
                    StatusCode::NOT_FOUND,
                    "no such endpoint: NEMS serves /STU3/Subscription, /STU3/Events/1/$process-message and /STU3/metadata",
                ),
                error_format,
                &ctx.request_id,
            ),
        }
    };
    // The header and the OperationOutcome `id` agree whatever the layers around did.
    if let Ok(value) = http::HeaderValue::from_str(&ctx.request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let m = crate::metrics::metrics();
    m.requests
        .get_or_create(&crate::metrics::RequestLabels {
            route: route_name,
            status: response.status().as_u16(),
        })
        .inc();
    m.duration
        .get_or_create(&crate::metrics::RouteLabel { route: route_name })
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        request_id = %ctx.request_id,
        method = %method,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "http request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(route_of("/STU3/metadata"), Route::Metadata));
        assert!(matches!(
            route_of("/STU3/Events/1/$process-message"),
            Route::Publish
        ));
        assert!(matches!(
            route_of("/STU3/Events/1/%24process-message"),
            Route::Publish
        ));
        assert!(matches!(
            route_of("/STU3/Subscription"),
            Route::Subscriptions
        ));
        assert!(matches!(
            route_of("/STU3/Subscription/abc"),
            Route::Subscription("abc")
        ));
        assert!(matches!(
            route_of("/STU3/Subscription/abc/_history/1"),
            Route::History
        ));
        assert!(matches!(route_of("/STU3/Patient/1"), Route::Unknown));
        assert!(matches!(route_of("/metadata"), Route::Unknown));
        assert!(id_is_well_formed("ea0a485187204b49b978bdcf7102388c"));
        assert!(!id_is_well_formed("ea0a4851-8720-4b49-b978-bdcf7102388c"));
    }

    #[test]
    fn only_fhir_ids_are_taken_as_request_ids() {
        for ok in ["a", "req-1.2", "ABC-def-012", &"x".repeat(64)] {
            assert!(is_fhir_id(ok), "{ok}");
        }
        for bad in [
            "",
            "has space",
            "under_score",
            "slash/",
            "é",
            "<id/>",
            &"x".repeat(65),
        ] {
            assert!(!is_fhir_id(bad), "{bad}");
        }
    }

    #[test]
    fn labels_never_carry_the_path() {
        assert_eq!(
            label(
                &Method::GET,
                "/STU3/Subscription/0123456789abcdef0123456789abcdef"
            ),
            "subscription_read"
        );
        assert_eq!(label(&Method::GET, "/STU3/Patient/9434765919"), "unknown");
    }
}
