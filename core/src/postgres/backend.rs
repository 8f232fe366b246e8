//! [`PgBackend`]: the seam's `Backend` on PostgreSQL. Every method is one transaction on
//! a pooled connection, committed with `synchronous_commit` on (unless `core.durable` is
//! false), so a caller is answered only after PostgreSQL's commit returned.
//!
//! # What orders an acceptance against subscription creates
//! Transactions run at READ COMMITTED: each statement sees what was committed before it
//! began. An acceptance takes, before its first matching statement, the exclusive
//! `ORDER_LOCK` for an instant and reads the database clock while holding it: that is
//! its acceptance time. A create holds the same lock shared from before it reads the
//! database clock for its `created_ms` until its commit ends. So a subscription stamped
//! at or before an event's acceptance time finished committing before the event's
//! matching statements began, and they see it; one stamped after is filtered out by its
//! creation time even if visible. Matching therefore sees exactly the subscriptions
//! created before the event's acceptance time, as on redb, whichever cores ran them. One
//! clock (the database's) stamps both, so the cores' clocks do not matter.
//!
//! Acceptances of one patient take an advisory lock on the NHS number for their whole
//! transaction: the second sees the first's demographics, as in redb's single writer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use nems_proto::v1 as pb;

use super::error::{pg, pool};
use super::view::{Pg, ref_meta, stored_patient};
use super::{Db, audit, ledger, refdata, subscriptions};
use crate::accept::{Write, Written};
use crate::backend::{
    Allowed, AuditFilter, Backend, Budget, Completed, Created, DirectoryChange, Finished, Gauges,
    Leased, ListFilter, Outcome, Query, Redriven, RefdataFinish, ReplaySelection, Replayed,
    Retention, Rows, SET_NAMES, Selection, StoreError, StoredSubscription, Swept, Totals, Wake,
    WakeSink, WriterStats, import_outcome,
};
use crate::domain::patient::DemographicUpdate;
use crate::matching::{self, MailboxMatch};

/// How often the health task checks the database and refreshes the scraped gauges.
const HEALTH_TICK: Duration = Duration::from_secs(1);
/// How often the queue heads are read for other cores' deliveries, whatever `NOTIFY`
/// said (a missed notification is found by then).
const QUEUE_POLL: Duration = Duration::from_secs(2);
/// The channel acceptances and redrives notify: `at<TAB>mailbox<TAB>mailbox…`.
const CHANNEL: &str = "nems_queue";

/// The PostgreSQL engine.
pub(crate) struct PgBackend {
    pool: Pool,
    config: tokio_postgres::Config,
    /// The connector of every connection (see `tls.rs`).
    tls: super::tls::Tls,
    /// This core's name on the leases it hands out (stable across its restarts).
    instance: String,
    /// The server's `max_connections` times the most creates in one group: no more creates
    /// than this are in flight at once (the quota's bound, see `subscriptions.rs`; the
    /// committers hold their copy).
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the quota test"))]
    pub(super) slack: u64,
    /// Queue notes for other cores, sent after the commit by the notifier task.
    notes: tokio::sync::mpsc::UnboundedSender<(u64, Vec<String>)>,
    /// Acceptances waiting for a committer (`group.rs`); full, publishes are shed.
    jobs: tokio::sync::mpsc::Sender<super::group::Job>,
    /// Subscription creates waiting for a committer.
    creates: tokio::sync::mpsc::Sender<super::group::CreateJob>,
    stats: Arc<WriterStats>,
    state: Arc<Health>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// What the health task keeps.
#[derive(Default)]
struct Health {
    failure: Mutex<Option<String>>,
    gauges: Mutex<Gauges>,
    reopened: tokio::sync::watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// This host's name (for lease ownership).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl PgBackend {
    /// Connects to `url`, migrates the schema (or refuses a newer one) and starts the
    /// health task. `identity` names this core on its leases (its listen address); more
    /// than `max_waiting` acceptances waiting for a commit shed publishes.
    pub(crate) async fn open(
        url: &str,
        pool_size: usize,
        durable: bool,
        max_waiting: usize,
        identity: &str,
        tls: Option<&nems_runtime::tls::ClientTls>,
    ) -> Result<PgBackend, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            StoreError::Database("core.database_url is not a PostgreSQL URL".into())
        })?;
        config.application_name("nems-core");
        let tls = super::tls::Tls::for_url(&mut config, tls).map_err(StoreError::Database)?;
        if !durable {
            config.options("-c synchronous_commit=off");
        }
        let (mut client, connection) = config.connect(tls.clone()).await.map_err(pg)?;
        let conn_task = tokio::spawn(async move {
            let _ = connection.await;
        });
        let migrated = super::migrate(&mut client).await.map_err(|e| match e {
            super::SchemaError::Database(e) => pg(e),
            other => StoreError::Database(other.to_string()),
        })?;
        // At most max_connections transactions, each of at most one group of creates.
        let slack: u64 = client
            .query_one("SELECT current_setting('max_connections')::bigint", &[])
            .await
            .map_err(pg)?
            .get::<_, i64>(0)
            .max(1) as u64
            * super::group::MAX_BATCH as u64;
        drop(client);
        let _ = conn_task.await;
        tracing::info!(schema = migrated.version, applied = ?migrated.applied, tls = tls.enabled(), "PostgreSQL schema checked");
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Database(format!("connection pool: {e}")))?;
        let state = Arc::new(Health::default());
        let (notes, queued) = tokio::sync::mpsc::unbounded_channel();
        let notifier = tokio::spawn(notify_loop(pool.clone(), queued));
        let stats = Arc::new(WriterStats::default());
        // An eighth of the pool commits acceptances, in groups (`group.rs`), and as many
        // commit creates; the rest serves leases and reads. Fewer committers make larger
        // groups: with a pool of 32, 4 committers published 16 to 23 % faster than 8, with
        // a lower p99, in four alternating pairs of runs (issue 13 closing note).
        let (jobs, waiting) = tokio::sync::mpsc::channel(max_waiting.max(1));
        let (creates, creates_waiting) = tokio::sync::mpsc::channel(max_waiting.max(1));
        let committer = super::group::Committer {
            pool: pool.clone(),
            notes: notes.clone(),
            stats: stats.clone(),
            jobs: Arc::new(tokio::sync::Mutex::new(waiting)),
            creates: Arc::new(tokio::sync::Mutex::new(creates_waiting)),
            slack,
        };
        let committers: Vec<_> = (0..(pool_size / 8).max(1))
            .flat_map(|_| {
                [
                    tokio::spawn(super::group::commit_loop(committer.clone())),
                    tokio::spawn(super::group::create_loop(committer.clone())),
                ]
            })
            .collect();
        let backend = PgBackend {
            pool: pool.clone(),
            config,
            tls,
            instance: format!("{}/{identity}", hostname()),
            slack,
            notes,
            jobs,
            creates,
            stats,
            state: state.clone(),
            tasks: Mutex::new(Vec::new()),
        };
        refresh(&pool, &state).await;
        let task = tokio::spawn(health_loop(pool, Arc::downgrade(&state)));
        lock(&backend.tasks).extend([task, notifier]);
        lock(&backend.tasks).extend(committers);
        Ok(backend)
    }

    /// Subscription creates waiting for a committer (tests of the group commit).
    #[cfg(test)]
    pub(crate) fn creates_waiting(&self) -> usize {
        self.creates.max_capacity() - self.creates.capacity()
    }

    /// The most acceptances or creates one commit has held (tests of the group commit).
    #[cfg(test)]
    pub(crate) fn largest_group(&self) -> u64 {
        self.stats
            .max_batch
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Rows of the events counter (tests of the fold).
    #[cfg(test)]
    pub(crate) async fn counter_rows(&self) -> u64 {
        let c = self.conn().await.unwrap();
        let n: i64 = c
            .fetch_one("SELECT count(*) FROM nems_counters", &[])
            .await
            .unwrap()
            .get(0);
        n as u64
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool)
    }
}

/// A read-only transaction on one snapshot, for a read of several statements that must
/// agree with each other (under READ COMMITTED each statement would see its own: a
/// delivery settled between two of them would show as delivered beside its event's
/// payload still held).
async fn snapshot(
    conn: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    conn.build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg)
}

/// Reads what the metrics endpoint scrapes and checks the database; a failure is kept
/// for readiness, and its end counts as a reopening (cores reload their caches).
async fn refresh(pool: &Pool, health: &Health) {
    let read = async {
        let c = pool.get().await.map_err(pool_error)?;
        let mailboxes = ledger::stats(&c, "").await?;
        let mut refdata = Vec::with_capacity(SET_NAMES.len());
        for set in 0..SET_NAMES.len() {
            refdata.push(ref_meta(&c, set).await?);
        }
        Ok::<_, StoreError>(Gauges { mailboxes, refdata })
    };
    match read.await {
        Ok(gauges) => {
            *lock(&health.gauges) = gauges;
            let was_failed = lock(&health.failure).take().is_some();
            if was_failed {
                tracing::info!("the database answers again");
                health.reopened.send_modify(|n| *n += 1);
            }
        }
        Err(e) => {
            let mut failure = lock(&health.failure);
            if failure.is_none() {
                tracing::error!(error = %e, "the database does not answer");
            }
            *failure = Some(e.to_string());
        }
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    pool(e)
}

async fn health_loop(pool: Pool, health: std::sync::Weak<Health>) {
    loop {
        tokio::time::sleep(HEALTH_TICK).await;
        let Some(health) = health.upgrade() else {
            return;
        };
        refresh(&pool, &health).await;
    }
}

/// Tells `sink` of a notification's mailboxes.
fn wake(sink: &WakeSink, payload: &str) {
    for line in payload.lines() {
        let mut parts = line.split('\t');
        let Some(at) = parts.next().and_then(|t| t.parse::<u64>().ok()) else {
            continue;
        };
        for mailbox in parts.filter(|m| !m.is_empty()) {
            sink(Wake::Available(mailbox, at));
        }
    }
}

/// The longest notification payload sent (PostgreSQL refuses 8000 bytes and more).
const NOTE_BYTES: usize = 7900;

/// Lines `at<TAB>mailbox…` for `notes`, in payloads of at most [`NOTE_BYTES`].
fn payloads(notes: &[(u64, Vec<String>)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut payload = String::new();
    for (at, mailboxes) in notes {
        let head = at.to_string();
        let mut line = head.clone();
        for mailbox in mailboxes {
            if line.len() + 1 + mailbox.len() + 1 + payload.len() > NOTE_BYTES {
                if line.len() > head.len() {
                    if !payload.is_empty() {
                        payload.push('\n');
                    }
                    payload.push_str(&line);
                }
                if !payload.is_empty() {
                    out.push(std::mem::take(&mut payload));
                }
                line.clone_from(&head);
            }
            line.push('\t');
            line.push_str(mailbox);
        }
        if line.len() > head.len() {
            if !payload.is_empty() {
                payload.push('\n');
            }
            payload.push_str(&line);
        }
    }
    if !payload.is_empty() {
        out.push(payload);
    }
    out
}

/// Sends queue notes to other cores, after the commits that wrote them and outside their
/// transactions (a `NOTIFY` in a transaction serialises every commit that makes one on one
/// server-wide lock, write-ahead log flush included); notes waiting together go in one
/// notification. A note lost to a crash or a failed send is found by the next queue poll.
async fn notify_loop(
    pool: Pool,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<(u64, Vec<String>)>,
) {
    let mut notes = Vec::new();
    while queued.recv_many(&mut notes, 256).await > 0 {
        let sent = async {
            let c = pool.get().await.map_err(pool_error)?;
            for payload in payloads(&notes) {
                c.run("SELECT pg_notify('nems_queue', $1)", &[&payload])
                    .await
                    .map_err(pg)?;
            }
            Ok::<_, StoreError>(())
        };
        if let Err(e) = sent.await {
            tracing::debug!(error = %e, "queue notification not sent; the poll will find it");
        }
        notes.clear();
    }
}

/// Listens on `CHANNEL` on a connection of its own, reconnecting after a failure.
async fn listen_loop(config: tokio_postgres::Config, tls: super::tls::Tls, sink: WakeSink) {
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    loop {
                        let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
                        match message {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                                if tx.send(n.payload().to_string()).is_err() {
                                    return;
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => return,
                        }
                    }
                });
                if client
                    .batch_execute(&format!("LISTEN {CHANNEL}"))
                    .await
                    .is_ok()
                {
                    while let Some(payload) = rx.recv().await {
                        wake(&sink, &payload);
                    }
                }
                driver.abort();
                tracing::warn!("the queue notification connection closed; reconnecting");
            }
            Err(e) => {
                tracing::warn!(error = %pg(e), "cannot listen for queue notifications; retrying");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads the queue heads every `QUEUE_POLL` (the fallback for missed notifications).
async fn poll_loop(pool: Pool, sink: WakeSink) {
    loop {
        tokio::time::sleep(QUEUE_POLL).await;
        let heads = async {
            let c = pool.get().await.map_err(pool_error)?;
            ledger::queue(&c).await
        };
        if let Ok((heads, pending)) = heads.await {
            for (mailbox, at) in &heads {
                sink(Wake::Available(mailbox, *at));
            }
            sink(Wake::Pending(pending));
        }
    }
}

#[tonic::async_trait]
impl Backend for PgBackend {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn failure(&self) -> Option<String> {
        lock(&self.state.failure).clone()
    }

    fn reopened(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.reopened.subscribe()
    }

    fn write_queue(&self) -> usize {
        // Acceptances waiting for a committer (`group.rs`); the queue's capacity is
        // `core.write_queue`, beyond which publishes are shed.
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    fn writer_stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    fn gauges(&self) -> Gauges {
        lock(&self.state.gauges).clone()
    }

    fn wake_ups(&self, sink: WakeSink) {
        let listen = tokio::spawn(listen_loop(
            self.config.clone(),
            self.tls.clone(),
            sink.clone(),
        ));
        let poll = tokio::spawn(poll_loop(self.pool.clone(), sink));
        lock(&self.tasks).extend([listen, poll]);
    }

    fn closer(self: Arc<Self>) -> Option<Box<dyn FnOnce() + Send>> {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.pool.close();
        None
    }

    async fn accept(&self, write: Write, shed: bool) -> Result<Written, StoreError> {
        // Committed in a group with the acceptances waiting beside it (`group.rs`).
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = super::group::Job {
            write,
            started: Instant::now(),
            reply,
        };
        let closed = || StoreError::Unavailable("core is shutting down".into());
        if shed {
            self.jobs.try_send(job).map_err(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => StoreError::Busy,
                tokio::sync::mpsc::error::TrySendError::Closed(_) => closed(),
            })?;
        } else {
            self.jobs.send(job).await.map_err(|_| closed())?;
        }
        answer.await.map_err(|_| closed())?
    }

    async fn preview_match(
        &self,
        event: matching::Event,
    ) -> Result<(Vec<MailboxMatch>, bool), StoreError> {
        let conn = self.conn().await?;
        matching::match_event(&Pg(&conn), &event).await
    }

    async fn create_subscription(
        &self,
        id: u128,
        record: StoredSubscription,
        quota: u64,
        not_before: u64,
        audit_row: pb::AuditRecord,
    ) -> Result<Created, StoreError> {
        let _ = not_before; // one clock, the database's, stamps creations (subscriptions.rs)
        // Committed in a group with the creates waiting beside it (`group.rs`).
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = super::group::CreateJob {
            id,
            record,
            quota,
            audit: audit_row,
            started: Instant::now(),
            reply,
        };
        let closed = || StoreError::Unavailable("core is shutting down".into());
        self.creates.send(job).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    async fn insert_subscriptions(
        &self,
        batch: Vec<(u128, StoredSubscription)>,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let n = subscriptions::insert_many(&tx, &batch).await?;
        tx.commit().await.map_err(pg)?;
        Ok(n)
    }

    async fn subscription(&self, id: u128) -> Result<Option<StoredSubscription>, StoreError> {
        let conn = self.conn().await?;
        subscriptions::get(&conn, id).await
    }

    async fn delete_subscription(
        &self,
        id: u128,
        now: u64,
        allowed: Allowed,
        audit_row: pb::AuditRecord,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let deleted = subscriptions::delete(&tx, id, now, &*allowed).await?;
        if deleted {
            audit::append(&tx, now, std::slice::from_ref(&audit_row), false).await?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(deleted)
    }

    async fn list_subscriptions(
        &self,
        filter: ListFilter,
        token: String,
        size: usize,
        include_deleted: bool,
    ) -> Result<(Vec<(u128, StoredSubscription)>, String), StoreError> {
        let conn = self.conn().await?;
        subscriptions::list(&conn, &filter, &token, size, include_deleted).await
    }

    async fn totals(&self) -> Result<Totals, StoreError> {
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let c = &tx;
        let version: i32 = c
            .fetch_one(
                "SELECT coalesce(max(version), 0) FROM nems_schema_migrations",
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        let patients: i64 = c
            .fetch_one("SELECT count(*) FROM nems_patients", &[])
            .await
            .map_err(pg)?
            .get(0);
        let mut reference = Vec::with_capacity(SET_NAMES.len());
        for set in 0..SET_NAMES.len() {
            reference.push(ref_meta(c, set).await?);
        }
        let totals = Totals {
            schema_version: version as u64,
            subscriptions: subscriptions::live_count(c).await?,
            events_accepted: ledger::accepted_count(c).await?,
            deliveries_pending: ledger::pending_count(c).await?,
            reference,
            patients: patients as u64,
        };
        tx.commit().await.map_err(pg)?;
        Ok(totals)
    }

    async fn lease(
        &self,
        picks: Vec<(String, u32)>,
        now: u64,
        lease_ms: u64,
        budget: Budget,
    ) -> Result<Leased, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let leased = ledger::lease(&tx, &self.instance, &picks, now, lease_ms, budget).await?;
        tx.commit().await.map_err(pg)?;
        Ok(leased)
    }

    async fn give_back(
        &self,
        held: Vec<(u64, u32)>,
        now: u64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let back = ledger::give_back(&tx, &held, now).await?;
        tx.commit().await.map_err(pg)?;
        Ok(back)
    }

    async fn give_back_all(&self, now: u64) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let n = ledger::give_back_all(&tx, &self.instance, now).await?;
        tx.commit().await.map_err(pg)?;
        Ok(n)
    }

    async fn complete(
        &self,
        id: u64,
        attempt: u32,
        outcome: Outcome,
        now: u64,
    ) -> Result<Option<Completed>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let done = ledger::complete(&tx, id, attempt, &outcome, now).await?;
        tx.commit().await.map_err(pg)?;
        Ok(done)
    }

    async fn report_undelivered(
        &self,
        mesh_message_id: String,
        local_id: String,
        code: String,
        description: String,
        now: u64,
    ) -> Result<Option<(u64, bool)>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let found =
            ledger::report_undelivered(&tx, &mesh_message_id, &local_id, &code, &description, now)
                .await?;
        tx.commit().await.map_err(pg)?;
        Ok(found)
    }

    async fn redrive(
        &self,
        selection: Selection,
        now: u64,
        audit_row: pb::AuditRecord,
    ) -> Result<Redriven, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let out = ledger::redrive(&tx, &selection, now).await?;
        if !out.0.is_empty() {
            audit::append(&tx, now, std::slice::from_ref(&audit_row), false).await?;
        }
        tx.commit().await.map_err(pg)?;
        if !out.0.is_empty() {
            let mut mailboxes: Vec<String> = out.0.iter().map(|(_, m)| m.clone()).collect();
            mailboxes.sort_unstable();
            mailboxes.dedup();
            let _ = self.notes.send((now, mailboxes));
        }
        Ok(out)
    }

    async fn replay(
        &self,
        selection: ReplaySelection,
        dry_run: bool,
        now: u64,
        mut audit_row: pb::AuditRecord,
    ) -> Result<Replayed, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        if dry_run {
            return ledger::replay_preview(&tx, &selection).await;
        }
        let out = ledger::replay(&tx, &selection, now).await?;
        if !out.replayed.is_empty() {
            audit_row.count = out.replayed.len() as u32;
            audit::append(&tx, now, std::slice::from_ref(&audit_row), false).await?;
        }
        tx.commit().await.map_err(pg)?;
        if !out.replayed.is_empty() {
            let _ = self.notes.send((now, vec![selection.mailbox.clone()]));
        }
        Ok(out)
    }

    async fn list_deliveries(
        &self,
        query: Query,
        token: String,
        size: usize,
    ) -> Result<(Vec<pb::DeliveryRecord>, String), StoreError> {
        let conn = self.conn().await?;
        ledger::list(&conn, &query, &token, size).await
    }

    async fn event(
        &self,
        id: u128,
    ) -> Result<Option<(pb::EventRecord, Vec<pb::DeliveryRecord>)>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let event = ledger::event(&tx, id).await?;
        tx.commit().await.map_err(pg)?;
        Ok(event)
    }

    async fn mailbox_stats(&self, mailbox: String) -> Result<Vec<pb::MailboxStats>, StoreError> {
        let conn = self.conn().await?;
        ledger::stats(&conn, &mailbox).await
    }

    async fn queue(&self) -> Result<(Vec<(String, u64)>, u64), StoreError> {
        let conn = self.conn().await?;
        ledger::queue(&conn).await
    }

    async fn sweep(&self, r: Retention) -> Result<(Swept, usize), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let swept = ledger::sweep(&tx, &r).await?;
        let pruned = audit::prune(&tx, false, r.audit_cutoff_ms, r.audit_limit).await?
            + audit::prune(&tx, true, r.refusal_cutoff_ms, r.audit_limit).await?;
        // The counter rows of connections that are gone, into one (migration 0002).
        tx.run("SELECT nems_fold_counters()", &[])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok((swept, pruned))
    }

    async fn directory(&self) -> Result<(Vec<pb::SpineSystem>, Vec<pb::MeshMailbox>), StoreError> {
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let directory = audit::directory(&tx).await?;
        tx.commit().await.map_err(pg)?;
        Ok(directory)
    }

    async fn change_directory(
        &self,
        changes: Vec<DirectoryChange>,
        audit_row: Option<pb::AuditRecord>,
    ) -> Result<Vec<bool>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        if let Some(record) = &audit_row {
            audit::append(
                &tx,
                crate::backend::keys::now_ms(),
                std::slice::from_ref(record),
                false,
            )
            .await?;
        }
        let mut out = Vec::with_capacity(changes.len());
        for change in &changes {
            out.push(audit::change(&tx, change).await?);
        }
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    async fn refdata_begin(&self, set: usize) -> Result<u32, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let slot = refdata::begin(&tx, set).await?;
        tx.commit().await.map_err(pg)?;
        Ok(slot)
    }

    async fn refdata_insert(&self, set: usize, slot: u32, rows: Rows) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        refdata::insert(&tx, set, slot, rows).await?;
        tx.commit().await.map_err(pg)?;
        Ok(())
    }

    async fn refdata_diff(&self, set: usize, slot: u32) -> Result<(u64, u64, u64), StoreError> {
        let conn = self.conn().await?;
        refdata::diff(&conn, set, slot).await
    }

    async fn refdata_finish(
        &self,
        f: RefdataFinish,
        mut audit_row: pb::AuditRecord,
    ) -> Result<Finished, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let finished = refdata::finish(&tx, f.set, f.slot, &f.format, &f.source, &f.guard).await?;
        if !f.guard.check {
            import_outcome(&finished, &mut audit_row);
            audit::append(
                &tx,
                crate::backend::keys::now_ms(),
                std::slice::from_ref(&audit_row),
                false,
            )
            .await?;
        }
        tx.commit().await.map_err(pg)?;
        // The scraped age of the set in force changes now, not at the next health tick.
        refresh(&self.pool, &self.state).await;
        Ok(finished)
    }

    async fn lookup_area(
        &self,
        key: pb::lookup_area_request::Key,
    ) -> Result<pb::LookupAreaResponse, StoreError> {
        let conn = self.conn().await?;
        crate::backend::lookup_area(&Pg(&conn), key).await
    }

    async fn patient(&self, nhs: u64) -> Result<Option<pb::PatientRecord>, StoreError> {
        let conn = self.conn().await?;
        Ok(stored_patient(&conn, nhs).await?.and_then(|p| p.record))
    }

    async fn apply_demographics(&self, updates: Vec<DemographicUpdate>) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let mut written = 0u64;
        for u in &updates {
            if super::view::apply_demographics(&tx, u).await? {
                written += 1;
            }
        }
        tx.commit().await.map_err(pg)?;
        Ok(written)
    }

    async fn append_audit(
        &self,
        reads: Vec<pb::AuditRecord>,
        refusals: Vec<pb::AuditRecord>,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        audit::append(&tx, at_ms, &reads, false).await?;
        audit::append(&tx, at_ms, &refusals, true).await?;
        tx.commit().await.map_err(pg)?;
        Ok(())
    }

    async fn list_audit(
        &self,
        filter: AuditFilter,
        token: String,
        size: usize,
    ) -> Result<(Vec<pb::AuditRecord>, String), StoreError> {
        let conn = self.conn().await?;
        audit::list(&conn, &filter, &token, size).await
    }
}

#[cfg(test)]
mod note_tests {
    use super::{NOTE_BYTES, payloads};

    #[test]
    fn notes_go_in_payloads_postgres_accepts_and_read_back_whole() {
        let many: Vec<String> = (0..2000).map(|i| format!("MBX{i:05}")).collect();
        let notes = vec![(7, vec!["A".to_string()]), (9, many.clone()), (11, vec![])];
        let sent = payloads(&notes);
        assert!(sent.len() > 1, "2000 mailboxes need several notifications");
        let mut seen = Vec::new();
        for payload in &sent {
            assert!(payload.len() <= NOTE_BYTES, "{} bytes", payload.len());
            for line in payload.lines() {
                let mut parts = line.split('\t');
                let at: u64 = parts.next().unwrap().parse().unwrap();
                for m in parts {
                    seen.push((at, m.to_string()));
                }
            }
        }
        let mut expected = vec![(7, "A".to_string())];
        expected.extend(many.into_iter().map(|m| (9, m)));
        assert_eq!(seen, expected);
    }
}
