//! Group commit on PostgreSQL: several acceptances, or several subscription creates, in one
//! transaction, as redb's writer does, so that the transaction's statements and its commit
//! (one write-ahead log flush) are shared. Creates follow the same pattern as the
//! acceptances described below ([`create_loop`]): at most one per duplicate-detection key
//! in a group, shared quota locks only (a create near its owner's quota runs alone, with
//! the exclusive lock), rows written at the end (`subscriptions::StagedSubscriptions`).
//!
//! `PgBackend::accept` queues a [`Job`]; a few committer tasks ([`commit_loop`]) each take
//! the jobs waiting (at most [`MAX_BATCH`]) and run them in one transaction on one
//! connection, their statements pipelined: every acceptance body (`accept::write`) runs
//! concurrently on the transaction (its begin statement and any lookups matching makes are
//! sent back to back with the others'), and the rows they write (events, payloads,
//! deliveries, audit) are gathered and written at the end in four multi-row statements
//! (`ledger::Staged`). Each caller is answered after the commit returned, as before.
//!
//! What still holds, and why:
//! - **Ordering against creates.** Each event takes the ordering barrier and reads the
//!   clock in its own begin statement (`nems_accept_begin`), as alone: the argument in
//!   `backend.rs` is per statement, not per transaction.
//! - **One patient's events in turn.** A batch holds at most one event per patient (a
//!   second waits for the next batch of the same committer, in order), so an event sees the
//!   demographics of the patient's earlier events. A batch takes its patients' locks in
//!   ascending NHS number order (its begin statements are sent in that order, and the
//!   server runs one connection's statements in turn), so two batches never wait for each
//!   other in a cycle.
//! - **One bad event fails alone.** Any error rolls the whole transaction back (nothing
//!   of the batch was written); each of its events is then run again alone and answered
//!   with its own outcome.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::{Pool, Transaction};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::Db;
use super::ORDER_LOCK;
use super::error::{decode, pg, pool};
use super::ledger::Staged;
use super::subscriptions::{self, QuotaLock, StagedSubscriptions};
use super::view::{Accepting, Prefetched, slot_in_force};
use crate::accept::{Write, Written};
use crate::backend::{
    Created, RefMeta, StoreError, StoredPatient, StoredSubscription, WriterStats,
};
use nems_proto::v1 as pb;

/// Most acceptances in one transaction.
pub(super) const MAX_BATCH: usize = 32;

/// Times a create alone runs again after PostgreSQL rolled it back (a deadlock it broke).
const MAX_ROLLED_BACK: u32 = 3;

/// Starts one acceptance (migration 0002).
const BEGIN: &str = "SELECT accepted_ms, seq, ref_sets, ref_metas, patient_record, explicit_ids,
        explicit_entries
 FROM nems_accept_begin($1, $2)";

/// One acceptance waiting for its group's commit.
#[derive(Debug)]
pub(super) struct Job {
    /// What to write.
    pub(super) write: Write,
    /// When the caller asked (for the commit latency).
    pub(super) started: Instant,
    /// The caller's answer.
    pub(super) reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// A caller waiting for its acceptance: when it asked, and where its answer goes.
type Ticket = (Instant, oneshot::Sender<Result<Written, StoreError>>);

/// One subscription create waiting for its group's commit.
#[derive(Debug)]
pub(super) struct CreateJob {
    pub(super) id: u128,
    pub(super) record: StoredSubscription,
    pub(super) quota: u64,
    pub(super) audit: pb::AuditRecord,
    /// When the caller asked (for the commit latency).
    pub(super) started: Instant,
    /// The caller's answer.
    pub(super) reply: oneshot::Sender<Result<Created, StoreError>>,
}

/// What the committer tasks share.
#[derive(Debug, Clone)]
pub(super) struct Committer {
    pub(super) pool: Pool,
    /// Queue notes for other cores, sent after the commit.
    pub(super) notes: mpsc::UnboundedSender<(u64, Vec<String>)>,
    pub(super) stats: Arc<WriterStats>,
    pub(super) jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    pub(super) creates: Arc<tokio::sync::Mutex<mpsc::Receiver<CreateJob>>>,
    /// The quota's bound on creates in flight (see `subscriptions.rs`).
    pub(super) slack: u64,
}

/// The next group from `queue`: the jobs carried from the last one first, then those
/// waiting (at most [`MAX_BATCH`]; waits for one when none is), at most one per `key` (the
/// others are carried to the next group, in order), sorted by `key` (the order the
/// group takes its locks in). `None` once the queue is closed and empty.
async fn next_group<J>(
    queue: &tokio::sync::Mutex<mpsc::Receiver<J>>,
    carried: &mut Vec<J>,
    key: impl Fn(&J) -> Option<u128>,
) -> Option<Vec<J>> {
    let mut batch = std::mem::take(carried);
    {
        let mut jobs = queue.lock().await;
        if batch.is_empty() {
            if jobs.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return None;
            }
        } else {
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
    }
    let mut seen = HashSet::new();
    let (mut group, later): (Vec<J>, Vec<J>) = batch
        .into_iter()
        .partition(|job| key(job).is_none_or(|k| seen.insert(k)));
    *carried = later;
    group.sort_by_key(|job| key(job));
    Some(group)
}

/// Takes groups of acceptances from the queue and commits them until the queue closes.
pub(super) async fn commit_loop(c: Committer) {
    let mut carried = Vec::new();
    while let Some(group) = next_group(&c.jobs, &mut carried, |job: &Job| {
        job.write.patient().map(u128::from)
    })
    .await
    {
        c.run(group).await;
    }
}

/// Takes groups of subscription creates from the queue and commits them until the queue
/// closes. A group holds at most one create per duplicate-detection key: a second would
/// not see the first's row (written at the group's end) and be stored beside it.
pub(super) async fn create_loop(c: Committer) {
    let mut carried = Vec::new();
    while let Some(group) = next_group(&c.creates, &mut carried, |job: &CreateJob| {
        Some(job.record.dedup_key())
    })
    .await
    {
        c.run_creates(group).await;
    }
}

impl Committer {
    /// Commits `jobs` together, or each alone after their transaction failed, and answers
    /// each.
    async fn run(&self, mut jobs: Vec<Job>) {
        let started = Instant::now();
        if jobs.len() == 1 {
            let Some(Job {
                write,
                started: asked,
                reply,
            }) = jobs.pop()
            else {
                return;
            };
            let outcome = self.attempt(vec![write]).await;
            self.answer(vec![(asked, reply)], outcome, started);
            return;
        }
        // Kept for running each alone if the group fails (cheap: the payload is shared).
        let writes: Vec<Write> = jobs.iter().map(|j| j.write.clone()).collect();
        match self.attempt(writes).await {
            Ok(written) => {
                let tickets = jobs.into_iter().map(|j| (j.started, j.reply)).collect();
                self.answer(tickets, Ok(written), started);
            }
            Err(e) => {
                tracing::debug!(error = %e, events = jobs.len(), "group of acceptances failed; each runs alone");
                let alone =
                    futures_util::future::join_all(jobs.into_iter().map(|job| async move {
                        let started = Instant::now();
                        let outcome = self.attempt(vec![job.write]).await;
                        self.answer(vec![(job.started, job.reply)], outcome, started);
                    }));
                alone.await;
            }
        }
    }

    /// Answers each job with its event's outcome (or the group's error), counts the
    /// commit and queues the notes.
    fn answer(
        &self,
        tickets: Vec<Ticket>,
        outcome: Result<Vec<Written>, StoreError>,
        started: Instant,
    ) {
        match outcome {
            Ok(written) => {
                self.count(tickets.iter().map(|t| t.0), started);
                for ((_, reply), written) in tickets.into_iter().zip(written) {
                    if !written.written.queued_mailboxes.is_empty() {
                        let _ = self.notes.send((
                            written.accepted_ms,
                            written.written.queued_mailboxes.clone(),
                        ));
                    }
                    let _ = reply.send(Ok(written));
                }
            }
            Err(e) => {
                for (_, reply) in tickets {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Counts a commit of jobs asked at `asked`, started at `started`.
    fn count(&self, asked: impl ExactSizeIterator<Item = Instant>, started: Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = asked.len() as u64;
        self.stats.commits.fetch_add(1, Relaxed);
        self.stats.jobs.fetch_add(n, Relaxed);
        self.stats.max_batch.fetch_max(n, Relaxed);
        self.stats
            .commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        self.stats.batch_sizes.observe(n);
        for at in asked {
            self.stats
                .commit_latency
                .observe(at.elapsed().as_micros() as u64);
        }
    }

    /// Commits a group of creates far from their owners' quotas together (shared quota
    /// locks); one near its quota, or whose group failed, runs alone (`create_alone`).
    async fn run_creates(&self, jobs: Vec<CreateJob>) {
        let (together, mut alone): (Vec<CreateJob>, Vec<CreateJob>) =
            jobs.into_iter().partition(|j| j.quota > self.slack);
        if together.len() == 1 {
            alone.extend(together);
        } else if !together.is_empty() {
            let started = Instant::now();
            let items = together
                .iter()
                .map(|j| (j.id, j.record.clone(), j.quota, j.audit.clone()))
                .collect();
            match self.attempt_creates(items, QuotaLock::Shared).await {
                Ok(outcomes) => {
                    let mut answered = Vec::new();
                    for (job, outcome) in together.into_iter().zip(outcomes) {
                        match outcome {
                            Some(created) => answered.push((job, created)),
                            // Near the quota: again, alone and exclusively.
                            None => alone.push(job),
                        }
                    }
                    self.count(answered.iter().map(|(j, _)| j.started), started);
                    for (job, created) in answered {
                        let _ = job.reply.send(Ok(created));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, creates = together.len(), "group of creates failed; each runs alone");
                    alone.extend(together);
                }
            }
        }
        futures_util::future::join_all(alone.into_iter().map(|job| self.create_alone(job))).await;
    }

    /// Runs one create in a transaction of its own: shared far from the quota, then
    /// exclusively when it is near (as the module documentation of `subscriptions.rs`
    /// says).
    async fn create_alone(&self, job: CreateJob) {
        let started = Instant::now();
        let mut mode = if job.quota > self.slack {
            QuotaLock::Shared
        } else {
            QuotaLock::Exclusive
        };
        // A create alone near the quota holds the owner's lock exclusively and can close a
        // cycle with a group holding its duplicate key (module docs of `subscriptions.rs`);
        // PostgreSQL breaks it by rolling one side back, and a create so rolled back runs
        // again rather than failing its caller.
        let mut rolled_back = 0;
        let outcome = loop {
            let item = (job.id, job.record.clone(), job.quota, job.audit.clone());
            match self.attempt_creates(vec![item], mode).await {
                Ok(mut outcomes) => match outcomes.pop().flatten() {
                    Some(created) => break Ok(created),
                    None if mode == QuotaLock::Shared => mode = QuotaLock::Exclusive,
                    None => break Err(StoreError::Storage("the create was not written".into())),
                },
                Err(e) if super::error::rolled_back(&e) && rolled_back < MAX_ROLLED_BACK => {
                    rolled_back += 1;
                    tracing::debug!(error = %e, attempt = rolled_back, "create rolled back by the server; again");
                }
                Err(e) => break Err(e),
            }
        };
        if outcome.is_ok() {
            self.count(std::iter::once(job.started), started);
        }
        let _ = job.reply.send(outcome);
    }

    /// Runs `items` (id, record, quota, audit row) in one transaction with quota locks in
    /// `mode`, writes the rows of those to store and commits; each outcome is `None` when
    /// its owner is near its quota (nothing of it written). On an error nothing was written.
    async fn attempt_creates(
        &self,
        items: Vec<(u128, StoredSubscription, u64, pb::AuditRecord)>,
        mode: QuotaLock,
    ) -> Result<Vec<Option<Created>>, StoreError> {
        let mut conn = self.pool.get().await.map_err(pool)?;
        let tx = conn.transaction().await.map_err(pg)?;
        // Prepared first, so that the begin statements go out in the group's order.
        tx.prepare_cached(subscriptions::CREATE_BEGIN)
            .await
            .map_err(pg)?;
        let staged = std::sync::Mutex::new(StagedSubscriptions::default());
        let (tx_ref, staged_ref, slack) = (&tx, &staged, self.slack);
        let outcomes = futures_util::future::join_all(items.into_iter().map(
            |(id, record, quota, audit)| async move {
                subscriptions::create(tx_ref, staged_ref, id, record, quota, slack, mode, &audit)
                    .await
            },
        ))
        .await;
        let created = all_or_cause(outcomes)?;
        staged
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .write(&tx)
            .await?;
        tx.commit().await.map_err(pg)?;
        Ok(created)
    }

    /// Writes `writes` in one transaction and commits it; on an error nothing was written.
    async fn attempt(&self, writes: Vec<Write>) -> Result<Vec<Written>, StoreError> {
        let mut conn = self.pool.get().await.map_err(pool)?;
        let tx = conn.transaction().await.map_err(pg)?;
        // Prepared first, so that the begin statements go out in the batch's order.
        tx.prepare_cached(BEGIN).await.map_err(pg)?;
        let staged = std::sync::Mutex::new(Staged::default());
        let outcomes =
            futures_util::future::join_all(writes.into_iter().map(|w| accept_in(&tx, &staged, w)))
                .await;
        let mut written = all_or_cause(outcomes)?;
        let staged = staged
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ids = staged.write(&tx).await?;
        let by_seq: HashMap<u64, usize> = written
            .iter()
            .enumerate()
            .map(|(i, w)| (w.written.seq, i))
            .collect();
        for (seq, index, id) in ids {
            if let Some(slot) = by_seq
                .get(&seq)
                .and_then(|&i| written[i].written.delivery_ids.get_mut(index))
            {
                *slot = id;
            }
        }
        tx.commit().await.map_err(pg)?;
        Ok(written)
    }
}

/// The values of a group's outcomes, or the error that caused its failure (not the
/// "transaction aborted" errors that follow it, see `backend::first_cause`).
fn all_or_cause<T>(outcomes: Vec<Result<T, StoreError>>) -> Result<Vec<T>, StoreError> {
    let mut values = Vec::with_capacity(outcomes.len());
    let mut errors = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(v) => values.push(v),
            Err(e) => errors.push(Some(e)),
        }
    }
    crate::backend::first_cause(errors)?;
    Ok(values)
}

/// One acceptance's body in `tx`: its begin statement (the patient's lock, the ordering
/// barrier, its sequence number and counter, what matching reads first), then
/// `accept::write`, whose event, deliveries and audit row go to `staged`.
async fn accept_in(
    tx: &Transaction<'_>,
    staged: &std::sync::Mutex<Staged>,
    write: Write,
) -> Result<Written, StoreError> {
    let patient = write.patient();
    let begun = tx
        .fetch_one(BEGIN, &[&ORDER_LOCK, &patient.map(|nhs| nhs as i64)])
        .await
        .map_err(pg)?;
    let (at, seq): (i64, i64) = (begun.get(0), begun.get(1));
    let mut slots = [None; 3];
    let sets: Option<Vec<i16>> = begun.get(2);
    let metas: Option<Vec<&[u8]>> = begun.get(3);
    for (set, meta) in sets
        .unwrap_or_default()
        .into_iter()
        .zip(metas.unwrap_or_default())
    {
        let meta = RefMeta::decode(meta).map_err(decode)?;
        if let Some(slot) = slots.get_mut(set as usize) {
            *slot = slot_in_force(&meta);
        }
    }
    let prefetched = match patient {
        Some(nhs) => {
            let record: Option<&[u8]> = begun.get(4);
            let record = record
                .map(|r| StoredPatient::decode(r).map_err(decode))
                .transpose()?
                .and_then(|p| p.record);
            let ids: Option<Vec<&str>> = begun.get(5);
            let entries: Option<Vec<&[u8]>> = begun.get(6);
            let explicit = super::view::entries_of(
                ids.unwrap_or_default()
                    .into_iter()
                    .zip(entries.unwrap_or_default()),
            )?;
            Some(Prefetched {
                nhs,
                patient: std::sync::Mutex::new(Some(record)),
                explicit: std::sync::Mutex::new(Some(explicit)),
            })
        }
        None => None,
    };
    let view = Accepting {
        tx,
        staged,
        seq: seq as u64,
        slots,
        prefetched,
    };
    crate::accept::write(&view, write, at as u64).await
}
