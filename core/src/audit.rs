//! The detached audit trail: records of reads and of refused requests, written without the
//! request waiting for them (writes that change state record theirs in their own
//! transaction instead).
//!
//! Everything goes through one bounded queue ([`AuditSink`], [`QUEUE`] records) drained by
//! one task, so audit never floods the store's write queue that publishing uses: the task
//! has at most one write in that queue at a time, and a full audit queue drops records and
//! counts them in `nems_audit_dropped_total` (its depth is `nems_audit_queue_depth`).
//!
//! The task collects for up to [`WINDOW`] (or [`BATCH`] records) and then writes one
//! transaction. Within it, identical refusals (same caller, action, resource and outcome)
//! become one record with a `count`, so that a flood of refused requests costs a few rows,
//! not one row each. Refusals go to their own table, kept for
//! `core.refusal_audit_retention`; reads to the audit trail, kept for
//! `core.audit_retention`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nems_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::backend::Backend;
use crate::backend::keys::now_ms;

/// Records the queue holds; beyond, records are dropped and counted.
pub(crate) const QUEUE: usize = 8_192;

/// Most records one write takes.
pub(crate) const BATCH: usize = 4_096;

/// How long the task collects before it writes (the aggregation window of refusals).
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// The sending side of the audit queue (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct AuditSink {
    tx: mpsc::Sender<pb::AuditRecord>,
    rx: Arc<Mutex<Option<mpsc::Receiver<pb::AuditRecord>>>>,
}

impl Default for AuditSink {
    fn default() -> Self {
        Self::new(QUEUE)
    }
}

impl AuditSink {
    /// A sink of `capacity` records (drained once [`AuditSink::start`] runs).
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        AuditSink {
            tx,
            rx: Arc::new(Mutex::new(Some(rx))),
        }
    }

    /// Queues a record without waiting: dropped (and counted) when the queue is full.
    pub(crate) fn record(&self, record: pb::AuditRecord) {
        let metrics = crate::metrics::metrics();
        if self.tx.try_send(record).is_err() {
            metrics.audit_dropped.inc();
        }
        metrics.audit_queue_depth.set(self.depth() as i64);
    }

    /// Records waiting in the queue.
    pub(crate) fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Starts the task writing the queue through `writer`; `None` when it already runs.
    pub(crate) fn start(&self, writer: Arc<dyn Backend>) -> Option<AuditTask> {
        let rx = match self.rx.lock() {
            Ok(mut rx) => rx.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }?;
        let (stop, stopped) = oneshot::channel();
        let handle = tokio::spawn(drain(rx, stopped, writer));
        Some(AuditTask { stop, handle })
    }
}

/// The running drain task.
#[derive(Debug)]
pub(crate) struct AuditTask {
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

impl AuditTask {
    /// Writes what is queued and ends the task.
    pub(crate) async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.handle.await;
    }
}

async fn drain(
    mut rx: mpsc::Receiver<pb::AuditRecord>,
    mut stop: oneshot::Receiver<()>,
    writer: Arc<dyn Backend>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let stopping = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n == 0,
            _ = &mut stop => true,
        };
        if stopping {
            rx.close();
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                if batch.len() >= BATCH {
                    write(&writer, std::mem::take(&mut batch)).await;
                }
            }
            write(&writer, batch).await;
            crate::metrics::metrics().audit_queue_depth.set(0);
            return;
        }
        // Collect for the rest of the window (or until the batch is full).
        let deadline = tokio::time::Instant::now() + WINDOW;
        let mut closed = false;
        while batch.len() < BATCH && !closed {
            let room = BATCH - batch.len();
            tokio::select! {
                n = rx.recv_many(&mut batch, room) => closed = n == 0,
                () = tokio::time::sleep_until(deadline) => break,
                _ = &mut stop => {
                    // Stopping: write this batch, then the loop above drains the rest.
                    stop = oneshot::channel().1;
                    closed = true;
                }
            }
        }
        crate::metrics::metrics()
            .audit_queue_depth
            .set((rx.max_capacity() - rx.capacity()) as i64);
        write(&writer, std::mem::take(&mut batch)).await;
        if closed {
            rx.close();
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                write(&writer, std::mem::take(&mut batch)).await;
            }
            return;
        }
    }
}

/// Writes one collected batch in one transaction (refusals aggregated).
async fn write(writer: &Arc<dyn Backend>, batch: Vec<pb::AuditRecord>) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    let (reads, refusals) = aggregate(batch);
    let written = writer.append_audit(reads, refusals, now_ms()).await;
    if let Err(e) = written {
        crate::metrics::metrics().audit_dropped.inc_by(n);
        tracing::warn!(error = %e, records = n, "audit records not written");
    }
}

/// Splits a batch into the records kept one by one (outcome `ok`) and the refusals, with
/// identical refusals merged into one record whose `count` is how many there were.
pub(crate) fn aggregate(
    batch: Vec<pb::AuditRecord>,
) -> (Vec<pb::AuditRecord>, Vec<pb::AuditRecord>) {
    type Key = (String, String, String, String, String, String, String);
    let mut reads = Vec::new();
    let mut refusals: Vec<pb::AuditRecord> = Vec::new();
    let mut index: HashMap<Key, usize> = HashMap::new();
    for r in batch {
        if r.outcome == "ok" {
            reads.push(r);
            continue;
        }
        let key = (
            r.asid.clone(),
            r.ods_code.clone(),
            r.user.clone(),
            r.action.clone(),
            r.resource_type.clone(),
            r.resource_id.clone(),
            r.outcome.clone(),
        );
        let times = r.count.max(1);
        match index.get(&key) {
            Some(&i) => {
                let first = &mut refusals[i];
                first.count = first.count.max(1).saturating_add(times);
            }
            None => {
                index.insert(key, refusals.len());
                refusals.push(pb::AuditRecord { count: times, ..r });
            }
        }
    }
    (reads, refusals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(asid: &str, request: &str, outcome: &str) -> pb::AuditRecord {
        pb::AuditRecord {
            request_id: request.into(),
            asid: asid.into(),
            action: "create".into(),
            resource_type: "Subscription".into(),
            outcome: outcome.into(),
            ..Default::default()
        }
    }

    #[test]
    fn identical_refusals_become_one_counted_record_and_reads_stay_one_each() {
        let mut batch = Vec::new();
        for i in 0..1_000 {
            batch.push(refusal("200000000111", &format!("r{i}"), "ACCESS_DENIED"));
        }
        batch.push(refusal("200000000222", "x", "ACCESS_DENIED"));
        batch.push(refusal("200000000111", "y", "DUPLICATE_REJECTED"));
        batch.push(refusal("200000000111", "read-1", "ok"));
        batch.push(refusal("200000000111", "read-2", "ok"));
        let (reads, refusals) = aggregate(batch);
        assert_eq!(reads.len(), 2);
        assert_eq!(refusals.len(), 3);
        assert_eq!(refusals[0].count, 1_000);
        // The first refusal's request id is kept.
        assert_eq!(refusals[0].request_id, "r0");
        assert_eq!(refusals[1].count, 1);
        assert_eq!(refusals[2].outcome, "DUPLICATE_REJECTED");
        let total: u32 = refusals.iter().map(|r| r.count).sum();
        assert_eq!(total, 1_002);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_nothing_queued_is_lost_at_finish() {
        use crate::store::{Store, StoreOptions};
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Backend> = Arc::new(
            Store::open(
                dir.path(),
                StoreOptions {
                    durable: false,
                    ..StoreOptions::default()
                },
            )
            .unwrap(),
        );
        let sink = AuditSink::new(100);
        let dropped_before = crate::metrics::metrics().audit_dropped.get();
        // Not drained yet: 100 fit, 50 are dropped.
        for i in 0..150 {
            sink.record(refusal("200000000111", &format!("r{i}"), "ACCESS_DENIED"));
        }
        assert_eq!(sink.depth(), 100);
        assert!(crate::metrics::metrics().audit_dropped.get() - dropped_before >= 50);
        let task = sink.start(store.clone()).unwrap();
        assert!(sink.start(store.clone()).is_none());
        sink.record(refusal("200000000111", "read", "ok"));
        task.finish().await;
        let (records, _) = store
            .list_audit(crate::backend::AuditFilter::default(), String::new(), 1_000)
            .await
            .unwrap();
        // The queue was still full when the read came (the drain had not run yet): it was
        // dropped and counted; the 100 queued refusals were all written, as one record.
        assert_eq!(records.len(), 1, "{records:?}");
        let refusals = records;
        assert_eq!(refusals[0].outcome, "ACCESS_DENIED");
        assert_eq!(refusals[0].count, 100);
        if let Some(close) = store.closer() {
            close();
        }
    }
}
