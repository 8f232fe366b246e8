//! Reading and checking the Spine OperationOutcome the edge answers with (nems.md §2.6,
//! §10): a small reader for its XML, the issue type and display the spec gives each Spine
//! code used by the `publish_*` modules, and the assertion they all use. Holds no tests.

use nems_e2e::http::HttpResponse;

use crate::publish_common::{HEARING_NHS, RECORD_NHS, VACC_NHS};

/// One `issue` of an OperationOutcome, as read from its XML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OutcomeIssue {
    /// `severity`.
    pub(crate) severity: String,
    /// `code` (FHIR issue type).
    pub(crate) code: String,
    /// `details.coding.system`.
    pub(crate) system: String,
    /// `details.coding.code` (the Spine code).
    pub(crate) spine_code: String,
    /// `details.coding.display`.
    pub(crate) display: String,
    /// Number of `details.coding` elements.
    pub(crate) codings: usize,
    /// `diagnostics`.
    pub(crate) diagnostics: String,
}

/// An OperationOutcome as read from its XML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// `id`.
    pub(crate) id: String,
    /// `meta.profile` values.
    pub(crate) profiles: Vec<String>,
    /// The issues.
    pub(crate) issues: Vec<OutcomeIssue>,
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Every element of a FHIR XML document as (dotted path, `value` attribute), in order.
/// Enough for the OperationOutcomes the edge writes (no CDATA, no narrative).
fn elements(xml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let close = rest.find('>').expect("unterminated tag");
        let tag = &rest[..close];
        rest = &rest[close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let popped = path.pop();
            assert_eq!(popped.as_deref(), Some(name.trim()), "mismatched end tag");
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let name = tag
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let value = tag
            .split_once(" value=\"")
            .and_then(|(_, v)| v.split_once('"'))
            .map(|(v, _)| unescape(v))
            .unwrap_or_default();
        path.push(name);
        out.push((path.join("."), value));
        if self_closing {
            path.pop();
        }
    }
    assert!(path.is_empty(), "unclosed elements: {path:?}");
    out
}

/// Parses an OperationOutcome written in XML; panics when the body is not one.
pub(crate) fn parse_outcome(xml: &str) -> Outcome {
    assert!(
        xml.contains("<OperationOutcome xmlns=\"http://hl7.org/fhir\">"),
        "not an OperationOutcome in the FHIR namespace: {xml}"
    );
    let mut outcome = Outcome::default();
    for (path, value) in elements(xml) {
        let Some(inner) = path.strip_prefix("OperationOutcome.") else {
            continue;
        };
        match inner {
            "id" => outcome.id = value,
            "meta.profile" => outcome.profiles.push(value),
            "issue" => outcome.issues.push(OutcomeIssue::default()),
            _ => {
                let Some(issue) = outcome.issues.last_mut() else {
                    continue;
                };
                match inner {
                    "issue.severity" => issue.severity = value,
                    "issue.code" => issue.code = value,
                    "issue.details.coding" => issue.codings += 1,
                    "issue.details.coding.system" => issue.system = value,
                    "issue.details.coding.code" => issue.spine_code = value,
                    "issue.details.coding.display" => issue.display = value,
                    "issue.diagnostics" => issue.diagnostics = value,
                    _ => {}
                }
            }
        }
    }
    outcome
}

/// The FHIR issue type nems.md §2.6 (and decisions.md §2) give each Spine code used here,
/// `413` included (its `INVALID_REQUEST_MESSAGE` is `value`, as in the table).
fn issue_type(_status: u16, spine_code: &str) -> &'static str {
    match spine_code {
        "UNSUPPORTED_MEDIA_TYPE"
        | "MISSING_OR_INVALID_HEADER"
        | "BAD_REQUEST"
        | "INVALID_RESOURCE"
        | "REFERENCE_NOT_FOUND" => "invalid",
        "MESSAGE_NOT_WELL_FORMED" => "structure",
        "INVALID_NHS_NUMBER"
        | "INVALID_VALUE"
        | "INVALID_REQUEST_MESSAGE"
        | "INVALID_IDENTIFIER_SYSTEM" => "value",
        "INVALID_CODE_SYSTEM" | "INVALID_CODE_VALUE" => "code-invalid",
        "ASID_CHECK_FAILED" | "ACCESS_DENIED" => "forbidden",
        "WITHDRAWN" => "not-supported",
        "DEPRECATED" => "informational",
        other => panic!("no issue type recorded for {other}"),
    }
}

/// The display `Spine-ErrorOrWarningCode-1` gives each Spine code used here (nems.md §10).
fn display(spine_code: &str) -> &'static str {
    match spine_code {
        "UNSUPPORTED_MEDIA_TYPE" => "Unsupported media type",
        "MISSING_OR_INVALID_HEADER" => "There is a required header missing or invalid",
        "BAD_REQUEST" => "Bad request",
        "INVALID_RESOURCE" => "Invalid validation of resource",
        "REFERENCE_NOT_FOUND" => "Reference not found",
        "MESSAGE_NOT_WELL_FORMED" => "Message not well formed",
        "INVALID_NHS_NUMBER" => "Invalid NHS number",
        "INVALID_VALUE" => "An input field has an invalid value for its type",
        "INVALID_REQUEST_MESSAGE" => "Invalid request message",
        "INVALID_CODE_SYSTEM" => "Invalid code system",
        "INVALID_IDENTIFIER_SYSTEM" => "Invalid identifier system",
        "INVALID_CODE_VALUE" => "Invalid code value",
        "ASID_CHECK_FAILED" => {
            "The sender or receiver's ASID is not authorised for this interaction"
        }
        "ACCESS_DENIED" => "Access has been denied to process this request",
        "WITHDRAWN" => "Event message type has been withdrawn",
        "DEPRECATED" => "Event message type has been deprecated",
        other => panic!("no display recorded for {other}"),
    }
}

/// Asserts that `response` is a Spine OperationOutcome in XML with one issue of `severity`
/// carrying `spine_code`, the issue type and display the spec gives that code, an `id`
/// equal to the request id the edge answered with, and a diagnostics text that mentions
/// each of `mentions` (case-insensitively) and holds no NHS number.
pub(crate) fn assert_outcome(
    response: &HttpResponse,
    status: u16,
    severity: &str,
    spine_code: &str,
    mentions: &[&str],
) -> Outcome {
    let text = response.text();
    assert_eq!(response.status, status, "status for {spine_code}: {text}");
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/fhir+xml"),
        "an OperationOutcome in XML, got `{content_type}`: {text}"
    );
    let outcome = parse_outcome(&text);
    assert!(!outcome.id.is_empty(), "the outcome carries an id: {text}");
    assert_eq!(
        Some(outcome.id.as_str()),
        response.header("x-request-id"),
        "the outcome id is the request id"
    );
    assert_eq!(
        outcome.profiles,
        ["https://fhir.nhs.uk/STU3/StructureDefinition/Spine-OperationOutcome-1"],
        "{text}"
    );
    let [issue] = outcome.issues.as_slice() else {
        panic!("exactly one issue expected: {text}");
    };
    let want = OutcomeIssue {
        severity: severity.into(),
        code: issue_type(status, spine_code).into(),
        system: "https://fhir.nhs.uk/STU3/CodeSystem/Spine-ErrorOrWarningCode-1".into(),
        spine_code: spine_code.into(),
        display: display(spine_code).into(),
        codings: 1,
        diagnostics: issue.diagnostics.clone(),
    };
    assert_eq!(*issue, want, "{text}");
    let diagnostics = issue.diagnostics.to_lowercase();
    assert!(!diagnostics.is_empty(), "diagnostics say what is wrong");
    for word in mentions {
        assert!(
            diagnostics.contains(&word.to_lowercase()),
            "diagnostics of {spine_code} should mention `{word}`: {}",
            issue.diagnostics
        );
    }
    assert!(
        !has_nhs_number_like(&issue.diagnostics),
        "diagnostics must not carry an NHS number: {}",
        issue.diagnostics
    );
    for nhs in [VACC_NHS, HEARING_NHS, RECORD_NHS] {
        assert!(
            !text.contains(nhs),
            "the outcome leaks an NHS number: {text}"
        );
    }
    outcome
}

/// True when `text` holds a run of exactly ten digits (the shape of an NHS number; ASIDs
/// have twelve).
pub(crate) fn has_nhs_number_like(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_digit())
        .any(|run| run.len() == 10)
}

/// [`assert_outcome`] for an error.
pub(crate) fn assert_refused(
    response: &HttpResponse,
    status: u16,
    spine_code: &str,
    mentions: &[&str],
) -> Outcome {
    assert_outcome(response, status, "error", spine_code, mentions)
}
