//! Reads the routing structure of a published event message Bundle (FHIR XML).

use nems_proto::v1 as pb;

use crate::fhir::FhirError;

/// Extracts what NEMS needs from a published event message Bundle.
pub fn extract(body: &[u8]) -> Result<pb::EventMessage, FhirError> {
    let _ = body;
    Err(FhirError::Invalid("not implemented".into()))
}
