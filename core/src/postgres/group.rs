//! Group commit of acceptances on PostgreSQL: several events in one transaction, as redb's
//! writer does, so that the transaction's statements and its commit (one write-ahead log
//! flush) are shared.
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
use super::view::{Accepting, Prefetched, slot_in_force};
use crate::accept::{Write, Written};
use crate::backend::{RefMeta, StoreError, StoredPatient, WriterStats};

/// Most acceptances in one transaction.
pub(super) const MAX_BATCH: usize = 32;

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

/// What the committer tasks share.
#[derive(Debug, Clone)]
pub(super) struct Committer {
    pub(super) pool: Pool,
    /// Queue notes for other cores, sent after the commit.
    pub(super) notes: mpsc::UnboundedSender<(u64, Vec<String>)>,
    pub(super) stats: Arc<WriterStats>,
    pub(super) jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
}

/// Takes batches from the queue and commits them until the queue closes.
pub(super) async fn commit_loop(c: Committer) {
    let mut carried: Vec<Job> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut carried);
        {
            let mut jobs = c.jobs.lock().await;
            if batch.is_empty() {
                if jobs.recv_many(&mut batch, MAX_BATCH).await == 0 {
                    return;
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
        let mut patients = HashSet::new();
        let (mut run, later): (Vec<Job>, Vec<Job>) = batch
            .into_iter()
            .partition(|job| job.write.patient().is_none_or(|p| patients.insert(p)));
        carried = later;
        run.sort_by_key(|job| job.write.patient());
        c.run(run).await;
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
                use std::sync::atomic::Ordering::Relaxed;
                let n = tickets.len() as u64;
                self.stats.commits.fetch_add(1, Relaxed);
                self.stats.jobs.fetch_add(n, Relaxed);
                self.stats.max_batch.fetch_max(n, Relaxed);
                self.stats
                    .commit_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
                self.stats.batch_sizes.observe(n);
                for ((asked, reply), written) in tickets.into_iter().zip(written) {
                    self.stats
                        .commit_latency
                        .observe(asked.elapsed().as_micros() as u64);
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
        let mut written = Vec::with_capacity(outcomes.len());
        let mut errors = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok(w) => written.push(w),
                Err(e) => errors.push(Some(e)),
            }
        }
        crate::backend::first_cause(errors)?;
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
