//! The CapabilityStatement served at `GET /STU3/metadata`.

use super::Format;

/// What the CapabilityStatement describes about this deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityInfo {
    /// The public base URL, for example `https://nems.example.nhs.uk` (without `/STU3`).
    pub base_url: String,
    /// Software version.
    pub version: String,
    /// `date` (FHIR dateTime) the statement is dated.
    pub date: String,
}

/// Writes the CapabilityStatement in `format`.
pub fn write(format: Format, info: &CapabilityInfo) -> Vec<u8> {
    let _ = (format, info);
    Vec::new()
}
