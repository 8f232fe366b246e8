//! The adapter's Prometheus metrics and its MESH readiness check: attempts by sink and
//! outcome, attempt duration, MESH error codes, and whether MESH has been unreachable for
//! longer than the configured time.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::sink::SinkOutcome;

/// Sink and outcome labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// `folder` or `mesh`.
    pub sink: &'static str,
    /// `sent`, `retry` or `refused`.
    pub outcome: &'static str,
}

/// Sink label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// `folder` or `mesh`.
    pub sink: &'static str,
}

/// Error code label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// HTTP status, MESH error code, or a transport error class.
    pub code: String,
}

/// The adapter's metric handles.
#[derive(Debug)]
pub struct AdapterMetrics {
    /// Delivery attempts by sink and outcome.
    pub attempts: Family<AttemptLabels, Counter>,
    /// Attempt duration (a MESH send including reconciliation) by sink.
    pub duration: Family<SinkLabel, Histogram>,
    /// MESH failures by code.
    pub mesh_errors: Family<CodeLabel, Counter>,
}

/// The process-wide adapter metrics, registered on first use.
pub fn metrics() -> &'static AdapterMetrics {
    static METRICS: OnceLock<AdapterMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = AdapterMetrics {
            attempts: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            mesh_errors: Family::default(),
        };
        nems_proto::ops::register(
            "delivery_attempts",
            "Delivery attempts by sink and outcome",
            m.attempts.clone(),
        );
        nems_proto::ops::register(
            "delivery_attempt_duration_seconds",
            "Duration of one delivery attempt by sink (MESH send latency)",
            m.duration.clone(),
        );
        nems_proto::ops::register(
            "mesh_send_errors",
            "MESH send failures by code",
            m.mesh_errors.clone(),
        );
        m
    })
}

/// Records one attempt.
pub fn record(sink: &'static str, outcome: &SinkOutcome, took: Duration) {
    let m = metrics();
    let (name, code) = match outcome {
        SinkOutcome::Sent { .. } => ("sent", None),
        SinkOutcome::Retry { code, .. } => ("retry", Some(code)),
        SinkOutcome::Refused { code, .. } => ("refused", Some(code)),
    };
    m.attempts
        .get_or_create(&AttemptLabels {
            sink,
            outcome: name,
        })
        .inc();
    m.duration
        .get_or_create(&SinkLabel { sink })
        .observe(took.as_secs_f64());
    if sink == "mesh"
        && let Some(code) = code
    {
        m.mesh_errors
            .get_or_create(&CodeLabel { code: code.clone() })
            .inc();
    }
}

/// Tracks whether MESH answers: failing since the first unanswered attempt after the last
/// answer. MESH counts as answering when it accepted, refused, or throttled a send.
#[derive(Debug, Default)]
pub struct MeshHealth {
    failing_since: Mutex<Option<Instant>>,
}

impl MeshHealth {
    /// Notes an attempt's outcome.
    pub fn note(&self, outcome: &SinkOutcome) {
        let unreachable = match outcome {
            SinkOutcome::Retry { code, .. } => {
                code.starts_with('5')
                    || code == "CONNECT"
                    || code == "AMBIGUOUS"
                    || code == "TIMEOUT"
            }
            _ => false,
        };
        if let Ok(mut since) = self.failing_since.lock() {
            match (unreachable, since.is_some()) {
                (true, false) => *since = Some(Instant::now()),
                (false, _) => *since = None,
                (true, true) => {}
            }
        }
    }

    /// `Err` when MESH has been unreachable for longer than `after`.
    pub fn check(&self, after: Duration) -> Result<(), String> {
        let since = self.failing_since.lock().ok().and_then(|s| *s);
        match since {
            Some(t) if t.elapsed() > after => {
                Err(format!("MESH unreachable for {}s", t.elapsed().as_secs()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_only_after_the_grace_period_and_reset_by_an_answer() {
        let h = MeshHealth::default();
        let fail = SinkOutcome::Retry {
            code: "CONNECT".into(),
            reason: "refused".into(),
            retry_after: None,
        };
        h.note(&fail);
        assert!(h.check(Duration::from_secs(60)).is_ok());
        assert!(h.check(Duration::ZERO).is_err());
        h.note(&SinkOutcome::Retry {
            code: "429".into(),
            reason: "slow down".into(),
            retry_after: None,
        });
        assert!(h.check(Duration::ZERO).is_ok());
        h.note(&fail);
        h.note(&SinkOutcome::Sent {
            message_id: "m".into(),
        });
        assert!(h.check(Duration::ZERO).is_ok());
    }
}
