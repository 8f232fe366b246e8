//! FHIR JSON helpers.
