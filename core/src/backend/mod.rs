//! The storage seam: what core's service layer asks of storage, as one trait,
//! `Backend`, with an implementation per engine (`store/`: embedded redb, the default;
//! `postgres/`: PostgreSQL, for several cores on one database). The model is quickwit's
//! metastore: one trait, a file-backed and a database-backed implementation, chosen by one
//! setting. No redb or SQL type crosses it: the values that do are in `types.rs` and
//! `records.rs`, the one error in `error.rs`.
//!
//! Each method is one unit of work that commits (or fails) as a whole; those that change
//! state write their audit row in the same transaction. Rules that must hold on every
//! engine live above the seam and are handed the engine's transaction through two small
//! traits: `MatchView` (the lookups matching makes, so that matching runs inside the
//! acceptance transaction and sees exactly what was committed before it) and `AcceptTx`
//! (the writes of an acceptance), driven by `accept::write`.

use std::fmt::Debug;
use std::sync::Arc;

use nems_proto::v1 as pb;

use crate::domain::patient::DemographicUpdate;
use crate::matching::{self, MailboxMatch};

mod error;
pub(crate) mod keys;
pub(crate) mod records;
mod stats;
pub(crate) mod types;

pub use error::StoreError;
pub(crate) use error::first_cause;
pub use stats::{Buckets, WriterStats};

pub(crate) use records::{MatchEntry, RefMeta, StoredPatient, StoredSubscription};
pub(crate) use types::*;

/// What a store shared by several cores tells each of them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wake<'a> {
    /// A mailbox has a delivery available at this time (queued by any core).
    Available(&'a str, u64),
    /// Deliveries queued or in flight in the whole store (all cores), as read now.
    Pending(u64),
}

/// Told what other cores did to the queue.
pub(crate) type WakeSink = Arc<dyn Fn(Wake<'_>) + Send + Sync>;

/// Says whether a caller may delete a subscription (it owns it).
pub(crate) type Allowed = Box<dyn Fn(&StoredSubscription) -> bool + Send + Sync>;

/// What a create's write did.
#[derive(Debug)]
pub(crate) enum Created {
    /// Stored (the record as written, stamped with the time of the write).
    Stored(Box<StoredSubscription>),
    /// A live identical subscription exists (its id); nothing written.
    Duplicate(u128),
    /// The owner's ASID is at its quota; nothing written.
    OverQuota,
}

/// One change to the Spine directory.
#[derive(Debug, Clone)]
pub(crate) enum DirectoryChange {
    /// Create or replace a system.
    PutSystem(pb::SpineSystem),
    /// Remove a system (by ASID).
    DeleteSystem(String),
    /// Create or replace a mailbox.
    PutMailbox(pb::MeshMailbox),
    /// Remove a mailbox (by id).
    DeleteMailbox(String),
}

/// The store's totals for `OperatorService.GetStatus`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Totals {
    /// Schema version in force.
    pub(crate) schema_version: u64,
    /// Live subscriptions.
    pub(crate) subscriptions: u64,
    /// Events accepted since the store was created.
    pub(crate) events_accepted: u64,
    /// Deliveries queued or in flight.
    pub(crate) deliveries_pending: u64,
    /// Each reference data set's state in force (`SET_NAMES` order).
    pub(crate) reference: Vec<RefMeta>,
    /// Patients in the demographics store.
    pub(crate) patients: u64,
}

/// One retention pass's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    /// Now (Unix ms).
    pub(crate) now: u64,
    /// Settled ledger rows are kept this long.
    pub(crate) ledger_ms: u64,
    /// Dead letters keep their payloads this long.
    pub(crate) dead_letter_ms: u64,
    /// Delivered messages keep their payloads this long, for replay (0: not at all).
    pub(crate) replay_ms: u64,
    /// Retention index entries one pass reads at most.
    pub(crate) batch: usize,
    /// Audit rows older than this go.
    pub(crate) audit_cutoff_ms: u64,
    /// Refusal audit rows older than this go.
    pub(crate) refusal_cutoff_ms: u64,
    /// Audit rows one pass prunes at most, per table.
    pub(crate) audit_limit: usize,
}

/// What a backend says about itself, for readiness and the metrics endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gauges {
    /// Per-mailbox counts by state.
    pub(crate) mailboxes: Vec<pb::MailboxStats>,
    /// Metadata of each reference data set, by set index.
    pub(crate) refdata: Vec<RefMeta>,
}

/// The lookups matching makes, in whatever transaction the engine runs it: the
/// acceptance transaction when an event is accepted (so that matching sees every
/// subscription and demographics change committed before the event and none after), a
/// read snapshot otherwise. The redb implementations never wait (their futures are ready
/// at the first poll); PostgreSQL's run statements on the transaction's connection.
#[allow(
    async_fn_in_trait,
    reason = "crate-private; implementations are used concretely, where Send is inferred"
)]
pub(crate) trait MatchView {
    /// The demographics store's record of a patient.
    async fn patient(&self, nhs: u64) -> Result<Option<pb::PatientRecord>, StoreError>;
    /// A postcode (normalised) in the postcode set in force.
    async fn postcode(&self, key: &str) -> Result<Option<pb::PostcodeRow>, StoreError>;
    /// A practice in the practice set in force.
    async fn practice(&self, code: &str) -> Result<Option<pb::PracticeRow>, StoreError>;
    /// The codes the code map in force declares equivalent to `code`.
    async fn equivalents(&self, code: &str) -> Result<Vec<String>, StoreError>;
    /// The match entries of the explicit subscriptions for an NHS number, by id.
    async fn explicit(&self, nhs: u64) -> Result<Vec<(u128, MatchEntry)>, StoreError>;
    /// The match entries of the generic subscriptions under one index key
    /// (`RULE/CODE/EVENT`), by id.
    async fn generic(&self, key: &str) -> Result<Vec<(u128, MatchEntry)>, StoreError>;
}

/// The writes of an acceptance, in the engine's transaction (see `accept::write`).
#[allow(
    async_fn_in_trait,
    reason = "crate-private; implementations are used concretely, where Send is inferred"
)]
pub(crate) trait AcceptTx: MatchView {
    /// Writes the event, its payload and its deliveries.
    async fn insert_event(&self, event: &NewEvent) -> Result<Accepted, StoreError>;
    /// Applies a demographics update unless the store holds newer facts; true if written.
    async fn apply_demographics(&self, update: &DemographicUpdate) -> Result<bool, StoreError>;
    /// Appends an audit row.
    async fn append_audit(&self, at_ms: u64, record: &pb::AuditRecord) -> Result<(), StoreError>;
}

/// Storage, as core's service layer sees it. Every method is one transaction.
#[tonic::async_trait]
pub(crate) trait Backend: Send + Sync + Debug {
    /// The engine's name (`redb`, `postgres`), for logs and metrics.
    fn engine(&self) -> &'static str;

    // Health.

    /// Why the store refuses work (a storage failure it is recovering from), if it does.
    fn failure(&self) -> Option<String>;
    /// Changes each time the store came back after a failure, so that state cached outside
    /// it (queue heads, counts, the directory) can be reloaded.
    fn reopened(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Write jobs waiting.
    fn write_queue(&self) -> usize;
    /// Commit statistics.
    fn writer_stats(&self) -> Arc<WriterStats>;
    /// Per-mailbox counts and reference data metadata as they stand, without waiting
    /// (scraped by the metrics endpoint; empty if they cannot be read now).
    fn gauges(&self) -> Gauges;
    /// Starts telling `sink` about deliveries that other cores on the same store queued,
    /// and the store's backlog: nothing for an engine only one core uses (redb), whose own
    /// acceptances already wake the dispatcher and count the backlog.
    fn wake_ups(&self, sink: WakeSink) {
        let _ = sink;
    }
    /// For the last handle to the store: what finishes its queued work and releases it
    /// (blocking; run off the runtime). `None` while other handles remain.
    fn closer(self: Arc<Self>) -> Option<Box<dyn FnOnce() + Send>>;

    // Acceptance.

    /// Accepts an event in one transaction (`accept::write` inside it); answered after
    /// the commit. `shed`: a full write queue refuses with [`StoreError::Busy`] instead
    /// of waiting.
    async fn accept(
        &self,
        write: crate::accept::Write,
        shed: bool,
    ) -> Result<crate::accept::Written, StoreError>;
    /// Matches an event against the subscriptions committed now, writing nothing (the
    /// matching benchmark).
    async fn preview_match(
        &self,
        event: matching::Event,
    ) -> Result<(Vec<MailboxMatch>, bool), StoreError>;

    // Subscriptions.

    /// Creates a subscription unless its owner's ASID has `quota` already or a live
    /// duplicate exists; stamps it with the time of the write, never before `not_before`.
    async fn create_subscription(
        &self,
        id: u128,
        record: StoredSubscription,
        quota: u64,
        not_before: u64,
        audit: pb::AuditRecord,
    ) -> Result<Created, StoreError>;
    /// Inserts many subscriptions in one transaction (tools and benchmarks): how many
    /// were new (duplicates are skipped).
    async fn insert_subscriptions(
        &self,
        batch: Vec<(u128, StoredSubscription)>,
    ) -> Result<usize, StoreError>;
    /// A subscription by id (deleted ones included).
    async fn subscription(&self, id: u128) -> Result<Option<StoredSubscription>, StoreError>;
    /// Deletes a live subscription `allowed` accepts; false when there is none.
    async fn delete_subscription(
        &self,
        id: u128,
        now: u64,
        allowed: Allowed,
        audit: pb::AuditRecord,
    ) -> Result<bool, StoreError>;
    /// One page of subscriptions and the next page's token (empty at the end).
    async fn list_subscriptions(
        &self,
        filter: ListFilter,
        token: String,
        size: usize,
        include_deleted: bool,
    ) -> Result<(Vec<(u128, StoredSubscription)>, String), StoreError>;
    /// The store's totals.
    async fn totals(&self) -> Result<Totals, StoreError>;

    // The delivery ledger.

    /// Leases up to `n` available deliveries of each picked mailbox until
    /// `now + lease_ms`, within `budget`.
    async fn lease(
        &self,
        picks: Vec<(String, u32)>,
        now: u64,
        lease_ms: u64,
        budget: Budget,
    ) -> Result<Leased, StoreError>;
    /// Gives back `(delivery, attempt)` leases still held on that attempt; the
    /// `(delivery, mailbox)` pairs given back.
    async fn give_back(
        &self,
        held: Vec<(u64, u32)>,
        now: u64,
    ) -> Result<Vec<(u64, String)>, StoreError>;
    /// Gives back every lease this core handed out before it started; how many.
    async fn give_back_all(&self, now: u64) -> Result<usize, StoreError>;
    /// Records an attempt's outcome; `None` for an unknown delivery.
    async fn complete(
        &self,
        id: u64,
        attempt: u32,
        outcome: Outcome,
        now: u64,
    ) -> Result<Option<Completed>, StoreError>;
    /// Dead-letters the delivery MESH reported undelivered (found by message or local
    /// id): its id and whether this report dead-lettered it; `None` if unknown.
    async fn report_undelivered(
        &self,
        mesh_message_id: String,
        local_id: String,
        code: String,
        description: String,
        now: u64,
    ) -> Result<Option<(u64, bool)>, StoreError>;
    /// Queues selected dead letters again (audited when any was).
    async fn redrive(
        &self,
        selection: Selection,
        now: u64,
        audit: pb::AuditRecord,
    ) -> Result<Redriven, StoreError>;
    /// Queues again, each as a new generation, the delivered messages of one mailbox that
    /// `selection` picks and whose payloads are still kept (audited with the count when any
    /// was); with `dry_run`, only says what it would do (nothing written, no audit).
    async fn replay(
        &self,
        selection: ReplaySelection,
        dry_run: bool,
        now: u64,
        audit: pb::AuditRecord,
    ) -> Result<Replayed, StoreError>;
    /// One page of ledger rows and the next page's token.
    async fn list_deliveries(
        &self,
        query: Query,
        token: String,
        size: usize,
    ) -> Result<(Vec<pb::DeliveryRecord>, String), StoreError>;
    /// An event's ledger entry (and whether its payload is held) with its deliveries.
    async fn event(
        &self,
        id: u128,
    ) -> Result<Option<(pb::EventRecord, Vec<pb::DeliveryRecord>)>, StoreError>;
    /// Per-mailbox counts by state (every mailbox when `mailbox` is empty).
    async fn mailbox_stats(&self, mailbox: String) -> Result<Vec<pb::MailboxStats>, StoreError>;
    /// Each mailbox with a queued delivery and when its first is available, and the
    /// deliveries queued or in flight.
    async fn queue(&self) -> Result<(Vec<(String, u64)>, u64), StoreError>;
    /// One bounded retention pass over the ledger and the audit trail: what it did, and
    /// audit rows pruned.
    async fn sweep(&self, retention: Retention) -> Result<(Swept, usize), StoreError>;

    // The directory.

    /// Every system and mailbox.
    async fn directory(&self) -> Result<(Vec<pb::SpineSystem>, Vec<pb::MeshMailbox>), StoreError>;
    /// Applies changes in one transaction, with their audit row if given: for each, true
    /// when it replaced or removed something.
    async fn change_directory(
        &self,
        changes: Vec<DirectoryChange>,
        audit: Option<pb::AuditRecord>,
    ) -> Result<Vec<bool>, StoreError>;

    // Reference data and demographics.

    /// Starts an import of `set`: empties the slot it fills and returns it.
    async fn refdata_begin(&self, set: usize) -> Result<u32, StoreError>;
    /// Adds encoded rows to the slot being filled.
    async fn refdata_insert(&self, set: usize, slot: u32, rows: Rows) -> Result<(), StoreError>;
    /// Keys the filled slot would add, remove and change against the set in force.
    async fn refdata_diff(&self, set: usize, slot: u32) -> Result<(u64, u64, u64), StoreError>;
    /// Finishes an import (switching sets atomically when `guard` lets it through), with
    /// its audit row unless it was a check (outcome `refused` or `forced` as it went).
    async fn refdata_finish(
        &self,
        finish: RefdataFinish,
        audit: pb::AuditRecord,
    ) -> Result<Finished, StoreError>;
    /// Looks a postcode or practice up in the sets in force, with the sub-ICB codes it
    /// gives in every form known.
    async fn lookup_area(
        &self,
        key: pb::lookup_area_request::Key,
    ) -> Result<pb::LookupAreaResponse, StoreError>;
    /// The demographics store's record of a patient.
    async fn patient(&self, nhs: u64) -> Result<Option<pb::PatientRecord>, StoreError>;
    /// Applies demographics updates in one transaction: how many were written (the rest
    /// were older than what the store holds).
    async fn apply_demographics(&self, updates: Vec<DemographicUpdate>) -> Result<u64, StoreError>;

    // Audit.

    /// Appends audit rows (reads) and aggregated refusal rows in one transaction.
    async fn append_audit(
        &self,
        reads: Vec<pb::AuditRecord>,
        refusals: Vec<pb::AuditRecord>,
        at_ms: u64,
    ) -> Result<(), StoreError>;
    /// One page of the audit trail (both tables merged, oldest first).
    async fn list_audit(
        &self,
        filter: AuditFilter,
        token: String,
        size: usize,
    ) -> Result<(Vec<pb::AuditRecord>, String), StoreError>;
}

/// What finishing an import needs.
#[derive(Debug, Clone)]
pub(crate) struct RefdataFinish {
    /// Data set index.
    pub(crate) set: usize,
    /// The slot filled.
    pub(crate) slot: u32,
    /// File format imported.
    pub(crate) format: String,
    /// Where the file came from.
    pub(crate) source: String,
    /// The checks the import is held to.
    pub(crate) guard: Guard,
}

/// `codes` followed by their equivalents in the code map in force, each once.
pub(crate) async fn with_equivalents(
    view: &impl MatchView,
    mut codes: Vec<String>,
) -> Result<Vec<String>, StoreError> {
    let mut i = 0;
    while i < codes.len() {
        for other in view.equivalents(&codes[i]).await? {
            if !codes.contains(&other) {
                codes.push(other);
            }
        }
        i += 1;
    }
    Ok(codes)
}

/// `OperatorService.LookupArea` over any engine's view.
pub(crate) async fn lookup_area(
    view: &impl MatchView,
    key: pb::lookup_area_request::Key,
) -> Result<pb::LookupAreaResponse, StoreError> {
    use pb::lookup_area_request::Key;
    Ok(match key {
        Key::Postcode(p) => {
            let row = match crate::refdata::normalise_postcode(&p) {
                Some(k) => view.postcode(&k).await?,
                None => None,
            };
            let codes = row.as_ref().map_or_else(Vec::new, |r| r.sub_icb.clone());
            pb::LookupAreaResponse {
                found: row.is_some(),
                sub_icb_codes: with_equivalents(view, codes).await?,
                postcode: row,
                practice: None,
            }
        }
        Key::Practice(code) => {
            let row = view.practice(&code.to_ascii_uppercase()).await?;
            let codes = row
                .as_ref()
                .filter(|r| !r.parent_sub_icb.is_empty())
                .map_or_else(Vec::new, |r| vec![r.parent_sub_icb.clone()]);
            pb::LookupAreaResponse {
                found: row.is_some(),
                sub_icb_codes: with_equivalents(view, codes).await?,
                postcode: None,
                practice: row,
            }
        }
    })
}

/// Sets an import's audit outcome from how it finished: `refused` when the set in force
/// was kept, `forced` when it was replaced despite refusals.
pub(crate) fn import_outcome(finished: &Finished, record: &mut pb::AuditRecord) {
    if !finished.applied {
        "refused".clone_into(&mut record.outcome);
    } else if !finished.refusals.is_empty() {
        "forced".clone_into(&mut record.outcome);
    }
}

/// Runs a future that cannot wait to completion on the calling thread: the redb views
/// answer synchronously, so code written once for every engine (matching, the acceptance
/// body) runs inside redb's synchronous write closure this way. A future that does wait
/// is a bug in the view; it is reported as a storage error rather than blocking.
pub(crate) fn ready<T>(
    future: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => Err(StoreError::Storage(
            "a synchronous view waited (bug: redb views never wait)".into(),
        )),
    }
}

/// Behaviour both engines must show, run by each engine's tests.
#[cfg(test)]
pub(crate) mod conformance {
    use std::collections::HashMap;

    use super::*;

    fn practices(codes: &[&str]) -> Rows {
        encode_practices(
            codes
                .iter()
                .map(|c| pb::PracticeRow {
                    code: (*c).into(),
                    ..Default::default()
                })
                .collect(),
        )
    }

    fn finish(slot: u32) -> RefdataFinish {
        RefdataFinish {
            set: 1,
            slot,
            format: "test".into(),
            source: "test".into(),
            guard: Guard {
                force: true,
                max_shrink_percent: 100.0,
                max_bad_row_percent: 100.0,
                received: 1,
                ..Default::default()
            },
        }
    }

    /// Two imports of one data set, through `a` and `b` (two cores on one database, or
    /// one store twice): the later begin takes the slot, so the earlier import's next
    /// batch and its finish fail as overtaken, and the set switched in holds the later
    /// import's rows only (none of the earlier one's, before or after it began).
    pub(crate) async fn an_overtaken_import_fails_and_the_later_one_wins(
        a: &impl Backend,
        b: &impl Backend,
    ) {
        let first = a.refdata_begin(1).await.unwrap();
        a.refdata_insert(1, first, practices(&["A00001"]))
            .await
            .unwrap();
        let second = b.refdata_begin(1).await.unwrap();
        assert_ne!(first, second, "each import has a ticket of its own");
        let late = a
            .refdata_insert(1, first, practices(&["A00002"]))
            .await
            .expect_err("the overtaken import's next batch is refused");
        assert!(matches!(late, StoreError::Superseded(_)), "{late:?}");
        b.refdata_insert(1, second, practices(&["B00001"]))
            .await
            .unwrap();
        let stale = a
            .refdata_finish(finish(first), pb::AuditRecord::default())
            .await
            .expect_err("the overtaken import cannot switch the set");
        assert!(matches!(stale, StoreError::Superseded(_)), "{stale:?}");
        let done = b
            .refdata_finish(finish(second), pb::AuditRecord::default())
            .await
            .unwrap();
        assert!(done.applied);
        assert_eq!(done.rows, 1, "only the later import's row is in force");
        assert_eq!((done.meta.generation, done.meta.rows), (1, 1));
        // A third import fills the other slot and switches again.
        let third = a.refdata_begin(1).await.unwrap();
        a.refdata_insert(1, third, practices(&["C00001"]))
            .await
            .unwrap();
        let done = a
            .refdata_finish(finish(third), pb::AuditRecord::default())
            .await
            .unwrap();
        assert!(done.applied && done.rows == 1);
        assert_eq!((done.meta.generation, done.meta.rows), (2, 1));
    }

    /// An event of type `code` for `mailboxes`, accepted now.
    async fn accept_for(b: &impl Backend, code: &str, mailboxes: &[&str]) -> u128 {
        let id = keys::new_id();
        let write = crate::accept::Write {
            event: NewEvent {
                event_id: id,
                event_code: code.into(),
                message_event_type: "new".into(),
                publisher_asid: "200000000111".into(),
                workflow_id: "NEMS_EVENT".into(),
                payload: bytes::Bytes::from_static(b"<Bundle/>"),
                deliveries: Vec::new(),
                matched_subscriptions: 0,
                accepted_ms: 0,
            },
            recipients: crate::accept::Recipients::Given(
                mailboxes
                    .iter()
                    .map(|m| NewDelivery {
                        mailbox: (*m).into(),
                        partner_id: String::new(),
                        subscription_ids: Vec::new(),
                        suppressed: false,
                    })
                    .collect(),
            ),
            audit: pb::AuditRecord::default(),
        };
        b.accept(write, false).await.unwrap();
        id
    }

    /// Leases everything available in `mailbox` and reports it sent (`keep`: the
    /// payload kept for replay); the deliveries leased.
    async fn deliver_all(b: &impl Backend, mailbox: &str, keep: bool) -> Vec<pb::Delivery> {
        let now = keys::now_ms();
        let leased = b
            .lease(vec![(mailbox.into(), 100)], now, 60_000, Budget::UNLIMITED)
            .await
            .unwrap();
        let deliveries = leased.leases.into_iter().next().unwrap().deliveries;
        for d in &deliveries {
            let outcome = Outcome::Sent {
                mesh_message_id: format!("mesh-{}-{}", d.delivery_id, d.attempt),
                keep_payload: keep,
            };
            let done = b.complete(d.delivery_id, d.attempt, outcome, now).await;
            assert_eq!(done.unwrap().unwrap().state, pb::DeliveryState::Delivered);
        }
        deliveries
    }

    /// An event's deliveries by mailbox, and whether its payload is held.
    async fn rows_of(b: &impl Backend, event: u128) -> (HashMap<String, pb::DeliveryRecord>, bool) {
        let (record, rows) = b.event(event).await.unwrap().unwrap();
        let rows = rows.into_iter().map(|d| (d.mailbox.clone(), d)).collect();
        (rows, record.payload_held)
    }

    /// The console's reads: a mailbox's deliveries page newest first as well as oldest
    /// first (the token continues either way, also with a state filter), and the mailbox
    /// statistics say when its oldest pending delivery was accepted (none once nothing is
    /// pending).
    pub(crate) async fn deliveries_page_both_ways_and_the_oldest_pending_is_reported(
        b: &impl Backend,
    ) {
        let before = keys::now_ms();
        for _ in 0..5 {
            accept_for(b, "vaccinations-1", &["PAGEMB1"]).await;
        }
        accept_for(b, "vaccinations-1", &["PAGEMB2"]).await;
        let query = |newest_first: bool, state: Option<pb::DeliveryState>| Query {
            mailbox: "PAGEMB1".into(),
            state,
            newest_first,
            ..Default::default()
        };
        let pages = |newest_first: bool, state: Option<pb::DeliveryState>| async move {
            let mut ids = Vec::new();
            let mut token = String::new();
            loop {
                let (page, next) = b
                    .list_deliveries(query(newest_first, state), token, 2)
                    .await
                    .unwrap();
                assert!(page.len() <= 2);
                ids.extend(page.iter().map(|d| d.delivery_id));
                if next.is_empty() {
                    return ids;
                }
                token = next;
            }
        };
        let oldest_first = pages(false, None).await;
        assert_eq!(oldest_first.len(), 5);
        assert!(oldest_first.windows(2).all(|w| w[0] < w[1]));
        let mut newest_first = pages(true, None).await;
        assert!(newest_first.windows(2).all(|w| w[0] > w[1]));
        newest_first.reverse();
        assert_eq!(newest_first, oldest_first, "the same rows either way");
        let queued = pages(true, Some(pb::DeliveryState::Queued)).await;
        assert_eq!(queued.len(), 5);

        let stats = b.mailbox_stats("PAGEMB1".into()).await.unwrap();
        let oldest = stats[0].oldest_pending_accepted_at.expect("pending");
        let ms = (oldest.seconds as u64) * 1000 + (oldest.nanos as u64) / 1_000_000;
        assert!(
            ms + 1 >= before && ms <= keys::now_ms(),
            "accepted during the test"
        );
        assert_eq!(stats[0].queued, 5);
        assert_eq!(deliver_all(b, "PAGEMB1", false).await.len(), 5);
        let stats = b.mailbox_stats("PAGEMB1".into()).await.unwrap();
        assert_eq!(stats[0].delivered, 5);
        // A state the mailbox has no rows in lists nothing; one it has, all of them,
        // whichever index the engine reads.
        assert!(
            pages(false, Some(pb::DeliveryState::Queued))
                .await
                .is_empty()
        );
        assert!(
            pages(true, Some(pb::DeliveryState::DeadLettered))
                .await
                .is_empty()
        );
        let mut delivered = pages(true, Some(pb::DeliveryState::Delivered)).await;
        delivered.reverse();
        assert_eq!(delivered, oldest_first);
        let (first_page, next) = b
            .list_deliveries(
                query(false, Some(pb::DeliveryState::Delivered)),
                String::new(),
                10,
            )
            .await
            .unwrap();
        assert_eq!(
            (first_page.len(), next.as_str()),
            (5, ""),
            "one page holds them all"
        );
        assert!(
            stats[0].oldest_pending_accepted_at.is_none(),
            "nothing pending"
        );
        let all = b.mailbox_stats(String::new()).await.unwrap();
        let other = all.iter().find(|m| m.mailbox == "PAGEMB2").unwrap();
        assert!(other.oldest_pending_accepted_at.is_some());
    }

    /// The audit trail lists oldest or newest first, one action's records alone (through
    /// the engine's index by action), and pages through either way without losing or
    /// repeating a record.
    pub(crate) async fn audit_lists_one_action_either_way(b: &impl Backend) {
        let actions = [
            "redrive", "publish", "redrive", "publish", "redrive", "replay",
        ];
        for (i, action) in actions.iter().enumerate() {
            let record = pb::AuditRecord {
                action: (*action).into(),
                resource_id: format!("r{i}"),
                asid: if i == 4 {
                    "200000000111".into()
                } else {
                    String::new()
                },
                outcome: "ok".into(),
                ..Default::default()
            };
            b.change_directory(Vec::new(), Some(record)).await.unwrap();
        }
        let all = |action: &str, newest_first: bool, size: usize| {
            let filter = AuditFilter {
                action: action.into(),
                newest_first,
                ..Default::default()
            };
            async move {
                let mut ids = Vec::new();
                let mut token = String::new();
                loop {
                    let (page, next) = b.list_audit(filter.clone(), token, size).await.unwrap();
                    assert!(page.len() <= size);
                    ids.extend(page.into_iter().map(|r| (r.action, r.resource_id)));
                    if next.is_empty() {
                        return ids;
                    }
                    token = next;
                }
            }
        };
        let oldest = all("", false, 100).await;
        assert_eq!(oldest.len(), 6);
        let mut newest = all("", true, 4).await;
        newest.reverse();
        assert_eq!(newest, oldest, "the same records in the other order");
        let redrives = all("redrive", false, 2).await;
        assert_eq!(redrives.len(), 3);
        assert!(redrives.iter().all(|(a, _)| a == "redrive"));
        let mut back = all("redrive", true, 2).await;
        back.reverse();
        assert_eq!(back, redrives);
        assert_eq!(
            all("replay", true, 1).await,
            [("replay".to_owned(), "r5".to_owned())]
        );
        assert!(all("import.reference-data", true, 10).await.is_empty());
        let (one, _) = b
            .list_audit(
                AuditFilter {
                    action: "redrive".into(),
                    asid: "200000000111".into(),
                    newest_first: true,
                    ..Default::default()
                },
                String::new(),
                10,
            )
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].resource_id, "r4");
    }

    fn selection(since_ms: u64, event_code: &str, limit: usize) -> ReplaySelection {
        ReplaySelection {
            mailbox: "MBOX1".into(),
            since_ms,
            event_code: event_code.into(),
            limit,
        }
    }

    /// Replay: delivered messages whose payload was kept are queued again as a new
    /// generation (`-p<k>` local id, counted), selected by mailbox, acceptance time and
    /// event type; a dry run and a replay over its limit change nothing; a message
    /// delivered without keeping its payload, or swept at the end of the window, is
    /// counted and left alone.
    pub(crate) async fn replay_resends_what_the_window_kept(b: &impl Backend) {
        let start = keys::now_ms();
        let old = accept_for(b, "vaccinations-1", &["MBOX1"]).await;
        deliver_all(b, "MBOX1", false).await;
        let a = accept_for(b, "vaccinations-1", &["MBOX1", "MBOX2"]).await;
        let c = accept_for(b, "pds-change-of-address-1", &["MBOX1"]).await;
        assert_eq!(deliver_all(b, "MBOX1", true).await.len(), 2);
        assert_eq!(deliver_all(b, "MBOX2", true).await.len(), 1);
        let (rows, held) = rows_of(b, a).await;
        assert!(held, "delivered messages keep their payload for replay");
        let original = rows["MBOX1"].local_id.clone();
        let audit = || pb::AuditRecord {
            action: "replay".into(),
            ..Default::default()
        };

        // A dry run counts and changes nothing.
        let dry = b
            .replay(selection(start, "", 0), true, keys::now_ms(), audit())
            .await
            .unwrap();
        assert_eq!((dry.replayed.len(), dry.without_payload), (2, 1));
        assert_eq!(
            rows_of(b, a).await.0["MBOX1"].state(),
            pb::DeliveryState::Delivered
        );
        // Over its limit: refused, nothing queued.
        let over = b
            .replay(selection(start, "", 1), false, keys::now_ms(), audit())
            .await
            .expect_err("two selected, limit one");
        assert!(matches!(over, StoreError::Refused(_)), "{over:?}");
        assert_eq!(
            rows_of(b, c).await.0["MBOX1"].state(),
            pb::DeliveryState::Delivered
        );

        // One event type: only that event's MBOX1 delivery goes again.
        let now = keys::now_ms();
        let done = b
            .replay(selection(start, "vaccinations-1", 0), false, now, audit())
            .await
            .unwrap();
        assert_eq!((done.replayed.len(), done.without_payload), (1, 1));
        let (rows, _) = rows_of(b, a).await;
        let replayed = &rows["MBOX1"];
        assert_eq!(done.replayed, vec![replayed.delivery_id]);
        assert_eq!(replayed.state(), pb::DeliveryState::Queued);
        assert_eq!(replayed.local_id, format!("{original}-p1"));
        assert_eq!(replayed.replays, 1);
        assert!(replayed.mesh_message_id.is_empty());
        assert_eq!(rows["MBOX2"].state(), pb::DeliveryState::Delivered);
        assert_eq!(
            rows_of(b, c).await.0["MBOX1"].state(),
            pb::DeliveryState::Delivered
        );
        let audited = b
            .list_audit(AuditFilter::default(), String::new(), 100)
            .await
            .unwrap()
            .0;
        assert!(
            audited.iter().any(|r| r.action == "replay" && r.count == 1),
            "the replay is audited with its count"
        );

        // The replay is sent like any delivery, with the payload and the new local id.
        let again = deliver_all(b, "MBOX1", true).await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].local_id, format!("{original}-p1"));
        assert_eq!(&again[0].payload[..], b"<Bundle/>");

        // Nothing accepted after `since`: nothing selected.
        let later = b
            .replay(
                selection(keys::now_ms() + 1, "", 0),
                false,
                keys::now_ms(),
                audit(),
            )
            .await
            .unwrap();
        assert_eq!(later, Replayed::default());

        // The end of the window releases the payloads; then nothing can be replayed.
        let now = keys::now_ms() + 1_000;
        let retention = Retention {
            now,
            ledger_ms: u64::MAX / 4,
            dead_letter_ms: u64::MAX / 4,
            replay_ms: 0,
            batch: 1_000,
            audit_cutoff_ms: 0,
            refusal_cutoff_ms: 0,
            audit_limit: 100,
        };
        let (swept, _) = b.sweep(retention).await.unwrap();
        assert_eq!(swept.delivered_payloads_released, 3);
        assert!(
            !rows_of(b, a).await.1,
            "no delivery holds the payload any more"
        );
        let gone = b
            .replay(selection(start, "", 0), false, now, audit())
            .await
            .unwrap();
        assert_eq!((gone.replayed.len(), gone.without_payload), (0, 3));
        assert_eq!(rows_of(b, old).await.0["MBOX1"].replays, 0);
    }
}
