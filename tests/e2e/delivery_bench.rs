//! Delivery benchmarks (ignored by default; run in release): core → the real adapter with
//! the MESH sink → the in-process MESH fake, with 1,000 recipient mailboxes.
//!
//! - `delivery_bench_throughput_1000_mailboxes`: the adapter runs while 10,000 deliveries
//!   are published (10 events, each matching one explicit subscription per mailbox); the
//!   clock runs from the first publish until the ledger shows every delivery delivered.
//! - `delivery_bench_backlog_drain_100k`: 100,000 deliveries are queued with the adapter
//!   stopped; the clock runs from the adapter's start until the ledger shows all delivered.
//!
//! - `delivery_bench_outage_drain`: MESH stops answering (every connection dropped) for
//!   `NEMS_BENCH_OUTAGE_SECS` (default 600) while `NEMS_BENCH_OUTAGE_QUEUED` deliveries
//!   (default 10,000, over 100 mailboxes) are queued; the clock runs from MESH's return until
//!   the ledger shows all delivered (target: 60 s). The adapter's circuit holds them meanwhile.
//! - `delivery_bench_one_mailbox_outage_latency`: delivery latency (acceptance → delivered,
//!   from the ledger) of 20 healthy mailboxes, alone and then with one more mailbox whose MESH
//!   route hangs every send, in the same run; p50 and p99 of each and their ratio.
//!
//! They check the outcome too: exactly one MESH message per delivery, none dead-lettered.
//! Sizes can be changed with `NEMS_BENCH_MAILBOXES`, `NEMS_BENCH_DELIVERIES` and
//! `NEMS_BENCH_BACKLOG`. Run:
//!
//! ```text
//! cargo test --release -p nems-e2e --test e2e delivery_bench -- --ignored --nocapture --test-threads 1
//! ```
#![allow(clippy::print_stderr, reason = "a benchmark prints its report")]

use std::time::{Duration, Instant};

use nems_e2e::mesh_fake::MeshFake;
use nems_e2e::spine::explicit;
use nems_e2e::stack::TestStack;
use nems_proto::v1 as pb;

use crate::delivery_support::{
    NHS_NUMBER, fake, fake_stack, publish, subscribe, vaccination_event,
};

const COMMAND: &str = "cargo test --release -p nems-e2e --test e2e delivery_bench -- --ignored --nocapture --test-threads 1";

fn setting(name: &str, default: usize) -> usize {
    #[allow(
        clippy::disallowed_methods,
        reason = "benchmark sizes from the environment"
    )]
    let value = std::env::var(name).ok();
    value.and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A stack with `mailboxes` recipient mailboxes at the fake, each subscribed once to
/// vaccinations events about [`NHS_NUMBER`]; the adapter is not started.
async fn bench_stack(fake: &MeshFake, mailboxes: usize) -> TestStack {
    let ids: Vec<String> = (0..mailboxes).map(|i| format!("BENCH{i:05}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let max_in_flight = setting("NEMS_BENCH_MAX_IN_FLIGHT", 64) as u32;
    let durable = setting("NEMS_BENCH_DURABLE", 1) != 0;
    let stack = fake_stack(fake, &refs)
        .core(move |c| c.durable = durable)
        .adapter(move |c| {
            c.max_in_flight = max_in_flight;
            // Production's report poll interval: the fake lists its whole store per poll,
            // which a real MESH inbox listing does not.
            c.mesh.report_poll_interval = Duration::from_secs(300);
        })
        .adapter_stopped()
        .start()
        .await;
    eprintln!(
        "  core durable (fsync per commit): {durable}; adapter max_in_flight {max_in_flight}, per mailbox 4"
    );
    let started = Instant::now();
    let criteria = explicit(NHS_NUMBER, &["vaccinations-1"], "");
    for id in &ids {
        subscribe(&stack, id, &criteria).await;
    }
    eprintln!(
        "  setup: {mailboxes} subscriptions in {:.2?}",
        started.elapsed()
    );
    stack
}

/// Publishes `events` events (each one delivery per mailbox).
async fn publish_events(stack: &TestStack, events: usize, tag: &str) {
    for n in 0..events {
        let payload = vaccination_event(NHS_NUMBER, &format!("bench-{tag}-{n}"));
        publish(stack, payload.as_bytes()).await;
    }
}

/// The ledger's totals over every mailbox.
async fn totals(stack: &TestStack) -> pb::MailboxStats {
    let response = stack
        .operator()
        .get_mailbox_stats(pb::GetMailboxStatsRequest::default())
        .await
        .expect("mailbox stats")
        .into_inner();
    let mut total = pb::MailboxStats::default();
    for m in response.mailboxes {
        total.queued += m.queued;
        total.in_flight += m.in_flight;
        total.delivered += m.delivered;
        total.dead_lettered += m.dead_lettered;
    }
    total
}

/// Polls the ledger until `expected` deliveries are delivered; returns when that was seen.
/// Panics on a dead letter or after `limit`.
async fn until_delivered(
    stack: &TestStack,
    fake: &MeshFake,
    expected: u64,
    limit: Duration,
) -> Instant {
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let total = totals(stack).await;
        assert_eq!(total.dead_lettered, 0, "no delivery may fail: {total:?}");
        if total.delivered >= expected {
            return Instant::now();
        }
        assert!(
            start.elapsed() < limit,
            "not drained within {limit:?}: {total:?}"
        );
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  … {:.0?}: ledger delivered {} / {expected}, queued {}, in flight {}; MESH holds {}",
                start.elapsed(),
                total.delivered,
                total.queued,
                total.in_flight,
                fake.message_count()
            );
        }
    }
}

/// Checks that MESH holds exactly one message per delivery, spread evenly.
fn check_one_copy_each(fake: &MeshFake, expected: usize, mailboxes: usize) {
    let messages = fake.messages();
    assert_eq!(
        messages.len(),
        expected,
        "exactly one MESH message per delivery"
    );
    let local_ids: std::collections::HashSet<&str> = messages
        .iter()
        .filter_map(|m| m.mex_header("mex-localid"))
        .collect();
    assert_eq!(local_ids.len(), expected, "no local id twice");
    let recipients: std::collections::HashSet<&str> = messages.iter().map(|m| m.to()).collect();
    assert_eq!(recipients.len(), mailboxes);
}

/// Prints what the adapter asked MESH, by kind (sends, tracking, inbox polls, other).
fn print_requests(fake: &MeshFake) {
    let (mut sends, mut tracking, mut inbox, mut other) = (0, 0, 0, 0);
    for request in fake.requests() {
        if request.is_send() {
            sends += 1;
        } else if request.path.contains("/outbox/tracking") {
            tracking += 1;
        } else if request.path.contains("/inbox") {
            inbox += 1;
        } else {
            other += 1;
        }
    }
    eprintln!(
        "  MESH requests: {sends} sends, {tracking} tracking, {inbox} inbox polls, {other} other"
    );
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
async fn delivery_bench_throughput_1000_mailboxes() {
    let mailboxes = setting("NEMS_BENCH_MAILBOXES", 1000);
    let deliveries = setting("NEMS_BENCH_DELIVERIES", 10_000);
    let events = deliveries.div_ceil(mailboxes);
    let expected = events * mailboxes;
    eprintln!(
        "delivery throughput: {expected} deliveries ({events} events x {mailboxes} mailboxes), adapter running"
    );
    let fake = fake().await;
    fake.drop_request_bodies();
    let stack = bench_stack(&fake, mailboxes).await;
    let adapter = stack.spawn_adapter();

    let start = Instant::now();
    publish_events(&stack, events, "live").await;
    let published = start.elapsed();
    let done = until_delivered(&stack, &fake, expected as u64, Duration::from_secs(600)).await;
    let elapsed = done.duration_since(start);
    check_one_copy_each(&fake, expected, mailboxes);
    print_requests(&fake);
    eprintln!(
        "RESULT throughput: {expected} deliveries to {mailboxes} mailboxes in {elapsed:.2?} = {:.0} deliveries/s (publishing took {published:.2?})",
        per_second(expected, elapsed)
    );
    eprintln!("  command: {COMMAND}");
    adapter.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
async fn delivery_bench_backlog_drain_100k() {
    let mailboxes = setting("NEMS_BENCH_MAILBOXES", 1000);
    let backlog = setting("NEMS_BENCH_BACKLOG", 100_000);
    let events = backlog.div_ceil(mailboxes);
    let expected = events * mailboxes;
    eprintln!(
        "backlog drain: {expected} deliveries ({events} events x {mailboxes} mailboxes) queued with the adapter stopped"
    );
    let fake = fake().await;
    fake.drop_request_bodies();
    let stack = bench_stack(&fake, mailboxes).await;

    let queued_at = Instant::now();
    publish_events(&stack, events, "backlog").await;
    let queueing = queued_at.elapsed();
    let total = totals(&stack).await;
    assert_eq!(
        total.queued, expected as u64,
        "the backlog is queued: {total:?}"
    );
    eprintln!(
        "  queued {expected} in {queueing:.2?} ({:.0} deliveries/s accepted)",
        per_second(expected, queueing)
    );

    let start = Instant::now();
    let adapter = stack.spawn_adapter();
    let done = until_delivered(&stack, &fake, expected as u64, Duration::from_secs(1800)).await;
    let elapsed = done.duration_since(start);
    check_one_copy_each(&fake, expected, mailboxes);
    print_requests(&fake);
    eprintln!(
        "RESULT backlog drain: {expected} deliveries to {mailboxes} mailboxes drained in {elapsed:.2?} = {:.0} deliveries/s",
        per_second(expected, elapsed)
    );
    eprintln!("  command: {COMMAND}");
    adapter.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
async fn delivery_bench_outage_drain() {
    let queued = setting("NEMS_BENCH_OUTAGE_QUEUED", 10_000);
    let outage = Duration::from_secs(setting("NEMS_BENCH_OUTAGE_SECS", 600) as u64);
    let mailboxes = 100;
    let events = queued.div_ceil(mailboxes);
    let expected = events * mailboxes;
    eprintln!(
        "outage drain: {expected} deliveries queued during a {outage:?} MESH outage, adapter running"
    );
    let fake = fake().await;
    fake.drop_request_bodies();
    let stack = bench_stack(&fake, mailboxes).await;
    let adapter = stack.spawn_adapter();
    let down = Instant::now();
    fake.set_unreachable(true);
    publish_events(&stack, events, "outage").await;
    eprintln!("  queued in {:.2?}", down.elapsed());
    // The outage's length is the benchmark's parameter, not a synchronisation.
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    let queued_total = totals(&stack).await;
    eprintln!(
        "  after {:.0?} down: ledger queued {}, in flight {}, delivered {}; circuit open {}, probes failed {}",
        down.elapsed(),
        queued_total.queued,
        queued_total.in_flight,
        queued_total.delivered,
        crate::delivery_recovery::metric("nems_mesh_circuit_open"),
        crate::delivery_recovery::metric("nems_mesh_circuit_probes_total{result=\"failed\"}"),
    );
    let sends_during = fake.sends().len();
    let back = Instant::now();
    fake.set_unreachable(false);
    let done = until_delivered(&stack, &fake, expected as u64, Duration::from_secs(600)).await;
    let drained = done.duration_since(back);
    check_one_copy_each(&fake, expected, mailboxes);
    print_requests(&fake);
    eprintln!(
        "RESULT outage drain: {expected} deliveries queued over a {:.0?} outage all delivered {drained:.2?} after MESH answered again (target 60 s); {sends_during} send attempts reached MESH while it was down",
        back.duration_since(down)
    );
    eprintln!("  command: {COMMAND}");
    adapter.stop().await;
    stack.shutdown().await;
}

/// Acceptance → delivered latency of each delivered row of `mailboxes` with a delivery id
/// above `after`, in milliseconds, and the highest delivery id seen.
async fn latencies(stack: &TestStack, mailboxes: &[String], after: u64) -> (Vec<i64>, u64) {
    let mut out = Vec::new();
    let mut highest = after;
    for mailbox in mailboxes {
        for row in crate::delivery_support::deliveries_to(stack, mailbox).await {
            if row.state() != pb::DeliveryState::Delivered || row.delivery_id <= after {
                continue;
            }
            highest = highest.max(row.delivery_id);
            let (Some(a), Some(u)) = (row.accepted_at, row.updated_at) else {
                continue;
            };
            out.push((u.seconds - a.seconds) * 1000 + i64::from(u.nanos - a.nanos) / 1_000_000);
        }
    }
    out.sort_unstable();
    (out, highest)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
async fn delivery_bench_one_mailbox_outage_latency() {
    use nems_e2e::mesh_fake::Behaviour;
    let events = setting("NEMS_BENCH_EVENTS", 100);
    let fake = fake().await;
    fake.drop_request_bodies();
    fake.set_behaviour("BROKEN01", Behaviour::Hang);
    let healthy: Vec<String> = (0..20).map(|i| format!("HEALTHY{i:02}")).collect();
    let mut ids: Vec<&str> = healthy.iter().map(String::as_str).collect();
    ids.push("BROKEN01");
    let stack = fake_stack(&fake, &ids)
        .adapter(|c| {
            c.mesh.report_poll_interval = Duration::from_secs(300);
            c.mesh.request_timeout = Duration::from_secs(5);
        })
        .start()
        .await;
    let criteria = explicit(NHS_NUMBER, &["vaccinations-1"], "");
    for id in &healthy {
        subscribe(&stack, id, &criteria).await;
    }
    // Phase 1: healthy mailboxes only, one event at a time as each is delivered.
    let paced = |tag: &'static str, expected_per_event: u64| {
        let stack = &stack;
        let fake = &fake;
        async move {
            for n in 0..events {
                let before = totals(stack).await.delivered;
                let payload = vaccination_event(NHS_NUMBER, &format!("latency-{tag}-{n}"));
                publish(stack, payload.as_bytes()).await;
                let mut tick = tokio::time::interval(Duration::from_millis(2));
                loop {
                    tick.tick().await;
                    if totals(stack).await.delivered >= before + expected_per_event {
                        break;
                    }
                }
            }
            let _ = fake;
        }
    };
    paced("alone", healthy.len() as u64).await;
    let (alone, cutoff) = latencies(&stack, &healthy, 0).await;
    // Phase 2: the same with a subscriber whose MESH route hangs every send.
    subscribe(&stack, "BROKEN01", &criteria).await;
    paced("beside", healthy.len() as u64).await;
    let (beside, _) = latencies(&stack, &healthy, cutoff).await;
    let broken = totals(&stack).await;
    let (a50, a99) = (percentile(&alone, 0.5), percentile(&alone, 0.99));
    let (b50, b99) = (percentile(&beside, 0.5), percentile(&beside, 0.99));
    eprintln!(
        "RESULT one-mailbox outage: healthy deliveries alone p50 {a50} ms p99 {a99} ms ({} rows); beside a hanging mailbox p50 {b50} ms p99 {b99} ms ({} rows); ratio p50 {:.2} p99 {:.2}; circuit opened {} times; ledger {broken:?}",
        alone.len(),
        beside.len(),
        b50 as f64 / a50.max(1) as f64,
        b99 as f64 / a99.max(1) as f64,
        crate::delivery_recovery::metric("nems_mesh_circuit_opens_total"),
    );
    eprintln!("  command: {COMMAND}");
    stack.shutdown().await;
}
