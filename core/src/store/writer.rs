//! The single writer: every write to the store goes through one thread that drains a
//! bounded queue of write jobs, applies as many as are waiting in one redb transaction,
//! commits once (group commit), and only then answers each job. A caller is therefore
//! answered only after the commit (and, with `Durability::Immediate`, the fsync) that
//! covers its write.
//!
//! A job must not write anything when it decides to fail for a business reason (it returns
//! `Ok(Err(..))` after reads only); a storage error aborts the whole batch, and a commit
//! error poisons the writer so that nothing is acknowledged after an fsync failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// One unit of work applied inside a batch transaction.
trait Job: Send {
    /// Applies the job's writes; an error aborts the batch.
    fn apply(&mut self, tx: &WriteTransaction) -> Result<(), StoreError>;
    /// Answers the caller once the batch is committed (or failed).
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

struct FnJob<T, F> {
    f: Option<F>,
    result: Option<T>,
    reply: Option<oneshot::Sender<Result<T, StoreError>>>,
}

impl<T, F> Job for FnJob<T, F>
where
    T: Send,
    F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send,
{
    fn apply(&mut self, tx: &WriteTransaction) -> Result<(), StoreError> {
        if let Some(f) = self.f.take() {
            self.result = Some(f(tx)?);
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, committed: Result<(), StoreError>) {
        let outcome = match (committed, self.result.take()) {
            (Ok(()), Some(value)) => Ok(value),
            (Ok(()), None) => Err(StoreError::Aborted),
            (Err(e), _) => Err(e),
        };
        if let Some(reply) = self.reply.take() {
            // The caller may have gone away (request cancelled); the write stands.
            let _ = reply.send(outcome);
        }
    }
}

/// Statistics of the writer, for metrics and tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Commits done.
    pub commits: AtomicU64,
    /// Jobs committed.
    pub jobs: AtomicU64,
    /// Largest batch seen.
    pub max_batch: AtomicU64,
    /// Total commit time in microseconds.
    pub commit_micros: AtomicU64,
}

/// Handle to the writer thread. Cloning shares the same thread.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Box<dyn Job>>,
    poisoned: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("queued", &(self.tx.max_capacity() - self.tx.capacity()))
            .field("poisoned", &self.poisoned.load(Ordering::Relaxed))
            .finish()
    }
}

/// Settings of the writer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterSettings {
    /// Queue capacity (jobs waiting).
    pub(crate) queue: usize,
    /// Most jobs in one transaction.
    pub(crate) max_batch: usize,
    /// Commit durability.
    pub(crate) durability: Durability,
}

impl Writer {
    /// Starts the writer thread over `db`. The thread ends when every `Writer` handle is
    /// dropped and the queue is drained.
    pub(crate) fn start(db: Arc<Database>, settings: WriterSettings) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let poisoned = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WriterStats::default());
        let thread_poisoned = poisoned.clone();
        let thread_stats = stats.clone();
        let handle = std::thread::Builder::new()
            .name("nems-store-writer".into())
            .spawn(move || run(db, rx, settings, &thread_poisoned, &thread_stats))
            // Thread creation fails only when the OS is out of resources at start-up.
            .expect("spawn the store writer thread");
        (
            Writer {
                tx,
                poisoned,
                stats,
            },
            handle,
        )
    }

    /// Runs `f` inside the next batch transaction and returns its result after the batch
    /// is committed. Waits for room in the queue.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (job, rx) = Self::job(f);
        self.check_poisoned()?;
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`Writer::write`] but fails fast with [`StoreError::Busy`] when the queue is
    /// full, so that callers can shed load (publish answers `503`).
    pub(crate) async fn try_write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (job, rx) = Self::job(f);
        self.check_poisoned()?;
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Jobs waiting in the queue.
    pub(crate) fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Returns the writer's statistics.
    pub(crate) fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// True after a commit failure: the store must be reopened (restart) before more writes.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    fn check_poisoned(&self) -> Result<(), StoreError> {
        if self.is_poisoned() {
            return Err(StoreError::Poisoned);
        }
        Ok(())
    }

    #[allow(
        clippy::type_complexity,
        reason = "private helper returning a job and its reply"
    )]
    fn job<T, F>(f: F) -> (Box<dyn Job>, oneshot::Receiver<Result<T, StoreError>>)
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = FnJob {
            f: Some(f),
            result: None,
            reply: Some(reply),
        };
        (Box::new(job), rx)
    }
}

fn run(
    db: Arc<Database>,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    settings: WriterSettings,
    poisoned: &AtomicBool,
    stats: &WriterStats,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < settings.max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if poisoned.load(Ordering::Relaxed) {
            finish_all(batch, &Err(StoreError::Poisoned));
            continue;
        }
        let outcome = apply_and_commit(&db, &mut batch, settings.durability, stats);
        if matches!(outcome, Err(StoreError::Commit(_))) {
            tracing::error!("store commit failed; refusing further writes until restart");
            poisoned.store(true, Ordering::Relaxed);
        }
        finish_all(batch, &outcome);
    }
}

fn apply_and_commit(
    db: &Database,
    batch: &mut [Box<dyn Job>],
    durability: Durability,
    stats: &WriterStats,
) -> Result<(), StoreError> {
    let mut tx = db.begin_write()?;
    tx.set_durability(durability)
        .map_err(|e| StoreError::Corrupt(format!("set durability: {e}")))?;
    for job in batch.iter_mut() {
        if let Err(e) = job.apply(&tx) {
            tracing::error!(error = %e, batch = batch.len(), "store write failed; batch aborted");
            // Dropping the transaction aborts it.
            drop(tx);
            return Err(e);
        }
    }
    let started = Instant::now();
    tx.commit().map_err(|e| StoreError::Commit(e.to_string()))?;
    let micros = started.elapsed().as_micros() as u64;
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
    stats
        .max_batch
        .fetch_max(batch.len() as u64, Ordering::Relaxed);
    stats.commit_micros.fetch_add(micros, Ordering::Relaxed);
    let m = crate::metrics::metrics();
    m.commit_seconds.observe(micros as f64 / 1e6);
    m.commit_batch.observe(batch.len() as f64);
    if started.elapsed() > Duration::from_secs(1) {
        tracing::warn!(micros, batch = batch.len(), "slow store commit");
    }
    Ok(())
}

fn finish_all(batch: Vec<Box<dyn Job>>, outcome: &Result<(), StoreError>) {
    for job in batch {
        job.finish(outcome.clone());
    }
}
