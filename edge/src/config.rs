//! The edge's configuration: the `[edge]` section of the nems TOML file.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most HTTP/2 streams per connection `validate` accepts (hyper's own default is 200).
const MAX_HTTP2_STREAMS: u32 = 256;

/// The `[edge]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// HTTP listen address. Env: `NEMS_EDGE_LISTEN`.
    pub listen: SocketAddr,
    /// Core's gRPC service API URL; several cores on one PostgreSQL database: their URLs
    /// separated by commas (calls move to the next when one stops answering).
    /// Env: `NEMS_CORE_URL`.
    pub core_url: String,
    /// The public base URL (no trailing slash, without `/STU3`), used in `Location` and
    /// the CapabilityStatement. Env: `NEMS_BASE_URL`.
    pub base_url: String,
    /// This service's own ASID: requests must carry it in `toASID`. Env: `NEMS_SERVICE_ASID`.
    pub service_asid: String,
    /// Largest request body accepted (publish: 3 MB).
    pub max_body_bytes: usize,
    /// Largest request header block accepted: larger ones get `431` with an
    /// OperationOutcome. The HTTP/1.1 read buffer is 4× this: beyond that the connection is
    /// answered with a bare `431` by the HTTP library and closed (memory stays bounded).
    pub max_header_bytes: usize,
    /// Whole-request timeout (reading the body, calling core, answering).
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Time allowed to receive the request headers (slow-client protection).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Deadline of each call to core.
    #[serde(with = "duration")]
    pub core_timeout: Duration,
    /// Tolerated clock difference when checking JWT `iat` and `exp`.
    #[serde(with = "duration")]
    pub clock_skew: Duration,
    /// Most concurrent connections; further ones are answered `503` with an
    /// OperationOutcome and `Retry-After` (256 at a time; beyond that, closed at once).
    pub max_connections: usize,
    /// Requests per second allowed per verified client (0: no limit); beyond it `429`.
    /// A client is its mutual-TLS certificate (which core binds to one ASID), else its
    /// peer address; never the ASID a request names, which a client could borrow.
    pub rate_limit_per_asid: u32,
    /// Burst of requests allowed per verified client above the steady rate.
    pub rate_limit_burst: u32,
    /// Most requests (streams) open at once on one HTTP/2 connection; the client queues
    /// the rest. Kept small so that one connection cannot take the whole service.
    pub http2_max_concurrent_streams: u32,
    /// An HTTP/2 connection with nothing received for this long is sent a `PING`.
    #[serde(with = "duration")]
    pub http2_keep_alive_interval: Duration,
    /// A peer that does not answer that `PING` within this time is taken for dead and
    /// its connection (and connection slot) dropped.
    #[serde(with = "duration")]
    pub http2_keep_alive_timeout: Duration,
    /// HTTPS (`[edge.tls]`); with `client_ca_file`, mutual TLS: clients must present a
    /// certificate from that CA naming their ASID's registered identity.
    pub tls: Option<nems_runtime::tls::ServerTls>,
    /// TLS to core's service API (`[edge.core_tls]`; `core_url` must be `https://`).
    pub core_tls: Option<nems_runtime::tls::ClientTls>,
    /// Serve plain HTTP on a non-loopback `listen` address (behind a TLS-terminating proxy
    /// on a trusted network); otherwise such a configuration refuses to start.
    pub allow_plaintext: bool,
    /// gRPC listen address of `BundleService` (internal services publishing the FHIR
    /// Bundle over gRPC); unset: not served. Uses `[edge.tls]` as the HTTP API does (with
    /// its client CA, mutual TLS). Env: `NEMS_EDGE_GRPC_LISTEN`.
    pub grpc_listen: Option<SocketAddr>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9080)),
            core_url: "http://127.0.0.1:9090".into(),
            base_url: "http://127.0.0.1:9080".into(),
            service_asid: "200000000306".into(),
            max_body_bytes: 3 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            core_timeout: Duration::from_secs(10),
            clock_skew: Duration::from_secs(60),
            max_connections: 4096,
            rate_limit_per_asid: 1000,
            rate_limit_burst: 2000,
            http2_max_concurrent_streams: 32,
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(10),
            tls: None,
            core_tls: None,
            allow_plaintext: false,
            grpc_listen: None,
        }
    }
}

impl EdgeConfig {
    /// Checks values serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.service_asid.len() != 12 || !self.service_asid.bytes().all(|b| b.is_ascii_digit()) {
            return Err("edge.service_asid must be 12 digits".into());
        }
        let urls = crate::core_client::core_urls(&self.core_url);
        if urls.is_empty()
            || !urls
                .iter()
                .all(|u| u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(
                "edge.core_url must be an http:// or https:// URL, or several separated by commas"
                    .into(),
            );
        }
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://"))
            || self.base_url.ends_with('/')
        {
            return Err("edge.base_url must be an http(s) URL without a trailing slash".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("edge.max_body_bytes must be at least 1024".into());
        }
        if self.max_header_bytes < 8192 {
            return Err("edge.max_header_bytes must be at least 8192".into());
        }
        match &self.tls {
            Some(tls) => tls.check("edge.tls")?,
            None if !self.listen.ip().is_loopback() && !self.allow_plaintext => {
                return Err(format!(
                    "{} is not a loopback address and edge.tls is not set: serve HTTPS, or set edge.allow_plaintext = true behind a TLS-terminating proxy",
                    self.listen
                ));
            }
            None => {}
        }
        if let Some(grpc) = self.grpc_listen {
            if grpc.port() != 0 && grpc == self.listen {
                return Err("edge.grpc_listen must differ from edge.listen".into());
            }
            if self.tls.is_none() && !grpc.ip().is_loopback() && !self.allow_plaintext {
                return Err(format!(
                    "edge.grpc_listen {grpc} is not a loopback address and edge.tls is not set: serve TLS, or set edge.allow_plaintext = true"
                ));
            }
        }
        if let Some(tls) = &self.core_tls {
            tls.check("edge.core_tls")?;
            if !urls.iter().all(|u| u.starts_with("https://")) {
                return Err("edge.core_tls needs https:// core URLs in edge.core_url".into());
            }
        }
        if self.max_connections == 0 {
            return Err("edge.max_connections must be at least 1".into());
        }
        if !(1..=MAX_HTTP2_STREAMS).contains(&self.http2_max_concurrent_streams) {
            return Err(format!(
                "edge.http2_max_concurrent_streams must be between 1 and {MAX_HTTP2_STREAMS}"
            ));
        }
        if self.http2_keep_alive_interval.is_zero() {
            return Err("edge.http2_keep_alive_interval must be more than 0".into());
        }
        if self.http2_keep_alive_timeout.is_zero() {
            return Err("edge.http2_keep_alive_timeout must be more than 0".into());
        }
        Ok(())
    }
}

pub use nems_runtime::config::duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_off_loopback_needs_allow_plaintext() {
        let public = EdgeConfig {
            listen: "0.0.0.0:9080".parse().unwrap(),
            ..Default::default()
        };
        let e = public.validate().unwrap_err();
        assert!(e.contains("edge.allow_plaintext"), "{e}");
        EdgeConfig {
            allow_plaintext: true,
            ..public
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn http2_limits_are_validated() {
        assert!(EdgeConfig::default().validate().is_ok());
        let refused = |change: fn(&mut EdgeConfig)| {
            let mut config = EdgeConfig::default();
            change(&mut config);
            config.validate().unwrap_err()
        };
        let key = "edge.http2_max_concurrent_streams";
        assert!(refused(|c| c.http2_max_concurrent_streams = 0).contains(key));
        assert!(refused(|c| c.http2_max_concurrent_streams = 257).contains(key));
        let key = "edge.http2_keep_alive_interval";
        assert!(refused(|c| c.http2_keep_alive_interval = Duration::ZERO).contains(key));
        let key = "edge.http2_keep_alive_timeout";
        assert!(refused(|c| c.http2_keep_alive_timeout = Duration::ZERO).contains(key));
    }
}
