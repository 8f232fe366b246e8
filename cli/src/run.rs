//! Running the services: all three together (`nems up`) or one each (`nems core`,
//! `nems edge`, `nems mesh-adapter`), stopped cleanly by Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use nems_core::{Core, CoreListeners};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::NemsConfig;
use crate::console::Console;
use crate::embedded;

/// A shutdown signal many tasks can wait on.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Completes when shutdown was requested.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}

/// Returns a shutdown signal set by Ctrl-C or SIGTERM.
pub fn on_signal() -> Shutdown {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        tx.send_replace(true);
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        tx.send_replace(true);
    });
    Shutdown(rx)
}

/// The operations endpoint of a process, once started: its address, and where the
/// console goes once core's operator API is up.
struct Ops {
    addr: SocketAddr,
    console: Arc<OnceLock<Console>>,
}

/// Starts the operations endpoint when configured.
async fn start_ops(
    config: &NemsConfig,
    command: crate::config::OpsOf,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<Ops>> {
    let Some(addr) = config.ops.listen_of(command) else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the ops endpoint on {addr}"))?;
    let bound = listener.local_addr()?;
    let console = Arc::<OnceLock<Console>>::default();
    tokio::spawn(crate::ops::serve_with_console(
        listener,
        shutdown.clone().wait(),
        console.clone(),
    ));
    Ok(Some(Ops {
        addr: bound,
        console,
    }))
}

/// Opens the console on `ops` over core's operator API at `operator`. Where that API
/// requires operator credentials (`core.operator_tls`), the console requires a console
/// token (`ops.console_tokens_file`) and calls core with the operator certificate of
/// `[operator_tls]`; without a token list it refuses everyone.
fn open_console(ops: &Ops, config: &NemsConfig, operator: SocketAddr) -> anyhow::Result<()> {
    use crate::console::{Access, Tokens};
    let tls_required = config.core.operator_tls.is_some();
    let tokens = config
        .ops
        .console_tokens_file
        .as_deref()
        .map(Tokens::read)
        .transpose()
        .context("ops.console_tokens_file")?;
    let plain = || crate::remote::Remote::plain(&url_of(operator, false)).channel();
    let (channel, access) = match (tokens, tls_required) {
        (None, false) => (plain()?, Access::Loopback),
        (None, true) => (
            plain()?,
            Access::Refused(
                "the operator API requires operator credentials (operator TLS), and no \
                 console tokens are configured (ops.console_tokens_file): the console \
                 serves no one anonymously; use nems admin with the operator certificate",
            ),
        ),
        (Some(tokens), false) => (plain()?, Access::Tokens(tokens)),
        (Some(tokens), true) => {
            let certificate = config
                .operator_tls
                .as_ref()
                .is_some_and(|tls| tls.cert_file.is_some() && tls.key_file.is_some());
            if !certificate {
                anyhow::bail!(
                    "ops.console_tokens_file is set and core.operator_tls is on, so the console \
                     calls the operator API over TLS: set [operator_tls] with ca_file and the \
                     console's operator certificate (cert_file, key_file), an identity named \
                     in core.clients.operator"
                );
            }
            let remote = crate::remote::Remote::from_config(config, Some(&url_of(operator, true)))?;
            (remote.channel()?, Access::Tokens(tokens))
        }
    };
    let console = Console::new(channel, access, config.core.max_pending_deliveries);
    console.start_sampling();
    let _ = ops.console.set(console);
    Ok(())
}

fn url_of(addr: SocketAddr, tls: bool) -> String {
    if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

/// `nems up`: core, edge and the adapter in one process on embedded defaults.
pub async fn up(mut config: NemsConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    if config.core.directory_file.is_none() {
        config.core.directory_file = Some(embedded::write_sample_directory(&config.core.data_dir)?);
    }
    // One process: with mutual TLS at the edge, core checks the certificates the edge
    // forwards against the same CA unless told otherwise.
    if config.core.spine_ca_file.is_none()
        && let Some(ca) = config
            .edge
            .tls
            .as_ref()
            .and_then(|t| t.client_ca_file.clone())
    {
        config.core.spine_ca_file = Some(ca);
    }
    let ops = start_ops(&config, crate::config::OpsOf::All, &shutdown).await?;
    let core_listeners = CoreListeners::bind(&config.core)
        .await
        .context("binding core's gRPC listener")?;
    let (core_addr, operator_addr) = core_listeners.addrs()?;
    let edge_listener = TcpListener::bind(config.edge.listen)
        .await
        .context("binding the edge's HTTP listener")?;
    let edge_addr = edge_listener.local_addr()?;
    let core_tls = config.core.tls.is_some();
    config.edge.core_url = url_of(core_addr, core_tls);
    config.mesh_adapter.core_url = url_of(core_addr, core_tls);
    if config.edge.base_url == nems_edge::EdgeConfig::default().base_url {
        config.edge.base_url = url_of(edge_addr, config.edge.tls.is_some());
    }
    let operator_url = url_of(operator_addr, config.operator_tls.is_some());
    let operator_tls = config
        .operator_tls
        .as_ref()
        .map(|t| t.to_tonic().map_err(anyhow::Error::msg))
        .transpose()?;

    let core = Core::open(config.core.clone())
        .await
        .context("opening core")?;
    if let Some(ops) = &ops {
        open_console(ops, &config, operator_addr)?;
    }
    // Core and the edge stop only after the adapter: an adapter stopping with deliveries in
    // flight still reports their outcomes to core (otherwise it waits out its drain timeout
    // and the deliveries come back only when their leases expire).
    let (stop_services, services_stop) = watch::channel(false);
    let services_shutdown = Shutdown(services_stop);
    let core_task = tokio::spawn(core.serve(core_listeners, services_shutdown.clone().wait()));
    embedded::load_reference_data(&operator_url, operator_tls).await?;
    let edge_task = tokio::spawn(nems_edge::run(
        config.edge.clone(),
        edge_listener,
        services_shutdown.wait(),
    ));
    let adapter_task = tokio::spawn(nems_mesh_adapter::run(
        config.mesh_adapter.clone(),
        shutdown.clone().wait(),
    ));

    let sink = match config.mesh_adapter.sink {
        nems_mesh_adapter::SinkKind::Folder => {
            format!("folder {}", config.mesh_adapter.folder.display())
        }
        nems_mesh_adapter::SinkKind::Mesh => format!("MESH {}", config.mesh_adapter.mesh.base_url),
    };
    #[allow(
        clippy::print_stdout,
        reason = "the run command prints where it listens"
    )]
    {
        println!("nems up");
        println!(
            "  FHIR API   {}/STU3  (edge on {edge_addr})",
            config.edge.base_url
        );
        println!("  core gRPC  {core_addr}  (subscriptions, events, deliveries)");
        println!("  operator   {operator_addr}  (directory, operator: nems admin, grpcurl)");
        println!("  data       {}", config.core.data_dir.display());
        println!("  deliveries {sink}");
        if let Some(ops) = &ops {
            println!("  ops        http://{}/metrics /livez /readyz", ops.addr);
            println!("  console    http://{}/console/", ops.addr);
        }
        println!("  Ctrl-C stops all three");
    }
    shutdown.wait().await;
    let adapter_result = adapter_task.await;
    stop_services.send_replace(true);
    let (core_result, edge_result) = tokio::join!(core_task, edge_task);
    core_result.context("core task")?.context("core")?;
    edge_result.context("edge task")?.context("edge")?;
    adapter_result
        .context("adapter task")?
        .context("mesh adapter")?;
    Ok(())
}

/// `nems core`.
pub async fn core(config: NemsConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let ops = start_ops(&config, crate::config::OpsOf::Core, &shutdown).await?;
    let listeners = CoreListeners::bind(&config.core)
        .await
        .context("binding core's listeners")?;
    let (addr, operator) = listeners.addrs()?;
    if let Some(ops) = &ops {
        open_console(ops, &config, operator)?;
    }
    #[allow(
        clippy::print_stdout,
        reason = "the run command prints where it listens"
    )]
    {
        let console = ops.as_ref().map_or_else(String::new, |ops| {
            format!(", console http://{}/console/", ops.addr)
        });
        println!("nems core: gRPC on {addr}, operator API on {operator}{console}");
    }
    nems_core::run(config.core, listeners, shutdown.wait())
        .await
        .context("core")
}

/// `nems edge`.
pub async fn edge(config: NemsConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    start_ops(&config, crate::config::OpsOf::Edge, &shutdown).await?;
    let listener = TcpListener::bind(config.edge.listen)
        .await
        .context("binding the edge listener")?;
    #[allow(
        clippy::print_stdout,
        reason = "the run command prints where it listens"
    )]
    {
        println!(
            "nems edge: FHIR API on http://{}/STU3, core at {}",
            listener.local_addr()?,
            config.edge.core_url
        );
    }
    nems_edge::run(config.edge, listener, shutdown.wait())
        .await
        .context("edge")
}

/// `nems mesh-adapter`.
pub async fn adapter(config: NemsConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    start_ops(&config, crate::config::OpsOf::Adapter, &shutdown).await?;
    nems_mesh_adapter::run(config.mesh_adapter, shutdown.wait())
        .await
        .context("mesh adapter")
}
