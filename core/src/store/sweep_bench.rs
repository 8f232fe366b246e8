//! The retention sweep benchmark (ignored by default; it prints a report):
//!
//! ```text
//! cargo test --release -p nems-core --lib sweep_bench -- --ignored --nocapture
//! ```
//!
//! A durable store holds `NEMS_SWEEP_BENCH_DEAD` (default 100,000) dead letters of one dead
//! mailbox, all inside their redrive window, so a retention pass has nothing to release or
//! remove. Small writes (one accepted event each, as a publish makes) run back to back on
//! their own and then while retention passes run continuously in the same writer; the
//! report gives the pass time and the write latencies of both phases.
#![allow(clippy::print_stdout, reason = "a benchmark prints its report")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redb::WriteTransaction;

use super::events::accept;
use super::keys::now_ms;
use super::ledger;
use super::{Store, StoreError, StoreOptions};
use crate::backend::{NewDelivery, NewEvent, Outcome};

const DAY_MS: u64 = 24 * 3600 * 1000;

fn event(id: u128, mailbox: &str, at: u64) -> NewEvent {
    NewEvent {
        event_id: id,
        event_code: "vaccinations-1".into(),
        message_event_type: "new".into(),
        publisher_asid: "200000000111".into(),
        workflow_id: "VACCINATIONS_1".into(),
        payload: bytes::Bytes::from(vec![b'x'; 2_000]),
        deliveries: vec![NewDelivery {
            mailbox: mailbox.into(),
            partner_id: String::new(),
            subscription_ids: vec!["s".into()],
            suppressed: false,
        }],
        matched_subscriptions: 1,
        accepted_ms: at,
    }
}

/// One retention pass with the production settings (90 days of ledger, 30 days of dead
/// letters).
fn sweep_pass(tx: &WriteTransaction, now: u64) -> Result<crate::backend::Swept, StoreError> {
    ledger::sweep(tx, now, 90 * DAY_MS, 30 * DAY_MS, 0, 5_000)
}

fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

fn report(name: &str, samples: &mut [Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<40} {:>6} writes  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
        samples.len(),
        ms(quantile(samples, 0.5)),
        ms(quantile(samples, 0.99)),
        ms(quantile(samples, 1.0)),
    );
}

async fn small_writes(store: &Store, first_id: u128, count: u32) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(count as usize);
    for i in 0..count {
        let e = event(first_id + u128::from(i), "LIVE", now_ms());
        let started = Instant::now();
        store
            .writer()
            .write(move |tx| accept(tx, &e))
            .await
            .unwrap();
        samples.push(started.elapsed());
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn sweep_bench() {
    #[allow(clippy::disallowed_methods, reason = "benchmark size override")]
    let dead: u64 = std::env::var("NEMS_SWEEP_BENCH_DEAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let seeding = Instant::now();
    let batch = 5_000u64;
    let mut done = 0u64;
    while done < dead {
        let n = batch.min(dead - done);
        let first = done;
        store
            .writer()
            .write(move |tx| {
                let now = now_ms();
                for i in first..first + n {
                    accept(tx, &event(1 + u128::from(i), "DEAD", now))?;
                }
                let picks = [("DEAD".to_string(), n as u32)];
                let leases =
                    ledger::lease(tx, &picks, now, 60_000, crate::backend::Budget::UNLIMITED)?
                        .leases;
                let refused = Outcome::Refused {
                    code: "12".into(),
                    reason: "Unregistered to address".into(),
                };
                for d in &leases[0].deliveries {
                    ledger::complete(tx, d.delivery_id, d.attempt, &refused, now)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        done += n;
    }
    println!(
        "seeded {dead} dead letters of one mailbox in {:.1}s",
        seeding.elapsed().as_secs_f64()
    );

    // A pass on its own.
    let mut passes = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let swept = store
            .writer()
            .write(|tx| sweep_pass(tx, now_ms()))
            .await
            .unwrap();
        passes.push(started.elapsed());
        assert_eq!(swept, crate::backend::Swept::default(), "nothing is due");
    }
    report("retention pass alone (5 passes)", &mut passes);

    let mut idle = small_writes(&store, 1 << 64, 300).await;
    report("small writes, no sweep", &mut idle);

    // Passes back to back (as the sweeper does while a pass reports more work) while the
    // small writes run.
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                store
                    .writer()
                    .write(|tx| sweep_pass(tx, now_ms()))
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let mut during = small_writes(&store, 2 << 64, 300).await;
    stop.store(true, Ordering::Relaxed);
    let passes = sweeper.await.unwrap();
    report(&format!("small writes during {passes} passes"), &mut during);
    drop(store);
}
