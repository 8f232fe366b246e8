//! Thin gRPC service implementations: decode → domain rules → store → encode.

use std::time::Duration;

use nems_proto::spine::{self, SpineCode};
use tonic::Status;

use crate::store::StoreError;

pub(crate) mod deliveries;
pub(crate) mod directory;
pub(crate) mod events;
pub(crate) mod operator;
pub(crate) mod subscriptions;

/// `Retry-After` of a refusal while the store is failed (it reopens by itself once the
/// disk has room again; see `store/writer.rs`).
pub(crate) const STORE_FAILED_RETRY: Duration = Duration::from_secs(10);

/// Maps a storage failure to the status returned: overload, a failed store (a storage I/O
/// or commit error: the write was not committed, and the writer reopens the store) and a
/// stopped store are `UNAVAILABLE` with a retry delay (the edge answers `503` with
/// `Retry-After`); anything else is `INTERNAL`, logged in full with the request id and
/// answered with that id only.
pub(crate) fn store_status(e: StoreError, request_id: &str) -> Status {
    match e {
        StoreError::Busy => {
            spine::unavailable("the service is busy; retry shortly", Duration::from_secs(1))
        }
        StoreError::Io(_) | StoreError::Commit(_) | StoreError::Poisoned => {
            // The writer logged the storage error once; a refusal per request is counted.
            crate::metrics::metrics().store_refusals.inc();
            spine::unavailable(
                "the store is unavailable (storage failure); retry later",
                STORE_FAILED_RETRY,
            )
        }
        StoreError::Closed => {
            spine::unavailable("the store is unavailable", Duration::from_secs(30))
        }
        other => {
            tracing::error!(error = %other, request_id, "store failure");
            Status::internal(format!(
                "unexpected internal error; quote reference {request_id}"
            ))
        }
    }
}

/// A missing required request field (a client programming error).
pub(crate) fn missing(field: &str) -> Status {
    spine::status(SpineCode::BadRequest, format!("{field} is required"))
}
