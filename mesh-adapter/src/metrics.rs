//! The adapter's Prometheus metrics and its MESH readiness check: attempts by sink and
//! outcome, attempt duration, MESH error codes, and whether MESH has been unreachable for
//! longer than the configured time.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::error::DeliveryError;
use crate::sink::SinkOutcome;

/// Sink and outcome labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// `folder` or `mesh`.
    pub sink: &'static str,
    /// `sent`, `retry`, `deferred` or `refused`.
    pub outcome: &'static str,
}

/// Probe result label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabel {
    /// `answered` or `failed`.
    pub result: &'static str,
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
    /// 1 while the MESH endpoint's circuit is open.
    pub circuit_open: Gauge,
    /// Times the circuit opened.
    pub circuit_opens: Counter,
    /// Circuit probes (handshakes) by result.
    pub circuit_probes: Family<ProbeLabel, Counter>,
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
            circuit_open: Gauge::default(),
            circuit_opens: Counter::default(),
            circuit_probes: Family::default(),
        };
        nems_runtime::ops::register(
            "mesh_circuit_open",
            "1 while the MESH endpoint's circuit is open (deliveries held, probing)",
            m.circuit_open.clone(),
        );
        nems_runtime::ops::register(
            "mesh_circuit_opens",
            "Times the MESH endpoint's circuit opened",
            m.circuit_opens.clone(),
        );
        nems_runtime::ops::register(
            "mesh_circuit_probes",
            "MESH circuit probes (handshakes) by result",
            m.circuit_probes.clone(),
        );
        nems_runtime::ops::register(
            "delivery_attempts",
            "Delivery attempts by sink and outcome",
            m.attempts.clone(),
        );
        nems_runtime::ops::register(
            "delivery_attempt_duration_seconds",
            "Duration of one delivery attempt by sink (MESH send latency)",
            m.duration.clone(),
        );
        nems_runtime::ops::register(
            "mesh_send_errors",
            "MESH send failures by code",
            m.mesh_errors.clone(),
        );
        m
    })
}

/// Records one attempt; `deferred` when a retry was deferred because the circuit is open.
pub fn record(sink: &'static str, outcome: &SinkOutcome, deferred: bool, took: Duration) {
    let m = metrics();
    let (name, code) = match outcome {
        SinkOutcome::Sent { .. } => ("sent", None),
        SinkOutcome::Retry { code, .. } if deferred => ("deferred", Some(code)),
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

/// Records a circuit probe.
pub fn record_probe(answered: bool) {
    let result = if answered { "answered" } else { "failed" };
    metrics()
        .circuit_probes
        .get_or_create(&ProbeLabel { result })
        .inc();
}

/// Records the circuit opening (`true`) or closing.
pub fn set_circuit(open: bool) {
    let m = metrics();
    m.circuit_open.set(i64::from(open));
    if open {
        m.circuit_opens.inc();
    }
}

/// The prefix the MESH sink puts before the code of a failed tracking lookup.
pub const TRACKING_PREFIX: &str = "TRACKING_";

/// True when a failure code means MESH did not answer: a 5xx, a request that could not be
/// sent (`CONNECT`), a connection that broke or timed out before the answer (`CONNECTION`,
/// `TIMEOUT`) or an ambiguous send tracking could not settle (`AMBIGUOUS`). A failed
/// tracking lookup (`TRACKING_<code>`) is classified by its own code. Any other code (4xx,
/// 429, a MESH error code, an unreadable answer) means MESH answered.
pub fn means_unreachable(code: &str) -> bool {
    let code = code.strip_prefix(TRACKING_PREFIX).unwrap_or(code);
    code.starts_with('5') || matches!(code, "CONNECT" | "CONNECTION" | "TIMEOUT" | "AMBIGUOUS")
}

/// Tracks whether MESH answers: failing since the first unanswered call after the last
/// answer. MESH counts as answering when it accepted, refused, or throttled a request.
/// Delivery attempts ([`MeshHealth::note`]) and the report poller's handshakes and polls
/// ([`MeshHealth::note_call`]) feed the same state.
#[derive(Debug, Default)]
pub struct MeshHealth {
    failing_since: Mutex<Option<Instant>>,
}

impl MeshHealth {
    /// Notes a delivery attempt's outcome.
    pub fn note(&self, outcome: &SinkOutcome) {
        let unreachable = match outcome {
            SinkOutcome::Retry { code, .. } => means_unreachable(code),
            SinkOutcome::Sent { .. } | SinkOutcome::Refused { .. } => false,
        };
        self.note_reachable(!unreachable);
    }

    /// Notes the result of any other MESH call (handshake, inbox poll).
    pub fn note_call<T>(&self, result: &Result<T, DeliveryError>) {
        let unreachable = result
            .as_ref()
            .err()
            .is_some_and(|e| means_unreachable(e.code()));
        self.note_reachable(!unreachable);
    }

    fn note_reachable(&self, reachable: bool) {
        if let Ok(mut since) = self.failing_since.lock() {
            match (reachable, since.is_some()) {
                (false, false) => *since = Some(Instant::now()),
                (true, _) => *since = None,
                (false, true) => {}
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

    fn retry(code: &str) -> SinkOutcome {
        SinkOutcome::Retry {
            code: code.into(),
            reason: "r".into(),
            retry_after: None,
        }
    }

    #[test]
    fn classifies_failure_codes_including_tracking_lookups() {
        for code in [
            "500",
            "502",
            "503",
            "504",
            "CONNECT",
            "CONNECTION",
            "TIMEOUT",
            "AMBIGUOUS",
            "TRACKING_503",
            "TRACKING_CONNECT",
            "TRACKING_CONNECTION",
            "TRACKING_TIMEOUT",
        ] {
            assert!(means_unreachable(code), "{code} means MESH did not answer");
        }
        for code in [
            "429",
            "401",
            "403",
            "408",
            "12",
            "INVALID_RESPONSE",
            "TRACKING_429",
            "TRACKING_INVALID_RESPONSE",
            "GZIP",
        ] {
            assert!(!means_unreachable(code), "{code} is an answer from MESH");
        }
    }

    #[test]
    fn repeated_attempts_failing_their_tracking_lookup_keep_mesh_unreachable() {
        // Every attempt after the first asks tracking first: during an outage those
        // lookups fail, and must not count as MESH answering.
        let h = MeshHealth::default();
        h.note(&retry("CONNECT"));
        for code in ["TRACKING_CONNECT", "TRACKING_503", "TRACKING_TIMEOUT"] {
            h.note(&retry(code));
            assert!(h.check(Duration::ZERO).is_err(), "after {code}");
        }
        // A first failure that is a tracking lookup starts the clock too.
        let h = MeshHealth::default();
        h.note(&retry("TRACKING_CONNECTION"));
        assert!(h.check(Duration::ZERO).is_err());
        h.note(&retry("TRACKING_429"));
        assert!(
            h.check(Duration::ZERO).is_ok(),
            "a throttled lookup is an answer"
        );
    }

    #[test]
    fn report_poller_calls_feed_the_same_state() {
        let h = MeshHealth::default();
        h.note_call::<()>(&Err(DeliveryError::transient("CONNECT", "refused")));
        assert!(h.check(Duration::ZERO).is_err());
        assert!(h.check(Duration::from_secs(60)).is_ok());
        // A delivery failing the same way keeps the original start time.
        h.note(&retry("503"));
        assert!(h.check(Duration::ZERO).is_err());
        // A poll MESH refused is still an answer.
        h.note_call::<()>(&Err(DeliveryError::transient("403", "credentials")));
        assert!(h.check(Duration::ZERO).is_ok());
        h.note(&retry("TIMEOUT"));
        assert!(h.check(Duration::ZERO).is_err());
        h.note_call(&Ok(3usize));
        assert!(h.check(Duration::ZERO).is_ok());
    }
}
