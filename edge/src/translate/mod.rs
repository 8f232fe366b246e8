//! FHIR text ⇄ protobuf.

pub mod bundle;
pub mod subscription;
