//! The Spine OperationOutcome (`Spine-OperationOutcome-1`) in XML and JSON.

use nems_proto::spine::{CODE_SYSTEM, SpineCode};

use super::Format;
use super::common::ResourceWriter;
use super::json::JsonWriter;
use super::xml::XmlWriter;

/// The profile every OperationOutcome NEMS writes claims in `meta.profile`.
pub const PROFILE: &str = "https://fhir.nhs.uk/STU3/StructureDefinition/Spine-OperationOutcome-1";

/// `issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `fatal`.
    Fatal,
    /// `error`.
    Error,
    /// `warning`.
    Warning,
    /// `information`.
    Information,
}

impl Severity {
    /// Returns the FHIR code (`fatal`, `error`, `warning`, `information`).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// One `issue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// `severity`.
    pub severity: Severity,
    /// `code`: the FHIR issue type (`invalid`, `structure`, `forbidden`, `informational`, ...).
    pub code: &'static str,
    /// `details.coding`: the Spine code (system, code and display are written from it).
    pub spine_code: SpineCode,
    /// `diagnostics`; never patient data.
    pub diagnostics: Option<String>,
}

/// A Spine OperationOutcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationOutcome {
    /// Resource `id` (also in the server log line for the request).
    pub id: String,
    /// The issues (at least one).
    pub issues: Vec<Issue>,
}

/// Writes the OperationOutcome in `format`. An empty `id` or `diagnostics` is omitted.
pub fn write(format: Format, outcome: &OperationOutcome) -> Vec<u8> {
    debug_assert!(
        !outcome.issues.is_empty(),
        "an OperationOutcome needs at least one issue"
    );
    match format {
        Format::Xml => write_with(XmlWriter::start(RESOURCE_TYPE), outcome),
        Format::Json => write_with(JsonWriter::start(RESOURCE_TYPE), outcome),
    }
}

const RESOURCE_TYPE: &str = "OperationOutcome";

fn write_with<W: ResourceWriter>(mut w: W, outcome: &OperationOutcome) -> Vec<u8> {
    w.value("id", &outcome.id);
    w.open("meta");
    w.values("profile", &[PROFILE.to_owned()]);
    w.close();
    w.open_list("issue");
    for issue in &outcome.issues {
        w.item("issue");
        w.value("severity", issue.severity.as_str());
        w.value("code", issue.code);
        w.open("details");
        w.open_list("coding");
        w.item("coding");
        w.value("system", CODE_SYSTEM);
        w.value("code", issue.spine_code.as_str());
        w.value("display", issue.spine_code.display());
        w.close();
        w.close_list();
        w.close();
        w.value(
            "diagnostics",
            issue.diagnostics.as_deref().unwrap_or_default(),
        );
        w.close();
    }
    w.close_list();
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(diagnostics: Option<&str>) -> OperationOutcome {
        OperationOutcome {
            id: "4f1c0c3e-7d39-4d2a-9f11-2a7f0b6f7d01".into(),
            issues: vec![Issue {
                severity: Severity::Error,
                code: "invalid",
                spine_code: SpineCode::InvalidRequestMessage,
                diagnostics: diagnostics.map(str::to_owned),
            }],
        }
    }

    #[test]
    fn json_matches_the_spec_skeleton() {
        let body = write(Format::Json, &sample(Some("free <text> & \"quotes\"")));
        let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let want = serde_json::json!({
            "resourceType": "OperationOutcome",
            "id": "4f1c0c3e-7d39-4d2a-9f11-2a7f0b6f7d01",
            "meta": { "profile": [PROFILE] },
            "issue": [{
                "severity": "error",
                "code": "invalid",
                "details": { "coding": [{
                    "system": "https://fhir.nhs.uk/STU3/CodeSystem/Spine-ErrorOrWarningCode-1",
                    "code": "INVALID_REQUEST_MESSAGE",
                    "display": "Invalid request message"
                }] },
                "diagnostics": "free <text> & \"quotes\""
            }]
        });
        assert_eq!(got, want);
        assert!(body.starts_with(br#"{"resourceType":"OperationOutcome","#));
    }

    #[test]
    fn xml_is_in_schema_order_and_escaped() {
        let body = String::from_utf8(write(Format::Xml, &sample(Some("a & <b>")))).unwrap();
        let want = concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<OperationOutcome xmlns="http://hl7.org/fhir">"#,
            r#"<id value="4f1c0c3e-7d39-4d2a-9f11-2a7f0b6f7d01"/>"#,
            r#"<meta><profile value="https://fhir.nhs.uk/STU3/StructureDefinition/Spine-OperationOutcome-1"/></meta>"#,
            r#"<issue><severity value="error"/><code value="invalid"/>"#,
            r#"<details><coding><system value="https://fhir.nhs.uk/STU3/CodeSystem/Spine-ErrorOrWarningCode-1"/>"#,
            r#"<code value="INVALID_REQUEST_MESSAGE"/><display value="Invalid request message"/></coding></details>"#,
            r#"<diagnostics value="a &amp; &lt;b&gt;"/></issue></OperationOutcome>"#,
        );
        assert_eq!(body, want);
    }

    #[test]
    fn omits_absent_diagnostics() {
        for diagnostics in [None, Some("")] {
            let xml = write(Format::Xml, &sample(diagnostics));
            let json = write(Format::Json, &sample(diagnostics));
            assert!(!String::from_utf8(xml).unwrap().contains("diagnostics"));
            assert!(!String::from_utf8(json).unwrap().contains("diagnostics"));
        }
    }

    #[test]
    fn severities_have_fhir_codes() {
        let all = [
            (Severity::Fatal, "fatal"),
            (Severity::Error, "error"),
            (Severity::Warning, "warning"),
            (Severity::Information, "information"),
        ];
        for (severity, code) in all {
            assert_eq!(severity.as_str(), code);
        }
    }
}
