//! The adapter's configuration: the `[mesh_adapter]` section of the nems TOML file.
//! Secrets (`mesh.password`, `mesh.shared_key`) are best given by environment
//! (`NEMS_MESH_PASSWORD`, `NEMS_MESH_SHARED_KEY`); they are never printed.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mesh::{MeshClientConfig, Secret, TlsConfig};
use crate::retry::RetryPolicy;

/// Where deliveries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// One `.dat` + `.ctl` pair per delivery under `folder` (the embedded default).
    Folder,
    /// The MESH API.
    Mesh,
}

/// The `[mesh_adapter]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterConfig {
    /// Core's gRPC service API URL; several cores on one PostgreSQL database: their URLs
    /// separated by commas (calls move to the next when one stops answering).
    /// Env: `NEMS_CORE_URL`.
    pub core_url: String,
    /// This adapter's name in core's logs.
    pub consumer: String,
    /// `folder` or `mesh`. Env: `NEMS_SINK`.
    pub sink: SinkKind,
    /// Root of the folder sink. Env: `NEMS_OUTBOX_DIR`.
    pub folder: PathBuf,
    /// Most deliveries in flight at once (across all mailboxes).
    pub max_in_flight: u32,
    /// Most deliveries in flight per mailbox, so one slow mailbox cannot take every slot.
    pub max_in_flight_per_mailbox: u32,
    /// First retry delay.
    #[serde(with = "duration")]
    pub retry_initial: Duration,
    /// Longest retry delay.
    #[serde(with = "duration")]
    pub retry_max_delay: Duration,
    /// How long a transiently failing delivery is retried before it is dead-lettered,
    /// counted from its acceptance or, when later, its last redrive.
    #[serde(with = "duration")]
    pub retry_max_elapsed: Duration,
    /// MESH settings (used when `sink = "mesh"`).
    pub mesh: MeshSettings,
    /// TLS to core's service API (`[mesh_adapter.core_tls]`; `core_url` must be `https://`).
    pub core_tls: Option<nems_runtime::tls::ClientTls>,
}

/// The `[mesh_adapter.mesh]` section.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSettings {
    /// MESH base URL. Env: `NEMS_MESH_URL`.
    pub base_url: String,
    /// The service's own mailbox (sender, and where reports arrive). Env: `NEMS_MESH_MAILBOX`.
    pub mailbox: String,
    /// Mailbox password. Env: `NEMS_MESH_PASSWORD`.
    #[serde(serialize_with = "nems_runtime::config::secret::serialize")]
    pub password: String,
    /// Environment shared secret. Env: `NEMS_MESH_SHARED_KEY`.
    #[serde(serialize_with = "nems_runtime::config::secret::serialize")]
    pub shared_key: String,
    /// CA certificates (PEM) to trust for MESH. Env: `NEMS_MESH_CA_FILE`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS. Env: `NEMS_MESH_CLIENT_CERT`.
    pub client_cert_file: Option<PathBuf>,
    /// Client private key (PEM). Env: `NEMS_MESH_CLIENT_KEY`.
    pub client_key_file: Option<PathBuf>,
    /// Payloads above this many bytes are sent in gzip chunks.
    pub chunk_size: usize,
    /// Time allowed to connect (part of each request's `request_timeout`).
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed for one MESH request, connecting included. One delivery attempt makes
    /// up to three unchunked requests (a tracking lookup before a repeated send, the send,
    /// a tracking lookup after an ambiguous send), so it may take 3 × this; core's
    /// `lease_timeout` must be longer, or core hands a delivery out again while its send
    /// may still be open (the adapter warns when it is not). Chunked sends make one request
    /// per chunk.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// How often the service mailbox is polled for non-delivery reports.
    #[serde(with = "duration")]
    pub report_poll_interval: Duration,
    /// Readiness turns false once MESH has been unreachable for longer than this.
    #[serde(with = "duration")]
    pub unready_after: Duration,
    /// While the MESH endpoint's circuit is open (deliveries held), the longest wait between
    /// probes (handshakes); the wait starts at 250 ms and doubles up to this. It bounds how
    /// long after MESH's return the backlog starts to flow.
    #[serde(with = "duration")]
    pub circuit_probe_max: Duration,
}

impl std::fmt::Debug for MeshSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshSettings")
            .field("base_url", &self.base_url)
            .field("mailbox", &self.mailbox)
            .field("password", &"***")
            .field("shared_key", &"***")
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .finish_non_exhaustive()
    }
}

/// Default `request_timeout`: ample for a NEMS message (kilobytes), and 3 × it (one
/// attempt at worst) stays well inside core's default 5-minute lease.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl MeshSettings {
    /// The longest one unchunked delivery attempt may take: three requests (tracking
    /// lookup, send, reconciling lookup), each bounded by `request_timeout`, which covers
    /// connecting too.
    pub fn attempt_budget(&self) -> Duration {
        self.request_timeout.saturating_mul(3)
    }
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            base_url: String::new(),
            mailbox: String::new(),
            password: String::new(),
            shared_key: String::new(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            chunk_size: crate::mesh::DEFAULT_CHUNK_SIZE,
            connect_timeout: Duration::from_secs(10),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            report_poll_interval: Duration::from_secs(300),
            unready_after: Duration::from_secs(300),
            circuit_probe_max: Duration::from_secs(5),
        }
    }
}

impl Default for AdapterConfig {
    fn default() -> Self {
        AdapterConfig {
            core_url: "http://127.0.0.1:9090".into(),
            consumer: "nems-mesh-adapter".into(),
            sink: SinkKind::Folder,
            folder: PathBuf::from("nems-data/outbox"),
            max_in_flight: 64,
            max_in_flight_per_mailbox: 4,
            retry_initial: Duration::from_secs(2),
            retry_max_delay: Duration::from_secs(600),
            retry_max_elapsed: Duration::from_secs(3 * 24 * 3600),
            mesh: MeshSettings::default(),
            core_tls: None,
        }
    }
}

impl AdapterConfig {
    /// Checks values serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let urls = crate::cores::core_urls(&self.core_url);
        if urls.is_empty()
            || !urls
                .iter()
                .all(|u| u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err("mesh_adapter.core_url must be an http:// or https:// URL, or several separated by commas".into());
        }
        if self.max_in_flight == 0 || self.max_in_flight_per_mailbox == 0 {
            return Err(
                "mesh_adapter.max_in_flight and max_in_flight_per_mailbox must be at least 1"
                    .into(),
            );
        }
        if let Some(tls) = &self.core_tls {
            tls.check("mesh_adapter.core_tls")?;
            if !urls.iter().all(|u| u.starts_with("https://")) {
                return Err(
                    "mesh_adapter.core_tls needs https:// core URLs in mesh_adapter.core_url"
                        .into(),
                );
            }
        }
        if self.retry_initial > self.retry_max_delay {
            return Err("mesh_adapter.retry_initial must not exceed retry_max_delay".into());
        }
        if self.sink == SinkKind::Mesh {
            let m = &self.mesh;
            for (key, value) in [
                ("mesh_adapter.mesh.base_url", &m.base_url),
                ("mesh_adapter.mesh.mailbox", &m.mailbox),
                (
                    "mesh_adapter.mesh.password (or NEMS_MESH_PASSWORD)",
                    &m.password,
                ),
                (
                    "mesh_adapter.mesh.shared_key (or NEMS_MESH_SHARED_KEY)",
                    &m.shared_key,
                ),
            ] {
                if value.is_empty() {
                    return Err(format!("{key} is required when sink = \"mesh\""));
                }
            }
            if m.client_cert_file.is_some() != m.client_key_file.is_some() {
                return Err(
                    "mesh_adapter.mesh.client_cert_file and client_key_file go together".into(),
                );
            }
        }
        Ok(())
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(
            self.retry_initial,
            self.retry_max_delay,
            self.retry_max_elapsed,
        )
    }

    /// The MESH client settings.
    pub fn mesh_client_config(&self) -> MeshClientConfig {
        let m = &self.mesh;
        let mut config = MeshClientConfig::new(
            m.base_url.clone(),
            m.mailbox.clone(),
            Secret::new(m.password.clone()),
            Secret::new(m.shared_key.clone()),
        );
        if m.ca_file.is_some() || m.client_cert_file.is_some() {
            config.tls = Some(TlsConfig {
                ca_pem: m.ca_file.clone(),
                client_cert_pem: m.client_cert_file.clone(),
                client_key_pem: m.client_key_file.clone(),
            });
        }
        config.chunk_size = m.chunk_size;
        config.connect_timeout = m.connect_timeout;
        config.request_timeout = m.request_timeout;
        config
    }
}

pub use nems_runtime::config::duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_sink_needs_its_settings_and_secrets_are_hidden() {
        let mut c: AdapterConfig = toml::from_str("sink = \"mesh\"\n[mesh]\nbase_url = \"http://x\"\nmailbox = \"MB\"\npassword = \"hunter2\"\n").unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.contains("shared_key"), "{e}");
        c.mesh.shared_key = "key".into();
        c.validate().unwrap();
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("\"key\""),
            "{printed}"
        );
        let e = toml::from_str::<AdapterConfig>("sink = \"pigeon\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sink"), "{e}");
    }
}
