//! `POST /STU3/Events/1/$process-message`: check the headers, then read the body and the
//! Bundle's structure, hand it and the exact bytes to core, answer `202` (empty, or an
//! information OperationOutcome for a deprecated event type).

use http::{HeaderMap, StatusCode};
use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;

use super::subscription::fhir_error;
use super::{
    AppState, Ctx, HttpResponse, RequestBody, check_headers, empty_response, error_response,
    fhir_response, notices_body, read_body,
};
use crate::error::EdgeError;
use crate::fhir::Format;
use crate::jwt::Operation;
use crate::negotiate::{Formats, request_format, response_format};
use crate::translate::bundle;

/// Bodies up to this size are read on the calling task (tens of microseconds); larger ones on
/// the blocking pool, so that a multi-megabyte bundle never holds an async worker (which, in
/// `nems up`, core shares).
const INLINE_EXTRACTION_BYTES: usize = 64 * 1024;

/// Extracts the bundle's structure, off the async workers when it is large.
async fn extract(body: &bytes::Bytes) -> Result<pb::EventMessage, crate::fhir::FhirError> {
    if body.len() <= INLINE_EXTRACTION_BYTES {
        return bundle::extract(body);
    }
    let body = body.clone();
    tokio::task::spawn_blocking(move || bundle::extract(&body))
        .await
        .unwrap_or_else(|_| {
            Err(crate::fhir::FhirError::NotWellFormed(
                "the bundle could not be read".to_owned(),
            ))
        })
}

/// Why [`forward`] gave no answer.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The edge refused the bundle (unreadable, too large).
    Edge(EdgeError),
    /// Core refused it or failed.
    Core(tonic::Status),
}

/// Reads the bundle's structure from `body` and publishes it to core with the exact bytes:
/// the one path of both the HTTP API and `BundleService.PublishBundle`.
pub(crate) async fn forward(
    state: &AppState,
    caller: pb::Caller,
    interaction_id: String,
    body: bytes::Bytes,
) -> Result<pb::PublishEventResponse, Refused> {
    if body.is_empty() {
        return Err(Refused::Edge(EdgeError::new(
            SpineCode::BadRequest,
            "an event message Bundle is required in the body",
        )));
    }
    if body.len() > state.config.max_body_bytes {
        return Err(Refused::Edge(super::too_large_error(
            state.config.max_body_bytes,
        )));
    }
    let message = extract(&body).await.map_err(|e| {
        Refused::Edge(match fhir_error(e) {
            EdgeError {
                code: SpineCode::InvalidResource,
                diagnostics,
                ..
            } => EdgeError::new(SpineCode::InvalidResource, diagnostics),
            other => other,
        })
    })?;
    let request = pb::PublishEventRequest {
        caller: Some(caller),
        interaction_id,
        message: Some(message),
        payload: body,
    };
    if prost::Message::encoded_len(&request) > nems_proto::MAX_CORE_REQUEST_BYTES {
        return Err(Refused::Edge(super::too_large_error(
            state.config.max_body_bytes,
        )));
    }
    state
        .core
        .call(|mut core| {
            let request = request.clone();
            async move { core.events.publish_event(request).await }
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(Refused::Core)
}

/// Publishes one event message.
pub async fn publish(
    state: &AppState,
    headers: &HeaderMap,
    body: impl RequestBody,
    ctx: &Ctx,
) -> HttpResponse {
    let result = async {
        request_format(headers, Formats::XmlOnly)?;
        response_format(headers, ctx.query.as_deref(), Formats::XmlOnly, Format::Xml)?;
        let checked = check_headers(state, headers, Operation::Publish, ctx)?;
        let body = read_body(body, state.config.max_body_bytes).await?;
        let accepted = forward(state, checked.caller, checked.interaction_id, body)
            .await
            .map_err(|e| match e {
                Refused::Edge(e) => e,
                Refused::Core(s) => EdgeError::from_core(&s, &ctx.request_id),
            })?;
        tracing::info!(request_id = %ctx.request_id, event = %accepted.event_id, mailboxes = accepted.mailboxes, "event published");
        Ok(match notices_body(&accepted.notices, Format::Xml, &ctx.request_id) {
            Some(body) => fhir_response(StatusCode::ACCEPTED, Format::Xml, body),
            None => empty_response(StatusCode::ACCEPTED),
        })
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e, Format::Xml, &ctx.request_id))
}
