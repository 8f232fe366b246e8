//! Every redb table of the store, with versioned names. Table definitions live here and
//! nowhere else. Integers inside composite keys are compared numerically by redb's tuple
//! keys, so range scans over a prefix are ordered.

use redb::TableDefinition;

/// Schema metadata: `"version"` → schema version.
pub(crate) const SCHEMA: TableDefinition<'_, &str, u64> = TableDefinition::new("schema");

/// Monotonic counters (`next-event`, `next-delivery`, `events-accepted`, ...).
pub(crate) const COUNTERS: TableDefinition<'_, &str, u64> = TableDefinition::new("counters-v1");

/// Subscription id → `StoredSubscription`.
pub(crate) const SUBSCRIPTIONS: TableDefinition<'_, u128, &[u8]> =
    TableDefinition::new("subscriptions-v1");

/// Explicit index: (NHS number, subscription id) → `MatchEntry`.
pub(crate) const SUBS_BY_NHS: TableDefinition<'_, (u64, u128), &[u8]> =
    TableDefinition::new("subs-by-nhs-v1");

/// Generic index: ("RULE/CODE/EVENT", subscription id) → `MatchEntry`.
pub(crate) const SUBS_BY_RULE: TableDefinition<'_, (&str, u128), &[u8]> =
    TableDefinition::new("subs-by-rule-v1");

/// Duplicate detection: 128-bit hash of the canonical subscription key → subscription id
/// (live ones only).
pub(crate) const SUBS_BY_DEDUP: TableDefinition<'_, u128, u128> =
    TableDefinition::new("subs-by-dedup-v1");

/// Owner listing: (contact ODS code, subscription id) → ().
pub(crate) const SUBS_BY_OWNER: TableDefinition<'_, (&str, u128), ()> =
    TableDefinition::new("subs-by-owner-v1");

/// Mailbox listing: (mailbox, subscription id) → ().
pub(crate) const SUBS_BY_MAILBOX: TableDefinition<'_, (&str, u128), ()> =
    TableDefinition::new("subs-by-mailbox-v1");

/// Event sequence number → `StoredEvent` (ledger entry, no payload).
pub(crate) const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events-v1");

/// Event id → event sequence number.
pub(crate) const EVENTS_BY_ID: TableDefinition<'_, u128, u64> =
    TableDefinition::new("events-by-id-v1");

/// Event sequence number → published bytes, removed once every delivery is settled.
pub(crate) const PAYLOADS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("payloads-v1");

/// Delivery id → `StoredDelivery`.
pub(crate) const DELIVERIES: TableDefinition<'_, u64, &[u8]> =
    TableDefinition::new("deliveries-v1");

/// Work queue: (mailbox, available-at ms, delivery id) → (). Holds queued deliveries and
/// in-flight ones (keyed by lease expiry); settled deliveries leave it.
pub(crate) const QUEUE: TableDefinition<'_, (&str, u64, u64), ()> =
    TableDefinition::new("queue-v1");

/// Ledger index: (state, delivery id) → ().
pub(crate) const DELIVERIES_BY_STATE: TableDefinition<'_, (u8, u64), ()> =
    TableDefinition::new("deliveries-by-state-v1");

/// Ledger index: (mailbox, delivery id) → ().
pub(crate) const DELIVERIES_BY_MAILBOX: TableDefinition<'_, (&str, u64), ()> =
    TableDefinition::new("deliveries-by-mailbox-v1");

/// Ledger index: MESH message id → delivery id (for MESH non-delivery reports).
pub(crate) const DELIVERIES_BY_MESH_ID: TableDefinition<'_, &str, u64> =
    TableDefinition::new("deliveries-by-mesh-id-v1");

/// Retention index: (kind, settle time ms, id) → (). Kinds (`ledger::SETTLE_*`): a dead
/// letter still holding its payload (delivery id, time dead-lettered); a settled delivery
/// without a payload (delivery id, time settled); an event that never had a delivery
/// (event sequence number, time accepted). The retention sweep reads only the entries
/// whose time is past their cut-off.
pub(crate) const SETTLED: TableDefinition<'_, (u8, u64, u64), ()> =
    TableDefinition::new("ledger-by-settled-v1");

/// Per-mailbox counts: (mailbox, state) → number of deliveries.
pub(crate) const MAILBOX_COUNTS: TableDefinition<'_, (&str, u8), u64> =
    TableDefinition::new("mailbox-counts-v1");

/// Spine directory: ASID → `SpineSystem`.
pub(crate) const SYSTEMS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("dir-systems-v1");

/// Spine directory: mailbox id → `MeshMailbox`.
pub(crate) const MAILBOXES: TableDefinition<'_, &str, &[u8]> =
    TableDefinition::new("dir-mailboxes-v1");

/// Demographics: NHS number → `PatientRecord`.
pub(crate) const PATIENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("patients-v1");

/// Audit trail: (time ms, sequence) → `AuditRecord`.
pub(crate) const AUDIT: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("audit-v1");

/// Refused requests, aggregated (`AuditRecord.count`), with their own retention: the
/// same key and value as the audit trail.
pub(crate) const AUDIT_REFUSED: TableDefinition<'_, (u64, u64), &[u8]> =
    TableDefinition::new("audit-refused-v1");

/// Audit records of both tables by action: (action, time ms, seq, table: 0 `AUDIT`, 1
/// `AUDIT_REFUSED`), so that a listing of one action reads that action's records only
/// (schema 4).
pub(crate) const AUDIT_BY_ACTION: TableDefinition<'_, (&str, u64, u64, u8), ()> =
    TableDefinition::new("audit-by-action-v1");

/// Reference data metadata: data set name → `RefMeta` (generation, active slot).
pub(crate) const REF_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("ref-meta-v1");

/// Reference data slots: two physical tables per data set so that an import fills the
/// inactive one and a single commit switches sets (matching never sees half a file).
pub(crate) const REF_SLOTS: [[TableDefinition<'_, &str, &[u8]>; 2]; 3] = [
    [
        TableDefinition::new("ref-postcodes-a-v1"),
        TableDefinition::new("ref-postcodes-b-v1"),
    ],
    [
        TableDefinition::new("ref-practices-a-v1"),
        TableDefinition::new("ref-practices-b-v1"),
    ],
    [
        TableDefinition::new("ref-codemap-a-v1"),
        TableDefinition::new("ref-codemap-b-v1"),
    ],
];
