//! MESH client settings and the redacting [`Secret`] type.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::retry::RetryPolicy;

/// The chunk threshold mesh-client uses: payloads above it are split (75 MiB).
pub const DEFAULT_CHUNK_SIZE: usize = 75 * 1024 * 1024;

/// A secret string (mailbox password, shared HMAC key) whose `Debug`/`Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

// === Secret ===

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Returns the secret value; call only where it is used, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// TLS settings for `https://` base URLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file with the CA certificates to trust instead of the system roots (MESH uses
    /// NHS CAs).
    pub ca_pem: Option<PathBuf>,
    /// PEM file with our client certificate chain (mutual TLS, required by real MESH).
    pub client_cert_pem: Option<PathBuf>,
    /// PEM file with the client certificate's private key.
    pub client_key_pem: Option<PathBuf>,
}

/// Everything [`crate::mesh::MeshClient::new`] needs.
#[derive(Debug, Clone)]
pub struct MeshClientConfig {
    /// Base URL, e.g. `https://msg.intspineservices.nhs.uk` or `http://127.0.0.1:8700`.
    pub base_url: String,
    /// Our own mailbox id (sender of every message, owner of the polled inbox).
    pub mailbox: String,
    /// Our mailbox password.
    pub password: Secret,
    /// The environment's shared HMAC key.
    pub shared_key: Secret,
    /// TLS settings; `None` uses the system roots and no client certificate.
    pub tls: Option<TlsConfig>,
    /// Time allowed to open a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Time allowed for one request, from sending to reading the whole response.
    pub request_timeout: Duration,
    /// Payloads longer than this many bytes are sent in chunks of at most this size.
    pub chunk_size: usize,
    /// Idle keep-alive connections kept per host.
    pub max_idle_connections: usize,
    /// How often a chunk upload (parts 2..n) is retried after a transient failure.
    pub chunk_retries: u32,
    /// Backoff between chunk upload retries.
    pub chunk_retry_policy: RetryPolicy,
}

// === MeshClientConfig ===

impl MeshClientConfig {
    /// Returns a configuration with default timeouts and limits.
    pub fn new(
        base_url: impl Into<String>,
        mailbox: impl Into<String>,
        password: impl Into<Secret>,
        shared_key: impl Into<Secret>,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            mailbox: mailbox.into(),
            password: password.into(),
            shared_key: shared_key.into(),
            tls: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: crate::config::DEFAULT_REQUEST_TIMEOUT,
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_idle_connections: 8,
            chunk_retries: 3,
            chunk_retry_policy: RetryPolicy::new(
                Duration::from_millis(500),
                Duration::from_secs(10),
                Duration::from_secs(60),
            ),
        }
    }
}

/// Why a [`MeshClientConfig`] was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The base URL is not an absolute `http`/`https` URL.
    #[error("mesh base url {url:?} is invalid: {reason}")]
    BaseUrl {
        /// The offending URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The mailbox id is empty or not plain ASCII letters and digits.
    #[error("mesh mailbox id is invalid: {0}")]
    Mailbox(String),
    /// A numeric setting is out of range.
    #[error("mesh setting {name} is invalid: {reason}")]
    Setting {
        /// The setting's field name.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// A TLS file could not be read or parsed.
    #[error("mesh tls setting {name} ({path}) is invalid: {reason}")]
    Tls {
        /// The setting's field name.
        name: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "***");
        let config = MeshClientConfig::new("http://x", "MB1", "hunter2", "sharedkey");
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("sharedkey"));
        assert_eq!(config.password.expose(), "hunter2");
    }
}
