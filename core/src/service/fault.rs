//! Why a call failed, and the one mapping from that to the `tonic::Status` core answers.
//! Services build a [`Fault`]; `?` turns it into a status at the gRPC boundary, so every
//! code, retry delay and Spine detail core returns is decided here.

use std::time::Duration;

use nems_proto::spine::{self, SpineCode};
use tonic::Status;

use crate::backend::StoreError;
use crate::domain::Rejection;

/// `Retry-After` of a refusal while the store is failed (it reopens by itself once the
/// disk has room again; see `store/writer.rs`).
pub(crate) const STORE_FAILED_RETRY: Duration = Duration::from_secs(10);

/// Why a call failed.
#[derive(Debug)]
pub(crate) enum Fault {
    /// A NEMS rule refused the request: its Spine code picks the gRPC code (the edge's
    /// table picks the HTTP status), with `google.rpc.ErrorInfo` carrying the code.
    Refused(Rejection),
    /// The store failed or is overloaded; `context` names the call in the log (a request id
    /// or the operation).
    Store {
        /// The failure.
        error: StoreError,
        /// The request id or operation, for the log and the reference in the answer.
        context: String,
    },
    /// Core is overloaded: `UNAVAILABLE` with a retry delay (the edge answers `503` with
    /// `Retry-After`).
    Overloaded {
        /// What is full.
        message: &'static str,
        /// When to come back.
        retry_after: Duration,
    },
    /// A bounded resource is in use up to its limit (delivery streams):
    /// `RESOURCE_EXHAUSTED`.
    Exhausted(&'static str),
    /// An import refused by its limits, the set in force kept: `FAILED_PRECONDITION`.
    ImportRefused(String),
}

impl Fault {
    /// A storage failure of the call `context`.
    pub(crate) fn store(error: StoreError, context: &str) -> Fault {
        Fault::Store {
            error,
            context: context.to_owned(),
        }
    }

    /// A missing required request field (a client programming error).
    pub(crate) fn missing(field: &str) -> Fault {
        Fault::Refused(Rejection::new(
            SpineCode::BadRequest,
            format!("{field} is required"),
        ))
    }

    /// A request field with a value the call cannot take.
    pub(crate) fn invalid(text: impl Into<String>) -> Fault {
        Fault::Refused(Rejection::new(SpineCode::InvalidRequestMessage, text))
    }

    /// No record with the key given.
    pub(crate) fn not_found(text: impl Into<String>) -> Fault {
        Fault::Refused(Rejection::new(SpineCode::NoRecordFound, text))
    }
}

impl From<Rejection> for Fault {
    fn from(r: Rejection) -> Self {
        Fault::Refused(r)
    }
}

impl From<Fault> for Status {
    fn from(fault: Fault) -> Status {
        match fault {
            Fault::Refused(r) => spine::status(r.code, r.diagnostics),
            Fault::Overloaded {
                message,
                retry_after,
            } => spine::unavailable(message, retry_after),
            Fault::Exhausted(message) => Status::resource_exhausted(message),
            Fault::ImportRefused(text) => Status::failed_precondition(text),
            // Overload, a failed store (a storage I/O or commit error: the write was not
            // committed, and the writer reopens the store) and a stopped store are
            // UNAVAILABLE with a retry delay; anything else is INTERNAL, logged in full
            // with the context and answered with that reference only.
            Fault::Store { error, context } => match error {
                StoreError::Busy => {
                    spine::unavailable("the service is busy; retry shortly", Duration::from_secs(1))
                }
                StoreError::Io(_) | StoreError::Commit(_) | StoreError::Poisoned => {
                    // The writer logged the storage error once; a refusal per request is
                    // counted.
                    crate::metrics::metrics().store_refusals.inc();
                    spine::unavailable(
                        "the store is unavailable (storage failure); retry later",
                        STORE_FAILED_RETRY,
                    )
                }
                StoreError::Unavailable(_) => {
                    crate::metrics::metrics().store_refusals.inc();
                    spine::unavailable(
                        "the database is unavailable; retry shortly",
                        Duration::from_secs(1),
                    )
                }
                StoreError::Superseded(text) => Status::aborted(text),
                StoreError::Refused(text) => Status::failed_precondition(text),
                StoreError::Closed => {
                    spine::unavailable("the store is unavailable", Duration::from_secs(30))
                }
                other => {
                    tracing::error!(error = %other, request_id = %context, "store failure");
                    Status::internal(format!(
                        "unexpected internal error; quote reference {context}"
                    ))
                }
            },
        }
    }
}
