//! The Spine OperationOutcome (`Spine-OperationOutcome-1`) in XML and JSON.

use nems_proto::spine::SpineCode;

use super::Format;

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

/// Writes the OperationOutcome in `format`.
pub fn write(format: Format, outcome: &OperationOutcome) -> Vec<u8> {
    let _ = (format, outcome);
    Vec::new()
}
