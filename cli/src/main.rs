//! The `nems` binary: argument parsing only; everything else is in the `nems_cli` library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use nems_cli::{admin, config, import, logging, remote, run};

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
    /// Import reference data files (NHSPD, NSPL, ONSPD, epraccur, sub-ICB codes) or a
    /// demographics CSV: each import REPLACES the whole data set.
    #[command(long_about = IMPORT_ABOUT)]
    Import {
        /// Files, folders (every .csv file in them and their sub-folders) or .zip archives
        /// as published; all the files of one data set make one new set.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Core's operator API URL (default: from the configuration).
        #[arg(long)]
        operator: Option<String>,
        /// Dry run: report what the import would change and whether it would be refused;
        /// the data in force is kept.
        #[arg(long, conflicts_with = "force")]
        check: bool,
        /// Replace the data set even when the import would empty it, shrink it past the
        /// limit or has too many malformed rows.
        #[arg(long)]
        force: bool,
        /// Refuse a new set with more than this percentage fewer rows than the set in force
        /// (default: core's core.import.max_shrink_percent, 10).
        #[arg(long, value_name = "PERCENT")]
        max_shrink: Option<f64>,
        /// Refuse an import with more than this percentage of malformed rows (default:
        /// core's core.import.max_bad_row_percent, 1).
        #[arg(long, value_name = "PERCENT")]
        max_bad_rows: Option<f64>,
    },
    /// Operator commands against core's operator API (exit codes: 0 done, 1 failed, 2 usage,
    /// 3 not found).
    Admin(admin::AdminArgs),
    /// Print the effective configuration as TOML: every key, the file it was read from and
    /// the environment variables that changed it; secrets print as "set" or "not set".
    Config,
}

/// `nems import --help`.
const IMPORT_ABOUT: &str = "Import reference data files (NHSPD, NSPL, ONSPD, epraccur, sub-ICB \
codes) or demographics CSVs.

Each import REPLACES the whole data set it belongs to (postcodes, practices or the sub-ICB \
code map) with the rows of the files given, in one step: postcodes not in the files are gone \
afterwards. Give every file of a set together (ONS per-area files, a folder, or the zip as \
published): they make one new set. Demographics are merged into the store instead (newer \
data wins).

Core refuses an import that would leave a set empty, shrink it by more than 10 % (\
core.import.max_shrink_percent) or in which more than 1 % of the rows are malformed (\
core.import.max_bad_row_percent); the data in force is then kept and the command exits \
non-zero. --check reports what would change without changing anything; --force replaces the \
set anyway.";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match execute(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined with ": " (no "Caused by" block).
            #[allow(clippy::print_stderr, reason = "the command's error is its output")]
            {
                eprintln!("nems: {e:#}");
            }
            let code = if e.downcast_ref::<remote::NotFound>().is_some() {
                remote::NOT_FOUND_EXIT
            } else if e.downcast_ref::<remote::Usage>().is_some() {
                remote::USAGE_EXIT
            } else {
                1
            };
            std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    let config = config::NemsConfig::load(cli.config.as_deref(), &config::Environment)?;
    logging::init(&config.log);
    config::warn_unknown_variables(&config::Environment);
    match cli.command {
        Command::Up => run::up(config, run::on_signal()).await,
        Command::Core => run::core(config, run::on_signal()).await,
        Command::Edge => run::edge(config, run::on_signal()).await,
        Command::MeshAdapter => run::adapter(config, run::on_signal()).await,
        Command::Import {
            paths,
            operator,
            check,
            force,
            max_shrink,
            max_bad_rows,
        } => {
            let remote = remote::Remote::from_config(&config, operator.as_deref())?;
            let options = import::Options {
                check,
                force,
                max_shrink_percent: max_shrink,
                max_bad_row_percent: max_bad_rows,
            };
            let mut err = std::io::stderr();
            import::import_paths(
                &paths,
                &remote.url,
                remote.tls.clone(),
                &options,
                true,
                &mut err,
            )
            .await?;
            Ok(())
        }
        Command::Admin(args) => {
            let remote = remote::Remote::from_config(&config, args.operator.as_deref())?;
            let mut stdout = std::io::stdout().lock();
            admin::run_to(args.command, &remote, &mut stdout).await
        }
        Command::Config => {
            let text =
                nems_cli::effective::render(&config, cli.config.as_deref(), &config::Environment)?;
            #[allow(clippy::print_stdout, reason = "prints the configuration")]
            {
                print!("{text}");
            }
            Ok(())
        }
    }
}
