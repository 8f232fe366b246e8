//! NEMS edge: the FHIR STU3 HTTP API in front of core.
//!
//! # Layout
//! - `fhir/`: STU3 wire formats NEMS writes (OperationOutcome, CapabilityStatement) and the
//!   [`fhir::Format`] type.
//! - `translate/`: FHIR text ⇄ protobuf for the Subscription resource and the extraction of
//!   an event message Bundle's routing structure.
//!
//! The edge holds no state and applies no NEMS business rule: it checks HTTP concerns
//! (headers, JWT, media types, sizes), turns FHIR text into protobuf, calls core over gRPC,
//! and turns core's answers (and Spine error codes) back into FHIR.

pub mod fhir;
pub mod translate;
