//! `mex-*` header names and the checks applied to their values before sending.
//!
//! MESH rejects control characters (0x00–0x1f) in any `mex-*` value, and a `mex-To` or
//! `mex-WorkflowID` that looks like a URL, with 400 code `06`. We refuse those values locally
//! so a bad value is a clear permanent error rather than a wasted request.

use http::HeaderValue;

use crate::error::DeliveryError;

/// The only `Accept` value we send: MESH API version 2.
pub const ACCEPT_V2: &str = "application/vnd.mesh.v2+json";
/// Recipient mailbox.
pub const MEX_TO: &str = "mex-to";
/// Sender mailbox.
pub const MEX_FROM: &str = "mex-from";
/// Workflow id.
pub const MEX_WORKFLOW_ID: &str = "mex-workflowid";
/// Sender's reference for the message.
pub const MEX_LOCAL_ID: &str = "mex-localid";
/// Partner id (NEMS: subscription ids and tags).
pub const MEX_PARTNER_ID: &str = "mex-partnerid";
/// Subject.
pub const MEX_SUBJECT: &str = "mex-subject";
/// File name.
pub const MEX_FILE_NAME: &str = "mex-filename";
/// Content type of the payload as the recipient should see it.
pub const MEX_CONTENT_TYPE: &str = "mex-content-type";
/// `k:n` for chunked messages.
pub const MEX_CHUNK_RANGE: &str = "mex-chunk-range";
/// `DATA` or `REPORT`.
pub const MEX_MESSAGE_TYPE: &str = "mex-messagetype";
/// The message id (download responses).
pub const MEX_MESSAGE_ID: &str = "mex-messageid";
/// For a REPORT: the id of the message it is about.
pub const MEX_LINKED_MSG_ID: &str = "mex-linkedmsgid";
/// Status code (`00` = success).
pub const MEX_STATUS_CODE: &str = "mex-statuscode";
/// Status description.
pub const MEX_STATUS_DESCRIPTION: &str = "mex-statusdescription";
/// Status event (`TRANSFER`, `SEND`, ...).
pub const MEX_STATUS_EVENT: &str = "mex-statusevent";
/// `SUCCESS` or `ERROR`.
pub const MEX_STATUS_SUCCESS: &str = "mex-statussuccess";
/// Status time, `yyyyMMddHHmmss`.
pub const MEX_STATUS_TIMESTAMP: &str = "mex-statustimestamp";
/// Handshake: client name and version.
pub const MEX_CLIENT_VERSION: &str = "mex-clientversion";
/// Handshake: operating system name.
pub const MEX_OS_NAME: &str = "mex-osname";
/// Handshake: operating system version.
pub const MEX_OS_VERSION: &str = "mex-osversion";
/// Handshake: CPU architecture.
pub const MEX_OS_ARCHITECTURE: &str = "mex-osarchitecture";

/// The value limits MESH enforces, by header.
pub fn max_len(name: &str) -> usize {
    match name {
        MEX_TO => 100,
        MEX_SUBJECT => 500,
        MEX_CHUNK_RANGE => 20,
        _ => 300,
    }
}

/// Validates one `mex-*` value and converts it to a header value.
///
/// The error names the header but never echoes the value.
pub fn mex_value(name: &'static str, value: &str) -> Result<HeaderValue, DeliveryError> {
    let invalid =
        |why: &str| DeliveryError::permanent("INVALID_HEADER", format!("{name} {why}; not sent"));
    if value.chars().any(char::is_control) {
        return Err(invalid("contains control characters"));
    }
    if value.len() > max_len(name) {
        return Err(invalid(&format!("is longer than {} bytes", max_len(name))));
    }
    if matches!(name, MEX_TO | MEX_WORKFLOW_ID) {
        if value.trim().is_empty() {
            return Err(invalid("is empty"));
        }
        let lower = value.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Err(invalid("looks like a url"));
        }
    }
    HeaderValue::from_str(value).map_err(|_| invalid("is not a valid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_values() {
        assert_eq!(mex_value(MEX_TO, "X26ABC2").unwrap(), "X26ABC2");
        assert_eq!(
            mex_value(MEX_PARTNER_ID, "sub-1|tag~~~sub-2").unwrap(),
            "sub-1|tag~~~sub-2"
        );
        assert!(mex_value(MEX_SUBJECT, "NEMS pds-change-of-address-1").is_ok());
        assert!(mex_value(MEX_LOCAL_ID, &"x".repeat(300)).is_ok());
    }

    #[test]
    fn rejects_control_characters_without_echoing_the_value() {
        for bad in ["a\tb", "a\nb", "a\rb", "\u{0}", "x\u{1f}", "del\u{7f}"] {
            let error = mex_value(MEX_SUBJECT, bad).unwrap_err();
            assert_eq!(error.code(), "INVALID_HEADER");
            assert!(!error.reason().contains(bad));
            assert!(matches!(error, DeliveryError::Permanent { .. }));
        }
    }

    #[test]
    fn rejects_urls_empty_and_overlong_values() {
        assert!(mex_value(MEX_TO, "https://evil").is_err());
        assert!(mex_value(MEX_WORKFLOW_ID, "HTTP://x").is_err());
        assert!(mex_value(MEX_SUBJECT, "see https://x").is_ok());
        assert!(mex_value(MEX_TO, "").is_err());
        assert!(mex_value(MEX_WORKFLOW_ID, "  ").is_err());
        assert!(mex_value(MEX_TO, &"A".repeat(101)).is_err());
        assert!(mex_value(MEX_SUBJECT, &"s".repeat(500)).is_ok());
        assert!(mex_value(MEX_SUBJECT, &"s".repeat(501)).is_err());
        assert!(mex_value(MEX_FILE_NAME, &"f".repeat(301)).is_err());
    }
}
