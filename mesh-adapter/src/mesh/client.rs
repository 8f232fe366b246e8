//! [`MeshClient`]: connection pool, per-request authentication, timeouts and the mapping of
//! transport failures and responses to [`DeliveryError`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::{debug, error};

use super::auth;
use super::config::{ConfigError, MeshClientConfig, Secret, TlsConfig};
use super::headers::{
    ACCEPT_V2, MEX_CLIENT_VERSION, MEX_OS_ARCHITECTURE, MEX_OS_NAME, MEX_OS_VERSION,
};
use super::tls;
use crate::error::{DeliveryError, classify_response};
use crate::retry::RetryPolicy;

/// The `User-Agent` and `mex-ClientVersion` we announce.
const CLIENT_VERSION: &str = concat!("nems-mesh-adapter==", env!("CARGO_PKG_VERSION"));

/// A MESH API client for one mailbox. Cheap to clone (shares one connection pool).
#[derive(Debug, Clone)]
pub struct MeshClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Base URL without a trailing slash.
    base: String,
    /// Our mailbox id, upper case.
    mailbox: String,
    password: Secret,
    shared_key: Secret,
    request_timeout: Duration,
    chunk_size: usize,
    chunk_retries: u32,
    chunk_retry_policy: RetryPolicy,
    os_version: String,
    local_id_route: std::sync::Mutex<super::tracking::RouteState>,
}

/// A complete MESH response.
#[derive(Debug)]
pub(crate) struct MeshResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

// === MeshClient ===

impl MeshClient {
    /// Builds a client; reads the TLS files named in the configuration.
    pub fn new(config: MeshClientConfig) -> Result<Self, ConfigError> {
        let base = validate_base_url(&config.base_url)?;
        let mailbox = config.mailbox.trim().to_ascii_uppercase();
        if mailbox.is_empty() || !mailbox.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConfigError::Mailbox(
                "expected ascii letters and digits".to_owned(),
            ));
        }
        if config.chunk_size == 0 {
            return Err(ConfigError::Setting {
                name: "chunk_size",
                reason: "must be positive".to_owned(),
            });
        }
        if config.request_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(ConfigError::Setting {
                name: "request_timeout",
                reason: "timeouts must be positive".to_owned(),
            });
        }
        let tls_config = if base.starts_with("https://") || config.tls.is_some() {
            tls::client_config(config.tls.as_ref().unwrap_or(&TlsConfig::default()))?
        } else {
            // Plain http (the local sandbox): no roots are needed.
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Setting {
                name: "tls",
                reason: e.to_string(),
            })?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.max_idle_connections)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self {
            inner: Arc::new(Inner {
                http: client,
                base,
                mailbox,
                password: config.password,
                shared_key: config.shared_key,
                request_timeout: config.request_timeout,
                chunk_size: config.chunk_size,
                chunk_retries: config.chunk_retries,
                chunk_retry_policy: config.chunk_retry_policy,
                os_version: os_version(),
                local_id_route: std::sync::Mutex::default(),
            }),
        })
    }

    /// Returns our mailbox id (upper case).
    pub fn mailbox(&self) -> &str {
        &self.inner.mailbox
    }

    /// Returns the base URL (without a trailing slash).
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Validates the mailbox and announces the client (`POST /messageexchange/{mailbox}`).
    /// MESH asks for this once a day.
    pub async fn handshake(&self) -> Result<(), DeliveryError> {
        let request = self
            .request(Method::POST, &self.mailbox_path(""))
            .header(MEX_CLIENT_VERSION, CLIENT_VERSION)
            .header(MEX_OS_NAME, std::env::consts::OS)
            .header(MEX_OS_VERSION, self.inner.os_version.as_str())
            .header(MEX_OS_ARCHITECTURE, std::env::consts::ARCH)
            .body(Full::new(Bytes::new()));
        self.call(request).await.map(|_| ())
    }

    // --- shared plumbing for the operation modules ---

    pub(crate) fn local_id_route_state(&self) -> &std::sync::Mutex<super::tracking::RouteState> {
        &self.inner.local_id_route
    }

    pub(crate) fn chunk_size(&self) -> usize {
        self.inner.chunk_size
    }

    pub(crate) fn chunk_retries(&self) -> u32 {
        self.inner.chunk_retries
    }

    pub(crate) fn chunk_retry_policy(&self) -> &RetryPolicy {
        &self.inner.chunk_retry_policy
    }

    /// Returns `/messageexchange/{mailbox}{suffix}`.
    pub(crate) fn mailbox_path(&self, suffix: &str) -> String {
        format!("/messageexchange/{}{suffix}", self.inner.mailbox)
    }

    /// Starts a request with a fresh `Authorization` token and the v2 `Accept` header.
    pub(crate) fn request(&self, method: Method, path_and_query: &str) -> http::request::Builder {
        let token = auth::fresh_token(
            &self.inner.mailbox,
            self.inner.password.expose(),
            self.inner.shared_key.expose(),
        );
        Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.inner.base))
            .header(header::AUTHORIZATION, token)
            .header(header::ACCEPT, HeaderValue::from_static(ACCEPT_V2))
            .header(header::USER_AGENT, CLIENT_VERSION)
    }

    /// Sends a request and classifies any non-2xx answer.
    pub(crate) async fn call(
        &self,
        request: Result<Request<Full<Bytes>>, http::Error>,
    ) -> Result<MeshResponse, DeliveryError> {
        let response = self.execute(request).await?;
        self.check(response)
    }

    /// Passes a 2xx response through and classifies anything else.
    pub(crate) fn check(&self, response: MeshResponse) -> Result<MeshResponse, DeliveryError> {
        let status = response.status.as_u16();
        let Some(failure) =
            classify_response(status, &response.headers, &response.body, SystemTime::now())
        else {
            return Ok(response);
        };
        if matches!(status, 401 | 403) {
            error!(
                status,
                mailbox = %self.inner.mailbox,
                reason = failure.reason(),
                "mesh rejected our credentials; check mailbox password, shared key and client certificate"
            );
        }
        Err(failure)
    }

    /// Sends a request and reads the whole response; classifies transport failures only.
    ///
    /// A failure to connect means the request was never sent (`Transient`); a timeout or a
    /// broken connection after that may have delivered it (`Ambiguous`).
    pub(crate) async fn execute(
        &self,
        request: Result<Request<Full<Bytes>>, http::Error>,
    ) -> Result<MeshResponse, DeliveryError> {
        let request = request.map_err(|e| {
            DeliveryError::permanent("INVALID_REQUEST", format!("request not built: {e}"))
        })?;
        let method = request.method().clone();
        let exchange = async {
            let response = self.inner.http.request(request).await.map_err(|e| {
                if e.is_connect() {
                    DeliveryError::transient("CONNECT", format!("request not sent: {}", chain(&e)))
                } else {
                    DeliveryError::ambiguous(
                        "CONNECTION",
                        format!("no complete answer: {}", chain(&e)),
                    )
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| {
                DeliveryError::ambiguous("CONNECTION", format!("answer body unreadable: {e}"))
            })?;
            Ok(MeshResponse {
                status: parts.status,
                headers: parts.headers,
                body: body.to_bytes(),
            })
        };
        let result = match tokio::time::timeout(self.inner.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(DeliveryError::ambiguous(
                "TIMEOUT",
                format!("no answer within {:?}", self.inner.request_timeout),
            )),
        };
        match &result {
            Ok(response) => {
                debug!(%method, status = response.status.as_u16(), "mesh call answered")
            }
            Err(failure) => debug!(%method, code = failure.code(), "mesh call failed"),
        }
        result
    }
}

/// Percent-encodes one path segment or query value (everything but RFC 3986 unreserved).
pub(crate) fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Joins an error's source chain into one line (transport errors only; no payload data).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn validate_base_url(url: &str) -> Result<String, ConfigError> {
    let invalid = |reason: &str| ConfigError::BaseUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = url.trim().trim_end_matches('/');
    let uri: http::Uri = trimmed.parse().map_err(|_| invalid("not a url"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("scheme must be http or https")),
    }
    if uri.authority().is_none() {
        return Err(invalid("missing host"));
    }
    if uri.query().is_some() {
        return Err(invalid("must not have a query"));
    }
    Ok(trimmed.to_owned())
}

fn os_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && !v.chars().any(char::is_control))
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_path_components() {
        assert_eq!(encode_component("abc-DEF_1.2~"), "abc-DEF_1.2~");
        assert_eq!(encode_component("a/b c:d"), "a%2Fb%20c%3Ad");
        assert_eq!(encode_component("é"), "%C3%A9");
    }

    #[test]
    fn base_url_validation() {
        assert_eq!(
            validate_base_url("http://127.0.0.1:8700/").unwrap(),
            "http://127.0.0.1:8700"
        );
        assert_eq!(
            validate_base_url("https://mesh.example/prefix").unwrap(),
            "https://mesh.example/prefix"
        );
        assert!(validate_base_url("ftp://x").is_err());
        assert!(validate_base_url("/relative").is_err());
        assert!(validate_base_url("http://x/?q=1").is_err());
    }

    #[tokio::test]
    async fn rejects_bad_settings() {
        let ok = MeshClientConfig::new("http://127.0.0.1:1", "svc01", "pw", "key");
        let client = MeshClient::new(ok.clone()).unwrap();
        assert_eq!(client.mailbox(), "SVC01");
        let mut bad = ok.clone();
        bad.mailbox = "svc:01".into();
        assert!(matches!(MeshClient::new(bad), Err(ConfigError::Mailbox(_))));
        let mut bad = ok.clone();
        bad.chunk_size = 0;
        assert!(MeshClient::new(bad).is_err());
        let mut bad = ok;
        bad.tls = Some(TlsConfig {
            client_cert_pem: Some("/nonexistent.pem".into()),
            ..TlsConfig::default()
        });
        assert!(MeshClient::new(bad).is_err());
    }

    #[tokio::test]
    async fn connect_failure_is_transient() {
        // Bind then drop a listener: nothing listens on that port any more.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let config = MeshClientConfig::new(format!("http://127.0.0.1:{port}"), "SVC01", "pw", "k");
        let client = MeshClient::new(config).unwrap();
        let error = client.handshake().await.unwrap_err();
        assert!(error.is_transient(), "{error:?}");
        assert_eq!(error.code(), "CONNECT");
    }
}
