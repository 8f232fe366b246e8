//! The edge's Prometheus metrics: requests by route and status, request duration by
//! route, and rate-limited requests.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Route and status labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name, e.g. `publish`, `subscription_create`.
    pub route: &'static str,
    /// HTTP status code.
    pub status: u16,
}

/// Route label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// Route name.
    pub route: &'static str,
}

/// The edge's metric handles.
#[derive(Debug)]
pub struct EdgeMetrics {
    /// Requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request duration by route.
    pub duration: Family<RouteLabel, Histogram>,
    /// Requests refused by the per-ASID rate limit.
    pub rate_limited: Counter,
    /// Connections over the connection limit (answered 503 or closed).
    pub connections_refused: Counter,
}

/// The process-wide edge metrics, registered on first use.
pub fn metrics() -> &'static EdgeMetrics {
    static METRICS: OnceLock<EdgeMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = EdgeMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0002, 2.0, 16))
            }),
            rate_limited: Counter::default(),
            connections_refused: Counter::default(),
        };
        nems_runtime::ops::register(
            "http_requests",
            "HTTP requests answered by the edge, by route and status",
            m.requests.clone(),
        );
        nems_runtime::ops::register(
            "http_request_duration_seconds",
            "HTTP request duration at the edge, by route",
            m.duration.clone(),
        );
        nems_runtime::ops::register(
            "http_rate_limited",
            "Requests answered 429 by the per-ASID rate limit",
            m.rate_limited.clone(),
        );
        nems_runtime::ops::register(
            "http_connections_refused",
            "Connections over edge.max_connections, answered 503 or closed",
            m.connections_refused.clone(),
        );
        m
    })
}
