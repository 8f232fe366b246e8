//! The pump: keeps a delivery stream open to core (reconnecting with backoff), hands each
//! leased delivery to the sink on its own task, and reports the outcome back to core.
//! Core bounds how many deliveries are in flight, overall and per mailbox, so a failing
//! mailbox can hold at most its own share of the slots.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cores::Cores;
use nems_proto::v1 as pb;
use nems_proto::v1::delivery_service_client::DeliveryServiceClient;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::circuit::{Circuit, Verdict};
use crate::metrics::means_unreachable;
use crate::retry::RetryPolicy;
use crate::sink::{Sink, SinkOutcome};

/// Code of a delivery handed back unattempted because the destination's circuit is open.
pub const CIRCUIT_OPEN: &str = "CIRCUIT_OPEN";

/// Code of a delivery given up because its retry time ran out.
pub const RETRY_EXHAUSTED: &str = "RETRY_EXHAUSTED";

/// How the pump runs.
#[derive(Debug, Clone)]
pub struct PumpSettings {
    /// Name in core's logs.
    pub consumer: String,
    /// Most deliveries in flight.
    pub max_in_flight: u32,
    /// Most deliveries in flight per mailbox.
    pub max_in_flight_per_mailbox: u32,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// How long to wait for in-flight deliveries at shutdown.
    pub drain_timeout: Duration,
    /// Metrics label of the sink (`folder` or `mesh`).
    pub sink_name: &'static str,
    /// Tracks whether the destination answers (for readiness).
    pub health: Arc<crate::metrics::MeshHealth>,
    /// The longest one attempt may take (MESH: its request timeouts); the pump warns once
    /// when core's leases are shorter, since core would then hand a delivery out again
    /// while its first send may still be open. `None`: no bound to check (folder sink).
    pub attempt_budget: Option<Duration>,
    /// The destination's circuit breaker (MESH); `None` for the folder sink.
    pub circuit: Option<Arc<Circuit>>,
}

/// Turns a sink outcome into the report to core.
pub fn to_report(
    d: &pb::Delivery,
    outcome: SinkOutcome,
    retry: &RetryPolicy,
    now: SystemTime,
) -> pb::CompleteDeliveryRequest {
    use pb::complete_delivery_request::Outcome;
    let outcome = match outcome {
        SinkOutcome::Sent { message_id } => Outcome::Sent(pb::DeliverySent {
            mesh_message_id: message_id,
        }),
        SinkOutcome::Refused { code, reason } => {
            Outcome::Refused(pb::DeliveryRefused { code, reason })
        }
        SinkOutcome::Retry {
            code,
            reason,
            retry_after,
        } => {
            if retry.exhausted(retry_window_start(d, now), now) {
                Outcome::Refused(pb::DeliveryRefused {
                    code: RETRY_EXHAUSTED.into(),
                    reason: format!(
                        "still failing when the retry time ran out; last error {code}: {reason}"
                    ),
                })
            } else {
                // The backoff grows with the delivery's own failures (reset by a redrive),
                // not with its attempts (leases given back and deferrals are not failures).
                let delay = retry.delay(d.failures.saturating_add(1), retry_after);
                Outcome::Retry(pb::DeliveryRetry {
                    code,
                    reason,
                    retry_after: prost_types::Duration::try_from(delay).ok(),
                })
            }
        }
    };
    pb::CompleteDeliveryRequest {
        delivery_id: d.delivery_id,
        attempt: d.attempt,
        outcome: Some(outcome),
    }
}

/// The report giving a delivery back because its destination as a whole is unavailable:
/// queued again at once, with no failure counted and no retry time spent.
pub fn deferred_report(
    d: &pb::Delivery,
    code: String,
    reason: String,
) -> pb::CompleteDeliveryRequest {
    use pb::complete_delivery_request::Outcome;
    pb::CompleteDeliveryRequest {
        delivery_id: d.delivery_id,
        attempt: d.attempt,
        outcome: Some(Outcome::Deferred(pb::DeliveryDeferred {
            code,
            reason,
            retry_after: Some(prost_types::Duration::default()),
        })),
    }
}

/// When the delivery's retry time started: core's `retry_window_start` (acceptance, or the
/// last redrive if later), else `accepted_at` (a core that predates the field), else `now`.
pub fn retry_window_start(d: &pb::Delivery, now: SystemTime) -> SystemTime {
    d.retry_window_start
        .or(d.accepted_at)
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(now)
}

/// Returns the lease time left on a delivery received at `now` when it is shorter than
/// `budget` (the longest an attempt may take), else `None`.
pub fn lease_shorter_than(d: &pb::Delivery, budget: Duration, now: SystemTime) -> Option<Duration> {
    let expires = SystemTime::try_from(d.lease_expires_at?).ok()?;
    let left = expires.duration_since(now).unwrap_or(Duration::ZERO);
    (left < budget).then_some(left)
}

/// Reports an outcome, retrying while core is unreachable (a few times: if core stays
/// away, the lease expires and the delivery is offered again, and the MESH sink's tracking
/// check prevents a second copy).
async fn complete(cores: &Cores, report: pb::CompleteDeliveryRequest) {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=8 {
        let (at, channel) = cores.current();
        match DeliveryServiceClient::new(channel)
            .complete_delivery(report.clone())
            .await
        {
            Ok(_) => return,
            Err(status) if status.code() == tonic::Code::NotFound => return,
            Err(status) => {
                // Another core of the same database records it as well.
                if status.code() == tonic::Code::Unavailable && cores.failed(at) {
                    continue;
                }
                tracing::warn!(delivery = report.delivery_id, attempt, code = ?status.code(), "reporting a delivery outcome failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    tracing::error!(
        delivery = report.delivery_id,
        "gave up reporting a delivery outcome; its lease will expire"
    );
}

/// Deliveries this process is attempting: delivery id → the newest attempt number core
/// handed out for it. Core may hand a delivery out again while an attempt is still under way
/// (its lease was given back when a stream closed); the running attempt then reports under
/// the newest number instead of a second send starting beside it.
type InProgress = Arc<std::sync::Mutex<HashMap<u64, u32>>>;

fn lock(map: &InProgress) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
    match map.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Resolves once the circuit's open state equals `open` (never without a circuit).
async fn circuit_is(rx: &mut Option<watch::Receiver<bool>>, open: bool) {
    match rx {
        Some(rx) => {
            if rx.wait_for(|o| *o == open).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Attempts one delivery and reports the outcome.
async fn attempt<S: Sink>(
    sink: Arc<S>,
    delivery: pb::Delivery,
    settings: Arc<PumpSettings>,
    in_progress: InProgress,
    cores: Arc<Cores>,
) {
    let started = std::time::Instant::now();
    let outcome = sink.deliver(&delivery).await;
    let mut deferred = false;
    if let Some(circuit) = &settings.circuit {
        match &outcome {
            SinkOutcome::Retry { code, .. } if means_unreachable(code) => {
                deferred = circuit.endpoint_failed(started).await == Verdict::Endpoint;
            }
            _ => circuit.note_answer(),
        }
    }
    crate::metrics::record(settings.sink_name, &outcome, deferred, started.elapsed());
    settings.health.note(&outcome);
    tracing::debug!(delivery = delivery.delivery_id, attempt = delivery.attempt, mailbox = %delivery.mailbox, ?outcome, deferred, "delivery attempted");
    // Report under the newest attempt core handed out meanwhile, if any.
    let attempt = lock(&in_progress)
        .remove(&delivery.delivery_id)
        .unwrap_or(delivery.attempt);
    let current = pb::Delivery {
        attempt,
        ..delivery
    };
    let report = match outcome {
        SinkOutcome::Retry { code, reason, .. } if deferred => {
            deferred_report(&current, code, reason)
        }
        outcome => to_report(&current, outcome, &settings.retry, SystemTime::now()),
    };
    complete(&cores, report).await;
}

/// Runs until `shutdown`: streams deliveries from core into `sink`.
///
/// While the destination's circuit is open the pump holds no stream (core gives its leases
/// back at once) and reopens it as soon as the circuit closes.
pub async fn run<S: Sink>(
    cores: Arc<Cores>,
    sink: Arc<S>,
    settings: PumpSettings,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let settings = Arc::new(settings);
    let mut circuit_rx = settings.circuit.as_ref().map(|c| c.watch());
    let in_progress: InProgress = InProgress::default();
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    'connect: loop {
        if settings.circuit.as_ref().is_some_and(|c| c.is_open()) {
            tracing::info!("mesh circuit open: delivery stream paused until MESH answers");
            loop {
                tokio::select! {
                    () = circuit_is(&mut circuit_rx, false) => break,
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    () = &mut shutdown => break 'connect,
                }
            }
            backoff = Duration::from_millis(100);
        }
        let (core, channel) = cores.current();
        let mut client =
            DeliveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        let request = pb::StreamDeliveriesRequest {
            consumer: settings.consumer.clone(),
            max_in_flight: settings.max_in_flight,
            max_in_flight_per_mailbox: settings.max_in_flight_per_mailbox,
        };
        let opened = tokio::select! {
            r = client.stream_deliveries(request) => r,
            () = &mut shutdown => break 'connect,
        };
        let mut stream = match opened {
            Ok(response) => {
                tracing::info!("delivery stream open");
                backoff = Duration::from_millis(100);
                response.into_inner()
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), "cannot open the delivery stream; retrying");
                if status.code() == tonic::Code::Unavailable && cores.failed(core) {
                    continue;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut shutdown => break 'connect,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // Checked on each stream's first delivery: core may have restarted with another lease.
        let mut lease_checked = settings.attempt_budget.is_none();
        loop {
            let next = tokio::select! {
                m = stream.message() => m,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                () = circuit_is(&mut circuit_rx, true) => {
                    tracing::info!("mesh circuit opened: closing the delivery stream");
                    continue 'connect;
                }
                () = &mut shutdown => break 'connect,
            };
            match next {
                Ok(Some(message)) => {
                    let Some(delivery) = message.delivery else {
                        continue;
                    };
                    if !lease_checked && let Some(budget) = settings.attempt_budget {
                        lease_checked = true;
                        if let Some(left) = lease_shorter_than(&delivery, budget, SystemTime::now())
                        {
                            tracing::warn!(
                                lease_left_ms = left.as_millis() as u64,
                                attempt_budget_ms = budget.as_millis() as u64,
                                "core's delivery lease is shorter than one attempt may take \
                                 (3 x mesh_adapter.mesh.request_timeout): a slow send may be \
                                 handed out again while it is still open; raise \
                                 core.lease_timeout or lower the request timeout"
                            );
                        }
                    }
                    if settings.circuit.as_ref().is_some_and(|c| c.is_open()) {
                        // Sent by core before the stream closed: give it back unattempted.
                        let report = deferred_report(
                            &delivery,
                            CIRCUIT_OPEN.to_owned(),
                            "the MESH endpoint's circuit is open".to_owned(),
                        );
                        let cores = cores.clone();
                        tasks.spawn(async move { complete(&cores, report).await });
                        continue;
                    }
                    {
                        let mut running = lock(&in_progress);
                        if let Some(newest) = running.get_mut(&delivery.delivery_id) {
                            *newest = (*newest).max(delivery.attempt);
                            tracing::debug!(
                                delivery = delivery.delivery_id,
                                attempt = delivery.attempt,
                                "delivery handed out again while its attempt runs; not sending a second copy"
                            );
                            continue;
                        }
                        running.insert(delivery.delivery_id, delivery.attempt);
                    }
                    tasks.spawn(attempt(
                        sink.clone(),
                        delivery,
                        settings.clone(),
                        in_progress.clone(),
                        cores.clone(),
                    ));
                }
                Ok(None) => {
                    tracing::info!("delivery stream ended by core; reconnecting");
                    break;
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), "delivery stream broke; reconnecting");
                    if status.code() == tonic::Code::Unavailable
                        || status.code() == tonic::Code::Unknown
                    {
                        cores.failed(core);
                    }
                    break;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut shutdown => break 'connect,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    let drained = tokio::time::timeout(settings.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "shutdown with deliveries still in flight; their leases will expire"
        );
        tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(accepted_secs_ago: u64) -> pb::Delivery {
        let accepted = SystemTime::now() - Duration::from_secs(accepted_secs_ago);
        pb::Delivery {
            delivery_id: 9,
            attempt: 3,
            accepted_at: Some(prost_types::Timestamp::from(accepted)),
            ..Default::default()
        }
    }

    #[test]
    fn a_redriven_delivery_retries_within_a_new_window() {
        use pb::complete_delivery_request::Outcome;
        let policy = RetryPolicy::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(3600),
        );
        let now = SystemTime::now();
        let retry = SinkOutcome::Retry {
            code: "503".into(),
            reason: "busy".into(),
            retry_after: None,
        };
        // Accepted two hours ago (older than the one-hour window), redriven a minute ago.
        let redriven = pb::Delivery {
            retry_window_start: Some(prost_types::Timestamp::from(now - Duration::from_secs(60))),
            ..delivery(7200)
        };
        let report = to_report(&redriven, retry.clone(), &policy, now);
        assert!(
            matches!(report.outcome, Some(Outcome::Retry(ref r)) if r.code == "503"),
            "{report:?}"
        );
        // The window from the redrive runs out like any other.
        let later = now + Duration::from_secs(3600);
        let report = to_report(&redriven, retry.clone(), &policy, later);
        assert!(
            matches!(report.outcome, Some(Outcome::Refused(ref r)) if r.code == RETRY_EXHAUSTED),
            "{report:?}"
        );
        // Without the field (an older core) the window starts at acceptance.
        let report = to_report(&delivery(7200), retry, &policy, now);
        assert!(
            matches!(report.outcome, Some(Outcome::Refused(ref r)) if r.code == RETRY_EXHAUSTED),
            "{report:?}"
        );
    }

    #[test]
    fn a_lease_shorter_than_an_attempt_is_noticed() {
        let now = SystemTime::now();
        let leased = |secs: u64| pb::Delivery {
            lease_expires_at: Some(prost_types::Timestamp::from(
                now + Duration::from_secs(secs),
            )),
            ..delivery(0)
        };
        let budget = Duration::from_secs(180);
        assert_eq!(
            lease_shorter_than(&leased(120), budget, now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(lease_shorter_than(&leased(300), budget, now), None);
        assert_eq!(
            lease_shorter_than(&leased(0), budget, now + Duration::from_secs(5)),
            Some(Duration::ZERO),
            "an already expired lease"
        );
        assert_eq!(
            lease_shorter_than(&delivery(0), budget, now),
            None,
            "no lease given"
        );
    }

    #[test]
    fn outcomes_become_reports() {
        use pb::complete_delivery_request::Outcome;
        let policy = RetryPolicy::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(3600),
        );
        let now = SystemTime::now();
        let sent = to_report(
            &delivery(0),
            SinkOutcome::Sent {
                message_id: "M".into(),
            },
            &policy,
            now,
        );
        assert!(matches!(sent.outcome, Some(Outcome::Sent(ref s)) if s.mesh_message_id == "M"));
        assert_eq!((sent.delivery_id, sent.attempt), (9, 3));

        let retry = SinkOutcome::Retry {
            code: "503".into(),
            reason: "busy".into(),
            retry_after: Some(Duration::from_secs(30)),
        };
        let r = to_report(&delivery(10), retry.clone(), &policy, now);
        let Some(Outcome::Retry(r)) = r.outcome else {
            panic!("retry expected")
        };
        assert!(
            r.retry_after.unwrap().seconds >= 30,
            "Retry-After is a floor"
        );

        let exhausted = to_report(&delivery(7200), retry, &policy, now);
        assert!(
            matches!(exhausted.outcome, Some(Outcome::Refused(ref r)) if r.code == RETRY_EXHAUSTED)
        );

        let refused = to_report(
            &delivery(0),
            SinkOutcome::Refused {
                code: "12".into(),
                reason: "x".into(),
            },
            &policy,
            now,
        );
        assert!(matches!(refused.outcome, Some(Outcome::Refused(ref r)) if r.code == "12"));
    }
}
