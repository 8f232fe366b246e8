//! The redb engine behind the seam: each [`Backend`] method is one job for the single
//! writer (group commit) or one read transaction, over the synchronous functions of this
//! module's siblings. Code shared by every engine (matching, the acceptance body) runs
//! inside the writer's closure through [`View`], whose futures never wait
//! ([`crate::backend::ready`]).

use std::sync::Arc;

use nems_proto::v1 as pb;
use prost::Message;
use redb::{ReadableTable, WriteTransaction};

use super::tables::{PAYLOADS, SUBS_BY_NHS, SUBS_BY_RULE};
use super::{
    Snapshot, Store, audit, demographics, directory, events, ledger, refdata, schema, subscriptions,
};
use crate::accept::{Write, Written};
use crate::backend::keys::now_ms;
use crate::backend::{
    AcceptTx, Accepted, AuditFilter, Backend, Budget, Completed, Created, DirectoryChange,
    Finished, Gauges, Leased, ListFilter, MatchEntry, MatchView, NewEvent, Outcome, Query,
    Redriven, RefdataFinish, ReplaySelection, Replayed, Retention, Rows, SET_NAMES, Selection,
    StoreError, StoredSubscription, Swept, Totals, WriterStats, import_outcome, ready,
};
use crate::domain::patient::DemographicUpdate;
use crate::matching::{self, MailboxMatch};

/// A redb transaction seen through the seam's views: reads for matching in either kind of
/// transaction, the acceptance writes in a write transaction.
pub(crate) struct View<'t, T>(pub(crate) &'t T);

impl<T: Snapshot> MatchView for View<'_, T> {
    async fn patient(&self, nhs: u64) -> Result<Option<pb::PatientRecord>, StoreError> {
        demographics::get(self.0, nhs)
    }

    async fn postcode(&self, key: &str) -> Result<Option<pb::PostcodeRow>, StoreError> {
        refdata::postcode(self.0, key)
    }

    async fn practice(&self, code: &str) -> Result<Option<pb::PracticeRow>, StoreError> {
        refdata::practice(self.0, code)
    }

    async fn equivalents(&self, code: &str) -> Result<Vec<String>, StoreError> {
        refdata::equivalents(self.0, code)
    }

    async fn explicit(&self, nhs: u64) -> Result<Vec<(u128, MatchEntry)>, StoreError> {
        let table = self.0.table(SUBS_BY_NHS)?;
        let mut out = Vec::new();
        for item in table.range((nhs, 0)..=(nhs, u128::MAX))? {
            let (k, v) = item?;
            out.push((k.value().1, MatchEntry::decode(v.value())?));
        }
        Ok(out)
    }

    async fn generic(&self, key: &str) -> Result<Vec<(u128, MatchEntry)>, StoreError> {
        let table = self.0.table(SUBS_BY_RULE)?;
        let mut out = Vec::new();
        for item in table.range((key, 0)..=(key, u128::MAX))? {
            let (k, v) = item?;
            out.push((k.value().1, MatchEntry::decode(v.value())?));
        }
        Ok(out)
    }
}

impl AcceptTx for View<'_, WriteTransaction> {
    async fn insert_event(&self, event: &NewEvent) -> Result<Accepted, StoreError> {
        events::accept(self.0, event)
    }

    async fn apply_demographics(&self, update: &DemographicUpdate) -> Result<bool, StoreError> {
        demographics::apply(self.0, update)
    }

    async fn append_audit(&self, at_ms: u64, record: &pb::AuditRecord) -> Result<(), StoreError> {
        audit::append(self.0, at_ms, record)
    }
}

/// Applies one directory change; true when it replaced or removed something.
pub(crate) fn apply_change(
    tx: &WriteTransaction,
    change: &DirectoryChange,
) -> Result<bool, StoreError> {
    match change {
        DirectoryChange::PutSystem(s) => directory::put_system(tx, s),
        DirectoryChange::DeleteSystem(asid) => directory::delete_system(tx, asid),
        DirectoryChange::PutMailbox(m) => directory::put_mailbox(tx, m),
        DirectoryChange::DeleteMailbox(id) => directory::delete_mailbox(tx, id),
    }
}

#[tonic::async_trait]
impl Backend for Store {
    fn engine(&self) -> &'static str {
        "redb"
    }

    fn failure(&self) -> Option<String> {
        self.is_poisoned()
            .then(|| Store::failure(self).unwrap_or_else(|| "storage error".into()))
    }

    fn reopened(&self) -> tokio::sync::watch::Receiver<u64> {
        Store::reopened(self)
    }

    fn write_queue(&self) -> usize {
        self.writer_queue()
    }

    fn writer_stats(&self) -> Arc<WriterStats> {
        Store::writer_stats(self).clone()
    }

    fn gauges(&self) -> Gauges {
        // redb reads do not lock and mostly hit the page cache: read at the scrape.
        let mailboxes = self
            .read_now(|tx| ledger::stats(tx, ""))
            .unwrap_or_default();
        let refdata = self
            .read_now(|tx| {
                (0..SET_NAMES.len())
                    .map(|set| refdata::meta(tx, set))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap_or_default();
        Gauges { mailboxes, refdata }
    }

    fn closer(self: Arc<Self>) -> Option<Box<dyn FnOnce() + Send>> {
        let store = Arc::try_unwrap(self).ok()?;
        Some(Box::new(move || store.close()))
    }

    async fn accept(&self, write: Write, shed: bool) -> Result<Written, StoreError> {
        let job = move |tx: &WriteTransaction| {
            let at = write.time();
            ready(crate::accept::write(&View(tx), write, at))
        };
        if shed {
            self.writer().try_write(job).await
        } else {
            self.writer().write(job).await
        }
    }

    async fn preview_match(
        &self,
        event: matching::Event,
    ) -> Result<(Vec<MailboxMatch>, bool), StoreError> {
        self.read_inline(|tx| ready(matching::match_event(&View(tx), &event)))
    }

    async fn create_subscription(
        &self,
        id: u128,
        mut record: StoredSubscription,
        quota: u64,
        not_before: u64,
        audit_row: pb::AuditRecord,
    ) -> Result<Created, StoreError> {
        self.writer()
            .write(move |tx| {
                // The quota is counted in the same transaction as the insert, so that
                // concurrent creates cannot pass it together.
                if subscriptions::owned_by_asid(tx, &record.owner_asid)? >= quota {
                    return Ok(Created::OverQuota);
                }
                // Created at the time of the write, the order matching sees (publishes
                // match inside their own writes): an event accepted after this commit is
                // matched, one accepted before it is not.
                record.created_ms = now_ms().max(not_before);
                Ok(
                    match subscriptions::insert(tx, id, &record, record.created_ms)? {
                        Ok(()) => {
                            audit::append(tx, record.created_ms, &audit_row)?;
                            Created::Stored(Box::new(record))
                        }
                        Err(existing) => Created::Duplicate(existing),
                    },
                )
            })
            .await
    }

    async fn insert_subscriptions(
        &self,
        batch: Vec<(u128, StoredSubscription)>,
    ) -> Result<usize, StoreError> {
        self.writer()
            .write(move |tx| {
                let mut new = 0;
                for (id, record) in &batch {
                    if subscriptions::insert(tx, *id, record, record.created_ms)?.is_ok() {
                        new += 1;
                    }
                }
                Ok(new)
            })
            .await
    }

    async fn subscription(&self, id: u128) -> Result<Option<StoredSubscription>, StoreError> {
        self.read_inline(|tx| subscriptions::get(tx, id))
    }

    async fn delete_subscription(
        &self,
        id: u128,
        now: u64,
        allowed: crate::backend::Allowed,
        audit_row: pb::AuditRecord,
    ) -> Result<bool, StoreError> {
        self.writer()
            .write(move |tx| {
                let deleted = subscriptions::delete(tx, id, now, |s| allowed(s))?;
                if deleted {
                    audit::append(tx, now, &audit_row)?;
                }
                Ok(deleted)
            })
            .await
    }

    async fn list_subscriptions(
        &self,
        filter: ListFilter,
        token: String,
        size: usize,
        include_deleted: bool,
    ) -> Result<(Vec<(u128, StoredSubscription)>, String), StoreError> {
        self.read(move |tx| subscriptions::list(tx, &filter, &token, size, include_deleted))
            .await
    }

    async fn totals(&self) -> Result<Totals, StoreError> {
        self.read(|tx| {
            Ok(Totals {
                schema_version: schema::version(tx)?,
                subscriptions: subscriptions::live_count(tx)?,
                events_accepted: events::accepted_count(tx)?,
                deliveries_pending: ledger::pending(tx)?,
                reference: (0..SET_NAMES.len())
                    .map(|set| refdata::meta(tx, set))
                    .collect::<Result<_, _>>()?,
                patients: demographics::count(tx)?,
            })
        })
        .await
    }

    async fn lease(
        &self,
        picks: Vec<(String, u32)>,
        now: u64,
        lease_ms: u64,
        budget: Budget,
    ) -> Result<Leased, StoreError> {
        self.writer()
            .write(move |tx| ledger::lease(tx, &picks, now, lease_ms, budget))
            .await
    }

    async fn give_back(
        &self,
        held: Vec<(u64, u32)>,
        now: u64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        self.writer()
            .write(move |tx| ledger::give_back(tx, &held, now))
            .await
    }

    async fn give_back_all(&self, now: u64) -> Result<usize, StoreError> {
        self.writer()
            .write(move |tx| ledger::give_back_all(tx, now))
            .await
    }

    async fn complete(
        &self,
        id: u64,
        attempt: u32,
        outcome: Outcome,
        now: u64,
    ) -> Result<Option<Completed>, StoreError> {
        self.writer()
            .write(move |tx| ledger::complete(tx, id, attempt, &outcome, now))
            .await
    }

    async fn report_undelivered(
        &self,
        mesh_message_id: String,
        local_id: String,
        code: String,
        description: String,
        now: u64,
    ) -> Result<Option<(u64, bool)>, StoreError> {
        self.writer()
            .write(move |tx| {
                let Some(id) = ledger::find_reported(tx, &mesh_message_id, &local_id)? else {
                    return Ok(None);
                };
                let dead_lettered = ledger::record_report(tx, id, &code, &description, now)?;
                Ok(Some((id, dead_lettered)))
            })
            .await
    }

    async fn redrive(
        &self,
        selection: Selection,
        now: u64,
        audit_row: pb::AuditRecord,
    ) -> Result<Redriven, StoreError> {
        self.writer()
            .write(move |tx| {
                let out = ledger::redrive(tx, &selection, now)?;
                if !out.0.is_empty() {
                    audit::append(tx, now, &audit_row)?;
                }
                Ok(out)
            })
            .await
    }

    async fn replay(
        &self,
        selection: ReplaySelection,
        dry_run: bool,
        now: u64,
        mut audit_row: pb::AuditRecord,
    ) -> Result<Replayed, StoreError> {
        if dry_run {
            return self
                .read(move |tx| ledger::replay_preview(tx, &selection))
                .await;
        }
        self.writer()
            .write(move |tx| {
                let out = ledger::replay(tx, &selection, now)?;
                if !out.replayed.is_empty() {
                    audit_row.count = out.replayed.len() as u32;
                    audit::append(tx, now, &audit_row)?;
                }
                Ok(out)
            })
            .await
    }

    async fn list_deliveries(
        &self,
        query: Query,
        token: String,
        size: usize,
    ) -> Result<(Vec<pb::DeliveryRecord>, String), StoreError> {
        self.read(move |tx| ledger::list(tx, &query, &token, size))
            .await
    }

    async fn event(
        &self,
        id: u128,
    ) -> Result<Option<(pb::EventRecord, Vec<pb::DeliveryRecord>)>, StoreError> {
        self.read(move |tx| {
            let Some((seq, e)) = events::get_by_id(tx, id)? else {
                return Ok(None);
            };
            let held = tx.open_table(PAYLOADS)?.get(seq)?.is_some();
            let query = Query {
                event_id: e.event_id.clone(),
                ..Default::default()
            };
            let (deliveries, _) = ledger::list(tx, &query, "", 10_000)?;
            Ok(Some((events::to_record(&e, held), deliveries)))
        })
        .await
    }

    async fn mailbox_stats(&self, mailbox: String) -> Result<Vec<pb::MailboxStats>, StoreError> {
        self.read(move |tx| ledger::stats(tx, &mailbox)).await
    }

    async fn queue(&self) -> Result<(Vec<(String, u64)>, u64), StoreError> {
        self.read(|tx| Ok((ledger::queue_heads(tx)?, ledger::pending(tx)?)))
            .await
    }

    async fn sweep(&self, r: Retention) -> Result<(Swept, usize), StoreError> {
        self.writer()
            .write(move |tx| {
                let swept = ledger::sweep(
                    tx,
                    r.now,
                    r.ledger_ms,
                    r.dead_letter_ms,
                    r.replay_ms,
                    r.batch,
                )?;
                let pruned = audit::prune(tx, r.audit_cutoff_ms, r.audit_limit)?
                    + audit::prune_refused(tx, r.refusal_cutoff_ms, r.audit_limit)?;
                Ok((swept, pruned))
            })
            .await
    }

    async fn directory(&self) -> Result<(Vec<pb::SpineSystem>, Vec<pb::MeshMailbox>), StoreError> {
        self.read(directory::load).await
    }

    async fn change_directory(
        &self,
        changes: Vec<DirectoryChange>,
        audit_row: Option<pb::AuditRecord>,
    ) -> Result<Vec<bool>, StoreError> {
        self.writer()
            .write(move |tx| {
                if let Some(record) = &audit_row {
                    audit::append(tx, now_ms(), record)?;
                }
                changes.iter().map(|c| apply_change(tx, c)).collect()
            })
            .await
    }

    async fn refdata_begin(&self, set: usize) -> Result<u32, StoreError> {
        self.writer().write(move |tx| refdata::begin(tx, set)).await
    }

    async fn refdata_insert(&self, set: usize, slot: u32, rows: Rows) -> Result<(), StoreError> {
        self.writer()
            .write(move |tx| refdata::insert(tx, set, slot, &rows))
            .await
    }

    async fn refdata_diff(&self, set: usize, slot: u32) -> Result<(u64, u64, u64), StoreError> {
        self.read(move |tx| refdata::diff(tx, set, slot)).await
    }

    async fn refdata_finish(
        &self,
        f: RefdataFinish,
        mut audit_row: pb::AuditRecord,
    ) -> Result<Finished, StoreError> {
        self.writer()
            .write(move |tx| {
                let finished = refdata::finish(tx, f.set, f.slot, &f.format, &f.source, &f.guard)?;
                if !f.guard.check {
                    import_outcome(&finished, &mut audit_row);
                    audit::append(tx, now_ms(), &audit_row)?;
                }
                Ok(finished)
            })
            .await
    }

    async fn lookup_area(
        &self,
        key: pb::lookup_area_request::Key,
    ) -> Result<pb::LookupAreaResponse, StoreError> {
        self.read(move |tx| ready(crate::backend::lookup_area(&View(tx), key)))
            .await
    }

    async fn patient(&self, nhs: u64) -> Result<Option<pb::PatientRecord>, StoreError> {
        self.read_inline(|tx| demographics::get(tx, nhs))
    }

    async fn apply_demographics(&self, updates: Vec<DemographicUpdate>) -> Result<u64, StoreError> {
        self.writer()
            .write(move |tx| {
                let mut written = 0u64;
                for u in &updates {
                    if demographics::apply(tx, u)? {
                        written += 1;
                    }
                }
                Ok(written)
            })
            .await
    }

    async fn append_audit(
        &self,
        reads: Vec<pb::AuditRecord>,
        refusals: Vec<pb::AuditRecord>,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        self.writer()
            .write(move |tx| {
                for r in &reads {
                    audit::append(tx, at_ms, r)?;
                }
                for r in &refusals {
                    audit::append_refused(tx, at_ms, r)?;
                }
                Ok(())
            })
            .await
    }

    async fn list_audit(
        &self,
        filter: AuditFilter,
        token: String,
        size: usize,
    ) -> Result<(Vec<pb::AuditRecord>, String), StoreError> {
        self.read(move |tx| audit::list(tx, &filter, &token, size))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::keys::{self, id_hex};
    use crate::store::StoreOptions;

    /// A non-durable store in a temporary folder (kept while the folder lives).
    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreOptions {
                durable: false,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn an_overtaken_import_fails_and_the_later_one_wins() {
        let (_dir, store) = temp_store();
        crate::backend::conformance::an_overtaken_import_fails_and_the_later_one_wins(
            &store, &store,
        )
        .await;
    }

    #[tokio::test]
    async fn deliveries_page_both_ways_and_the_oldest_pending_is_reported() {
        let (_dir, store) = temp_store();
        crate::backend::conformance::deliveries_page_both_ways_and_the_oldest_pending_is_reported(
            &store,
        )
        .await;
    }

    #[tokio::test]
    async fn audit_lists_one_action_either_way() {
        let (_dir, store) = temp_store();
        crate::backend::conformance::audit_lists_one_action_either_way(&store).await;
    }

    #[tokio::test]
    async fn replay_resends_what_the_window_kept() {
        let (_dir, store) = temp_store();
        crate::backend::conformance::replay_resends_what_the_window_kept(&store).await;
    }

    #[tokio::test]
    async fn matching_in_a_write_sees_what_the_same_transaction_wrote_before_it() {
        use crate::domain::catalogue::Catalogue;

        const NHS: &str = "9434765919";
        let (_dir, store) = temp_store();
        let now = keys::now_ms();
        let criteria = format!(
            "/Bundle?type=message&Patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{NHS}&MessageHeader.event=vaccinations-1"
        );
        let (id, record) =
            crate::bench::stored_subscription(&Catalogue::default(), criteria, "MB1", now).unwrap();
        let event = matching::Event {
            event_code: "vaccinations-1".into(),
            nhs: keys::nhs_key(NHS),
            accepted_ms: now + 1,
            ..Default::default()
        };
        let (before, after) = store
            .writer()
            .write(move |tx| {
                let before = ready(matching::match_event(&View(tx), &event))?.0;
                subscriptions::insert(tx, id, &record, now)?
                    .map_err(|_| StoreError::Corrupt("duplicate".into()))?;
                let after = ready(matching::match_event(&View(tx), &event))?.0;
                Ok((before, after))
            })
            .await
            .unwrap();
        assert!(before.is_empty());
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].mailbox, "MB1");
        assert_eq!(after[0].subscriptions[0].0, id_hex(id));
        store.close();
    }
}
