//! `nems-bench`: rerunnable benchmarks with a printed report. Runs the release `nems`
//! binary's `core` and `edge` as child processes.
//!
//! ```text
//! cargo build --release -p nems -p nems-e2e
//! target/release/nems-bench subscriptions [--count 1000000] [--http 20000] [--concurrency 64]
//! target/release/nems-bench publish [--subscriptions 1000000] [--seconds 20] [--concurrency 64]
//!                                   [--rate 0|5000] [--bytes 10240] [--durable true|false]
//!                                   [--two-phase-commit true|false]
//! ```
//! Options: `--nems PATH` (default `target/release/nems`), `--dir DIR` (default a temp dir).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its report"
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nems_e2e::bench::{self, Phase, cpu_seconds, memory_mib};

fn args() -> (String, HashMap<String, String>) {
    let mut it = std::env::args().skip(1);
    let command = it.next().unwrap_or_default();
    let mut options = HashMap::new();
    while let Some(key) = it.next() {
        let value = it.next().unwrap_or_default();
        options.insert(key.trim_start_matches("--").to_string(), value);
    }
    (command, options)
}

fn opt<T: std::str::FromStr>(o: &HashMap<String, String>, key: &str, default: T) -> T {
    o.get(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn line(name: &str, p: &mut Phase) {
    println!(
        "{name:<34} {:>9} ops in {:>7.2}s = {:>9.0}/s   p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
        p.ops,
        p.elapsed.as_secs_f64(),
        p.rate(),
        p.latencies.quantile_ms(0.50),
        p.latencies.quantile_ms(0.99),
        p.errors
    );
}

#[tokio::main]
async fn main() {
    let (command, o) = args();
    let nems = bench::nems_binary(o.get("nems").map(Into::into));
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = o
        .get("dir")
        .map_or_else(|| temp.path().to_path_buf(), Into::into);
    std::fs::create_dir_all(&dir).expect("dir");
    let concurrency: usize = opt(&o, "concurrency", 64);
    match command.as_str() {
        "subscriptions" => {
            let count: u64 = opt(&o, "count", 1_000_000);
            let http_count: u64 = opt(&o, "http", 20_000);
            let core = bench::start_core(&nems, &dir, true, true).await;
            println!(
                "subscription creation, {count} over gRPC then {http_count} over HTTP, concurrency {concurrency}, durable"
            );
            let started = Instant::now();
            let window = (count / 10).max(1);
            let mut done = 0;
            let mut last = None;
            while done < count {
                let end = (done + window).min(count);
                let mut p = bench::create_grpc(core.addr, done, end, concurrency).await;
                line(&format!("grpc creates {done}..{end}"), &mut p);
                done = end;
                last = Some(p);
            }
            let total = started.elapsed();
            println!(
                "grpc overall: {count} in {:.1}s = {:.0}/s",
                total.as_secs_f64(),
                count as f64 / total.as_secs_f64()
            );
            let (rss, hwm) = memory_mib(core.pid());
            let size = bench::db_size(&dir);
            let millions = count as f64 / 1e6;
            println!(
                "stored {count}: redb file {:.1} MiB ({:.1} MiB per million), core RSS {rss:.1} MiB, peak {hwm:.1} MiB ({:.1} MiB RSS per million)",
                size as f64 / 1048576.0,
                size as f64 / 1048576.0 / millions,
                rss / millions
            );
            let edge = bench::start_edge(&nems, core.addr).await;
            let mut p = bench::create_http(edge.addr, count, count + http_count, concurrency).await;
            line(&format!("http creates at {count} stored"), &mut p);
            if let Some(mut p) = last {
                line("grpc creates, last window", &mut p);
            }
        }
        "publish" => {
            let subscriptions: u64 = opt(&o, "subscriptions", 1_000_000);
            let seconds: u64 = opt(&o, "seconds", 20);
            let rate: u64 = opt(&o, "rate", 0);
            let bytes: usize = opt(&o, "bytes", 10_240);
            let durable: bool = opt(&o, "durable", true);
            let two_phase: bool = opt(&o, "two-phase-commit", true);
            let core = bench::start_core(&nems, &dir, durable, two_phase).await;
            println!("preloading {subscriptions} explicit subscriptions over gRPC...");
            let mut p = bench::create_grpc(core.addr, 0, subscriptions, concurrency).await;
            line("preload", &mut p);
            // The core child inherits this process's environment: its store is this.
            #[allow(clippy::disallowed_methods, reason = "the core child's own setting")]
            let database = std::env::var("NEMS_DATABASE_URL");
            if let Ok(url) = database {
                let took = bench::settle_postgres(&url).await;
                println!(
                    "PostgreSQL settled after the load (VACUUM (ANALYZE)) in {:.1}s",
                    took.as_secs_f64()
                );
            }
            let edge = bench::start_edge(&nems, core.addr).await;
            // Warm up connections and caches.
            let _ = bench::publish_http(
                edge.addr,
                subscriptions,
                bytes,
                concurrency.min(8),
                0,
                Duration::from_secs(2),
            )
            .await;
            let (core_cpu, edge_cpu, self_cpu) = (
                cpu_seconds(core.pid()),
                cpu_seconds(edge.pid()),
                cpu_seconds(std::process::id()),
            );
            let mut p = bench::publish_http(
                edge.addr,
                subscriptions,
                bytes,
                concurrency,
                rate,
                Duration::from_secs(seconds),
            )
            .await;
            let wall = p.elapsed.as_secs_f64();
            let mode = if rate > 0 {
                format!("open loop at {rate}/s")
            } else {
                format!("closed loop, {concurrency} clients")
            };
            println!(
                "publish over HTTP, ~{bytes}-byte events, {subscriptions} subscriptions stored, durable={durable}, two-phase commit={two_phase}, {mode}"
            );
            line("publishes", &mut p);
            println!(
                "cpu (cores busy): core {:.2}, edge {:.2}, load generator {:.2}, total {:.2} of 2",
                (cpu_seconds(core.pid()) - core_cpu) / wall,
                (cpu_seconds(edge.pid()) - edge_cpu) / wall,
                (cpu_seconds(std::process::id()) - self_cpu) / wall,
                (cpu_seconds(core.pid()) - core_cpu + cpu_seconds(edge.pid()) - edge_cpu
                    + cpu_seconds(std::process::id())
                    - self_cpu)
                    / wall
            );
            let (rss, hwm) = memory_mib(core.pid());
            println!(
                "core RSS {rss:.1} MiB (peak {hwm:.1}), redb file {:.1} MiB",
                bench::db_size(&dir) as f64 / 1048576.0
            );
        }
        _ => {
            eprintln!("usage: nems-bench subscriptions|publish [--options]; see the source header");
            std::process::exit(2);
        }
    }
}
