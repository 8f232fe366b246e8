//! The redb store: synchronous code over `WriteTransaction`/`ReadTransaction`, testable
//! without a runtime. Async starts in `service/`: writes go through the single
//! `writer::Writer` (group commit), short reads run inline
//! (`Store::read_inline`), long ones in `spawn_blocking`.
//!
//! # Layout
//! - `backend.rs`: the seam's `Backend` over the functions below.
//! - `tables.rs`: every table definition (versioned names).
//! - `writer.rs`: the single writer thread (group commit).
//! - `schema.rs`: the schema-version table and migrations.
//! - `records.rs`: the ledger's prost-encoded records.
//! - `subscriptions.rs`, `events.rs`, `ledger.rs`, `directory.rs`, `refdata.rs`,
//!   `demographics.rs`, `audit.rs`: operations per area.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{
    Database, Durability, Key, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    Table, TableDefinition, Value, WriteTransaction,
};

pub(crate) mod audit;
mod backend;
pub(crate) mod demographics;
pub(crate) mod directory;
pub(crate) mod events;
pub(crate) use crate::backend::keys;
pub(crate) mod ledger;
pub(crate) mod records;
pub(crate) mod refdata;
pub(crate) mod schema;
pub(crate) mod subscriptions;
pub(crate) mod tables;
pub(crate) mod writer;

#[cfg(test)]
mod failure_tests;
#[cfg(test)]
mod sweep_bench;
#[cfg(test)]
mod tests;

pub use crate::backend::StoreError;
pub use crate::backend::{Buckets, WriterStats};
use writer::{DbCell, Writer, WriterSettings};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "nems.redb";

/// Classifies a redb storage error: I/O (and the latched `PreviousIo` that follows one)
/// is [`StoreError::Io`]; corruption is [`StoreError::Corrupt`]; the rest `Storage`.
fn storage_error(e: redb::StorageError) -> StoreError {
    match e {
        redb::StorageError::Io(_)
        | redb::StorageError::PreviousIo
        | redb::StorageError::DatabaseClosed
        | redb::StorageError::LockPoisoned(_) => StoreError::Io(e.to_string()),
        redb::StorageError::Corrupted(_) => StoreError::Corrupt(e.to_string()),
        other => StoreError::Storage(other.to_string()),
    }
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        storage_error(e)
    }
}

impl From<redb::TableError> for StoreError {
    fn from(e: redb::TableError) -> Self {
        match e {
            redb::TableError::Storage(s) => storage_error(s),
            other => StoreError::Table(other.to_string()),
        }
    }
}

impl From<redb::TransactionError> for StoreError {
    fn from(e: redb::TransactionError) -> Self {
        match e {
            redb::TransactionError::Storage(s) => storage_error(s),
            other => StoreError::Transaction(other.to_string()),
        }
    }
}

impl From<redb::DatabaseError> for StoreError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::Storage(s) => storage_error(s),
            other => StoreError::Database(other.to_string()),
        }
    }
}

/// Any commit error fails the writer, whatever its cause.
impl From<redb::CommitError> for StoreError {
    fn from(e: redb::CommitError) -> Self {
        StoreError::Commit(e.to_string())
    }
}

impl From<prost::DecodeError> for StoreError {
    fn from(e: prost::DecodeError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// Read access common to read and write transactions, for lookups that run in either:
/// matching runs inside the acceptance write so that it sees every write ordered before
/// it (subscriptions, demographics), while the operator API reads snapshots.
pub(crate) trait Snapshot {
    /// The table handle this transaction opens.
    type Table<'t, K: Key + 'static, V: Value + 'static>: ReadableTable<K, V>
    where
        Self: 't;

    /// Opens a table for reading.
    fn table<'t, K: Key + 'static, V: Value + 'static>(
        &'t self,
        def: TableDefinition<'_, K, V>,
    ) -> Result<Self::Table<'t, K, V>, StoreError>;
}

impl Snapshot for ReadTransaction {
    type Table<'t, K: Key + 'static, V: Value + 'static> = ReadOnlyTable<K, V>;

    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'_, K, V>,
    ) -> Result<ReadOnlyTable<K, V>, StoreError> {
        Ok(self.open_table(def)?)
    }
}

impl Snapshot for WriteTransaction {
    type Table<'t, K: Key + 'static, V: Value + 'static> = Table<'t, K, V>;

    fn table<'t, K: Key + 'static, V: Value + 'static>(
        &'t self,
        def: TableDefinition<'_, K, V>,
    ) -> Result<Table<'t, K, V>, StoreError> {
        Ok(self.open_table(def)?)
    }
}

/// `Ok` when the filesystem of `dir` has at least `min_free` bytes available to us, else
/// what it has (for the log).
fn free_space(dir: &Path, min_free: u64) -> Result<(), String> {
    if min_free == 0 {
        return Ok(());
    }
    #[cfg(unix)]
    {
        let vfs = rustix::fs::statvfs(dir).map_err(|e| format!("statvfs: {e}"))?;
        let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        if free < min_free {
            return Err(format!(
                "{} MiB free on the data directory's filesystem, waiting for {} MiB",
                free >> 20,
                min_free >> 20
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// How the store commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// `true`: every commit is fsynced before it is acknowledged (production).
    /// `false`: commits are not fsynced (benchmarks only: a crash may lose acknowledged work).
    pub durable: bool,
    /// Commit in two phases (see `core.two_phase_commit`).
    pub two_phase_commit: bool,
    /// Capacity of the write queue.
    pub queue: usize,
    /// Most write jobs in one transaction.
    pub max_batch: usize,
    /// Page cache size in bytes.
    pub cache_bytes: usize,
    /// Free bytes the data directory's filesystem must have before a failed store is
    /// reopened (`0`: do not check).
    pub reopen_min_free: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durable: true,
            two_phase_commit: true,
            queue: 8192,
            max_batch: 1024,
            cache_bytes: 256 << 20,
            reopen_min_free: 64 << 20,
        }
    }
}

/// The store: the database, its single writer, and read access. The database sits in a
/// cell that the writer swaps when it reopens the store after a storage failure
/// (`writer.rs`, "Failure and recovery").
#[derive(Clone)]
pub struct Store {
    cell: Arc<DbCell>,
    writer: Writer,
    writer_thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir`, checks and migrates the
    /// schema, and starts the writer.
    pub fn open(data_dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Database(format!("create {}: {e}", data_dir.display())))?;
        let path = data_dir.join(DB_FILE);
        let open_path = path.clone();
        let open = move || -> Result<Database, StoreError> {
            Ok(Database::builder()
                .set_cache_size(options.cache_bytes)
                .create(&open_path)?)
        };
        let dir = data_dir.to_path_buf();
        let min_free = options.reopen_min_free;
        let room = move || free_space(&dir, min_free);
        Self::open_with(path, options, Box::new(open), Box::new(room))
    }

    /// Opens the store with `open` (also used to reopen it after a storage failure): opens
    /// the database, migrates the schema, starts the writer.
    pub(crate) fn open_with(
        path: PathBuf,
        options: StoreOptions,
        open: writer::Opener,
        room: writer::RoomCheck,
    ) -> Result<Self, StoreError> {
        let open: writer::Opener = Box::new(move || {
            let db = open()?;
            schema::migrate(&db)?;
            Ok(db)
        });
        let db = open()?;
        let cell = Arc::new(DbCell::new(db, open, room));
        let settings = WriterSettings {
            queue: options.queue,
            max_batch: options.max_batch,
            durability: if options.durable {
                Durability::Immediate
            } else {
                Durability::None
            },
            two_phase_commit: options.two_phase_commit,
        };
        let (writer, handle) = Writer::start(cell.clone(), settings);
        Ok(Store {
            cell,
            writer,
            writer_thread: Arc::new(std::sync::Mutex::new(Some(handle))),
            path,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Writer statistics (commits, batch sizes, commit time).
    pub fn writer_stats(&self) -> &Arc<WriterStats> {
        self.writer.stats()
    }

    /// Jobs waiting for the writer.
    pub fn writer_queue(&self) -> usize {
        self.writer.queued()
    }

    /// True from a fatal storage error (an I/O or commit error) until the writer has
    /// reopened the store; writes and reads are refused meanwhile.
    pub fn is_poisoned(&self) -> bool {
        self.writer.is_poisoned()
    }

    /// Why the store is failed (the storage error's text), while it is.
    pub fn failure(&self) -> Option<String> {
        self.cell.reason()
    }

    /// Changes each time the writer has reopened the store after a failure, so that state
    /// cached outside the store (delivery queue heads, counts) can be reloaded.
    pub fn reopened(&self) -> tokio::sync::watch::Receiver<u64> {
        self.cell.reopened()
    }

    /// Runs a read-only closure on a fresh read transaction on a blocking thread.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.cell.get()?;
        let result = tokio::task::spawn_blocking(move || {
            let tx = db.begin_read()?;
            f(&tx)
        })
        .await
        .map_err(|e| StoreError::Storage(format!("read task failed: {e}")))?;
        self.checked(result)
    }

    /// A reader's storage I/O error is the writer's too: it fails the store (readiness,
    /// recovery) without waiting for the next write to meet it.
    fn checked<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result
            && e.is_fatal()
        {
            self.writer.probe();
        }
        result
    }

    /// Runs a short read-only closure (point lookups, index reads) on the calling task.
    /// redb reads do not lock and mostly hit the page cache; a hand-off to a blocking
    /// thread would cost more than the read. Long reads (listings, scans) use [`Store::read`].
    pub(crate) fn read_inline<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.read_now(f)
    }

    /// Runs a read-only closure synchronously (for start-up and tests).
    pub(crate) fn read_now<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = self
            .cell
            .get()
            .and_then(|db| Ok(db.begin_read()?))
            .and_then(|tx| f(&tx));
        self.checked(result)
    }

    /// Stops the writer after the queued jobs and waits for it. Other clones of the store
    /// must be dropped first for the queue to close; this waits for that.
    pub fn close(self) {
        let handle = self.writer_thread.lock().ok().and_then(|mut h| h.take());
        drop(self.writer);
        if let Some(handle) = handle {
            // The writer thread exits when the last sender is dropped.
            let _ = handle.join();
        }
    }
}
