//! The redb store: synchronous code over `WriteTransaction`/`ReadTransaction`, testable
//! without a runtime. Async starts in `service/`: writes go through the single
//! `writer::Writer` (group commit), short reads run inline
//! (`Store::read_inline`), long ones in `spawn_blocking`.
//!
//! # Layout
//! - `tables.rs`: every table definition (versioned names); `keys.rs`: id encodings.
//! - `writer.rs`: the single writer thread (group commit).
//! - `schema.rs`: the schema-version table and migrations.
//! - `records.rs`: the prost-encoded storage records.
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
pub(crate) mod demographics;
pub(crate) mod directory;
pub(crate) mod events;
pub(crate) mod keys;
pub(crate) mod ledger;
pub(crate) mod records;
pub(crate) mod refdata;
pub(crate) mod schema;
pub(crate) mod subscriptions;
pub(crate) mod tables;
pub(crate) mod writer;

#[cfg(test)]
mod sweep_bench;
#[cfg(test)]
mod tests;

pub use writer::WriterStats;
use writer::{Writer, WriterSettings};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "nems.redb";

/// A storage failure. Cloneable so one batch failure can answer every job in the batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// redb failed to open or create the database.
    #[error("database: {0}")]
    Database(String),
    /// A transaction could not begin.
    #[error("transaction: {0}")]
    Transaction(String),
    /// A table could not be opened.
    #[error("table: {0}")]
    Table(String),
    /// A read or write failed in storage.
    #[error("storage: {0}")]
    Storage(String),
    /// The commit failed; the writer is poisoned.
    #[error("commit: {0}")]
    Commit(String),
    /// A stored record could not be decoded, or an invariant does not hold.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The schema version on disk is not one this build understands.
    #[error("schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// Version on disk.
        found: u64,
        /// Newest version this build knows.
        supported: u64,
    },
    /// The write queue is full (shed load).
    #[error("store busy")]
    Busy,
    /// A previous commit failed; writes are refused until restart.
    #[error("store poisoned by an earlier commit failure")]
    Poisoned,
    /// The writer has stopped.
    #[error("store closed")]
    Closed,
    /// The job did not run (batch aborted by another job's storage error).
    #[error("write aborted")]
    Aborted,
}

macro_rules! from_redb {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::$variant(e.to_string())
            }
        })*
    };
}

from_redb! {
    redb::DatabaseError => Database,
    redb::TransactionError => Transaction,
    redb::TableError => Table,
    redb::StorageError => Storage,
    redb::CommitError => Commit,
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

/// How the store commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// `true`: every commit is fsynced before it is acknowledged (production).
    /// `false`: commits are not fsynced (benchmarks only: a crash may lose acknowledged work).
    pub durable: bool,
    /// Capacity of the write queue.
    pub queue: usize,
    /// Most write jobs in one transaction.
    pub max_batch: usize,
    /// Page cache size in bytes.
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durable: true,
            queue: 8192,
            max_batch: 1024,
            cache_bytes: 256 << 20,
        }
    }
}

/// The store: the database, its single writer, and read access.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
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
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(&path)?;
        schema::migrate(&db)?;
        let db = Arc::new(db);
        let settings = WriterSettings {
            queue: options.queue,
            max_batch: options.max_batch,
            durability: if options.durable {
                Durability::Immediate
            } else {
                Durability::None
            },
        };
        let (writer, handle) = Writer::start(db.clone(), settings);
        Ok(Store {
            db,
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

    /// True when a commit failed and writes are refused until restart.
    pub fn is_poisoned(&self) -> bool {
        self.writer.is_poisoned()
    }

    /// Runs a read-only closure on a fresh read transaction on a blocking thread.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read()?;
            f(&tx)
        })
        .await
        .map_err(|e| StoreError::Storage(format!("read task failed: {e}")))?
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
        let tx = self.db.begin_read()?;
        f(&tx)
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
