//! Core's Prometheus metrics (all named `nems_…`): publishing, matching, the delivery
//! ledger, backpressure and the store's group commits. Counters and histograms are updated
//! on the hot paths; per-mailbox and backlog gauges are read from the store at each scrape.

use std::sync::{Mutex, OnceLock, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::state::CoreState;
use crate::store::ledger;

/// Labels naming an event type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EventLabel {
    pub(crate) event_code: String,
}

/// Labels naming a delivery outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    pub(crate) state: String,
}

/// Labels naming the outcome of a PDS lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub(crate) outcome: &'static str,
}

/// Core's metric handles.
#[derive(Debug)]
pub(crate) struct CoreMetrics {
    pub(crate) events_accepted: Family<EventLabel, Counter>,
    pub(crate) publish_seconds: Histogram,
    pub(crate) mailboxes_per_event: Histogram,
    pub(crate) publishes_shed: Counter,
    pub(crate) store_refusals: Counter,
    pub(crate) store_reopens: Counter,
    pub(crate) deliveries_completed: Family<StateLabel, Counter>,
    pub(crate) commit_seconds: Histogram,
    pub(crate) commit_batch: Histogram,
    pub(crate) pds_lookups: Family<OutcomeLabel, Counter>,
    pub(crate) calls_refused: Counter,
    pub(crate) audit_dropped: Counter,
    pub(crate) audit_queue_depth: Gauge,
}

/// The process-wide metrics, registered on first use.
pub(crate) fn metrics() -> &'static CoreMetrics {
    static METRICS: OnceLock<CoreMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = CoreMetrics {
            events_accepted: Family::default(),
            publish_seconds: Histogram::new(exponential_buckets(0.0002, 2.0, 16)),
            mailboxes_per_event: Histogram::new([0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0]),
            publishes_shed: Counter::default(),
            store_refusals: Counter::default(),
            store_reopens: Counter::default(),
            deliveries_completed: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            pds_lookups: Family::default(),
            calls_refused: Counter::default(),
            audit_dropped: Counter::default(),
            audit_queue_depth: Gauge::default(),
        };
        nems_proto::ops::register(
            "events_accepted",
            "Events accepted (202), by event type",
            m.events_accepted.clone(),
        );
        nems_proto::ops::register(
            "publish_duration_seconds",
            "Core time from receiving a publish to its durable acceptance",
            m.publish_seconds.clone(),
        );
        nems_proto::ops::register(
            "mailboxes_per_event",
            "Mailboxes matched per accepted event",
            m.mailboxes_per_event.clone(),
        );
        nems_proto::ops::register(
            "publishes_shed",
            "Publishes answered 503 because the backlog or write queue was full",
            m.publishes_shed.clone(),
        );
        nems_proto::ops::register(
            "store_refusals",
            "Requests answered UNAVAILABLE (503) because the store failed (storage I/O or commit error)",
            m.store_refusals.clone(),
        );
        nems_proto::ops::register(
            "store_reopens",
            "Times the writer reopened the store after a storage failure",
            m.store_reopens.clone(),
        );
        nems_proto::ops::register(
            "deliveries_completed",
            "Delivery outcomes reported by adapters, by resulting state",
            m.deliveries_completed.clone(),
        );
        nems_proto::ops::register(
            "store_commit_duration_seconds",
            "Duration of each redb group commit (including fsync)",
            m.commit_seconds.clone(),
        );
        nems_proto::ops::register(
            "store_commit_batch_size",
            "Write jobs per redb group commit",
            m.commit_batch.clone(),
        );
        nems_proto::ops::register(
            "pds_lookups",
            "Lookups of unknown patients in PDS, by outcome (found, unknown, error)",
            m.pds_lookups.clone(),
        );
        nems_proto::ops::register(
            "grpc_calls_refused",
            "gRPC calls refused because the caller's role does not open the service",
            m.calls_refused.clone(),
        );
        nems_proto::ops::register(
            "audit_dropped",
            "Audit records (reads and refusals) dropped because the audit queue was full or the write failed",
            m.audit_dropped.clone(),
        );
        nems_proto::ops::register(
            "audit_queue_depth",
            "Audit records waiting in the audit queue (bounded; beyond it records are dropped)",
            m.audit_queue_depth.clone(),
        );
        nems_proto::ops::register_collector(Box::new(StoreCollector));
        m
    })
}

/// The core whose store the scrape-time gauges read (the most recently opened one).
fn current() -> &'static Mutex<Weak<CoreState>> {
    static CURRENT: OnceLock<Mutex<Weak<CoreState>>> = OnceLock::new();
    CURRENT.get_or_init(|| Mutex::new(Weak::new()))
}

/// Makes `state` the source of the scrape-time gauges and registers its readiness check.
pub(crate) fn attach(state: &std::sync::Arc<CoreState>) {
    let _ = metrics();
    if let Ok(mut slot) = current().lock() {
        *slot = std::sync::Arc::downgrade(state);
    }
    let weak = std::sync::Arc::downgrade(state);
    nems_proto::ops::set_check("core-store", move || match weak.upgrade() {
        Some(s) if s.store.is_poisoned() => Err(format!(
            "the store failed ({}); refusing writes and reads until it is reopened",
            s.store.failure().unwrap_or_else(|| "storage error".into())
        )),
        Some(_) => Ok(()),
        None => Err("core is not running".into()),
    });
}

#[derive(Debug)]
struct StoreCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MailboxState {
    mailbox: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Mailbox {
    mailbox: String,
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let e = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(e)
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(state) = current().lock().ok().and_then(|w| w.upgrade()) else {
            return Ok(());
        };
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            &mut encoder,
            "delivery_backlog",
            "Deliveries queued or in flight",
            to_i64(state.pending_deliveries()),
        )?;
        gauge(
            &mut encoder,
            "delivery_backlog_limit",
            "Backlog above which publishes are answered 503",
            to_i64(state.config.max_pending_deliveries),
        )?;
        gauge(
            &mut encoder,
            "store_write_queue",
            "Write jobs waiting for the store writer",
            to_i64(state.store.writer_queue() as u64),
        )?;
        gauge(
            &mut encoder,
            "store_write_queue_limit",
            "Write queue capacity; a full queue sheds publishes",
            to_i64(state.config.write_queue as u64),
        )?;
        let stats = state
            .store
            .read_now(|tx| ledger::stats(tx, ""))
            .unwrap_or_default();
        let g = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "deliveries",
            "Deliveries in the ledger by mailbox and state",
            None,
            g.metric_type(),
        )?;
        for m in &stats {
            for (name, value) in [
                ("queued", m.queued),
                ("in_flight", m.in_flight),
                ("delivered", m.delivered),
                ("dead_lettered", m.dead_lettered),
                ("suppressed", m.suppressed),
            ] {
                let labels = MailboxState {
                    mailbox: m.mailbox.clone(),
                    state: name.into(),
                };
                ConstGauge::new(to_i64(value)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut depth = encoder.encode_descriptor(
            "delivery_queue_depth",
            "Deliveries queued or in flight per mailbox",
            None,
            g.metric_type(),
        )?;
        for m in &stats {
            let labels = Mailbox {
                mailbox: m.mailbox.clone(),
            };
            ConstGauge::new(to_i64(m.queued + m.in_flight))
                .encode(depth.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
