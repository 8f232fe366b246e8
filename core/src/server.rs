//! Starting and stopping core: open the store, apply the directory file, serve the
//! service API and the operator API (with gRPC health and reflection v1 and v1alpha on
//! both, so `grpcurl list` and `describe` work), and shut down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use nems_proto::service_names;
use nems_proto::v1::delivery_service_server::DeliveryServiceServer;
use nems_proto::v1::directory_service_server::DirectoryServiceServer;
use nems_proto::v1::event_service_server::EventServiceServer;
use nems_proto::v1::operator_service_server::OperatorServiceServer;
use nems_proto::v1::subscription_service_server::SubscriptionServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::backend::{Backend, DirectoryChange, Retention, StoreError, Swept, Wake};
use crate::config::CoreConfig;
use crate::directory::{Directory, DirectoryFile};
use crate::domain::catalogue::Catalogue;
use crate::service::deliveries::Deliveries;
use crate::service::directory::DirectoryAdmin;
use crate::service::events::Events;
use crate::service::operator::Operator;
use crate::service::subscriptions::Subscriptions;
use crate::state::CoreState;
use crate::store::{Store, StoreOptions};
use crate::trust::Trust;
use crate::trust::gate::{Gate, GateLayer, Listener};

/// Why core could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The directory file is invalid.
    #[error("{0}")]
    Directory(String),
    /// A listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The listeners core serves on, bound by the caller (so tests can bind port 0 and read
/// the address before core starts).
#[derive(Debug)]
pub struct CoreListeners {
    /// The service API.
    pub service: TcpListener,
    /// The operator API (directory, operator), always a listener of its own.
    pub operator: TcpListener,
}

impl CoreListeners {
    /// Binds the addresses of a configuration.
    pub async fn bind(config: &CoreConfig) -> std::io::Result<Self> {
        let service = TcpListener::bind(config.listen).await?;
        let operator = TcpListener::bind(config.operator_listen).await?;
        Ok(CoreListeners { service, operator })
    }

    /// The bound addresses (service, operator).
    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.service.local_addr()?, self.operator.local_addr()?))
    }
}

/// An opened core, ready to serve.
#[derive(Debug)]
pub struct Core {
    state: Arc<CoreState>,
    /// This core's gauges and readiness check in the process's ops registry, until it
    /// stops.
    _ops: nems_runtime::ops::Attached,
}

impl Core {
    /// Opens the store (creating or migrating it), applies the directory file and builds
    /// the event catalogue.
    pub async fn open(config: CoreConfig) -> Result<Core, CoreError> {
        nems_runtime::ops::set_check("core-store", || Err("the store is opening".into()));
        config.validate().map_err(CoreError::Config)?;
        let catalogue = Catalogue::new(&config.event_types).map_err(CoreError::Config)?;
        let file = match &config.directory_file {
            Some(path) => Some(DirectoryFile::load(path).map_err(CoreError::Directory)?),
            None => None,
        };
        let pds = match &config.pds {
            Some(pds) => Some(crate::pds::PdsClient::new(pds).map_err(CoreError::Config)?),
            None => None,
        };
        let trust = Trust::new(config.clients.clone(), config.spine_ca_file.as_deref())
            .map_err(CoreError::Config)?;
        let options = StoreOptions {
            durable: config.durable,
            two_phase_commit: config.two_phase_commit,
            queue: config.write_queue,
            max_batch: config.max_batch,
            cache_bytes: config.cache_mib.saturating_mul(1 << 20),
            reopen_min_free: config.reopen_min_free_mib.saturating_mul(1 << 20),
        };
        let store: Arc<dyn Backend> = match &config.database_url {
            Some(url) => Arc::new(
                crate::postgres::PgBackend::open(
                    url,
                    config.database_pool,
                    config.durable,
                    config.write_queue,
                    &config.listen.to_string(),
                    config.database_tls.as_ref(),
                )
                .await?,
            ),
            None => {
                let data_dir = config.data_dir.clone();
                Arc::new(
                    tokio::task::spawn_blocking(move || Store::open(&data_dir, options))
                        .await
                        .map_err(|e| CoreError::Config(format!("store open task failed: {e}")))??,
                )
            }
        };
        if !config.durable {
            tracing::warn!(
                "core.durable = false: commits are not fsynced; a crash may lose acknowledged events"
            );
        }
        tracing::info!(engine = store.engine(), "store opened");
        let (systems, mailboxes) = store.directory().await?;
        let state = Arc::new(CoreState::new(
            store,
            catalogue,
            config,
            Directory::new(systems, mailboxes),
            pds,
            trust,
        ));
        if let Some(file) = file {
            apply_directory_file(&state, file).await?;
        }
        // No delivery stream from before this start can be open: every lease is given
        // back, so those deliveries go out again now rather than after `lease_timeout`.
        let now = crate::backend::keys::now_ms();
        let given_back = state.store.give_back_all(now).await?;
        if given_back > 0 {
            tracing::info!(given_back, "leases from before the start given back");
        }
        let (heads, pending) = state.store.queue().await?;
        for (mailbox, at) in &heads {
            state.dispatcher.available(mailbox, *at);
        }
        state.set_pending(pending);
        // Deliveries other cores on the same store queue wake this core's dispatcher too,
        // and the backlog is the whole store's.
        let weak = Arc::downgrade(&state);
        state.store.wake_ups(Arc::new(move |wake: Wake<'_>| {
            let Some(state) = weak.upgrade() else { return };
            match wake {
                Wake::Available(mailbox, at) => state.dispatcher.available(mailbox, at),
                Wake::Pending(n) => state.set_pending(n),
            }
        }));
        let ops = crate::metrics::attach(&state);
        tracing::info!(pending, mailboxes = heads.len(), "delivery queue restored");
        let (systems, mailboxes) = state.directory().len();
        tracing::info!(systems, mailboxes, "directory loaded");
        Ok(Core { state, _ops: ops })
    }

    /// Serves until `shutdown` completes, then drains in-flight requests, ends delivery
    /// streams, and closes the store.
    pub async fn serve(
        self,
        listeners: CoreListeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), CoreError> {
        let stopper = self.state.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopper.stop.send_replace(true);
        });
        let stop_rx = self.state.stop.subscribe();
        let sweeper = tokio::spawn(sweep_loop(self.state.clone()));
        let reloader = tokio::spawn(reload_after_reopen(self.state.clone()));
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        set_all(&health_reporter, ServingStatus::Serving).await;
        let (service_addr, operator_addr) = listeners.addrs()?;
        tracing::info!(%service_addr, %operator_addr, "core serving gRPC");

        let state = self.state.clone();
        let (reflection_v1, reflection_v1alpha) = reflection(&[
            service_names::SUBSCRIPTION,
            service_names::EVENT,
            service_names::DELIVERY,
        ])?;
        let operator_reflection = reflection(&[service_names::DIRECTORY, service_names::OPERATOR])?;
        // Reads and refusals (of both gates and the services) are audited through one
        // bounded queue; its task is finished once both listeners have stopped, before the
        // store closes.
        let refusal_audit = state.audit.start(state.store.clone());
        let refusals = state.audit.clone();
        let service_gate = GateLayer::new(Gate::new(
            Listener::Service,
            state.config.tls.is_some(),
            state.trust.clone(),
            refusals.clone(),
        ));
        let operator_gate = GateLayer::new(Gate::new(
            Listener::Operator,
            state.config.operator_tls.is_some(),
            state.trust.clone(),
            refusals,
        ));
        let mut service_builder = Server::builder();
        if let Some(tls) = &state.config.tls {
            service_builder = service_builder
                .tls_config(tls.to_tonic().map_err(CoreError::Config)?)
                .map_err(|e| CoreError::Config(format!("core.tls: {e}")))?;
        }
        let mut operator_builder = Server::builder();
        if let Some(tls) = &state.config.operator_tls {
            operator_builder = operator_builder
                .tls_config(tls.to_tonic().map_err(CoreError::Config)?)
                .map_err(|e| CoreError::Config(format!("core.operator_tls: {e}")))?;
        }
        let service_router = service_builder
            .layer(service_gate)
            .add_service(health_service.clone())
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                SubscriptionServiceServer::new(Subscriptions {
                    state: state.clone(),
                })
                .max_decoding_message_size(nems_proto::MAX_CORE_REQUEST_BYTES),
            )
            .add_service(
                EventServiceServer::new(Events {
                    state: state.clone(),
                })
                .max_decoding_message_size(nems_proto::MAX_CORE_REQUEST_BYTES),
            )
            .add_service(DeliveryServiceServer::new(Deliveries {
                state: state.clone(),
            }));
        let operator_router = operator_builder
            .layer(operator_gate)
            .add_service(health_service)
            .add_service(operator_reflection.0)
            .add_service(operator_reflection.1)
            .add_service(DirectoryServiceServer::new(DirectoryAdmin {
                state: state.clone(),
            }))
            .add_service(OperatorServiceServer::new(Operator {
                state: state.clone(),
            }));

        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let service_incoming = TcpIncoming::from(listeners.service).with_nodelay(Some(true));
        let service_task = tokio::spawn(
            service_router.serve_with_incoming_shutdown(service_incoming, stopped(stop_rx.clone())),
        );
        let operator_incoming = TcpIncoming::from(listeners.operator).with_nodelay(Some(true));
        let operator_task = tokio::spawn(
            operator_router
                .serve_with_incoming_shutdown(operator_incoming, stopped(stop_rx.clone())),
        );

        stopped(stop_rx.clone()).await;
        tracing::info!("core shutting down");
        set_all(&health_reporter, ServingStatus::NotServing).await;
        let service_result = service_task
            .await
            .map_err(|e| CoreError::Config(format!("service task: {e}")))?;
        let operator_result = operator_task
            .await
            .map_err(|e| CoreError::Config(format!("operator task: {e}")))?;
        service_result?;
        operator_result?;
        if let Some(task) = refusal_audit {
            task.finish().await;
        }
        let _ = sweeper.await;
        let _ = reloader.await;
        drop(state);
        let closer = match Arc::try_unwrap(self.state) {
            Ok(state) => state.store.closer(),
            Err(_) => None,
        };
        if let Some(close) = closer {
            tokio::task::spawn_blocking(close)
                .await
                .map_err(|e| CoreError::Config(format!("store close task: {e}")))?;
        }
        tracing::info!("core stopped");
        Ok(())
    }
}

/// Reflection services (v1 for modern clients, v1alpha for grpcurl 1.8) advertising
/// `names` plus health and reflection themselves.
fn reflection(
    names: &[&str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    CoreError,
> {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(nems_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(nems_proto::ERROR_DETAILS_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in names {
            b = b.with_service_name(*name);
        }
        b
    };
    let v1 = builder()
        .build_v1()
        .map_err(|e| CoreError::Config(format!("reflection: {e}")))?;
    let v1alpha = builder()
        .build_v1alpha()
        .map_err(|e| CoreError::Config(format!("reflection: {e}")))?;
    Ok((v1, v1alpha))
}

/// Opens core with `config` and serves on `listeners` until `shutdown`.
pub async fn run(
    config: CoreConfig,
    listeners: CoreListeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoreError> {
    Core::open(config).await?.serve(listeners, shutdown).await
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in [
        "",
        service_names::SUBSCRIPTION,
        service_names::EVENT,
        service_names::DELIVERY,
        service_names::DIRECTORY,
        service_names::OPERATOR,
    ] {
        reporter.set_service_status(name, status).await;
    }
}

/// After the writer reopened the store (a storage failure, `store/writer.rs`), reloads what
/// core caches from it: the delivery queue heads (so every queued delivery is handed out
/// again), the pending count and the directory snapshot. The failed batch was rolled back,
/// so the caches can only have missed work, never hold work the store lacks.
async fn reload_after_reopen(state: Arc<CoreState>) {
    let mut reopened = state.store.reopened();
    let mut stop = state.stop.subscribe();
    loop {
        tokio::select! {
            changed = reopened.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let loaded = state.store.queue().await;
        match loaded {
            Ok((heads, pending)) => {
                for (mailbox, at) in &heads {
                    state.dispatcher.available(mailbox, *at);
                }
                state.set_pending(pending);
                tracing::info!(
                    pending,
                    mailboxes = heads.len(),
                    "delivery queue reloaded after the store was reopened"
                );
            }
            Err(e) => tracing::error!(error = %e, "reloading the delivery queue failed"),
        }
        if let Err(e) = state.reload_directory().await {
            tracing::error!(error = %e, "reloading the directory failed");
        }
    }
}

/// Runs retention on a timer: releases old dead-letter payloads, removes settled ledger
/// rows past the retention period, and prunes the audit trail.
async fn sweep_loop(state: Arc<CoreState>) {
    const LIMIT: usize = 5_000;
    let batch = state.config.sweep_batch;
    let mut stop = state.stop.subscribe();
    loop {
        tokio::select! {
            () = tokio::time::sleep(state.config.sweep_interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = crate::backend::keys::now_ms();
        let config = &state.config;
        let retention = Retention {
            now,
            ledger_ms: config.ledger_retention.as_millis() as u64,
            dead_letter_ms: config.dead_letter_retention.as_millis() as u64,
            replay_ms: config.replay_retention.as_millis() as u64,
            batch,
            audit_cutoff_ms: now.saturating_sub(config.audit_retention.as_millis() as u64),
            refusal_cutoff_ms: now
                .saturating_sub(config.refusal_audit_retention.as_millis() as u64),
            audit_limit: LIMIT,
        };
        loop {
            match state.store.sweep(retention).await {
                Ok((swept, pruned)) => {
                    if swept != Swept::default() || pruned > 0 {
                        tracing::info!(?swept, audit_pruned = pruned, "retention sweep");
                    }
                    let more = swept.scanned >= batch || pruned >= LIMIT;
                    if !more || *stop.borrow() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "retention sweep failed");
                    break;
                }
            }
        }
    }
}

async fn apply_directory_file(state: &CoreState, file: DirectoryFile) -> Result<(), CoreError> {
    let changes = file
        .system
        .iter()
        .map(|s| DirectoryChange::PutSystem(s.to_pb()))
        .chain(
            file.mailbox
                .iter()
                .map(|m| DirectoryChange::PutMailbox(m.to_pb())),
        )
        .collect();
    state.change_directory(changes, None).await?;
    Ok(())
}
