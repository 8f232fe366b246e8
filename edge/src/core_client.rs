//! The edge's gRPC client for core: one lazily connected channel per core URL, each with a
//! connect timeout and a per-call deadline, so the edge starts before core and never waits
//! forever. With several cores (`edge.core_url` a comma-separated list, cores sharing one
//! PostgreSQL database), calls go to one core until it stops answering, then move to the
//! next: a call refused as unavailable (connection refused or lost, core shutting down or
//! busy) is tried once on each other core before the edge answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nems_proto::v1::event_service_client::EventServiceClient;
use nems_proto::v1::subscription_service_client::SubscriptionServiceClient;
use tonic::transport::{Channel, Endpoint};

/// Clients for one core's service API over one channel.
#[derive(Debug, Clone)]
pub struct Core {
    /// Subscriptions.
    pub subscriptions: SubscriptionServiceClient<Channel>,
    /// Publishing.
    pub events: EventServiceClient<Channel>,
}

/// The cores the edge calls, and which one it is using.
#[derive(Debug, Clone)]
pub struct CoreClient {
    cores: Arc<Vec<Core>>,
    current: Arc<AtomicUsize>,
}

/// The URLs of a `core_url` setting: one, or several separated by commas.
pub fn core_urls(setting: &str) -> Vec<String> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

impl CoreClient {
    /// Builds the clients for each URL of `urls` (see [`core_urls`]); connections are made
    /// on first use.
    pub fn connect_lazy(
        urls: &str,
        call_timeout: Duration,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, tonic::transport::Error> {
        let mut cores = Vec::new();
        for url in core_urls(urls) {
            let mut endpoint = Endpoint::from_shared(url)?;
            if let Some(tls) = &tls {
                endpoint = endpoint.tls_config(tls.clone())?;
            }
            let channel = endpoint
                .connect_timeout(Duration::from_secs(5))
                .timeout(call_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .connect_lazy();
            cores.push(Core {
                subscriptions: SubscriptionServiceClient::new(channel.clone())
                    .max_decoding_message_size(16 * 1024 * 1024),
                events: EventServiceClient::new(channel)
                    .max_encoding_message_size(16 * 1024 * 1024),
            });
        }
        Ok(CoreClient {
            cores: Arc::new(cores),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Runs `call` on the core in use; when it answers `Unavailable`, moves to the next core
    /// and tries again, once per core.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<tonic::Response<T>, tonic::Status>
    where
        F: Fn(Core) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.cores.len().max(1);
        let mut last = None;
        for _ in 0..n {
            let at = self.current.load(Ordering::Relaxed) % n;
            let Some(core) = self.cores.get(at) else {
                break;
            };
            match call(core.clone()).await {
                Err(status) if status.code() == tonic::Code::Unavailable && n > 1 => {
                    // Move on unless another call already has.
                    let _ = self.current.compare_exchange(
                        at,
                        (at + 1) % n,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    tracing::warn!(core = at, "core unavailable; trying the next core");
                    last = Some(status);
                }
                answer => return answer,
            }
        }
        Err(last.unwrap_or_else(|| tonic::Status::unavailable("no core is configured")))
    }
}
