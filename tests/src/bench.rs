//! The load generator behind `nems-bench`: runs `nems core` and `nems edge` as child
//! processes (so each one's CPU and memory can be read from `/proc`), preloads explicit
//! subscriptions over gRPC, and drives subscription creation or publishing over gRPC or
//! HTTP with concurrent clients, reporting throughput, latency percentiles, CPU, on-disk
//! size and memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nems_proto::v1 as pb;
use nems_proto::v1::operator_service_client::OperatorServiceClient;
use nems_proto::v1::subscription_service_client::SubscriptionServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

use crate::events::{nhs_number, vaccination};
use crate::http::HttpClient;
use crate::spine::{self, Op, SUBSCRIBER};

/// A latency recorder (microseconds).
#[derive(Debug, Default)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u128::from(u32::MAX)) as u32);
    }

    /// Merges another recorder.
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// The `q` quantile in milliseconds.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        f64::from(self.0[i]) / 1000.0
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12 (clock ticks of 1/100 s).
    (ticks(11) + ticks(12)) / 100.0
}

/// (VmRSS, VmHWM) in MiB, from `/proc/<pid>/status`.
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (0.0, 0.0);
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A `nems` child process and the address it printed.
#[derive(Debug)]
pub struct Service {
    /// The process.
    pub child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The line it printed that address on.
    pub banner: String,
}

impl Service {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

async fn spawn(nems: &Path, args: &[&str], env: &[(&str, String)], marker: &str) -> Service {
    let mut command = Command::new(nems);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .env("NEMS_OPS_LISTEN", "127.0.0.1:0")
        .env("NEMS_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", nems.display()));
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("service started in time")
            .expect("read stdout")
            .expect("service printed its address");
        if let Some(rest) = line.split_once(marker).map(|(_, r)| r) {
            let addr = rest
                .split_whitespace()
                .next()
                .and_then(|a| {
                    a.trim_start_matches("http://")
                        .trim_end_matches(',')
                        .split('/')
                        .next()
                        .map(str::to_string)
                })
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address in `{line}`"));
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Service {
                child,
                addr,
                banner: line,
            };
        }
    }
}

/// After a bulk load on PostgreSQL, what an operator does before steady-state traffic
/// (and what pgbench does before each run): `VACUUM (ANALYZE)`, so that autovacuum's
/// pass over the freshly loaded tables and their planner statistics do not land inside
/// the measured window. The time it took.
///
/// No `CHECKPOINT`: right after one, the first change to every page writes the whole
/// page to the write-ahead log. At 1,000,000 subscriptions the publish p99 was 112 and
/// 125 ms in two runs with one, 64 ms without.
pub async fn settle_postgres(url: &str) -> Duration {
    let started = Instant::now();
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the benchmark database: {e}"));
    let connection = tokio::spawn(connection);
    client
        .batch_execute("VACUUM (ANALYZE)")
        .await
        .unwrap_or_else(|e| panic!("VACUUM (ANALYZE) on the benchmark database: {e:?}"));
    drop(client);
    let _ = connection.await;
    started.elapsed()
}

/// Starts `nems core` on a fresh data directory with the benchmark directory file;
/// `two_phase_commit` is `core.two_phase_commit`.
pub async fn start_core(nems: &Path, dir: &Path, durable: bool, two_phase_commit: bool) -> Service {
    start_core_with(nems, dir, durable, two_phase_commit, &[]).await
}

/// [`start_core`] with more environment settings (later ones win).
pub async fn start_core_with(
    nems: &Path,
    dir: &Path,
    durable: bool,
    two_phase_commit: bool,
    extra: &[(&str, String)],
) -> Service {
    let directory = dir.join("directory.toml");
    std::fs::write(&directory, crate::stack::TEST_DIRECTORY).expect("directory file");
    let config = dir.join("nems.toml");
    std::fs::write(
        &config,
        format!("version = 1\n[core]\ndurable = {durable}\ntwo_phase_commit = {two_phase_commit}\nmax_pending_deliveries = 100000000\nwrite_queue = 65536\n"),
    )
    .expect("config file");
    spawn(
        nems,
        &["--config", &config.to_string_lossy(), "core"],
        &[
            (
                "NEMS_DATA_DIR",
                dir.join("db").to_string_lossy().into_owned(),
            ),
            (
                "NEMS_DIRECTORY_FILE",
                directory.to_string_lossy().into_owned(),
            ),
            ("NEMS_CORE_LISTEN", "127.0.0.1:0".into()),
            ("NEMS_CORE_OPERATOR_LISTEN", "127.0.0.1:0".into()),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .collect::<Vec<_>>(),
        "gRPC on ",
    )
    .await
}

/// Injects deliveries `start..end` over the operator API (`InjectDelivery`), spread over
/// `mailboxes` mailboxes `BENCHMB000…`, each with a small payload.
pub async fn inject_grpc(
    operator: SocketAddr,
    start: u64,
    end: u64,
    mailboxes: u64,
    concurrency: usize,
) -> Phase {
    let channel = channel(operator);
    drive(
        start,
        end,
        concurrency,
        0,
        Duration::from_secs(86_400),
        move |i| {
            let mut client = OperatorServiceClient::new(channel.clone());
            async move {
                client
                    .inject_delivery(pb::InjectDeliveryRequest {
                        mailbox: bench_mailbox(i % mailboxes.max(1)),
                        event_code: "vaccinations-1".into(),
                        payload: bytes::Bytes::from(format!(
                            "<Bundle><id value=\"{i}\"/></Bundle>"
                        )),
                        partner_id: String::new(),
                    })
                    .await
                    .is_ok()
            }
        },
    )
    .await
}

/// The `n`th benchmark mailbox.
pub fn bench_mailbox(n: u64) -> String {
    format!("BENCHMB{n:03}")
}

/// Starts `nems edge` pointing at `core` (per-ASID rate limit off: one ASID drives the load).
pub async fn start_edge(nems: &Path, core: SocketAddr) -> Service {
    let config = std::env::temp_dir().join(format!("nems-bench-edge-{}.toml", std::process::id()));
    std::fs::write(&config, "version = 1\n[edge]\nrate_limit_per_asid = 0\n").expect("edge config");
    spawn(
        nems,
        &["--config", &config.to_string_lossy(), "edge"],
        &[
            ("NEMS_CORE_URL", format!("http://{core}")),
            ("NEMS_EDGE_LISTEN", "127.0.0.1:0".into()),
        ],
        "FHIR API on ",
    )
    .await
}

/// A lazily connected channel.
pub fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .tcp_nodelay(true)
        .connect_lazy()
}

/// Throughput and latency of one phase.
#[derive(Debug)]
pub struct Phase {
    /// Operations done.
    pub ops: u64,
    /// Failures.
    pub errors: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Latencies.
    pub latencies: Latencies,
}

impl Phase {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `op(index)` from `concurrency` closed-loop workers for indices `start..end`, or
/// open-loop at `rate` per second when `rate > 0`, for at most `duration`.
pub async fn drive<F, Fut>(
    start: u64,
    end: u64,
    concurrency: usize,
    rate: u64,
    duration: Duration,
    op: F,
) -> Phase
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(start));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let begun = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (op, next, errors, stop) = (op.clone(), next.clone(), errors.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            loop {
                if stop.load(Ordering::Relaxed) || begun.elapsed() >= duration {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                if rate > 0 {
                    // Open loop: operation i is due at start + (i - start) / rate.
                    let due = begun + Duration::from_secs_f64((i - start) as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let t = Instant::now();
                if op(i).await {
                    lat.push(t.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    let mut latencies = Latencies::default();
    for w in workers {
        latencies.extend(w.await.expect("worker"));
    }
    stop.store(true, Ordering::Relaxed);
    Phase {
        ops: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed: begun.elapsed(),
        latencies,
    }
}

/// Creates explicit subscriptions `start..end` (one per patient, mailbox RR8MBX01) over gRPC.
pub async fn create_grpc(core: SocketAddr, start: u64, end: u64, concurrency: usize) -> Phase {
    let channel = channel(core);
    drive(
        start,
        end,
        concurrency,
        0,
        Duration::from_secs(86_400),
        move |i| {
            let mut client = SubscriptionServiceClient::new(channel.clone());
            async move {
                let criteria = spine::explicit(&nhs_number(i), &["vaccinations-1"], "");
                client
                    .create_subscription(pb::CreateSubscriptionRequest {
                        caller: Some(spine::pb_caller(SUBSCRIBER)),
                        subscription: Some(spine::subscription_pb("RR8", "RR8MBX01", &criteria)),
                    })
                    .await
                    .is_ok()
            }
        },
    )
    .await
}

/// Creates explicit subscriptions `start..end` over HTTP (XML).
pub async fn create_http(edge: SocketAddr, start: u64, end: u64, concurrency: usize) -> Phase {
    let http = HttpClient::new(edge);
    let headers = Arc::new(spine::with_media(
        SUBSCRIBER,
        Op::Create,
        "application/fhir+xml",
        None,
    ));
    drive(
        start,
        end,
        concurrency,
        0,
        Duration::from_secs(86_400),
        move |i| {
            let (http, headers) = (http.clone(), headers.clone());
            async move {
                let criteria = spine::explicit(&nhs_number(i), &["vaccinations-1"], "");
                let body = spine::subscription_xml("RR8", "RR8MBX01", &criteria);
                http.post("/STU3/Subscription", &headers, body).await.status == 201
            }
        },
    )
    .await
}

/// A pool of 1,024 ~`event_bytes` vaccinations events about patients `0..patients`, spread
/// over them (all about patient 0 when `patients` is 0: `--subscriptions 0` publishes
/// events that match nobody).
pub fn event_pool(patients: u64, event_bytes: usize) -> Vec<bytes::Bytes> {
    (0..1024u64)
        .map(|k| {
            bytes::Bytes::from(vaccination(
                &nhs_number((k * 977) % patients.max(1)),
                "2015-06-01",
                event_bytes,
            ))
        })
        .collect()
}

/// Publishes ~`event_bytes` vaccinations events for patients `0..patients` over HTTP.
pub async fn publish_http(
    edge: SocketAddr,
    patients: u64,
    event_bytes: usize,
    concurrency: usize,
    rate: u64,
    duration: Duration,
) -> Phase {
    let http = HttpClient::new(edge);
    let headers = Arc::new(spine::with_media(
        SUBSCRIBER,
        Op::Publish("Vaccinations"),
        "application/fhir+xml",
        None,
    ));
    let pool = Arc::new(event_pool(patients, event_bytes));
    drive(0, u64::MAX, concurrency, rate, duration, move |i| {
        let (http, headers, pool) = (http.clone(), headers.clone(), pool.clone());
        async move {
            let body = pool[(i % pool.len() as u64) as usize].clone();
            http.post("/STU3/Events/1/$process-message", &headers, body)
                .await
                .status
                == 202
        }
    })
    .await
}

/// Size of the database file.
pub fn db_size(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("db").join(nems_core::store::DB_FILE))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Finds the release `nems` binary (`NEMS_BIN` or `target/release/nems`).
pub fn nems_binary(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/nems"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_pool_needs_no_subscribed_patients() {
        let none = event_pool(0, 500);
        assert_eq!(none.len(), 1024);
        assert!(none.iter().all(|e| *e == none[0]), "all about patient 0");
        let some = event_pool(10, 500);
        assert!(some.iter().any(|e| *e != some[0]));
    }
}
