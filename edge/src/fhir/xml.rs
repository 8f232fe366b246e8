//! FHIR XML helpers (reader and writer).
