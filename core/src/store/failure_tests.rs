//! Storage failures: a redb backend that fails on command (as a full disk does) shows that
//! an I/O error, raised inside a transaction (the file growing during an insert) or at
//! commit (writing the pages out), fails the writer; that reads and writes are refused
//! with [`StoreError::Poisoned`] meanwhile; that a business error aborts only its batch;
//! and that the writer reopens the store by itself once the fault clears, with every
//! committed write still there and the failed one absent.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redb::backends::InMemoryBackend;
use redb::{Database, StorageBackend, TableDefinition};

use super::{Store, StoreError, StoreOptions};

const T: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("failure-test");

/// Which backend operations fail (with `ENOSPC`).
#[derive(Debug, Default)]
struct Faults {
    /// Writes of pages.
    write: AtomicBool,
    /// Growing the file.
    grow: AtomicBool,
    /// Reads.
    read: AtomicBool,
    /// Times the database was opened.
    opens: AtomicUsize,
    /// The room check says the filesystem is full.
    no_room: AtomicBool,
}

/// An in-memory "file" that outlives each `Database` (so a reopen sees what was written)
/// and fails operations on command.
#[derive(Debug)]
struct FaultyBackend {
    file: Arc<InMemoryBackend>,
    faults: Arc<Faults>,
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(28)
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        if self.faults.read.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        if self.faults.grow.load(Ordering::SeqCst) && len > self.file.len()? {
            return Err(enospc());
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        if self.faults.write.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.file.write(offset, data)
    }
}

fn faulty_store() -> (Store, Arc<Faults>) {
    faulty_store_with_cache(1 << 20)
}

fn faulty_store_with_cache(cache: usize) -> (Store, Arc<Faults>) {
    let file = Arc::new(InMemoryBackend::new());
    let faults = Arc::new(Faults::default());
    let (f, b) = (file.clone(), faults.clone());
    let open = move || -> Result<Database, StoreError> {
        b.opens.fetch_add(1, Ordering::SeqCst);
        let backend = FaultyBackend {
            file: f.clone(),
            faults: b.clone(),
        };
        Ok(Database::builder()
            .set_cache_size(cache)
            .create_with_backend(backend)?)
    };
    let r = faults.clone();
    let room = move || -> Result<(), String> {
        if r.no_room.load(Ordering::SeqCst) {
            return Err("no room".into());
        }
        Ok(())
    };
    let store = Store::open_with(
        "mem.redb".into(),
        StoreOptions::default(),
        Box::new(open),
        Box::new(room),
    )
    .expect("store opens");
    (store, faults)
}

async fn put(store: &Store, key: u64, len: usize) -> Result<(), StoreError> {
    store
        .writer()
        .write(move |tx| {
            tx.open_table(T)?.insert(key, vec![7u8; len].as_slice())?;
            Ok(())
        })
        .await
}

fn get(store: &Store, key: u64) -> Result<Option<usize>, StoreError> {
    store.read_now(|tx| {
        let table = match tx.open_table(T) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(table.get(key)?.map(|v| v.value().len()))
    })
}

/// Waits (bounded) until the writer has reopened the store.
async fn wait_reopened(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut reopened = store.reopened();
    while store.is_poisoned() {
        assert!(Instant::now() < deadline, "the store did not reopen");
        let _ = tokio::time::timeout(Duration::from_millis(100), reopened.changed()).await;
    }
}

#[tokio::test]
async fn an_io_error_at_commit_fails_the_writer_until_it_reopens_by_itself() {
    let (store, faults) = faulty_store();
    put(&store, 1, 100).await.expect("a write before the fault");
    assert!(!store.is_poisoned());

    faults.write.store(true, Ordering::SeqCst);
    let failed = put(&store, 2, 100)
        .await
        .expect_err("the commit cannot write");
    assert!(failed.is_fatal(), "{failed:?}");
    assert!(store.is_poisoned());
    let reason = store.failure().expect("a reason while failed");
    assert!(reason.contains("No space left"), "{reason}");
    // Refused at once while failed: writes and reads.
    assert!(matches!(
        put(&store, 3, 100).await,
        Err(StoreError::Poisoned)
    ));
    assert!(matches!(get(&store, 1), Err(StoreError::Poisoned)));

    faults.write.store(false, Ordering::SeqCst);
    wait_reopened(&store).await;
    assert!(store.failure().is_none());
    assert_eq!(get(&store, 1).unwrap(), Some(100), "committed write kept");
    assert_eq!(
        get(&store, 2).unwrap(),
        None,
        "the failed write was rolled back"
    );
    put(&store, 3, 100).await.expect("writes accepted again");
    assert_eq!(get(&store, 3).unwrap(), Some(100));
    store.close();
}

#[tokio::test]
async fn an_io_error_inside_the_transaction_is_as_fatal_as_one_at_commit() {
    let (store, faults) = faulty_store();
    put(&store, 1, 100).await.expect("a write before the fault");

    // A value larger than the file makes redb grow it during the insert, inside the job.
    faults.grow.store(true, Ordering::SeqCst);
    let raised_inside = Arc::new(AtomicBool::new(false));
    let seen = raised_inside.clone();
    let failed = store
        .writer()
        .write(move |tx| {
            let r = tx
                .open_table(T)?
                .insert(2, vec![7u8; 8 << 20].as_slice())
                .map(|_| ());
            seen.store(r.is_err(), Ordering::SeqCst);
            Ok(r?)
        })
        .await
        .expect_err("the file cannot grow");
    assert!(raised_inside.load(Ordering::SeqCst), "raised by the insert");
    assert!(matches!(failed, StoreError::Io(_)), "{failed:?}");
    assert!(
        store.is_poisoned(),
        "an in-transaction I/O error fails the writer"
    );
    assert!(matches!(
        put(&store, 3, 10).await,
        Err(StoreError::Poisoned)
    ));

    faults.grow.store(false, Ordering::SeqCst);
    wait_reopened(&store).await;
    assert_eq!(get(&store, 1).unwrap(), Some(100));
    assert_eq!(get(&store, 2).unwrap(), None);
    put(&store, 2, 8 << 20).await.expect("room again");
    store.close();
}

#[tokio::test]
async fn a_business_error_aborts_its_batch_only() {
    let (store, _faults) = faulty_store();
    let refused = store
        .writer()
        .write(|_tx| -> Result<(), StoreError> { Err(StoreError::Corrupt("test".into())) })
        .await
        .expect_err("the job fails");
    assert!(matches!(refused, StoreError::Corrupt(_)));
    assert!(!refused.is_fatal());
    assert!(!store.is_poisoned());
    put(&store, 1, 10).await.expect("the writer goes on");
    store.close();
}

#[tokio::test]
async fn a_store_that_cannot_reopen_yet_keeps_refusing_and_retries() {
    let (store, faults) = faulty_store();
    put(&store, 1, 100).await.unwrap();
    faults.write.store(true, Ordering::SeqCst);
    put(&store, 2, 100)
        .await
        .expect_err("the commit cannot write");
    // While the fault stays, reopening fails (redb's recovery writes) and is retried on a
    // backoff; the store stays failed and refuses at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while faults.opens.load(Ordering::SeqCst) < 4 {
        assert!(Instant::now() < deadline, "no retried reopening");
        assert!(store.is_poisoned(), "reopened on a full disk");
        assert!(matches!(
            put(&store, 3, 100).await,
            Err(StoreError::Poisoned)
        ));
        let mut reopened = store.reopened();
        let _ = tokio::time::timeout(Duration::from_millis(50), reopened.changed()).await;
    }
    assert!(store.is_poisoned());
    faults.write.store(false, Ordering::SeqCst);
    wait_reopened(&store).await;
    assert_eq!(get(&store, 1).unwrap(), Some(100));
    assert_eq!(get(&store, 2).unwrap(), None);
    put(&store, 3, 100).await.expect("accepted again");
    store.close();
}

#[tokio::test]
async fn a_failed_store_waits_for_room_before_reopening() {
    let (store, faults) = faulty_store();
    faults.no_room.store(true, Ordering::SeqCst);
    faults.write.store(true, Ordering::SeqCst);
    put(&store, 1, 100)
        .await
        .expect_err("the commit cannot write");
    faults.write.store(false, Ordering::SeqCst);
    // The backend would open now, but the room check says no: not even tried.
    let mut reopened = store.reopened();
    let waited = tokio::time::timeout(Duration::from_millis(600), reopened.changed()).await;
    assert!(waited.is_err(), "reopened without room");
    assert!(store.is_poisoned());
    assert_eq!(
        faults.opens.load(Ordering::SeqCst),
        1,
        "only the first open"
    );
    faults.no_room.store(false, Ordering::SeqCst);
    wait_reopened(&store).await;
    assert_eq!(faults.opens.load(Ordering::SeqCst), 2);
    put(&store, 1, 100).await.expect("accepted again");
    store.close();
}

#[tokio::test]
async fn a_readers_io_error_fails_the_writer_too() {
    // No page cache: every read goes to the backend.
    let (store, faults) = faulty_store_with_cache(0);
    put(&store, 1, 100).await.unwrap();
    faults.read.store(true, Ordering::SeqCst);
    let failed = get(&store, 1).expect_err("the read fails");
    assert!(failed.is_fatal(), "{failed:?}");
    // No write needed for the store to fail and show it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.is_poisoned() {
        assert!(Instant::now() < deadline, "the writer did not fail");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(matches!(
        put(&store, 2, 10).await,
        Err(StoreError::Poisoned)
    ));
    faults.read.store(false, Ordering::SeqCst);
    wait_reopened(&store).await;
    assert_eq!(get(&store, 1).unwrap(), Some(100));
    store.close();
}
