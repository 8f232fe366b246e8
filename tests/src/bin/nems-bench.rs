//! `nems-bench`: rerunnable benchmarks with a printed report. Runs the release `nems`
//! binary's `core` and `edge` as child processes.
//!
//! ```text
//! cargo build --release -p nems -p nems-e2e
//! target/release/nems-bench subscriptions [--count 1000000] [--http 20000] [--concurrency 64]
//! target/release/nems-bench publish [--subscriptions 1000000] [--seconds 20] [--concurrency 64]
//!                                   [--rate 0|5000] [--bytes 10240] [--durable true|false]
//!                                   [--two-phase-commit true|false]
//! target/release/nems-bench console [--subscriptions 1000000] [--deliveries 1000000]
//!                                   [--mailboxes 20] [--dead-letters 1000] [--rounds 20]
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
            settle_if_postgres().await;
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
        "console" => console(&nems, &dir, &o, concurrency).await,
        _ => {
            eprintln!(
                "usage: nems-bench subscriptions|publish|console [--options]; see the source header"
            );
            std::process::exit(2);
        }
    }
}

/// On PostgreSQL (the core child inherits this process's environment, so its store is
/// `NEMS_DATABASE_URL`), settles the database after a bulk load, as an operator would.
async fn settle_if_postgres() {
    #[allow(clippy::disallowed_methods, reason = "the core child's own setting")]
    let database = std::env::var("NEMS_DATABASE_URL");
    if let Ok(url) = database {
        let took = bench::settle_postgres(&url).await;
        println!(
            "PostgreSQL settled after the load (VACUUM (ANALYZE)) in {:.1}s",
            took.as_secs_f64()
        );
    }
}

/// The console's pages with many subscriptions and deliveries stored: loads them into a
/// `nems core` (not durable, to load fast; reads are what is measured), dead-letters the
/// newest deliveries of one mailbox, then fetches each page `rounds` times one after
/// another over HTTP and prints p50, p99 and the slowest against the 200 ms target.
async fn console(
    nems: &std::path::Path,
    dir: &std::path::Path,
    o: &HashMap<String, String>,
    concurrency: usize,
) {
    use nems_e2e::http::HttpClient;
    use nems_proto::v1 as pb;
    use nems_proto::v1::delivery_service_client::DeliveryServiceClient;
    use nems_proto::v1::operator_service_client::OperatorServiceClient;

    let subscriptions: u64 = opt(o, "subscriptions", 1_000_000);
    let deliveries: u64 = opt(o, "deliveries", 1_000_000);
    let mailboxes: u64 = opt(o, "mailboxes", 20);
    let dead: u32 = opt(o, "dead-letters", 1_000);
    let rounds: usize = opt(o, "rounds", 20);
    let core = bench::start_core_with(nems, dir, false, true, &[]).await;
    let banner = core.banner.clone();
    let after = |marker: &str| -> std::net::SocketAddr {
        banner
            .split_once(marker)
            .and_then(|(_, rest)| {
                rest.split([',', ' ', '/'])
                    .find(|p| !p.is_empty() && *p != "http:")
            })
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {marker} in `{banner}`"))
    };
    let operator = after("operator API on ");
    let ops = after("console http://");
    println!(
        "console pages with {subscriptions} subscriptions and {deliveries} deliveries over {mailboxes} mailboxes (core not durable while loading)"
    );
    let mut p = bench::create_grpc(core.addr, 0, subscriptions, concurrency).await;
    line("load subscriptions", &mut p);
    let mut directory = nems_proto::v1::directory_service_client::DirectoryServiceClient::new(
        bench::channel(operator),
    );
    for n in 0..mailboxes {
        directory
            .put_mailbox(pb::PutMailboxRequest {
                mailbox: Some(pb::MeshMailbox {
                    mailbox_id: bench::bench_mailbox(n),
                    ods_code: "RR8".into(),
                    description: "benchmark mailbox".into(),
                }),
            })
            .await
            .expect("register a benchmark mailbox");
    }
    let mut p = bench::inject_grpc(operator, 0, deliveries, mailboxes, concurrency).await;
    line("load deliveries", &mut p);
    // The newest deliveries of the first mailbox become dead letters, so that a scan of
    // that mailbox oldest first passes every other delivery before it finds one.
    let first = bench::bench_mailbox(0);
    let newest = OperatorServiceClient::new(bench::channel(operator))
        .list_deliveries(pb::ListDeliveriesRequest {
            mailbox: first.clone(),
            newest_first: true,
            page_size: dead.min(1000),
            ..Default::default()
        })
        .await
        .expect("list deliveries")
        .into_inner()
        .deliveries;
    let mut reporter = DeliveryServiceClient::new(bench::channel(core.addr));
    for d in &newest {
        reporter
            .report_undelivered(pb::ReportUndeliveredRequest {
                mesh_message_id: String::new(),
                local_id: d.local_id.clone(),
                code: "14".into(),
                description: "benchmark: undelivered".into(),
            })
            .await
            .expect("report undelivered");
    }
    println!(
        "dead-lettered the newest {} deliveries of {first}",
        newest.len()
    );

    let http = HttpClient::new(ops);
    let home = http.get("/console/subscriptions", &[]).await.text();
    let subscription = home
        .split("href=\"/console/subscriptions/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_owned();
    let second = bench::bench_mailbox(1);
    let mailbox_page = http
        .get(&format!("/console/mailboxes/{second}"), &[])
        .await
        .text();
    let next = mailbox_page
        .split("id=\"next\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .replace("&amp;", "&");
    let pages: Vec<(&str, String)> = vec![
        ("overview", "/console/".into()),
        ("mailboxes", "/console/mailboxes".into()),
        (
            "mailboxes by oldest pending",
            "/console/mailboxes?sort=oldest".into(),
        ),
        (
            "a mailbox's deliveries",
            format!("/console/mailboxes/{second}"),
        ),
        ("... its next page", next),
        ("dead letters", "/console/dead-letters".into()),
        (
            "dead letters of a mailbox",
            format!("/console/dead-letters?mailbox={first}"),
        ),
        (
            "... of a mailbox with none",
            format!("/console/dead-letters?mailbox={second}"),
        ),
        ("subscriptions", "/console/subscriptions".into()),
        (
            "... by mailbox",
            "/console/subscriptions?by=mailbox&q=RR8MBX01".into(),
        ),
        (
            "... by ODS code",
            "/console/subscriptions?by=ods&q=RR8".into(),
        ),
        (
            "a subscription",
            format!("/console/subscriptions/{subscription}"),
        ),
        ("directory", "/console/directory".into()),
        ("reference data", "/console/reference-data".into()),
        ("audit", "/console/audit".into()),
        (
            "audit of one action",
            "/console/audit?action=redrive".into(),
        ),
        ("replay form", format!("/console/replay?mailbox={second}")),
    ];
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>8}  within 200 ms",
        "page", "p50 ms", "p99 ms", "max ms", "bytes"
    );
    let mut slow = 0;
    let mut report = |name: &str, lat: &mut bench::Latencies, max: Duration, bytes: usize| {
        let ok = max <= Duration::from_millis(200);
        if !ok {
            slow += 1;
        }
        println!(
            "{name:<32} {:>9.2} {:>9.2} {:>9.2} {bytes:>8}  {}",
            lat.quantile_ms(0.50),
            lat.quantile_ms(0.99),
            max.as_secs_f64() * 1000.0,
            if ok { "yes" } else { "NO" }
        );
    };
    for (name, path) in &pages {
        let _ = http.get(path, &[]).await;
        let mut lat = bench::Latencies::default();
        let (mut max, mut bytes) = (Duration::ZERO, 0);
        for _ in 0..rounds {
            let t = Instant::now();
            let page = http.get(path, &[]).await;
            let took = t.elapsed();
            assert_eq!(page.status, 200, "{name} ({path}): {}", page.text());
            bytes = page.text().len();
            lat.push(took);
            max = max.max(took);
        }
        report(name, &mut lat, max, bytes);
    }
    // The NHS-number search is a POST form.
    let form = [(
        "content-type",
        "application/x-www-form-urlencoded".to_owned(),
    )];
    let body = format!(
        "nhs_number={}",
        nems_e2e::events::nhs_number(subscriptions / 2)
    );
    let mut lat = bench::Latencies::default();
    let (mut max, mut bytes) = (Duration::ZERO, 0);
    for _ in 0..rounds {
        let t = Instant::now();
        let page = http
            .post("/console/subscriptions", &form, body.clone())
            .await;
        let took = t.elapsed();
        assert_eq!(page.status, 200, "NHS search: {}", page.text());
        bytes = page.text().len();
        lat.push(took);
        max = max.max(took);
    }
    report("subscriptions by NHS number", &mut lat, max, bytes);
    println!(
        "pages over 200 ms: {slow} of {}; core RSS {:.0} MiB",
        pages.len() + 1,
        memory_mib(core.pid()).0
    );
}
