//! The single writer: every write to the store goes through one thread that drains a
//! bounded queue of write jobs, applies as many as are waiting in one redb transaction,
//! commits once (group commit), and only then answers each job. A caller is therefore
//! answered only after the commit (and, with `Durability::Immediate`, the fsync) that
//! covers its write.
//!
//! A job must not write anything when it decides to fail for a business reason (it returns
//! `Ok(Err(..))` after reads only); a storage error aborts the whole batch.
//!
//! # Failure and recovery
//! A fatal error ([`StoreError::is_fatal`]: a commit error, or a storage I/O error raised
//! anywhere in the batch, e.g. redb flushing or reading pages during an insert) fails the
//! writer: the batch is rolled back and answered with the error, and nothing is accepted
//! until the database has been reopened, because redb refuses a database after an I/O
//! error (`PreviousIo`) and an fsync that failed cannot be retried safely. The writer then
//! recovers by itself: it takes the database out of the [`DbCell`] (so reads are refused
//! too), waits for the last handle to it to go (redb holds a file lock), drops it, waits
//! until the filesystem has room (`core.reopen_min_free_mib`, polled every [`ROOM_POLL`]),
//! and reopens the file, retrying a failed open on a backoff capped at [`REOPEN_MAX`].
//! Reopening runs redb's crash recovery: every transaction committed before the failure is
//! there, the failed one is not. Jobs that arrive meanwhile are refused with
//! [`StoreError::Poisoned`] at once. A reader's I/O error makes the store probe the writer
//! ([`Writer::probe`]), so a failure seen only by reads is handled the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::{mpsc, oneshot, watch};

use super::StoreError;
use crate::backend::WriterStats;

/// First pause before reopening a failed store; doubled after each failed attempt.
const REOPEN_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between two attempts to reopen a failed store.
const REOPEN_MAX: Duration = Duration::from_secs(5);
/// How often the writer refuses waiting jobs and checks for shutdown while recovering.
const RECOVERY_TICK: Duration = Duration::from_millis(20);
/// How often a failed store checks for free space before reopening.
const ROOM_POLL: Duration = Duration::from_millis(200);

/// Opens the database file (with the store's options and schema migration), for reopening.
pub(crate) type Opener = Box<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

/// Says whether there is room to reopen the store (free space on its filesystem); the
/// error says what there is.
pub(crate) type RoomCheck = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The open database, shared by the writer and the readers, and swapped by the writer when
/// it reopens the store after a failure.
pub(crate) struct DbCell {
    db: RwLock<Option<Arc<Database>>>,
    open: Opener,
    room: RoomCheck,
    failed: AtomicBool,
    reason: Mutex<Option<String>>,
    reopened: watch::Sender<u64>,
}

impl DbCell {
    pub(crate) fn new(db: Database, open: Opener, room: RoomCheck) -> Self {
        DbCell {
            db: RwLock::new(Some(Arc::new(db))),
            open,
            room,
            failed: AtomicBool::new(false),
            reason: Mutex::new(None),
            reopened: watch::channel(0).0,
        }
    }

    /// The database, or [`StoreError::Poisoned`] while it is failed and being reopened.
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        let slot = match self.db.read() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        slot.clone().ok_or(StoreError::Poisoned)
    }

    /// True from a fatal error until the store is reopened.
    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Why the store failed (the storage error's text: codes and OS messages, no data).
    pub(crate) fn reason(&self) -> Option<String> {
        match self.reason.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Counts reopenings; changes each time the writer has reopened the store.
    pub(crate) fn reopened(&self) -> watch::Receiver<u64> {
        self.reopened.subscribe()
    }

    /// Marks the store failed and takes the database out (so that reads are refused too);
    /// returns it, for the writer to drop once no reader holds it.
    fn fail(&self, error: &StoreError) -> Option<Arc<Database>> {
        match self.reason.lock() {
            Ok(mut r) => *r = Some(error.to_string()),
            Err(poisoned) => *poisoned.into_inner() = Some(error.to_string()),
        }
        self.failed.store(true, Ordering::Release);
        match self.db.write() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    fn install(&self, db: Database) {
        match self.db.write() {
            Ok(mut slot) => *slot = Some(Arc::new(db)),
            Err(poisoned) => *poisoned.into_inner() = Some(Arc::new(db)),
        }
        if let Ok(mut r) = self.reason.lock() {
            *r = None;
        }
        self.failed.store(false, Ordering::Release);
        self.reopened.send_modify(|n| *n += 1);
    }
}

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

/// Handle to the writer thread. Cloning shares the same thread.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Box<dyn Job>>,
    cell: Arc<DbCell>,
    stats: Arc<WriterStats>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("queued", &(self.tx.max_capacity() - self.tx.capacity()))
            .field("failed", &self.cell.is_failed())
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
    /// Commit in two phases (redb's recommendation when values are attacker-controlled).
    pub(crate) two_phase_commit: bool,
}

impl Writer {
    /// Starts the writer thread over the database in `cell`. The thread ends when every
    /// `Writer` handle is dropped and the queue is drained.
    pub(crate) fn start(cell: Arc<DbCell>, settings: WriterSettings) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let stats = Arc::new(WriterStats::default());
        let thread_cell = cell.clone();
        let thread_stats = stats.clone();
        let handle = std::thread::Builder::new()
            .name("nems-store-writer".into())
            .spawn(move || run(&thread_cell, rx, settings, &thread_stats))
            // Thread creation fails only when the OS is out of resources at start-up.
            .expect("spawn the store writer thread");
        (Writer { tx, cell, stats }, handle)
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

    /// Asks the writer to check the database after a reader met a storage I/O error: an
    /// empty write job, whose own I/O error (redb refuses a database after one) fails the
    /// writer like any other. Never waits; a full queue means the writer will see it soon.
    pub(crate) fn probe(&self) {
        let (job, _reply) = Self::job(|_tx| Ok(()));
        let _ = self.tx.try_send(job);
    }

    /// Jobs waiting in the queue.
    pub(crate) fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Returns the writer's statistics.
    pub(crate) fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// True from a fatal storage error until the writer has reopened the store.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.cell.is_failed()
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
    cell: &DbCell,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    settings: WriterSettings,
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
        let outcome = match cell.get() {
            Ok(db) => apply_and_commit(&db, &mut batch, &settings, stats),
            Err(e) => Err(e),
        };
        // Failed before anyone is answered: from here reads and writes are refused.
        let failed = match &outcome {
            Err(e) if e.is_fatal() => {
                tracing::error!(
                    error = %e,
                    batch = batch.len(),
                    "store failed; refusing writes and reads until it is reopened"
                );
                Some(cell.fail(e))
            }
            _ => None,
        };
        finish_all(batch, &outcome);
        if let Some(old) = failed
            && !recover(cell, old, &mut rx, stats)
        {
            return;
        }
    }
}

/// Reopens a failed store: refuses waiting jobs, waits for the last handle to the failed
/// database, then reopens on a capped backoff. Returns `false` when the queue closed
/// (shutdown) before the store could be reopened.
fn recover(
    cell: &DbCell,
    mut old: Option<Arc<Database>>,
    rx: &mut mpsc::Receiver<Box<dyn Job>>,
    stats: &WriterStats,
) -> bool {
    let started = Instant::now();
    let mut pause = REOPEN_FIRST;
    let mut next_attempt = Instant::now() + pause;
    let mut attempts = 0u32;
    let mut waiting_for_room = false;
    loop {
        loop {
            match rx.try_recv() {
                Ok(job) => job.finish(Err(StoreError::Poisoned)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        // redb holds the file (and its lock) until every handle is gone; readers hold one
        // only for the length of a read.
        if let Some(db) = old.take() {
            match Arc::try_unwrap(db) {
                Ok(db) => drop(db),
                Err(db) => old = Some(db),
            }
        }
        let now = Instant::now();
        if old.is_none() && now >= next_attempt {
            // Reopening on a full disk would only fail again (or accept a few writes into
            // pages the file already has, then fail): wait for room first.
            if let Err(why) = (cell.room)() {
                if !waiting_for_room {
                    tracing::warn!(reason = %why, "store not reopened yet: no room");
                    waiting_for_room = true;
                }
                next_attempt = now + ROOM_POLL;
                continue;
            }
            waiting_for_room = false;
            attempts += 1;
            match (cell.open)() {
                Ok(db) => {
                    cell.install(db);
                    stats.reopens.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        attempts,
                        millis = started.elapsed().as_millis() as u64,
                        "store reopened after a storage failure; accepting writes again"
                    );
                    return true;
                }
                Err(e) => {
                    if attempts == 1 || pause == REOPEN_MAX {
                        tracing::warn!(error = %e, attempts, "store not reopened yet; retrying");
                    }
                    pause = (pause * 2).min(REOPEN_MAX);
                    next_attempt = Instant::now() + pause;
                }
            }
        }
        let wait = next_attempt.saturating_duration_since(Instant::now());
        #[allow(
            clippy::disallowed_methods,
            reason = "the writer's own thread, not a runtime thread"
        )]
        std::thread::sleep(wait.clamp(Duration::from_millis(1), RECOVERY_TICK));
    }
}

fn apply_and_commit(
    db: &Database,
    batch: &mut [Box<dyn Job>],
    settings: &WriterSettings,
    stats: &WriterStats,
) -> Result<(), StoreError> {
    let mut tx = db.begin_write()?;
    tx.set_durability(settings.durability)
        .map_err(|e| StoreError::Corrupt(format!("set durability: {e}")))?;
    tx.set_two_phase_commit(settings.two_phase_commit);
    for job in batch.iter_mut() {
        if let Err(e) = job.apply(&tx) {
            tracing::error!(error = %e, batch = batch.len(), "store write failed; batch aborted");
            // Dropping the transaction aborts it.
            drop(tx);
            return Err(e);
        }
    }
    let started = Instant::now();
    tx.commit()?;
    let micros = started.elapsed().as_micros() as u64;
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
    stats
        .max_batch
        .fetch_max(batch.len() as u64, Ordering::Relaxed);
    stats.commit_micros.fetch_add(micros, Ordering::Relaxed);
    stats.commit_latency.observe(micros);
    stats.batch_sizes.observe(batch.len() as u64);
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

#[cfg(test)]
mod bucket_tests {
    use crate::backend::Buckets;

    #[test]
    fn observations_land_in_the_bucket_of_their_upper_bound() {
        let b = Buckets::<1>::default();
        let values = [
            0,
            1,
            2,
            3,
            4,
            5,
            1000,
            1 << 15,
            (1 << 15) + 1,
            u64::from(u32::MAX),
        ];
        for v in values {
            b.observe(v);
        }
        let (sum, count, buckets) = b.snapshot();
        assert_eq!(count, 10);
        assert_eq!(sum, values.iter().sum::<u64>());
        let at = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(1.0), 2, "0 and 1");
        assert_eq!(at(2.0), 1);
        assert_eq!(at(4.0), 2, "3 and 4 are at most 4");
        assert_eq!(at(8.0), 1);
        assert_eq!(at(16.0), 0);
        assert_eq!(at(1024.0), 1);
        assert_eq!(at(32768.0), 1);
        assert_eq!(at(f64::INFINITY), 2, "above the last bound");
    }

    #[test]
    fn a_base_scales_the_bounds() {
        let b = Buckets::<16>::default();
        for v in [1, 16, 17, 40] {
            b.observe(v);
        }
        let (_, _, buckets) = b.snapshot();
        assert_eq!(&buckets[..3], &[(16.0, 2), (32.0, 1), (64.0, 1)]);
        assert_eq!(buckets[15].0, (16u64 << 15) as f64);
    }
}
