//! Every failure the edge answers, mapped in one table to (HTTP status, FHIR issue type,
//! Spine code) as in nems.md §2.6, and rendered as a Spine OperationOutcome whose `id` is
//! the request id (also in the server log line for the request).

use std::time::Duration;

use http::StatusCode;
use nems_proto::spine::{self, SpineCode};

/// A failure the edge answers with an OperationOutcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeError {
    /// The Spine code.
    pub code: SpineCode,
    /// What is wrong; never patient data.
    pub diagnostics: String,
    /// Overrides the table's HTTP status (413, 405, 503, 408, 404 for unknown paths).
    pub status: Option<StatusCode>,
    /// `Retry-After` to send (503).
    pub retry_after: Option<Duration>,
}

impl EdgeError {
    /// A failure with the table's status for `code`.
    pub fn new(code: SpineCode, diagnostics: impl Into<String>) -> Self {
        EdgeError {
            code,
            diagnostics: diagnostics.into(),
            status: None,
            retry_after: None,
        }
    }

    /// A failure with an explicit HTTP status.
    pub fn with_status(
        code: SpineCode,
        status: StatusCode,
        diagnostics: impl Into<String>,
    ) -> Self {
        EdgeError {
            status: Some(status),
            ..Self::new(code, diagnostics)
        }
    }

    /// The HTTP status and FHIR `issue.code`.
    pub fn http(&self) -> (StatusCode, &'static str) {
        let (status, issue) = table(self.code);
        match self.status {
            Some(StatusCode::SERVICE_UNAVAILABLE) => (StatusCode::SERVICE_UNAVAILABLE, "transient"),
            Some(StatusCode::REQUEST_TIMEOUT) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            // The Spine table's issue type for the code (`value` for INVALID_REQUEST_MESSAGE).
            Some(StatusCode::PAYLOAD_TOO_LARGE) => (StatusCode::PAYLOAD_TOO_LARGE, issue),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE) => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too-costly")
            }
            Some(StatusCode::NOT_FOUND) => (StatusCode::NOT_FOUND, "not-found"),
            Some(StatusCode::METHOD_NOT_ALLOWED) => {
                (StatusCode::METHOD_NOT_ALLOWED, "not-supported")
            }
            Some(StatusCode::TOO_MANY_REQUESTS) => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
            Some(other) => (other, issue),
            None => (status, issue),
        }
    }

    /// Maps a status from core: a Spine code in its details goes through the table;
    /// otherwise the gRPC code decides. Internal details never reach the client.
    pub fn from_core(status: &tonic::Status, request_id: &str) -> Self {
        if let Some(code) = spine::code_of(status) {
            return EdgeError::new(code, status.message());
        }
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
                let retry = spine::retry_after_of(status).unwrap_or(Duration::from_secs(5));
                EdgeError {
                    retry_after: Some(retry),
                    ..EdgeError::with_status(
                        SpineCode::InternalServerError,
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "the service is temporarily unavailable; retry after {} seconds",
                            retry.as_secs().max(1)
                        ),
                    )
                }
            }
            tonic::Code::Unimplemented => {
                EdgeError::new(SpineCode::NotImplemented, "not implemented")
            }
            // Core refused to decode a request this large.
            tonic::Code::OutOfRange => EdgeError::with_status(
                SpineCode::InvalidRequestMessage,
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request is larger than the service accepts",
            ),
            code => {
                tracing::error!(grpc_code = ?code, request_id, "core call failed");
                EdgeError::new(
                    SpineCode::InternalServerError,
                    format!("unexpected internal error; quote reference {request_id}"),
                )
            }
        }
    }
}

/// The nems.md §2.6 table: Spine code → (HTTP status, `issue.code`).
pub fn table(code: SpineCode) -> (StatusCode, &'static str) {
    use SpineCode::*;
    match code {
        NoRecordFound | PatientNotFound | OrganisationNotFound => {
            (StatusCode::NOT_FOUND, "not-found")
        }
        InvalidNhsNumber
        | InvalidValue
        | InvalidIdentifierSystem
        | InvalidIdentifierValue
        | InvalidElement
        | InvalidRequestMessage => (StatusCode::BAD_REQUEST, "value"),
        InvalidCodeSystem | InvalidCodeValue => (StatusCode::BAD_REQUEST, "code-invalid"),
        MessageNotWellFormed => (StatusCode::BAD_REQUEST, "structure"),
        BadRequest | MissingOrInvalidHeader => (StatusCode::BAD_REQUEST, "invalid"),
        InvalidParameter | InvalidResource | ReferenceNotFound => {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
        }
        AccessDenied | AsidCheckFailed | AccessDeniedSsl => (StatusCode::FORBIDDEN, "forbidden"),
        MsgResourceIdFail => (StatusCode::METHOD_NOT_ALLOWED, "forbidden"),
        DuplicateRejected => (StatusCode::UNPROCESSABLE_ENTITY, "duplicate"),
        InternalServerError => (StatusCode::INTERNAL_SERVER_ERROR, "exception"),
        NotImplemented => (StatusCode::NOT_IMPLEMENTED, "not-supported"),
        NoLongerSupported | Withdrawn => (StatusCode::BAD_REQUEST, "not-supported"),
        UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid"),
        Deprecated => (StatusCode::OK, "informational"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_of_the_spine_table() {
        let rows = [
            (SpineCode::BadRequest, 400, "invalid"),
            (SpineCode::MessageNotWellFormed, 400, "structure"),
            (SpineCode::MissingOrInvalidHeader, 400, "invalid"),
            (SpineCode::InvalidNhsNumber, 400, "value"),
            (SpineCode::InvalidRequestMessage, 400, "value"),
            (SpineCode::InvalidIdentifierSystem, 400, "value"),
            (SpineCode::InvalidIdentifierValue, 400, "value"),
            (SpineCode::InvalidCodeSystem, 400, "code-invalid"),
            (SpineCode::InvalidCodeValue, 400, "code-invalid"),
            (SpineCode::InvalidElement, 400, "value"),
            (SpineCode::AccessDenied, 403, "forbidden"),
            (SpineCode::AsidCheckFailed, 403, "forbidden"),
            (SpineCode::AccessDeniedSsl, 403, "forbidden"),
            (SpineCode::NoRecordFound, 404, "not-found"),
            (SpineCode::PatientNotFound, 404, "not-found"),
            (SpineCode::OrganisationNotFound, 404, "not-found"),
            (SpineCode::MsgResourceIdFail, 405, "forbidden"),
            (SpineCode::UnsupportedMediaType, 415, "invalid"),
            (SpineCode::InvalidResource, 422, "invalid"),
            (SpineCode::InvalidParameter, 422, "invalid"),
            (SpineCode::ReferenceNotFound, 422, "invalid"),
            (SpineCode::DuplicateRejected, 422, "duplicate"),
            (SpineCode::InternalServerError, 500, "exception"),
            (SpineCode::NotImplemented, 501, "not-supported"),
            (SpineCode::Withdrawn, 400, "not-supported"),
            (SpineCode::NoLongerSupported, 400, "not-supported"),
        ];
        for (code, status, issue) in rows {
            assert_eq!(
                table(code),
                (StatusCode::from_u16(status).unwrap(), issue),
                "{code}"
            );
        }
    }

    #[test]
    fn core_statuses_map_through_the_table() {
        let s = spine::status(SpineCode::DuplicateRejected, "duplicate of abc");
        let e = EdgeError::from_core(&s, "r1");
        assert_eq!(e.http(), (StatusCode::UNPROCESSABLE_ENTITY, "duplicate"));
        assert_eq!(e.diagnostics, "duplicate of abc");

        let s = spine::unavailable("busy", Duration::from_secs(3));
        let e = EdgeError::from_core(&s, "r1");
        assert_eq!(e.http().0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));

        let e = EdgeError::from_core(&tonic::Status::internal("secret detail"), "r1");
        assert_eq!(e.http().0, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.diagnostics.contains("secret"));
        assert!(e.diagnostics.contains("r1"));
    }
}
