//! FHIR STU3 wire formats for the resources NEMS reads and writes.

pub mod capability;
pub(crate) mod common;
pub(crate) mod json;
pub mod outcome;
pub(crate) mod xml;

/// A FHIR wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// FHIR XML (`application/fhir+xml`).
    Xml,
    /// FHIR JSON (`application/fhir+json`).
    Json,
}

impl Format {
    /// Returns the `Content-Type` the edge writes for this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Xml => "application/fhir+xml;charset=utf-8",
            Format::Json => "application/fhir+json;charset=utf-8",
        }
    }
}

/// Why a FHIR body could not be read. The text names element paths only, never values,
/// so it can be returned to the client and logged without leaking patient data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirError {
    /// The body is not well-formed XML or JSON (`400 MESSAGE_NOT_WELL_FORMED`).
    #[error("{0}")]
    NotWellFormed(String),
    /// The body is well-formed but is not a valid resource of the expected type: wrong root,
    /// unknown element, wrong JSON type, a repeated single element (`422 INVALID_RESOURCE`).
    #[error("{0}")]
    Invalid(String),
}
