//! Spine error-or-warning codes (`https://fhir.nhs.uk/STU3/CodeSystem/Spine-ErrorOrWarningCode-1`)
//! and how they cross the gRPC hop.
//!
//! Core reports a NEMS failure as a `tonic::Status` whose `google.rpc.ErrorInfo` detail has
//! the Spine code as `reason` and [`ERROR_DOMAIN`] as `domain`; the status message is the
//! diagnostics text (never patient data). The edge reads the code back with [`code_of`] and
//! renders the Spine OperationOutcome with the HTTP status from its own table.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every status core returns with a Spine code.
pub const ERROR_DOMAIN: &str = "nems.nhs.uk";

/// The CodeSystem URL of the Spine codes.
pub const CODE_SYSTEM: &str = "https://fhir.nhs.uk/STU3/CodeSystem/Spine-ErrorOrWarningCode-1";

macro_rules! spine_codes {
    ($($variant:ident => $code:literal, $display:literal;)*) => {
        /// A Spine error-or-warning code used by NEMS.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum SpineCode {
            $(
                #[doc = $display]
                $variant,
            )*
        }

        impl SpineCode {
            /// Every code, in CodeSystem order.
            pub const ALL: &'static [SpineCode] = &[$(SpineCode::$variant,)*];

            /// Returns the code as written in the CodeSystem, for example `NO_RECORD_FOUND`.
            pub fn as_str(self) -> &'static str {
                match self { $(SpineCode::$variant => $code,)* }
            }

            /// Returns the CodeSystem display text.
            pub fn display(self) -> &'static str {
                match self { $(SpineCode::$variant => $display,)* }
            }
        }

        impl FromStr for SpineCode {
            type Err = UnknownSpineCode;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($code => Ok(SpineCode::$variant),)*
                    _ => Err(UnknownSpineCode),
                }
            }
        }
    };
}

spine_codes! {
    NoRecordFound => "NO_RECORD_FOUND", "No record found";
    PatientNotFound => "PATIENT_NOT_FOUND", "Patient not found";
    InvalidNhsNumber => "INVALID_NHS_NUMBER", "Invalid NHS number";
    InvalidCodeSystem => "INVALID_CODE_SYSTEM", "Invalid code system";
    InvalidCodeValue => "INVALID_CODE_VALUE", "Invalid code value";
    InvalidValue => "INVALID_VALUE", "An input field has an invalid value for its type";
    InvalidIdentifierSystem => "INVALID_IDENTIFIER_SYSTEM", "Invalid identifier system";
    InvalidIdentifierValue => "INVALID_IDENTIFIER_VALUE", "Invalid identifier value";
    InvalidElement => "INVALID_ELEMENT", "Invalid element";
    InvalidParameter => "INVALID_PARAMETER", "Invalid parameter";
    MessageNotWellFormed => "MESSAGE_NOT_WELL_FORMED", "Message not well formed";
    BadRequest => "BAD_REQUEST", "Bad request";
    InvalidResource => "INVALID_RESOURCE", "Invalid validation of resource";
    OrganisationNotFound => "ORGANISATION_NOT_FOUND", "Organisation not found";
    AccessDenied => "ACCESS_DENIED", "Access has been denied to process this request";
    AsidCheckFailed => "ASID_CHECK_FAILED", "The sender or receiver's ASID is not authorised for this interaction";
    MissingOrInvalidHeader => "MISSING_OR_INVALID_HEADER", "There is a required header missing or invalid";
    AccessDeniedSsl => "ACCESS_DENIED_SSL", "SSL Protocol or Cipher requirements not met";
    MsgResourceIdFail => "MSG_RESOURCE_ID_FAIL", "Client is not permitted to assign an id";
    DuplicateRejected => "DUPLICATE_REJECTED", "Create would lead to creation of a duplicate resource";
    InvalidRequestMessage => "INVALID_REQUEST_MESSAGE", "Invalid request message";
    InternalServerError => "INTERNAL_SERVER_ERROR", "Unexpected internal server error";
    NotImplemented => "NOT_IMPLEMENTED", "Not implemented";
    ReferenceNotFound => "REFERENCE_NOT_FOUND", "Reference not found";
    Deprecated => "DEPRECATED", "Event message type has been deprecated";
    NoLongerSupported => "NO_LONGER_SUPPORTED", "Event message type is no longer supported";
    Withdrawn => "WITHDRAWN", "Event message type has been withdrawn";
    UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE", "Unsupported media type";
}

/// The error for a string that is not a known Spine code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownSpineCode;

impl fmt::Display for UnknownSpineCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown spine code")
    }
}

impl std::error::Error for UnknownSpineCode {}

impl fmt::Display for SpineCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SpineCode {
    /// Returns the gRPC code that best matches this Spine code.
    pub fn grpc_code(self) -> Code {
        match self {
            SpineCode::NoRecordFound
            | SpineCode::PatientNotFound
            | SpineCode::OrganisationNotFound => Code::NotFound,
            SpineCode::AccessDenied | SpineCode::AsidCheckFailed | SpineCode::AccessDeniedSsl => {
                Code::PermissionDenied
            }
            SpineCode::DuplicateRejected => Code::AlreadyExists,
            SpineCode::InternalServerError => Code::Internal,
            SpineCode::NotImplemented => Code::Unimplemented,
            SpineCode::Withdrawn | SpineCode::NoLongerSupported => Code::FailedPrecondition,
            _ => Code::InvalidArgument,
        }
    }
}

/// Builds the status core returns for a NEMS failure: the Spine code as `ErrorInfo.reason`
/// and `diagnostics` as the message. `diagnostics` must not contain patient data.
pub fn status(code: SpineCode, diagnostics: impl Into<String>) -> Status {
    let details = ErrorDetails::with_error_info(code.as_str(), ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(code.grpc_code(), diagnostics, details)
}

/// Builds an `UNAVAILABLE` status asking the caller to come back after `retry_after`
/// (overload or shutdown); the edge answers `503` with `Retry-After`.
pub fn unavailable(diagnostics: impl Into<String>, retry_after: Duration) -> Status {
    let details = ErrorDetails::with_retry_info(Some(retry_after));
    Status::with_error_details(Code::Unavailable, diagnostics, details)
}

/// Returns the Spine code a core status carries, if any.
pub fn code_of(status: &Status) -> Option<SpineCode> {
    let info = status.get_details_error_info()?;
    if info.domain != ERROR_DOMAIN {
        return None;
    }
    info.reason.parse().ok()
}

/// Returns the retry delay an `UNAVAILABLE` status carries, if any.
pub fn retry_after_of(status: &Status) -> Option<Duration> {
    status.get_details_retry_info()?.retry_delay
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_parses_back() {
        for code in SpineCode::ALL {
            assert_eq!(code.as_str().parse::<SpineCode>(), Ok(*code));
            assert!(!code.display().is_empty());
        }
        assert!("NOPE".parse::<SpineCode>().is_err());
    }

    #[test]
    fn status_round_trips_the_code_and_message() {
        let s = status(SpineCode::DuplicateRejected, "duplicate of 0123");
        assert_eq!(s.code(), Code::AlreadyExists);
        assert_eq!(s.message(), "duplicate of 0123");
        assert_eq!(code_of(&s), Some(SpineCode::DuplicateRejected));
        assert_eq!(code_of(&Status::internal("x")), None);
    }

    #[test]
    fn unavailable_carries_retry_after() {
        let s = unavailable("busy", Duration::from_secs(3));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(retry_after_of(&s), Some(Duration::from_secs(3)));
    }
}
