//! Where deliveries go: one interface, two implementations.

use std::future::Future;
use std::time::Duration;

use nems_proto::v1 as pb;

pub mod folder;
pub mod mesh;

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkOutcome {
    /// Accepted by the destination; `message_id` identifies it there (MESH message id).
    Sent {
        /// The destination's id for the message.
        message_id: String,
    },
    /// A transient failure: try again later.
    Retry {
        /// HTTP status or transport error class, for the ledger.
        code: String,
        /// Failure text (no patient data).
        reason: String,
        /// The destination's requested delay (`Retry-After`), if it gave one.
        retry_after: Option<Duration>,
    },
    /// A permanent refusal: dead-letter it.
    Refused {
        /// The destination's error code (for MESH, its error code such as `12`).
        code: String,
        /// Error text (no patient data).
        reason: String,
    },
}

/// A destination for deliveries. `deliver` is called concurrently for different mailboxes;
/// it must not panic and must classify every failure.
pub trait Sink: Send + Sync + 'static {
    /// Delivers one leased delivery.
    fn deliver(&self, delivery: &pb::Delivery) -> impl Future<Output = SinkOutcome> + Send;
}
