//! Benchmarks for generic subscriptions, rerunnable, with a printed report. Release builds
//! only:
//!
//! ```text
//! cargo run --release -p nems-core --example gen_postcodes -- /tmp/nhg-2.7m.csv 2700000
//! cargo run --release -p nems-core --example bench_generic -- /tmp/nhg-2.7m.csv
//! rm /tmp/nhg-2.7m.csv
//! ```
//!
//! (a) Import: core runs in this process on a fresh redb store (durable commits, as in
//!     production) and the file is streamed to it over gRPC, through
//!     `OperatorService/ImportReferenceData`, in the batches `nems import` sends. Reports
//!     the wall time, rows per second, the store's size and the process's peak resident
//!     memory (`VmHWM`, core and reader together). Target: under 60 s for 2.7 million rows.
//! (b) Matching: `matching::match_event` for one patient on a read transaction (through the
//!     hidden `nems_core::bench` hook), with 100 and with 100,000 generic subscriptions for
//!     other areas stored (plus the patient's own five). Reports the time per event (best of
//!     five rounds of 2,000 events) and with a fresh read transaction per event. Target:
//!     under 50 µs per event with 100,000; the two sizes within 4x of each other.
//!
//! Temporary stores go under `TMPDIR` and are removed at the end. Exits 1 when a target is
//! missed.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line benchmark"
)]

use std::error::Error;
use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use nems_core::bench::MatchBench;
use nems_core::refdata::{DEFAULT_BATCH_SIZE, ReadReport, read_postcodes};
use nems_core::{Core, CoreConfig, CoreListeners};
use nems_proto::v1 as pb;
use nems_proto::v1::import_reference_data_request::Item;
use nems_proto::v1::operator_service_client::OperatorServiceClient;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

const DEFAULT_PATH: &str = "/tmp/nhg-2.7m.csv";
const IMPORT_TARGET: Duration = Duration::from_secs(60);
const MATCH_TARGET: Duration = Duration::from_micros(50);

type Failure = Box<dyn Error + Send + Sync>;

fn main() -> Result<(), Failure> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_PATH.into());
    if !Path::new(&path).exists() {
        eprintln!(
            "{path} not found; generate it first:\n  cargo run --release -p nems-core --example gen_postcodes -- {path} 2700000"
        );
        std::process::exit(2);
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with --release for meaningful numbers");
    }
    let mut met = true;

    println!("== (a) import through gRPC into redb ==");
    let import = {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(import_benchmark(Path::new(&path)))?
    };
    println!(
        "file               {path} ({:.0} MB)",
        import.bytes as f64 / 1e6
    );
    println!(
        "rows               {} accepted, {} bad; core stored {} (generation {})",
        import.report.accepted, import.report.bad, import.rows, import.generation
    );
    println!(
        "time               {:.1} s ({:.0} rows/s)",
        import.elapsed.as_secs_f64(),
        import.rows as f64 / import.elapsed.as_secs_f64()
    );
    println!("store size         {:.0} MB", import.db_bytes as f64 / 1e6);
    println!(
        "peak memory        VmHWM {} MiB (before the import {} MiB)",
        import.hwm_after_kib / 1024,
        import.hwm_before_kib / 1024
    );
    met &= verdict("import under 60 s", import.elapsed < IMPORT_TARGET);

    println!();
    println!("== (b) matching one event ==");
    let mut results = Vec::new();
    for others in [100, 100_000] {
        let dir = tempfile::tempdir()?;
        let bench = MatchBench::build(dir.path(), others)?;
        let (best, matched) = bench.best_of(5, 2_000)?;
        println!(
            "{:>7} subscriptions  {:>7.2} µs/event (a read transaction each, through the storage seam); {matched} matched; stored in {:.1} s",
            bench.subscriptions,
            best.as_secs_f64() * 1e6,
            bench.seeding.as_secs_f64()
        );
        if matched != 5 {
            return Err(
                format!("expected the patient's 5 subscriptions to match, got {matched}").into(),
            );
        }
        results.push(best);
        bench.close();
    }
    let ratio = results[1].as_secs_f64() / results[0].as_secs_f64();
    println!("ratio              {ratio:.2}x (100,005 vs 105 subscriptions)");
    met &= verdict("matching under 50 µs per event", results[1] < MATCH_TARGET);
    met &= verdict("matching independent of other areas (< 4x)", ratio < 4.0);
    if !met {
        std::process::exit(1);
    }
    Ok(())
}

fn verdict(what: &str, ok: bool) -> bool {
    println!("target: {what}: {}", if ok { "met" } else { "NOT MET" });
    ok
}

struct ImportResult {
    bytes: u64,
    report: ReadReport,
    rows: u64,
    generation: u64,
    elapsed: Duration,
    db_bytes: u64,
    hwm_before_kib: u64,
    hwm_after_kib: u64,
}

/// Starts core on a fresh store, imports `path`, stops core.
async fn import_benchmark(path: &Path) -> Result<ImportResult, Failure> {
    let bytes = std::fs::metadata(path)?.len();
    let dir = tempfile::tempdir()?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = CoreConfig {
        listen: loopback,
        operator_listen: loopback,
        data_dir: dir.path().join("db"),
        ..CoreConfig::default()
    };
    let db_path = config.data_dir.join(nems_core::store::DB_FILE);
    let listeners = CoreListeners::bind(&config).await?;
    let (_, operator) = listeners.addrs()?;
    let core = Core::open(config).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(core.serve(listeners, async move {
        let _ = stopped.await;
    }));

    let hwm_before_kib = vm_hwm_kib();
    let started = Instant::now();
    let (report, response) = stream_file(operator, path).await?;
    let elapsed = started.elapsed();
    let hwm_after_kib = vm_hwm_kib();

    let mut client = client(operator).await?;
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner();
    if status.reference_generations.first() != Some(&response.generation) {
        return Err("the imported set is not the one in force".into());
    }
    let db_bytes = std::fs::metadata(&db_path)?.len();
    let _ = stop.send(());
    server.await??;
    Ok(ImportResult {
        bytes,
        report,
        rows: response.rows,
        generation: response.generation,
        elapsed,
        db_bytes,
        hwm_before_kib,
        hwm_after_kib,
    })
}

/// Streams a postcode file to core's import as `nems import` does: a reader thread, a
/// bounded channel of 5,000-row batches, one client-streaming call.
async fn stream_file(
    operator: SocketAddr,
    path: &Path,
) -> Result<(ReadReport, pb::ImportReferenceDataResponse), Failure> {
    let mut client = client(operator).await?;
    let file = File::open(path)?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let reader = tokio::task::spawn_blocking(move || {
        read_postcodes(
            BufReader::with_capacity(1 << 16, file),
            DEFAULT_BATCH_SIZE,
            |rows| {
                tx.blocking_send(rows)
                    .map_err(|_| "core stopped the import")
            },
        )
    });
    let header = pb::ImportReferenceDataRequest {
        item: Some(Item::Header(pb::ImportHeader {
            data_set: pb::ReferenceDataSet::Postcodes.into(),
            format: "NHSPD".into(),
            source: path.display().to_string(),
            ..Default::default()
        })),
    };
    let batches = ReceiverStream::new(rx).map(|rows| pb::ImportReferenceDataRequest {
        item: Some(Item::Postcodes(pb::PostcodeBatch { rows })),
    });
    let response = client
        .import_reference_data(tokio_stream::once(header).chain(batches))
        .await?
        .into_inner();
    let report = reader
        .await?
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if report.accepted != response.rows || report.bad != 0 {
        return Err(format!(
            "read {} rows ({} bad) but core stored {}",
            report.accepted, report.bad, response.rows
        )
        .into());
    }
    Ok((report, response))
}

/// An operator client for core at `addr`.
async fn client(
    addr: SocketAddr,
) -> Result<OperatorServiceClient<tonic::transport::Channel>, Failure> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(OperatorServiceClient::new(channel).max_encoding_message_size(64 << 20))
}

/// The process's peak resident set size in KiB (`VmHWM` in `/proc/self/status`).
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
