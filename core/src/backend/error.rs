//! The one storage error of both backends.

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
    /// A read or write failed in storage for a reason other than I/O (a value too large,
    /// an unsupported operation).
    #[error("storage: {0}")]
    Storage(String),
    /// A storage I/O error (a full disk, a failed read, write or fsync), raised while a
    /// transaction runs (redb flushing or reading pages) or opening one. Fatal for the
    /// writer, like [`StoreError::Commit`]: redb refuses every later operation on that
    /// database (`PreviousIo`) until it is reopened.
    #[error("storage I/O: {0}")]
    Io(String),
    /// The commit failed; the writer is failed until the store is reopened.
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
    /// The database cannot be reached or stopped answering (PostgreSQL: connection
    /// refused or lost, a failover in progress, a standby that is read-only): retryable.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The write queue is full (shed load).
    #[error("store busy")]
    Busy,
    /// The store failed (a storage I/O or commit error) and is not reopened yet: writes
    /// and reads are refused until the writer has reopened it.
    #[error("store failed by a storage error; reopening")]
    Poisoned,
    /// The writer has stopped.
    #[error("store closed")]
    Closed,
    /// The job did not run (batch aborted by another job's storage error).
    #[error("write aborted")]
    Aborted,
    /// A reference-data import was overtaken: another import of the same set began after
    /// it (on this core or another on the same database) and took its slot.
    #[error("{0}")]
    Superseded(String),
    /// The request cannot be done as asked; the text says what the caller can change
    /// (FAILED_PRECONDITION).
    #[error("{0}")]
    Refused(String),
}

impl StoreError {
    /// True for the errors that fail the writer: a commit error, or any storage I/O error
    /// (after which redb refuses the database until it is reopened). Business-level and
    /// decoding errors are not fatal: they abort their batch only.
    pub fn is_fatal(&self) -> bool {
        matches!(self, StoreError::Io(_) | StoreError::Commit(_))
    }
}

/// The cause among the results of statements sent together (one round trip): the first
/// error that is not an engine's "the transaction is aborted" (PostgreSQL's 25P02, which
/// only says that an earlier statement of the transaction failed), else the first error.
pub(crate) fn first_cause(
    errors: impl IntoIterator<Item = Option<StoreError>>,
) -> Result<(), StoreError> {
    let mut first = None;
    for e in errors.into_iter().flatten() {
        let aborted = matches!(&e, StoreError::Storage(text) if text.ends_with("(25P02)"));
        if !aborted {
            return Err(e);
        }
        first.get_or_insert(e);
    }
    first.map_or(Ok(()), Err)
}
