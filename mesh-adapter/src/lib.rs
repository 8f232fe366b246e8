//! NEMS delivery adapter: streams leased deliveries from core, hands each to a sink, and
//! reports every outcome back to core.
//!
//! # Layout
//! - `lib.rs`: [`run`]: builds the sink from configuration and runs the pump (and, for
//!   MESH, the report poller) until shutdown.
//! - `config.rs`: the `[mesh_adapter]` configuration section.
//! - `pump.rs`: the delivery stream from core and the outcome reports back.
//! - `sink/`: the [`sink::Sink`] interface and its two implementations: the folder sink (the
//!   embedded default) and the MESH sink.
//! - `mesh/`: the MESH API client (NHSMESH auth, outbox with chunking, tracking, inbox).
//! - `retry.rs`: backoff policy; `error.rs`: the delivery error classes.
//! - `reports.rs`: polls MESH non-delivery reports and forwards them to core.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use nems_proto::v1 as pb;
use nems_proto::v1::delivery_service_client::DeliveryServiceClient;
use tokio::sync::watch;

pub mod circuit;
pub mod config;
pub mod cores;
pub mod error;
pub mod mesh;
pub mod metrics;
pub mod pump;
pub mod reports;
pub mod retry;
pub mod sink;

pub use config::{AdapterConfig, SinkKind};

/// Why the adapter could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// Invalid configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The core channel could not be built.
    #[error("core channel: {0}")]
    Core(#[from] tonic::transport::Error),
}

/// The circuit's probe: a MESH handshake, bounded by the connect timeout (at least 1 s, at
/// most 10 s) so that a hanging endpoint counts as down promptly. Any answer, even a
/// refusal, means the endpoint is there.
fn handshake_probe(client: mesh::MeshClient, connect_timeout: Duration) -> circuit::Probe {
    let limit = connect_timeout.clamp(Duration::from_secs(1), Duration::from_secs(10));
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            match tokio::time::timeout(limit, client.handshake()).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => !metrics::means_unreachable(e.code()),
                Err(_) => false,
            }
        })
    })
}

/// Runs the adapter until `shutdown` completes.
pub async fn run(
    config: AdapterConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AdapterError> {
    config.validate().map_err(AdapterError::Config)?;
    let tls = match &config.core_tls {
        Some(tls) => Some(
            tls.to_tonic()
                .map_err(|e| AdapterError::Config(format!("mesh_adapter.core_tls: {e}")))?,
        ),
        None => None,
    };
    let cores = Arc::new(cores::Cores::new(&config.core_url, tls)?);
    let mut settings = pump::PumpSettings {
        consumer: config.consumer.clone(),
        max_in_flight: config.max_in_flight,
        max_in_flight_per_mailbox: config.max_in_flight_per_mailbox,
        retry: config.retry_policy(),
        drain_timeout: Duration::from_secs(15),
        sink_name: match config.sink {
            SinkKind::Folder => "folder",
            SinkKind::Mesh => "mesh",
        },
        health: Arc::new(metrics::MeshHealth::default()),
        attempt_budget: match config.sink {
            SinkKind::Folder => None,
            SinkKind::Mesh => Some(config.mesh.attempt_budget()),
        },
        circuit: None,
    };
    let _ = metrics::metrics();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let signal = async move {
        shutdown.await;
        stop_tx.send_replace(true);
    };
    match config.sink {
        SinkKind::Folder => {
            tracing::info!(folder = %config.folder.display(), "mesh adapter delivering to the folder sink");
            let sink = Arc::new(sink::folder::FolderSink::new(
                &config.folder,
                config.mesh.mailbox.clone(),
            ));
            sink.prepare();
            let health = sink.health();
            nems_runtime::ops::set_check("folder", move || health.check());
            tokio::join!(signal, pump::run(cores, sink, settings, stopped(stop_rx)));
            nems_runtime::ops::remove_check("folder");
        }
        SinkKind::Mesh => {
            let client = mesh::MeshClient::new(config.mesh_client_config())
                .map_err(|e| AdapterError::Config(format!("mesh_adapter.mesh: {e}")))?;
            tracing::info!(base_url = %client.base_url(), mailbox = %client.mailbox(), "mesh adapter delivering to MESH");
            let health = settings.health.clone();
            let after = config.mesh.unready_after;
            let check = health.clone();
            let circuit = circuit::Circuit::new(
                handshake_probe(client.clone(), config.mesh.connect_timeout),
                circuit::CircuitSettings {
                    probe_max: config.mesh.circuit_probe_max,
                    ..circuit::CircuitSettings::default()
                },
            );
            settings.circuit = Some(circuit.clone());
            nems_runtime::ops::set_check("mesh", move || {
                if let Some(open) = circuit.open_for() {
                    return Err(format!(
                        "MESH unreachable: circuit open for {}s, deliveries held",
                        open.as_secs()
                    ));
                }
                check.check(after)
            });
            let sink = Arc::new(sink::mesh::MeshSink::new(client.clone()));
            let reporter = cores.clone();
            let handler = move |report: reports::MeshReport| {
                let cores = reporter.clone();
                async move {
                    let (at, channel) = cores.current();
                    let answer = DeliveryServiceClient::new(channel)
                        .report_undelivered(pb::ReportUndeliveredRequest::from(report))
                        .await;
                    match answer {
                        Ok(_) => Ok(()),
                        Err(s) => {
                            if s.code() == tonic::Code::Unavailable {
                                cores.failed(at);
                            }
                            Err(format!("core refused the report: {:?}", s.code()))
                        }
                    }
                }
            };
            tokio::join!(
                signal,
                pump::run(cores, sink, settings, stopped(stop_rx.clone())),
                reports::run(
                    client,
                    config.mesh.report_poll_interval,
                    handler,
                    health,
                    stopped(stop_rx)
                ),
            );
        }
    }
    nems_runtime::ops::remove_check("mesh");
    tracing::info!("mesh adapter stopped");
    Ok(())
}
