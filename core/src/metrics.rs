//! Core's Prometheus metrics (all named `nems_…`): publishing, matching, the delivery
//! ledger, backpressure and the store's group commits. Counters and histograms are updated
//! on the hot paths; per-mailbox and backlog gauges, and the writer's commit statistics, are
//! read from the store at each scrape (the store never calls in here).

use std::sync::atomic::Ordering;
use std::sync::{OnceLock, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::backend::SET_NAMES;
use crate::state::CoreState;

/// Labels naming an event type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EventLabel {
    pub(crate) event_code: String,
}

/// Labels naming what became of a reported delivery.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub(crate) result: &'static str,
}

/// Labels of a gRPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GrpcLabel {
    pub(crate) method: String,
    pub(crate) code: String,
}

/// Labels naming a gRPC method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabel {
    pub(crate) method: String,
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
    pub(crate) delivery_reports: Family<ResultLabel, Counter>,
    pub(crate) dead_letters: Counter,
    pub(crate) deliveries_replayed: Counter,
    pub(crate) grpc_requests: Family<GrpcLabel, Counter>,
    pub(crate) grpc_seconds: Family<MethodLabel, Histogram>,
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
            delivery_reports: Family::default(),
            dead_letters: Counter::default(),
            deliveries_replayed: Counter::default(),
            grpc_requests: Family::default(),
            grpc_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0002, 2.0, 16))
            }),
            pds_lookups: Family::default(),
            calls_refused: Counter::default(),
            audit_dropped: Counter::default(),
            audit_queue_depth: Gauge::default(),
        };
        nems_runtime::ops::register(
            "events_accepted",
            "Events accepted (202), by event type",
            m.events_accepted.clone(),
        );
        nems_runtime::ops::register(
            "publish_duration_seconds",
            "Core time from receiving a publish to its durable acceptance",
            m.publish_seconds.clone(),
        );
        nems_runtime::ops::register(
            "mailboxes_per_event",
            "Mailboxes matched per accepted event",
            m.mailboxes_per_event.clone(),
        );
        nems_runtime::ops::register(
            "publishes_shed",
            "Publishes answered 503 because the backlog or write queue was full",
            m.publishes_shed.clone(),
        );
        nems_runtime::ops::register(
            "store_refusals",
            "Requests answered UNAVAILABLE (503) because the store failed (storage I/O or commit error)",
            m.store_refusals.clone(),
        );
        nems_runtime::ops::register(
            "deliveries_replayed",
            "Delivered messages an operator queued again (replay), each a new MESH message",
            m.deliveries_replayed.clone(),
        );
        nems_runtime::ops::register(
            "delivery_reports",
            "Attempt outcomes reported by adapters, by what became of the delivery (delivered, requeued for a retry, dead_lettered)",
            m.delivery_reports.clone(),
        );
        nems_runtime::ops::register(
            "dead_letters",
            "Deliveries dead-lettered (retries ran out, refused by MESH, or reported undelivered)",
            m.dead_letters.clone(),
        );
        nems_runtime::ops::register(
            "grpc_server_requests",
            "gRPC calls answered by core, by method and gRPC status code (the code of the response headers; a unary call's OK is in its trailers)",
            m.grpc_requests.clone(),
        );
        nems_runtime::ops::register(
            "grpc_server_duration_seconds",
            "Time from a gRPC call's arrival to its response headers, by method",
            m.grpc_seconds.clone(),
        );
        nems_runtime::ops::register(
            "pds_lookups",
            "Lookups of unknown patients in PDS, by outcome (found, unknown, error)",
            m.pds_lookups.clone(),
        );
        nems_runtime::ops::register(
            "grpc_calls_refused",
            "gRPC calls refused because the caller's role does not open the service",
            m.calls_refused.clone(),
        );
        nems_runtime::ops::register(
            "audit_dropped",
            "Audit records (reads and refusals) dropped because the audit queue was full or the write failed",
            m.audit_dropped.clone(),
        );
        nems_runtime::ops::register(
            "audit_queue_depth",
            "Audit records waiting in the audit queue (bounded; beyond it records are dropped)",
            m.audit_queue_depth.clone(),
        );
        m
    })
}

/// Attaches `state`'s scrape-time gauges and its readiness check to the process's ops
/// registry for as long as the returned handle lives (the running core holds it).
pub(crate) fn attach(state: &std::sync::Arc<CoreState>) -> nems_runtime::ops::Attached {
    let _ = metrics();
    let weak = std::sync::Arc::downgrade(state);
    let collector = StoreCollector {
        state: weak.clone(),
    };
    nems_runtime::ops::attach_source("core-store", Box::new(collector), move || {
        match weak.upgrade() {
            Some(s) => match s.store.failure() {
                Some(why) => Err(format!(
                    "the store failed ({why}); refusing writes and reads until it is reopened"
                )),
                None => Ok(()),
            },
            None => Err("core is not running".into()),
        }
    })
}

/// One core's gauges read from its store at each scrape.
#[derive(Debug)]
struct StoreCollector {
    state: Weak<CoreState>,
}

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
        let Some(state) = self.state.upgrade() else {
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
            to_i64(state.store.write_queue() as u64),
        )?;
        gauge(
            &mut encoder,
            "store_write_queue_limit",
            "Write queue capacity; a full queue sheds publishes",
            to_i64(state.config.write_queue as u64),
        )?;
        // The writer's own statistics, read as they stand (it never calls in here).
        let writer = state.store.writer_stats();
        let reopens = ConstCounter::new(writer.reopens.load(Ordering::Relaxed));
        let e = encoder.encode_descriptor(
            "store_reopens",
            "Times the writer reopened the store after a storage failure",
            None,
            reopens.metric_type(),
        )?;
        reopens.encode(e)?;
        let (micros, commits, buckets) = writer.commit_latency.snapshot();
        let seconds: Vec<(f64, u64)> = buckets.iter().map(|(b, n)| (b / 1e6, *n)).collect();
        encoder
            .encode_descriptor(
                "store_commit_duration_seconds",
                "Duration of each redb group commit (including fsync)",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(micros as f64 / 1e6, commits, &seconds, None)?;
        let (jobs, batches, buckets) = writer.batch_sizes.snapshot();
        encoder
            .encode_descriptor(
                "store_commit_batch_size",
                "Write jobs per redb group commit",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(jobs as f64, batches, &buckets, None)?;
        let gauges = state.store.gauges();
        let stats = &gauges.mailboxes;
        let g = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "deliveries",
            "Deliveries in the ledger by mailbox and state",
            None,
            g.metric_type(),
        )?;
        for m in stats {
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
        for m in stats {
            let labels = Mailbox {
                mailbox: m.mailbox.clone(),
            };
            ConstGauge::new(to_i64(m.queued + m.in_flight))
                .encode(depth.encode_family(&labels)?)?;
        }
        // How old each reference data set in force is (never imported, or imported before
        // the time was recorded: no sample).
        let metas = &gauges.refdata;
        let mut age = encoder.encode_descriptor(
            "refdata_age_seconds",
            "Seconds since the reference data set in force was imported, by set",
            None,
            g.metric_type(),
        )?;
        let now = crate::backend::keys::now_ms();
        for (set, meta) in metas.iter().enumerate() {
            if meta.generation == 0 || meta.imported_ms == 0 {
                continue;
            }
            let labels = Set {
                set: SET_NAMES[set],
            };
            ConstGauge::new(to_i64(now.saturating_sub(meta.imported_ms) / 1000))
                .encode(age.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Set {
    set: &'static str,
}
