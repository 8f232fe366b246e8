//! The state shared by every gRPC service of core.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use nems_proto::v1 as pb;

use crate::backend::{Backend, DirectoryChange, StoreError};
use crate::config::CoreConfig;
use crate::directory::Directory;
use crate::dispatch::Dispatcher;
use crate::domain::catalogue::Catalogue;

/// Core's shared state.
#[derive(Debug)]
pub(crate) struct CoreState {
    /// Storage, behind the seam.
    pub(crate) store: Arc<dyn Backend>,
    pub(crate) catalogue: Catalogue,
    pub(crate) config: CoreConfig,
    pub(crate) dispatcher: Dispatcher,
    /// The PDS lookup, when configured.
    pub(crate) pds: Option<crate::pds::PdsClient>,
    /// Who callers are: client roles and the Spine CA of forwarded certificates.
    pub(crate) trust: Arc<crate::trust::Trust>,
    /// The detached audit queue (reads and refusals).
    pub(crate) audit: crate::audit::AuditSink,
    /// Set when core shuts down: long-lived delivery streams end.
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
    /// Deliveries queued or in flight (for backpressure and metrics).
    pending: AtomicU64,
    /// One import at a time per reference data set.
    imports: [tokio::sync::Mutex<()>; 3],
    directory: RwLock<Arc<Directory>>,
    directory_changes: tokio::sync::Mutex<()>,
}

impl CoreState {
    pub(crate) fn new(
        store: Arc<dyn Backend>,
        catalogue: Catalogue,
        config: CoreConfig,
        directory: Directory,
        pds: Option<crate::pds::PdsClient>,
        trust: crate::trust::Trust,
    ) -> Self {
        CoreState {
            store,
            catalogue,
            config,
            dispatcher: Dispatcher::default(),
            pds,
            trust: Arc::new(trust),
            audit: crate::audit::AuditSink::default(),
            stop: tokio::sync::watch::channel(false).0,
            pending: AtomicU64::new(0),
            imports: Default::default(),
            directory: RwLock::new(Arc::new(directory)),
            directory_changes: tokio::sync::Mutex::new(()),
        }
    }

    /// The lock that serialises imports of reference data set `set`.
    pub(crate) fn import_lock(&self, set: usize) -> &tokio::sync::Mutex<()> {
        &self.imports[set.min(2)]
    }

    /// Deliveries queued or in flight.
    pub(crate) fn pending_deliveries(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Counts deliveries that became pending (accepted or redriven).
    pub(crate) fn note_queued(&self, n: u64) {
        self.pending.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts deliveries that settled.
    pub(crate) fn note_settled(&self, n: u64) {
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(n))
            });
    }

    /// Sets the pending count (at start-up, from the store).
    pub(crate) fn set_pending(&self, n: u64) {
        self.pending.store(n, Ordering::Relaxed);
    }

    /// The directory snapshot in force.
    pub(crate) fn directory(&self) -> Arc<Directory> {
        match self.directory.read() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Applies directory changes in the store (with their audit row), then reloads the
    /// snapshot: for each change, true when it replaced or removed something. Changes are
    /// serialised so that a slower reload never replaces a newer snapshot.
    pub(crate) async fn change_directory(
        &self,
        changes: Vec<DirectoryChange>,
        audit: Option<pb::AuditRecord>,
    ) -> Result<Vec<bool>, StoreError> {
        let _serial = self.directory_changes.lock().await;
        let out = self.store.change_directory(changes, audit).await?;
        let (systems, mailboxes) = self.store.directory().await?;
        self.replace_directory(Directory::new(systems, mailboxes));
        Ok(out)
    }

    /// Reloads the directory snapshot from the store (after the store was reopened),
    /// serialised with changes.
    pub(crate) async fn reload_directory(&self) -> Result<(), StoreError> {
        let _serial = self.directory_changes.lock().await;
        let (systems, mailboxes) = self.store.directory().await?;
        self.replace_directory(Directory::new(systems, mailboxes));
        Ok(())
    }

    fn replace_directory(&self, directory: Directory) {
        let fresh = Arc::new(directory);
        match self.directory.write() {
            Ok(mut d) => *d = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }

    /// Records an audit entry without waiting for it (reads and refusals), through the
    /// bounded audit queue; writes that change state record theirs in their own
    /// transaction.
    pub(crate) fn audit_detached(&self, record: pb::AuditRecord) {
        self.audit.record(record);
    }
}

/// Builds an audit record for a caller.
pub(crate) fn audit_record(
    caller: &pb::Caller,
    action: &str,
    resource_type: &str,
    resource_id: &str,
    outcome: &str,
) -> pb::AuditRecord {
    pb::AuditRecord {
        at: None,
        request_id: caller.request_id.clone(),
        asid: caller.asid.clone(),
        ods_code: caller.ods_code.clone(),
        user: caller.user.clone(),
        action: action.into(),
        resource_type: resource_type.into(),
        resource_id: resource_id.into(),
        outcome: outcome.into(),
        count: 0,
    }
}
