//! The STU3 `Subscription` resource in XML and JSON ⇄ [`pb::SubscriptionResource`].

use nems_proto::v1 as pb;

use crate::fhir::{FhirError, Format};

/// Reads a Subscription resource sent by a client.
pub fn parse(format: Format, body: &[u8]) -> Result<pb::SubscriptionResource, FhirError> {
    let _ = (format, body);
    Err(FhirError::Invalid("not implemented".into()))
}

/// Writes a stored Subscription resource.
pub fn write(format: Format, subscription: &pb::SubscriptionResource) -> Vec<u8> {
    let _ = (format, subscription);
    Vec::new()
}
