//! Records both backends keep: prost messages whose encodings redb stores as values and
//! PostgreSQL as `bytea` columns beside the fields it indexes. Field tags are part of the
//! stored format: never reuse or renumber one.

use nems_proto::v1 as pb;

/// A stored subscription.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredSubscription {
    /// The resource as the client sent it, without what the service assigns (`id`, `meta`,
    /// `status`), which are rebuilt on read.
    #[prost(message, optional, tag = "1")]
    pub(crate) resource: Option<pb::SubscriptionResource>,
    /// The parsed criteria.
    #[prost(message, optional, tag = "2")]
    pub(crate) criteria: Option<pb::Criteria>,
    /// Creating ASID.
    #[prost(string, tag = "3")]
    pub(crate) owner_asid: String,
    /// Contact ODS code (owner).
    #[prost(string, tag = "4")]
    pub(crate) owner_ods: String,
    /// Recipient mailbox (upper case).
    #[prost(string, tag = "5")]
    pub(crate) mailbox: String,
    /// Creation time.
    #[prost(uint64, tag = "6")]
    pub(crate) created_ms: u64,
    /// `end` (0: perpetual).
    #[prost(uint64, tag = "7")]
    pub(crate) end_ms: u64,
    /// Deletion time (0: live).
    #[prost(uint64, tag = "8")]
    pub(crate) deleted_ms: u64,
    /// Hash of the duplicate-detection key.
    #[prost(bytes = "vec", tag = "9")]
    pub(crate) dedup_hash: Vec<u8>,
}

impl StoredSubscription {
    /// The duplicate-detection key hash as a table key.
    pub(crate) fn dedup_key(&self) -> u128 {
        let mut bytes = [0u8; 16];
        let n = self.dedup_hash.len().min(16);
        bytes[..n].copy_from_slice(&self.dedup_hash[..n]);
        u128::from_be_bytes(bytes)
    }
}

/// What matching needs of a subscription, stored as the value of the match indexes so
/// that matching never loads whole subscriptions.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MatchEntry {
    /// Event codes (explicit: one or more; generic: one).
    #[prost(string, repeated, tag = "1")]
    pub(crate) event_codes: Vec<String>,
    /// Recipient mailbox.
    #[prost(string, tag = "2")]
    pub(crate) mailbox: String,
    /// Tag for `Mex-PartnerID` (empty: none).
    #[prost(string, tag = "3")]
    pub(crate) tag: String,
    /// Age filters.
    #[prost(message, repeated, tag = "4")]
    pub(crate) age: Vec<pb::AgeFilter>,
    /// GP registration filter (`pb::GpRegistration`).
    #[prost(int32, tag = "5")]
    pub(crate) gp_registration: i32,
    /// Creation time.
    #[prost(uint64, tag = "6")]
    pub(crate) created_ms: u64,
    /// `end` (0: perpetual).
    #[prost(uint64, tag = "7")]
    pub(crate) end_ms: u64,
}

/// The state of one reference data set.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RefMeta {
    /// Generation in force (0: never imported).
    #[prost(uint64, tag = "1")]
    pub(crate) generation: u64,
    /// Active slot (0 or 1).
    #[prost(uint32, tag = "2")]
    pub(crate) active_slot: u32,
    /// Rows in the active slot.
    #[prost(uint64, tag = "3")]
    pub(crate) rows: u64,
    /// Detected format of the source.
    #[prost(string, tag = "4")]
    pub(crate) format: String,
    /// Source file name.
    #[prost(string, tag = "5")]
    pub(crate) source: String,
    /// Slot being filled by an import in progress (`u32::MAX`: none).
    #[prost(uint32, tag = "6")]
    pub(crate) filling_slot: u32,
    /// When the set in force was switched in (ms since the epoch; 0: before this was
    /// recorded, or never imported).
    #[prost(uint64, tag = "7")]
    pub(crate) imported_ms: u64,
}
