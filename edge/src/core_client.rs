//! The edge's gRPC client for core: one lazily connected channel with a connect timeout
//! and a per-call deadline, so the edge starts before core and never waits forever.

use std::time::Duration;

use nems_proto::v1::event_service_client::EventServiceClient;
use nems_proto::v1::subscription_service_client::SubscriptionServiceClient;
use tonic::transport::{Channel, Endpoint};

/// Clients for core's service API over one channel.
#[derive(Debug, Clone)]
pub struct CoreClient {
    /// Subscriptions.
    pub subscriptions: SubscriptionServiceClient<Channel>,
    /// Publishing.
    pub events: EventServiceClient<Channel>,
}

impl CoreClient {
    /// Builds the clients for `url`; the connection is made on first use.
    pub fn connect_lazy(
        url: &str,
        call_timeout: Duration,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(url.to_string())?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(5))
            .timeout(call_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .connect_lazy();
        Ok(CoreClient {
            subscriptions: SubscriptionServiceClient::new(channel.clone())
                .max_decoding_message_size(16 * 1024 * 1024),
            events: EventServiceClient::new(channel).max_encoding_message_size(16 * 1024 * 1024),
        })
    }
}
