//! The `nems` binary: argument parsing only; everything else is in the `nems_cli` library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use nems_cli::{admin, config, import, logging, run};

/// mimalloc: the services move many 10 KB message buffers between threads, where glibc's
/// allocator spends a measurable share of the CPU (see the publish benchmark in the README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// National Events Management Service: FHIR STU3 publish/subscribe over MESH.
#[derive(Debug, Parser)]
#[command(name = "nems", version)]
struct Cli {
    /// Configuration file (TOML); environment variables override it.
    #[arg(long, global = true, env = "NEMS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run core, edge and mesh-adapter together on embedded defaults.
    Up,
    /// Run core (gRPC service and operator APIs).
    Core,
    /// Run the FHIR HTTP edge.
    Edge,
    /// Run the delivery adapter.
    MeshAdapter,
    /// Import a reference data file (NHSPD, NSPL, ONSPD, epraccur, sub-ICB codes) or a demographics CSV.
    Import {
        /// The file.
        file: PathBuf,
        /// Core's operator API URL (default: from the configuration).
        #[arg(long)]
        operator: Option<String>,
    },
    /// Operator commands.
    #[command(subcommand)]
    Admin(admin::Admin),
    /// Print the effective configuration (secrets hidden).
    Config,
}

fn operator_tls(
    config: &config::NemsConfig,
) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    config
        .operator_tls
        .as_ref()
        .map(|t| t.to_tonic().map_err(anyhow::Error::msg))
        .transpose()
}

/// Core's operator API as the configuration places it (its own listener, `127.0.0.1:9091`
/// by default), over TLS when `[operator_tls]` is set.
fn operator_url(config: &config::NemsConfig) -> String {
    let scheme = if config.operator_tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}", config.core.operator_listen)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = config::NemsConfig::load(cli.config.as_deref(), &config::Environment)?;
    logging::init(&config.log);
    config::warn_unknown_variables(&config::Environment);
    match cli.command {
        Command::Up => run::up(config, run::on_signal()).await,
        Command::Core => run::core(config, run::on_signal()).await,
        Command::Edge => run::edge(config, run::on_signal()).await,
        Command::MeshAdapter => run::adapter(config, run::on_signal()).await,
        Command::Import { file, operator } => {
            let url = operator.unwrap_or_else(|| operator_url(&config));
            let size = std::fs::metadata(&file).map(|m| m.len()).ok();
            let reader = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let started = std::time::Instant::now();
            let s = import::import_with(reader, &name, &url, operator_tls(&config)?, true, size)
                .await?;
            import::write_report(&mut std::io::stderr().lock(), &name, &s, started.elapsed())
                .context("writing the import report")?;
            Ok(())
        }
        Command::Admin(command) => {
            admin::run_with(command, &operator_url(&config), operator_tls(&config)?).await
        }
        Command::Config => {
            #[allow(clippy::print_stdout, reason = "prints the configuration")]
            {
                println!("{config:#?}");
                println!("\nenvironment overrides:");
                for (name, key) in config::ENV_OVERRIDES {
                    println!("  {name:28} {key}");
                }
            }
            Ok(())
        }
    }
}
