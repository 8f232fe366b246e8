//! `DeliveryService`: streams leased deliveries to adapters and records their outcomes.
//!
//! Each stream runs a pump task: it asks the dispatcher which mailboxes are ready and
//! under their limits, leases from them in one write job, and sends the deliveries. It
//! sleeps until new work is committed, a completion frees capacity, or the next queued
//! time arrives. Completions release leases and requeue retries.

use std::sync::Arc;
use std::time::Duration;

use nems_proto::v1 as pb;
use nems_proto::v1::delivery_service_server::DeliveryService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Fault;
use crate::backend::Outcome;
use crate::backend::keys::now_ms;
use crate::state::CoreState;

/// Longest delay an adapter may ask for before a retry.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest a pump sleeps without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(30);

/// The delivery service.
#[derive(Debug, Clone)]
pub(crate) struct Deliveries {
    pub(crate) state: Arc<CoreState>,
}

struct Limits {
    stream: u32,
    mailbox: u32,
    bytes: u64,
}

/// The most deliveries a stream may ask to have in flight, and per mailbox.
const MAX_REQUESTED_IN_FLIGHT: u32 = 10_000;
const MAX_REQUESTED_PER_MAILBOX: u32 = 1_000;

impl Limits {
    /// A stream's limits: what it asked for (0: the configured default), bounded.
    fn new(req: &pb::StreamDeliveriesRequest, config: &crate::config::CoreConfig) -> Self {
        let bounded = |asked: u32, default: u32, max: u32| {
            if asked == 0 { default } else { asked.min(max) }
        };
        Limits {
            stream: bounded(
                req.max_in_flight,
                config.max_in_flight,
                MAX_REQUESTED_IN_FLIGHT,
            ),
            mailbox: bounded(
                req.max_in_flight_per_mailbox,
                config.max_in_flight_per_mailbox,
                MAX_REQUESTED_PER_MAILBOX,
            ),
            bytes: config.max_in_flight_mib.saturating_mul(1 << 20),
        }
    }
}

async fn pump(
    state: Arc<CoreState>,
    stream: u64,
    limits: Limits,
    tx: mpsc::Sender<Result<pb::StreamDeliveriesResponse, Status>>,
) {
    let mut stop = state.stop.subscribe();
    let lease_ms = state.config.lease_timeout.as_millis() as u64;
    'outer: loop {
        if *stop.borrow() {
            break;
        }
        let notified = state.dispatcher.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = now_ms();
        let (picks, wake) = state
            .dispatcher
            .pick(stream, limits.stream, limits.mailbox, now);
        if picks.is_empty() {
            let wait = wake
                .map(|at| Duration::from_millis(at.saturating_sub(now)))
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(wait) => {}
                () = tx.closed() => break,
                _ = stop.changed() => break,
            }
            continue;
        }
        let (budget, mark) = state.dispatcher.byte_budget(stream, limits.bytes);
        let job_picks = picks.clone();
        let leased = state.store.lease(job_picks, now, lease_ms, budget).await;
        let leased = match leased {
            Ok(leased) => leased,
            Err(e) => {
                tracing::error!(error = %e, "leasing deliveries failed");
                let back: Vec<_> = picks
                    .iter()
                    .map(|(mb, n)| (mb.clone(), *n, Vec::new(), Some(now + 1_000)))
                    .collect();
                state.dispatcher.leased(stream, now, &back);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => break,
                }
            }
        };
        let results: Vec<_> = picks
            .iter()
            .zip(&leased.leases)
            .map(|((mb, n), lease)| {
                let held = lease
                    .deliveries
                    .iter()
                    .map(|d| (d.delivery_id, d.attempt, d.payload.len() as u64))
                    .collect();
                (mb.clone(), *n, held, lease.next_ready)
            })
            .collect();
        state.dispatcher.leased(stream, now + lease_ms, &results);
        if leased.out_of_budget {
            state.dispatcher.out_of_budget(stream, mark);
        }
        for lease in leased.leases {
            for delivery in lease.deliveries {
                let response = pb::StreamDeliveriesResponse {
                    delivery: Some(delivery),
                };
                if tx.send(Ok(response)).await.is_err() {
                    break 'outer;
                }
            }
        }
    }
    give_back(&state, stream).await;
    tracing::info!(stream, "delivery stream closed");
}

/// Gives back, in one write, every lease still held by a stream that ended (the adapter
/// went away, the stream broke, or core is stopping): nobody will report on those
/// attempts but with a late `Sent`, which still settles them, so they are offered again
/// at once instead of after `lease_timeout`.
async fn give_back(state: &CoreState, stream: u64) {
    let held = state.dispatcher.close_stream(stream);
    if held.is_empty() {
        return;
    }
    let now = now_ms();
    match state.store.give_back(held, now).await {
        Ok(back) => {
            let mut mailboxes: Vec<&str> = back.iter().map(|(_, mb)| mb.as_str()).collect();
            mailboxes.sort_unstable();
            mailboxes.dedup();
            for mailbox in mailboxes {
                state.dispatcher.available(mailbox, now);
            }
            tracing::info!(
                stream,
                given_back = back.len(),
                "leases of the stream given back"
            );
        }
        Err(e) => {
            tracing::warn!(stream, error = %e, "leases not given back; they come back when they expire");
        }
    }
}

/// A requested delay in milliseconds: negative or malformed is zero, longer than
/// [`MAX_RETRY_AFTER`] is clamped to it.
fn retry_after_ms(after: Option<prost_types::Duration>) -> u64 {
    after
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default()
        .min(MAX_RETRY_AFTER)
        .as_millis() as u64
}

/// The outcome `req` reports; `keep_payload`: a delivered message keeps its payload for
/// replay (`core.replay_retention` is on).
fn outcome(req: &pb::CompleteDeliveryRequest, keep_payload: bool) -> Result<Outcome, Status> {
    use pb::complete_delivery_request::Outcome as In;
    let clip = |s: &str| s.chars().take(500).collect::<String>();
    match &req.outcome {
        Some(In::Sent(sent)) => Ok(Outcome::Sent {
            mesh_message_id: clip(&sent.mesh_message_id),
            keep_payload,
        }),
        Some(In::Retry(retry)) => Ok(Outcome::Retry {
            code: clip(&retry.code),
            reason: clip(&retry.reason),
            retry_after_ms: retry_after_ms(retry.retry_after),
        }),
        Some(In::Deferred(deferred)) => Ok(Outcome::Deferred {
            code: clip(&deferred.code),
            reason: clip(&deferred.reason),
            retry_after_ms: retry_after_ms(deferred.retry_after),
        }),
        Some(In::Refused(refused)) => Ok(Outcome::Refused {
            code: clip(&refused.code),
            reason: clip(&refused.reason),
        }),
        None => Err(Fault::missing("outcome").into()),
    }
}

#[tonic::async_trait]
impl DeliveryService for Deliveries {
    type StreamDeliveriesStream = ReceiverStream<Result<pb::StreamDeliveriesResponse, Status>>;

    async fn stream_deliveries(
        &self,
        request: Request<pb::StreamDeliveriesRequest>,
    ) -> Result<Response<Self::StreamDeliveriesStream>, Status> {
        let req = request.into_inner();
        let config = &self.state.config;
        let limits = Limits::new(&req, config);
        let Some(stream) = self.state.dispatcher.open_stream(config.max_streams) else {
            tracing::warn!(consumer = %req.consumer, max_streams = config.max_streams, "delivery stream refused: too many open");
            return Err(
                Fault::Exhausted("too many delivery streams are open; try again later").into(),
            );
        };
        let (tx, rx) = mpsc::channel(limits.stream as usize);
        tracing::info!(stream, consumer = %req.consumer, max_in_flight = limits.stream, "delivery stream opened");
        tokio::spawn(pump(self.state.clone(), stream, limits, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn complete_delivery(
        &self,
        request: Request<pb::CompleteDeliveryRequest>,
    ) -> Result<Response<pb::CompleteDeliveryResponse>, Status> {
        let req = request.into_inner();
        let outcome = outcome(&req, !self.state.config.replay_retention.is_zero())?;
        let (id, attempt) = (req.delivery_id, req.attempt);
        let now = now_ms();
        let done = self
            .state
            .store
            .complete(id, attempt, outcome, now)
            .await
            .map_err(|e| Fault::store(e, "complete-delivery"))?
            .ok_or_else(|| Fault::not_found("no such delivery"))?;
        if done.state != pb::DeliveryState::InFlight {
            self.state.dispatcher.released(id);
        }
        if done.was_pending
            && matches!(
                done.state,
                pb::DeliveryState::Delivered | pb::DeliveryState::DeadLettered
            )
        {
            self.state.note_settled(1);
        }
        let result = match done.state {
            pb::DeliveryState::Delivered => "delivered",
            pb::DeliveryState::DeadLettered => "dead_lettered",
            pb::DeliveryState::Queued => "requeued",
            _ => "other",
        };
        let metrics = crate::metrics::metrics();
        metrics
            .delivery_reports
            .get_or_create(&crate::metrics::ResultLabel { result })
            .inc();
        if done.state == pb::DeliveryState::DeadLettered {
            metrics.dead_letters.inc();
        }
        if let Some(at) = done.requeued_at {
            self.state.dispatcher.available(&done.mailbox, at);
        }
        tracing::debug!(delivery = id, attempt, state = ?done.state, "delivery completed");
        Ok(Response::new(pb::CompleteDeliveryResponse {
            state: done.state.into(),
        }))
    }

    async fn report_undelivered(
        &self,
        request: Request<pb::ReportUndeliveredRequest>,
    ) -> Result<Response<pb::ReportUndeliveredResponse>, Status> {
        let req = request.into_inner();
        let now = now_ms();
        let found = self
            .state
            .store
            .report_undelivered(
                req.mesh_message_id,
                req.local_id,
                req.code,
                req.description,
                now,
            )
            .await
            .map_err(|e| Fault::store(e, "report-undelivered"))?;
        if let Some((_, true)) = found {
            crate::metrics::metrics().dead_letters.inc();
        }
        let found = found.map(|(id, _)| id);
        if let Some(id) = found {
            self.state.dispatcher.released(id);
            tracing::warn!(
                delivery = id,
                "mesh reported a delivery undelivered; dead-lettered"
            );
        }
        Ok(Response::new(pb::ReportUndeliveredResponse {
            found: found.is_some(),
            delivery_id: found.unwrap_or(0),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_delays_are_clamped_for_retries_and_deferrals_alike() {
        let d = |seconds: i64, nanos: i32| Some(prost_types::Duration { seconds, nanos });
        assert_eq!(retry_after_ms(None), 0);
        assert_eq!(retry_after_ms(d(-5, 0)), 0, "negative");
        assert_eq!(retry_after_ms(d(2, 500_000_000)), 2_500);
        assert_eq!(
            retry_after_ms(d(i64::MAX, 0)),
            MAX_RETRY_AFTER.as_millis() as u64
        );
        for outcome in [
            pb::complete_delivery_request::Outcome::Retry(pb::DeliveryRetry {
                retry_after: d(30 * 24 * 3600, 0),
                ..Default::default()
            }),
            pb::complete_delivery_request::Outcome::Deferred(pb::DeliveryDeferred {
                retry_after: d(30 * 24 * 3600, 0),
                ..Default::default()
            }),
        ] {
            let req = pb::CompleteDeliveryRequest {
                delivery_id: 1,
                attempt: 1,
                outcome: Some(outcome),
            };
            let after = match outcome_of(&req) {
                Outcome::Retry { retry_after_ms, .. }
                | Outcome::Deferred { retry_after_ms, .. } => retry_after_ms,
                other => panic!("{other:?}"),
            };
            assert_eq!(after, MAX_RETRY_AFTER.as_millis() as u64);
        }
    }

    fn outcome_of(req: &pb::CompleteDeliveryRequest) -> Outcome {
        outcome(req, false).unwrap()
    }

    #[test]
    fn requested_in_flight_limits_are_bounded() {
        let config = crate::config::CoreConfig::default();
        let asked = |stream: u32, mailbox: u32| {
            Limits::new(
                &pb::StreamDeliveriesRequest {
                    consumer: "t".into(),
                    max_in_flight: stream,
                    max_in_flight_per_mailbox: mailbox,
                },
                &config,
            )
        };
        let l = asked(0, 0);
        assert_eq!(
            (l.stream, l.mailbox, l.bytes),
            (
                config.max_in_flight,
                config.max_in_flight_per_mailbox,
                64 << 20
            )
        );
        let l = asked(u32::MAX, u32::MAX);
        assert_eq!(
            (l.stream, l.mailbox),
            (MAX_REQUESTED_IN_FLIGHT, MAX_REQUESTED_PER_MAILBOX)
        );
        let l = asked(7, 3);
        assert_eq!((l.stream, l.mailbox), (7, 3));
    }
}
