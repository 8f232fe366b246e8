//! Delivery error classes and the MESH response classifier.
//!
//! Every failed MESH call becomes one of three classes (`shared/design/style.md` §11.3):
//!
//! | Class | When | The sink does |
//! |---|---|---|
//! | [`DeliveryError::Transient`] | 425/429/502/503/504 and other 5xx, 401/403 (our own credentials), 408, the request was never sent (connect or TLS failure) | retry later, honouring `Retry-After` |
//! | [`DeliveryError::Permanent`] | 400/404/410/417/422 and other 4xx, or a header we refuse to send | dead-letter with MESH's error code |
//! | [`DeliveryError::Ambiguous`] | the request may have been written but no answer arrived (timeout, connection dropped, unreadable success) | reconcile through tracking, never resend blindly |
//!
//! Error texts carry status codes, MESH error codes and MESH's own short descriptions only,
//! never payloads or header values we sent.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use serde_json::Value;

/// The most `Retry-After` we honour (a guard against absurd values).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest error text kept from a MESH error body.
const MAX_REASON_CHARS: usize = 200;

/// Why a MESH call failed, classified for the retry decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Nothing was created: retry later (after `retry_after` when MESH asked for a delay).
    #[error("transient mesh failure ({code}): {reason}")]
    Transient {
        /// HTTP status (`"503"`) or transport class (`"CONNECT"`).
        code: String,
        /// Short explanation (no patient data).
        reason: String,
        /// The server's requested delay (`Retry-After`), if any.
        retry_after: Option<Duration>,
    },
    /// MESH refused the request: retrying cannot help.
    #[error("mesh refused the request ({code}): {reason}")]
    Permanent {
        /// MESH error code (`"12"`), or the HTTP status when MESH gave none.
        code: String,
        /// MESH's error description (no patient data).
        reason: String,
    },
    /// The request may or may not have taken effect.
    #[error("mesh outcome unknown ({code}): {reason}")]
    Ambiguous {
        /// Transport class (`"TIMEOUT"`, `"CONNECTION"`, `"INVALID_RESPONSE"`).
        code: String,
        /// Short explanation.
        reason: String,
    },
}

// === DeliveryError ===

impl DeliveryError {
    /// Returns a transient error without a requested delay.
    pub fn transient(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Transient {
            code: code.into(),
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// Returns a permanent error.
    pub fn permanent(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Permanent {
            code: code.into(),
            reason: reason.into(),
        }
    }

    /// Returns an ambiguous error.
    pub fn ambiguous(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Ambiguous {
            code: code.into(),
            reason: reason.into(),
        }
    }

    /// Returns the delay MESH asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            Self::Permanent { .. } | Self::Ambiguous { .. } => None,
        }
    }

    /// Returns the error code (MESH code, HTTP status or transport class).
    pub fn code(&self) -> &str {
        match self {
            Self::Transient { code, .. }
            | Self::Permanent { code, .. }
            | Self::Ambiguous { code, .. } => code,
        }
    }

    /// Returns the explanation.
    pub fn reason(&self) -> &str {
        match self {
            Self::Transient { reason, .. }
            | Self::Permanent { reason, .. }
            | Self::Ambiguous { reason, .. } => reason,
        }
    }

    /// Returns true for [`DeliveryError::Transient`].
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

/// A MESH error body, v1 (`errorCode`/`errorDescription`) or v2 (`detail[0].code`/`msg`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshErrorBody {
    /// MESH's error code, such as `12`.
    pub code: Option<String>,
    /// MESH's error description, trimmed to a safe length.
    pub description: Option<String>,
}

// === MeshErrorBody ===

impl MeshErrorBody {
    /// Parses an error body; anything unrecognised yields an empty result.
    ///
    /// Only the code and description fields are read: FastAPI validation errors also echo the
    /// request (`input`, `body`), which may hold the payload and must never reach a log.
    pub fn parse(body: &[u8]) -> Self {
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        if let Some(detail) = json.get("detail") {
            return Self::from_v2_detail(detail);
        }
        Self {
            code: json.get("errorCode").and_then(text),
            description: json
                .get("errorDescription")
                .or_else(|| json.get("message"))
                .and_then(text),
        }
    }

    fn from_v2_detail(detail: &Value) -> Self {
        if let Some(message) = detail.as_str() {
            return Self {
                code: None,
                description: Some(sanitise(message)),
            };
        }
        let Some(first) = detail.as_array().and_then(|items| items.first()) else {
            return Self::default();
        };
        let mut description = first.get("msg").and_then(text);
        // FastAPI validation errors name the offending field in `loc`, e.g. ["header", "mex-to"].
        if let Some(loc) = first.get("loc").and_then(Value::as_array) {
            let place: Vec<String> = loc.iter().filter_map(text).collect();
            if !place.is_empty() {
                let msg = description.unwrap_or_default();
                description = Some(sanitise(&format!("{msg} ({})", place.join("."))));
            }
        }
        Self {
            code: first.get("code").and_then(text),
            description,
        }
    }
}

/// Classifies a MESH response; returns `None` for a success (2xx).
///
/// `now` resolves an HTTP-date `Retry-After`.
pub fn classify_response(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Option<DeliveryError> {
    if (200..300).contains(&status) {
        return None;
    }
    let parsed = MeshErrorBody::parse(body);
    let description = parsed.description.clone().unwrap_or_else(|| {
        http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("unexpected status")
            .to_ascii_lowercase()
    });
    let reason = format!("http {status}: {description}");
    let retry_after = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    let error = match status {
        401 | 403 | 408 | 425 | 429 | 500..=599 => DeliveryError::Transient {
            code: status.to_string(),
            reason,
            retry_after,
        },
        _ => DeliveryError::Permanent {
            code: parsed.code.unwrap_or_else(|| status.to_string()),
            reason,
        },
    };
    Some(error)
}

/// Parses a `Retry-After` value: delay seconds or an HTTP date. Capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let date =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let at = SystemTime::from(date);
    // A date in the past means "now".
    let delay = at.duration_since(now).unwrap_or(Duration::ZERO);
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Returns a JSON string or number as text, sanitised.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(sanitise(s)).filter(|s| !s.trim().is_empty()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Drops control characters and bounds the length of server-provided text.
fn sanitise(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use http::HeaderValue;

    use super::*;

    fn headers(retry_after: Option<&str>) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Some(value) = retry_after {
            map.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    /// Returns `(class, code, retry_after seconds)` for a response.
    fn class_of(
        status: u16,
        retry_after: Option<&str>,
        body: &[u8],
    ) -> (&'static str, String, Option<u64>) {
        match classify_response(status, &headers(retry_after), body, UNIX_EPOCH) {
            None => ("ok", String::new(), None),
            Some(DeliveryError::Transient {
                code, retry_after, ..
            }) => ("transient", code, retry_after.map(|d| d.as_secs())),
            Some(DeliveryError::Permanent { code, .. }) => ("permanent", code, None),
            Some(DeliveryError::Ambiguous { code, .. }) => ("ambiguous", code, None),
        }
    }

    #[test]
    fn classifier_table() {
        let v2_12 = br#"{"detail":[{"event":"SEND","code":"12","msg":"Unregistered to address"}]}"#;
        let v1_17 =
            br#"{"errorEvent":"SEND","errorCode":"17","errorDescription":"Workflow not registered"}"#;
        let v2_06 =
            br#"{"detail":[{"event":"TRANSFER","code":"06","msg":"MalformedControlFile"}]}"#;
        let fastapi = br#"{"detail":[{"type":"missing","loc":["header","mex-to"],"msg":"Field required","input":null}],"body":"PAYLOAD"}"#;
        type Expected = (&'static str, &'static str, Option<u64>);
        #[rustfmt::skip]
        let cases: Vec<(u16, Option<&str>, &[u8], Expected)> = vec![
            (200, None, b"", ("ok", "", None)),
            (202, None, br#"{"message_id":"X"}"#, ("ok", "", None)),
            (206, None, b"", ("ok", "", None)),
            (425, None, b"", ("transient", "425", None)),
            (429, Some("7"), b"", ("transient", "429", Some(7))),
            (502, None, b"", ("transient", "502", None)),
            (503, Some("120"), b"", ("transient", "503", Some(120))),
            (504, None, b"<soap/>", ("transient", "504", None)),
            (500, None, b"<soap:Fault/>", ("transient", "500", None)),
            (507, None, b"", ("transient", "507", None)),
            (403, None, b"", ("transient", "403", None)),
            (401, None, b"", ("transient", "401", None)),
            (408, None, b"", ("transient", "408", None)),
            (417, None, v2_12, ("permanent", "12", None)),
            (417, None, v1_17, ("permanent", "17", None)),
            (400, None, v2_06, ("permanent", "06", None)),
            (400, None, fastapi, ("permanent", "400", None)),
            (404, None, b"", ("permanent", "404", None)),
            (410, None, b"", ("permanent", "410", None)),
            (422, None, b"{}", ("permanent", "422", None)),
            (300, None, b"", ("permanent", "300", None)),
        ];
        for (status, retry_after, body, (class, code, delay)) in cases {
            let got = class_of(status, retry_after, body);
            assert_eq!(got, (class, code.to_owned(), delay), "status {status}");
        }
    }

    #[test]
    fn reasons_carry_mesh_text_but_never_echoed_request_data() {
        let fastapi = br#"{"detail":[{"type":"missing","loc":["header","mex-to"],"msg":"Field required","input":"PATIENT"}],"body":"PAYLOAD"}"#;
        let error = classify_response(400, &HeaderMap::new(), fastapi, UNIX_EPOCH).unwrap();
        assert_eq!(error.reason(), "http 400: Field required (header.mex-to)");
        assert!(!error.to_string().contains("PAYLOAD"));
        assert!(!error.to_string().contains("PATIENT"));

        let v2 = br#"{"detail":[{"event":"SEND","code":"12","msg":"Unregistered to address"}]}"#;
        let error = classify_response(417, &HeaderMap::new(), v2, UNIX_EPOCH).unwrap();
        assert_eq!(error.reason(), "http 417: Unregistered to address");

        let error = classify_response(404, &HeaderMap::new(), b"", UNIX_EPOCH).unwrap();
        assert_eq!(error.reason(), "http 404: not found");
    }

    #[test]
    fn parses_both_error_body_versions() {
        let v1 = MeshErrorBody::parse(
            br#"{"messageID":"M","errorEvent":"SEND","errorCode":"12","errorDescription":"Unregistered to address"}"#,
        );
        assert_eq!(v1.code.as_deref(), Some("12"));
        assert_eq!(v1.description.as_deref(), Some("Unregistered to address"));
        let v2 = MeshErrorBody::parse(
            br#"{"message_id":"M","internal_id":"I","detail":[{"event":"SEND","code":"17","msg":"no workflow"}]}"#,
        );
        assert_eq!(v2.code.as_deref(), Some("17"));
        assert_eq!(v2.description.as_deref(), Some("no workflow"));
        let empty_code =
            MeshErrorBody::parse(br#"{"detail":[{"event":"","code":"","msg":"Not Found"}]}"#);
        assert_eq!(empty_code.code, None);
        let plain = MeshErrorBody::parse(br#"{"detail":"Not Found"}"#);
        assert_eq!(plain.code, None);
        assert_eq!(plain.description.as_deref(), Some("Not Found"));
        assert_eq!(MeshErrorBody::parse(b"<html/>"), MeshErrorBody::default());
        let long = format!(r#"{{"errorDescription":"{}\u0007"}}"#, "x".repeat(500));
        let bounded = MeshErrorBody::parse(long.as_bytes());
        assert_eq!(bounded.description.unwrap().len(), MAX_REASON_CHARS);
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn accessors() {
        let error = DeliveryError::Transient {
            code: "429".into(),
            reason: "slow down".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(error.code(), "429");
        assert_eq!(error.reason(), "slow down");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
        assert!(error.is_transient());
        let error = DeliveryError::ambiguous("TIMEOUT", "no answer");
        assert_eq!(error.retry_after(), None);
        assert!(!error.is_transient());
        assert_eq!(
            error.to_string(),
            "mesh outcome unknown (TIMEOUT): no answer"
        );
    }
}
