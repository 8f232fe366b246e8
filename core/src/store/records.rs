//! The redb ledger's own records: prost messages private to the store. Field tags are part of the
//! on-disk format: never reuse or renumber one.

use nems_proto::v1 as pb;

/// The ledger entry of an accepted event (no payload, no patient data).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredEvent {
    /// Event id (32 hex).
    #[prost(string, tag = "1")]
    pub(crate) event_id: String,
    /// Event type code.
    #[prost(string, tag = "2")]
    pub(crate) event_code: String,
    /// `messageEventType` code.
    #[prost(string, tag = "3")]
    pub(crate) message_event_type: String,
    /// Publishing ASID.
    #[prost(string, tag = "4")]
    pub(crate) publisher_asid: String,
    /// Acceptance time.
    #[prost(uint64, tag = "5")]
    pub(crate) accepted_ms: u64,
    /// Payload size.
    #[prost(uint64, tag = "6")]
    pub(crate) payload_bytes: u64,
    /// First delivery id (deliveries of one event have consecutive ids).
    #[prost(uint64, tag = "7")]
    pub(crate) first_delivery: u64,
    /// Number of deliveries.
    #[prost(uint32, tag = "8")]
    pub(crate) deliveries: u32,
    /// Deliveries not yet settled; the payload is dropped when it reaches 0.
    #[prost(uint32, tag = "9")]
    pub(crate) unsettled: u32,
    /// Subscriptions matched.
    #[prost(uint32, tag = "10")]
    pub(crate) matched_subscriptions: u32,
}

/// One delivery (event × mailbox) in the ledger.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredDelivery {
    /// Event sequence number (key of `EVENTS` and `PAYLOADS`).
    #[prost(uint64, tag = "1")]
    pub(crate) event_seq: u64,
    /// Event id (32 hex).
    #[prost(string, tag = "2")]
    pub(crate) event_id: String,
    /// `Mex-LocalID`.
    #[prost(string, tag = "3")]
    pub(crate) local_id: String,
    /// Event type code.
    #[prost(string, tag = "4")]
    pub(crate) event_code: String,
    /// Recipient mailbox.
    #[prost(string, tag = "5")]
    pub(crate) mailbox: String,
    /// MESH workflow id.
    #[prost(string, tag = "6")]
    pub(crate) workflow_id: String,
    /// `Mex-PartnerID`.
    #[prost(string, tag = "7")]
    pub(crate) partner_id: String,
    /// `pb::DeliveryState`.
    #[prost(int32, tag = "8")]
    pub(crate) state: i32,
    /// Hand-outs so far.
    #[prost(uint32, tag = "9")]
    pub(crate) attempts: u32,
    /// Event acceptance time.
    #[prost(uint64, tag = "10")]
    pub(crate) accepted_ms: u64,
    /// Last state change.
    #[prost(uint64, tag = "11")]
    pub(crate) updated_ms: u64,
    /// Queue key time (available-at or lease expiry); 0 when settled.
    #[prost(uint64, tag = "12")]
    pub(crate) next_attempt_ms: u64,
    /// MESH message id once delivered.
    #[prost(string, tag = "13")]
    pub(crate) mesh_message_id: String,
    /// Last error code.
    #[prost(string, tag = "14")]
    pub(crate) last_error_code: String,
    /// Last error text.
    #[prost(string, tag = "15")]
    pub(crate) last_error: String,
    /// Matched subscription ids.
    #[prost(string, repeated, tag = "16")]
    pub(crate) subscription_ids: Vec<String>,
    /// True while this delivery keeps its event's payload (queued, in flight, a dead letter
    /// still redrivable, or a delivered message still replayable); counted in the event's
    /// `unsettled`.
    #[prost(bool, tag = "17")]
    pub(crate) holds_payload: bool,
    /// Time of the last redrive (0: never redriven); the adapter's retry window starts at
    /// the later of this and `accepted_ms`.
    #[prost(uint64, tag = "18")]
    pub(crate) redriven_ms: u64,
    /// Retry outcomes (per-message failures) of the current attempts since the retry window
    /// started; a redrive resets it. The adapter's backoff grows with it.
    #[prost(uint32, tag = "19")]
    pub(crate) failures: u32,
    /// Generations so far, redrives and replays together: the generation of `local_id`
    /// (`<event id>-<n>-r<k>` after a redrive made the k-th, `<event id>-<n>-p<k>` after a
    /// replay did).
    #[prost(uint32, tag = "20")]
    pub(crate) redrives: u32,
    /// When the delivery was last deferred (its destination as a whole was down), until it is
    /// leased again; 0 when not deferred.
    #[prost(uint64, tag = "21")]
    pub(crate) deferred_since_ms: u64,
    /// Time spent deferred in the current retry window: the window's start moves on by it,
    /// so an outage of the destination spends none of the delivery's retry time.
    #[prost(uint64, tag = "22")]
    pub(crate) deferred_total_ms: u64,
    /// Replays so far (an operator resending the delivered message, `core.replay_retention`).
    #[prost(uint32, tag = "23")]
    pub(crate) replays: u32,
}

impl StoredDelivery {
    /// The delivery's state as the protobuf enum.
    pub(crate) fn state(&self) -> pb::DeliveryState {
        pb::DeliveryState::try_from(self.state).unwrap_or(pb::DeliveryState::Unspecified)
    }

    /// When the adapter's retry window starts: acceptance, or the last redrive if later.
    pub(crate) fn retry_window_start_ms(&self) -> u64 {
        self.accepted_ms
            .max(self.redriven_ms)
            .saturating_add(self.deferred_total_ms)
    }
}
