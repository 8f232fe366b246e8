//! The nems configuration file (TOML) and its environment overrides.
//!
//! ```toml
//! version = 1
//! [log]          # format = "human" | "json"; level = an EnvFilter directive
//! [core]         # nems_core::CoreConfig
//! [edge]         # nems_edge::EdgeConfig
//! [mesh_adapter] # nems_mesh_adapter::AdapterConfig (with [mesh_adapter.mesh])
//! ```
//!
//! Every key is optional; unknown keys and bad values stop start-up with a message naming
//! the key. Environment variables override the file (the list is [`ENV_OVERRIDES`]); a bad
//! value names the variable, and any other `NEMS_*` variable gets a warning naming it (a
//! typo such as `NEMS_DATADIR` would otherwise be ignored; see [`unknown_variables`]).
//! Secrets are never printed: errors in the file give the key, line and column, never the
//! line itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nems_core::CoreConfig;
use nems_edge::EdgeConfig;
use nems_mesh_adapter::{AdapterConfig, SinkKind};
use serde::{Deserialize, Serialize};

/// Where configuration values come from besides the file (the process environment in
/// production, a map in tests).
pub trait Source {
    /// Returns the value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
    /// Returns the name of every variable set.
    fn names(&self) -> Vec<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct Environment;

impl Source for Environment {
    fn get(&self, name: &str) -> Option<String> {
        #[allow(
            clippy::disallowed_methods,
            reason = "this is the one place that reads the environment"
        )]
        std::env::var(name).ok()
    }

    fn names(&self) -> Vec<String> {
        // `vars_os`: `vars` panics on a value that is not UTF-8, and only names are needed.
        std::env::vars_os()
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }

    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

/// Log output settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`. Env: `NEMS_LOG_FORMAT`.
    pub format: LogFormat,
    /// An EnvFilter directive, e.g. `info` or `info,nems_core=debug`. Env: `NEMS_LOG`.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// The operations endpoint (`/metrics`, `/livez`, `/readyz`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Listen address of `nems up` (all three services in one process); `"off"`: no
    /// endpoint. Env: `NEMS_OPS_LISTEN` (for whichever command runs).
    #[serde(with = "ops_addr")]
    pub listen: Option<std::net::SocketAddr>,
    /// Listen address of `nems core`, so that the three services can run from one
    /// configuration on one host.
    #[serde(with = "ops_addr")]
    pub core_listen: Option<std::net::SocketAddr>,
    /// Listen address of `nems edge`.
    #[serde(with = "ops_addr")]
    pub edge_listen: Option<std::net::SocketAddr>,
    /// Listen address of `nems mesh-adapter`.
    #[serde(with = "ops_addr")]
    pub adapter_listen: Option<std::net::SocketAddr>,
    /// Who may open the operations console: a file of `name sha256:<hex>` lines, one per
    /// operator, each the SHA-256 of that operator's bearer token. Given, the console asks
    /// for a token (a login form, or `Authorization: Bearer`); required where the operator
    /// API requires operator TLS (absent there, the console refuses everyone).
    pub console_tokens_file: Option<PathBuf>,
}

/// An ops endpoint address, or `"off"` for none.
mod ops_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text == "off" {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{text}` is not an address such as 127.0.0.1:9100, or \"off\""
            ))
        })
    }
}

impl Default for OpsConfig {
    fn default() -> Self {
        let local = |port| Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        OpsConfig {
            listen: local(9100),
            core_listen: local(9101),
            edge_listen: local(9102),
            adapter_listen: local(9103),
            console_tokens_file: None,
        }
    }
}

/// Which command's operations endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpsOf {
    /// `nems up`.
    All,
    /// `nems core`.
    Core,
    /// `nems edge`.
    Edge,
    /// `nems mesh-adapter`.
    Adapter,
}

impl OpsConfig {
    /// The endpoint address of `command`.
    pub fn listen_of(&self, command: OpsOf) -> Option<std::net::SocketAddr> {
        match command {
            OpsOf::All => self.listen,
            OpsOf::Core => self.core_listen,
            OpsOf::Edge => self.edge_listen,
            OpsOf::Adapter => self.adapter_listen,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NemsConfig {
    /// File format version (1).
    pub version: u32,
    /// Logging.
    pub log: LogConfig,
    /// Operations endpoint.
    pub ops: OpsConfig,
    /// TLS for the operator commands' connection to core's operator API
    /// (`[operator_tls]`: the operators' client certificate and the CA of core).
    pub operator_tls: Option<nems_runtime::tls::ClientTls>,
    /// Core's operator API for `nems admin` and `nems import` (`http://` or `https://`; an
    /// `https://` URL uses `[operator_tls]`). Default: `core.operator_listen` on this host.
    /// Env: `NEMS_OPERATOR_URL`; `--operator` overrides both.
    pub operator_url: Option<String>,
    /// Core.
    pub core: CoreConfig,
    /// Edge.
    pub edge: EdgeConfig,
    /// Delivery adapter.
    pub mesh_adapter: AdapterConfig,
}

impl Default for NemsConfig {
    fn default() -> Self {
        NemsConfig {
            version: 1,
            log: LogConfig::default(),
            ops: OpsConfig::default(),
            operator_tls: None,
            operator_url: None,
            core: CoreConfig::default(),
            edge: EdgeConfig::default(),
            mesh_adapter: AdapterConfig::default(),
        }
    }
}

/// The environment variables that override the file, with what they set.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("NEMS_LOG", "log.level"),
    ("NEMS_LOG_FORMAT", "log.format"),
    (
        "NEMS_OPS_LISTEN",
        "the running command's ops endpoint (ops.listen, core_listen, edge_listen or adapter_listen; \"off\" disables)",
    ),
    ("NEMS_DATA_DIR", "core.data_dir"),
    ("NEMS_DATABASE_URL", "core.database_url"),
    ("NEMS_DIRECTORY_FILE", "core.directory_file"),
    ("NEMS_CORE_LISTEN", "core.listen"),
    ("NEMS_CORE_OPERATOR_LISTEN", "core.operator_listen"),
    ("NEMS_CORE_URL", "edge.core_url and mesh_adapter.core_url"),
    (
        "NEMS_OPERATOR_URL",
        "operator_url (nems admin and nems import)",
    ),
    ("NEMS_EDGE_LISTEN", "edge.listen"),
    ("NEMS_EDGE_GRPC_LISTEN", "edge.grpc_listen"),
    ("NEMS_BASE_URL", "edge.base_url"),
    ("NEMS_SERVICE_ASID", "edge.service_asid"),
    ("NEMS_SINK", "mesh_adapter.sink"),
    ("NEMS_OUTBOX_DIR", "mesh_adapter.folder"),
    ("NEMS_MESH_URL", "mesh_adapter.mesh.base_url"),
    ("NEMS_MESH_MAILBOX", "mesh_adapter.mesh.mailbox"),
    ("NEMS_MESH_PASSWORD", "mesh_adapter.mesh.password"),
    ("NEMS_MESH_SHARED_KEY", "mesh_adapter.mesh.shared_key"),
    ("NEMS_MESH_CA_FILE", "mesh_adapter.mesh.ca_file"),
    (
        "NEMS_MESH_CLIENT_CERT",
        "mesh_adapter.mesh.client_cert_file",
    ),
    ("NEMS_MESH_CLIENT_KEY", "mesh_adapter.mesh.client_key_file"),
    (
        "NEMS_PDS_URL",
        "core.pds.base_url (turns the PDS lookup on)",
    ),
    ("NEMS_PDS_TOKEN", "core.pds.bearer_token"),
];

/// `NEMS_*` variables read elsewhere than [`ENV_OVERRIDES`], so not typos: the
/// configuration file path (`nems --config`) and the test and benchmark tooling.
pub const OTHER_VARIABLES: &[&str] = &[
    "NEMS_CONFIG",
    "NEMS_VENV",
    "NEMS_REQUIRE_TOOLS",
    "NEMS_BIN",
    "NEMS_CRASH_SEED",
];

/// Prefixes of further tooling variables (`NEMS_BENCH_MAILBOXES`, ...).
const OTHER_PREFIXES: &[&str] = &["NEMS_BENCH_"];

/// The `NEMS_*` variables in `source` that nems does not read, sorted: most likely typos.
pub fn unknown_variables(source: &dyn Source) -> Vec<String> {
    let mut unknown: Vec<String> = source
        .names()
        .into_iter()
        .filter(|name| name.starts_with("NEMS_"))
        .filter(|name| {
            let known = ENV_OVERRIDES.iter().any(|(known, _)| known == name)
                || OTHER_VARIABLES.contains(&name.as_str())
                || OTHER_PREFIXES.iter().any(|p| name.starts_with(p));
            !known
        })
        .collect();
    unknown.sort();
    unknown
}

/// Logs a warning naming each of [`unknown_variables`] (never its value). Called once
/// logging is set up, right after [`NemsConfig::load`].
pub fn warn_unknown_variables(source: &dyn Source) {
    for name in unknown_variables(source) {
        tracing::warn!(
            variable = %name,
            "environment variable {name} is not a nems setting and is ignored (see `nems config` for the list)"
        );
    }
}

fn parsed<T: std::str::FromStr>(name: &str, value: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| anyhow::anyhow!("environment variable {name}: `{value}` is not valid: {e}"))
}

impl NemsConfig {
    /// Reads `path` (or the defaults when `None`), then applies `source` overrides, then
    /// validates every section.
    pub fn load(path: Option<&Path>, source: &dyn Source) -> anyhow::Result<Self> {
        let mut config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config file {}", p.display()))?;
                Self::parse(&text).with_context(|| format!("config file {}", p.display()))?
            }
            None => NemsConfig::default(),
        };
        config.apply(source)?;
        config.follow_data_dir();
        config.validate()?;
        Ok(config)
    }

    /// The folder sink's outbox follows the data directory when it was not set
    /// (`<data_dir>/outbox`), rather than the working directory.
    fn follow_data_dir(&mut self) {
        if self.mesh_adapter.folder == nems_mesh_adapter::AdapterConfig::default().folder {
            self.mesh_adapter.folder = self.core.data_dir.join("outbox");
        }
    }

    /// Parses TOML text (no overrides, no validation).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        // Never `{e}`: toml's Display quotes the source line, which may hold a secret.
        let config: NemsConfig = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!(nems_runtime::config::describe_toml_error(text, &e)))?;
        if config.version != 1 {
            bail!(
                "version = {} is not supported (this build reads version 1)",
                config.version
            );
        }
        Ok(config)
    }

    /// Applies environment overrides.
    pub fn apply(&mut self, source: &dyn Source) -> anyhow::Result<()> {
        let get = |name: &str| source.get(name).filter(|v| !v.is_empty());
        if let Some(v) = get("NEMS_LOG") {
            self.log.level = v;
        }
        if let Some(v) = get("NEMS_LOG_FORMAT") {
            self.log.format = match v.as_str() {
                "human" => LogFormat::Human,
                "json" => LogFormat::Json,
                _ => bail!("environment variable NEMS_LOG_FORMAT: `{v}` must be human or json"),
            };
        }
        if let Some(v) = get("NEMS_OPS_LISTEN") {
            // The environment is the running process's: it sets that command's endpoint.
            let addr = if v == "off" {
                None
            } else {
                Some(parsed("NEMS_OPS_LISTEN", &v)?)
            };
            self.ops.listen = addr;
            self.ops.core_listen = addr;
            self.ops.edge_listen = addr;
            self.ops.adapter_listen = addr;
        }
        if let Some(v) = get("NEMS_DATA_DIR") {
            self.core.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("NEMS_DATABASE_URL") {
            self.core.database_url = Some(v);
        }
        if let Some(v) = get("NEMS_DIRECTORY_FILE") {
            self.core.directory_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("NEMS_CORE_LISTEN") {
            self.core.listen = parsed("NEMS_CORE_LISTEN", &v)?;
        }
        if let Some(v) = get("NEMS_CORE_OPERATOR_LISTEN") {
            self.core.operator_listen = parsed("NEMS_CORE_OPERATOR_LISTEN", &v)?;
        }
        if let Some(v) = get("NEMS_OPERATOR_URL") {
            crate::remote::check_url(&v).context("environment variable NEMS_OPERATOR_URL")?;
            self.operator_url = Some(v);
        }
        if let Some(v) = get("NEMS_CORE_URL") {
            self.edge.core_url.clone_from(&v);
            self.mesh_adapter.core_url = v;
        }
        if let Some(v) = get("NEMS_EDGE_LISTEN") {
            self.edge.listen = parsed("NEMS_EDGE_LISTEN", &v)?;
        }
        if let Some(v) = get("NEMS_EDGE_GRPC_LISTEN") {
            self.edge.grpc_listen = Some(parsed("NEMS_EDGE_GRPC_LISTEN", &v)?);
        }
        if let Some(v) = get("NEMS_BASE_URL") {
            self.edge.base_url = v;
        }
        if let Some(v) = get("NEMS_SERVICE_ASID") {
            self.edge.service_asid = v;
        }
        if let Some(v) = get("NEMS_SINK") {
            self.mesh_adapter.sink = match v.as_str() {
                "folder" => SinkKind::Folder,
                "mesh" => SinkKind::Mesh,
                _ => bail!("environment variable NEMS_SINK: `{v}` must be folder or mesh"),
            };
        }
        if let Some(v) = get("NEMS_OUTBOX_DIR") {
            self.mesh_adapter.folder = PathBuf::from(v);
        }
        let mesh = &mut self.mesh_adapter.mesh;
        for (name, slot) in [
            ("NEMS_MESH_URL", &mut mesh.base_url),
            ("NEMS_MESH_MAILBOX", &mut mesh.mailbox),
            ("NEMS_MESH_PASSWORD", &mut mesh.password),
            ("NEMS_MESH_SHARED_KEY", &mut mesh.shared_key),
        ] {
            if let Some(v) = get(name) {
                *slot = v;
            }
        }
        for (name, slot) in [
            ("NEMS_MESH_CA_FILE", &mut mesh.ca_file),
            ("NEMS_MESH_CLIENT_CERT", &mut mesh.client_cert_file),
            ("NEMS_MESH_CLIENT_KEY", &mut mesh.client_key_file),
        ] {
            if let Some(v) = get(name) {
                *slot = Some(PathBuf::from(v));
            }
        }
        if let Some(v) = get("NEMS_PDS_URL") {
            self.core.pds.get_or_insert_with(Default::default).base_url = v;
        }
        if let Some(v) = get("NEMS_PDS_TOKEN") {
            let Some(pds) = self.core.pds.as_mut() else {
                bail!(
                    "environment variable NEMS_PDS_TOKEN is set but the PDS lookup is off (set [core.pds] or NEMS_PDS_URL)"
                );
            };
            pds.bearer_token = Some(v);
        }
        Ok(())
    }

    /// Validates every section.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.core.validate().map_err(anyhow::Error::msg)?;
        self.edge.validate().map_err(anyhow::Error::msg)?;
        self.mesh_adapter.validate().map_err(anyhow::Error::msg)?;
        if let Some(tls) = &self.operator_tls {
            tls.check("operator_tls").map_err(anyhow::Error::msg)?;
        }
        if let Some(url) = &self.operator_url {
            crate::remote::check_url(url).context("operator_url")?;
        }
        if let Some(file) = &self.ops.console_tokens_file {
            crate::console::Tokens::read(file).context("ops.console_tokens_file")?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            anyhow::anyhow!("log.level `{}` is not a valid filter: {e}", self.log.level)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn defaults_validate() {
        NemsConfig::load(None, &env(&[])).unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = format!(
            "{:#}",
            NemsConfig::parse("[core]\ncolour = 1\n").unwrap_err()
        );
        assert!(e.contains("colour"), "{e}");
        let e = format!(
            "{:#}",
            NemsConfig::parse("[edge]\nrequest_timeout = \"soon\"\n").unwrap_err()
        );
        assert!(e.contains("request_timeout") && e.contains("soon"), "{e}");
        let e = format!("{:#}", NemsConfig::parse("version = 2\n").unwrap_err());
        assert!(e.contains("version"), "{e}");
        let mut c = NemsConfig::parse("[edge]\nservice_asid = \"12\"\n").unwrap();
        c.apply(&env(&[])).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("edge.service_asid"), "{e}");
    }

    #[test]
    fn a_console_token_file_is_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("console-tokens");
        let config = |file: &std::path::Path| {
            NemsConfig::parse(&format!(
                "[ops]\nconsole_tokens_file = {:?}\n",
                file.display().to_string()
            ))
            .unwrap()
        };
        let e = format!("{:#}", config(&file).validate().unwrap_err());
        assert!(
            e.contains("ops.console_tokens_file") && e.contains("cannot read"),
            "{e}"
        );
        std::fs::write(&file, "alice sha256:beef\n").unwrap();
        let e = format!("{:#}", config(&file).validate().unwrap_err());
        assert!(e.contains("line 1") && e.contains("64 hex digits"), "{e}");
        std::fs::write(&file, crate::console::Tokens::line("alice", "t")).unwrap();
        config(&file).validate().unwrap();
    }

    #[test]
    fn environment_overrides_and_errors_name_the_variable() {
        let c = NemsConfig::load(
            None,
            &env(&[
                ("NEMS_DATA_DIR", "/tmp/d"),
                ("NEMS_CORE_LISTEN", "127.0.0.1:7777"),
                ("NEMS_CORE_URL", "http://127.0.0.1:7777"),
                ("NEMS_SINK", "mesh"),
                ("NEMS_MESH_URL", "http://127.0.0.1:8700"),
                ("NEMS_MESH_MAILBOX", "NEMSSVC01"),
                ("NEMS_MESH_PASSWORD", "hunter2"),
                ("NEMS_MESH_SHARED_KEY", "TestKey"),
                (
                    "NEMS_PDS_URL",
                    "https://pds.example/personal-demographics/FHIR/R4",
                ),
                ("NEMS_PDS_TOKEN", "pds-secret"),
            ]),
        )
        .unwrap();
        let pds = c
            .core
            .pds
            .as_ref()
            .expect("NEMS_PDS_URL turns the lookup on");
        assert_eq!(
            pds.base_url,
            "https://pds.example/personal-demographics/FHIR/R4"
        );
        assert_eq!(pds.bearer_token.as_deref(), Some("pds-secret"));
        assert!(!format!("{c:?}").contains("pds-secret"));
        let e = NemsConfig::load(None, &env(&[("NEMS_PDS_TOKEN", "t")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("NEMS_PDS_TOKEN"), "{e}");
        assert_eq!(c.core.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(c.core.listen.port(), 7777);
        assert_eq!(c.mesh_adapter.core_url, "http://127.0.0.1:7777");
        assert_eq!(c.mesh_adapter.sink, SinkKind::Mesh);
        assert!(!format!("{c:?}").contains("hunter2"));

        let e = NemsConfig::load(None, &env(&[("NEMS_CORE_LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("NEMS_CORE_LISTEN"), "{e}");
        let e = NemsConfig::load(None, &env(&[("NEMS_SINK", "pigeon")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("NEMS_SINK"), "{e}");
        let e = NemsConfig::load(None, &env(&[("NEMS_SINK", "mesh")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mesh_adapter.mesh.base_url"), "{e}");
    }

    #[test]
    fn each_command_has_its_own_ops_endpoint_and_the_environment_sets_the_running_ones() {
        let c = NemsConfig::load(None, &env(&[])).unwrap();
        let ports: std::collections::BTreeSet<u16> =
            [OpsOf::All, OpsOf::Core, OpsOf::Edge, OpsOf::Adapter]
                .iter()
                .map(|o| c.ops.listen_of(*o).unwrap().port())
                .collect();
        assert_eq!(ports.len(), 4, "{ports:?}");
        let c = NemsConfig::load(None, &env(&[("NEMS_OPS_LISTEN", "127.0.0.1:9999")])).unwrap();
        assert_eq!(c.ops.listen_of(OpsOf::Edge).unwrap().port(), 9999);
        let c = NemsConfig::load(None, &env(&[("NEMS_OPS_LISTEN", "off")])).unwrap();
        assert_eq!(c.ops.listen_of(OpsOf::Core), None);
    }

    #[test]
    fn the_outbox_follows_the_data_directory_unless_set() {
        let c = NemsConfig::load(None, &env(&[("NEMS_DATA_DIR", "/srv/nems")])).unwrap();
        assert_eq!(c.mesh_adapter.folder, PathBuf::from("/srv/nems/outbox"));
        let c = NemsConfig::load(
            None,
            &env(&[
                ("NEMS_DATA_DIR", "/srv/nems"),
                ("NEMS_OUTBOX_DIR", "/mnt/out"),
            ]),
        )
        .unwrap();
        assert_eq!(c.mesh_adapter.folder, PathBuf::from("/mnt/out"));
        let c = NemsConfig::parse(
            "version = 1\n[core]\ndata_dir = \"/d\"\n[mesh_adapter]\nfolder = \"/o\"\n",
        )
        .unwrap();
        assert_eq!(c.mesh_adapter.folder, PathBuf::from("/o"));
    }

    #[test]
    fn file_errors_never_show_a_secret() {
        for (text, key) in [
            // A misspelt secret key.
            (
                "[mesh_adapter.mesh]\nmailbox = \"MB\"\npasword = \"hunter2\"\n",
                "pasword",
            ),
            // Unquoted secrets.
            (
                "[mesh_adapter.mesh]\npassword = hunter2\n",
                "mesh_adapter.mesh.password",
            ),
            (
                "[mesh_adapter.mesh]\nshared_key = hunter2\n",
                "mesh_adapter.mesh.shared_key",
            ),
            (
                "[core.pds]\nbase_url = \"https://pds.example\"\nbearer_token = hunter2\n",
                "core.pds.bearer_token",
            ),
            // A secret that is not a string: serde's message would quote it.
            (
                "[mesh_adapter.mesh]\npassword = 2025\n",
                "mesh_adapter.mesh.password",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("nems.toml");
            std::fs::write(&path, text).unwrap();
            let e = format!(
                "{:#}",
                NemsConfig::load(Some(&path), &env(&[])).unwrap_err()
            );
            assert!(e.contains(key), "{e}");
            assert!(e.contains("line "), "{e}");
            assert!(!e.contains("hunter2") && !e.contains("2025"), "{e}");
        }
    }

    #[test]
    fn unknown_nems_variables_are_named_and_others_left_alone() {
        let source = env(&[
            ("NEMS_DATADIR", "/tmp/typo"),
            ("NEMS_MESH_PASWORD", "hunter2"),
            ("NEMS_DATA_DIR", "/tmp/d"),
            ("NEMS_CONFIG", "/etc/nems.toml"),
            ("NEMS_VENV", "/opt/venv"),
            ("NEMS_REQUIRE_TOOLS", "1"),
            ("NEMS_BENCH_MAILBOXES", "10"),
            ("HOME", "/root"),
        ]);
        assert_eq!(
            unknown_variables(&source),
            ["NEMS_DATADIR", "NEMS_MESH_PASWORD"]
        );
        // Every documented override is known.
        let all: HashMap<String, String> = ENV_OVERRIDES
            .iter()
            .map(|(name, _)| ((*name).to_string(), String::new()))
            .collect();
        assert!(unknown_variables(&all).is_empty());

        // The warning names the variable, never its value.
        let logged = capture_logs(|| warn_unknown_variables(&source));
        assert!(
            logged.contains("NEMS_DATADIR") && logged.contains("NEMS_MESH_PASWORD"),
            "{logged}"
        );
        assert!(logged.contains("WARN"), "{logged}");
        assert!(
            !logged.contains("hunter2") && !logged.contains("/tmp/typo"),
            "{logged}"
        );
        assert_eq!(logged.matches("WARN").count(), 2, "{logged}");
    }

    /// Runs `f` with a subscriber that writes into a buffer; returns what it wrote.
    fn capture_logs(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn the_readme_lists_every_environment_override() {
        let readme = include_str!("../../README.md");
        for (name, _) in ENV_OVERRIDES {
            assert!(readme.contains(&format!("`{name}`")), "README lacks {name}");
        }
    }

    #[test]
    fn the_documented_example_file_parses() {
        let text = include_str!("../../config/nems.example.toml");
        let c = NemsConfig::parse(text).unwrap();
        c.validate().unwrap();
        assert!(
            c.core.lease_timeout > c.mesh_adapter.mesh.attempt_budget(),
            "the example's lease outlasts a MESH attempt"
        );
    }

    #[test]
    fn the_default_lease_outlasts_a_mesh_attempt_with_room_to_spare() {
        // One attempt: up to three MESH requests (tracking, send, reconciling tracking),
        // each bounded by the request timeout (connecting included). A lease that ran out
        // first would let core hand the delivery out again while its send is still open.
        let c = NemsConfig::default();
        let attempt = c.mesh_adapter.mesh.attempt_budget();
        assert_eq!(attempt, 3 * c.mesh_adapter.mesh.request_timeout);
        assert!(
            c.mesh_adapter.mesh.connect_timeout < c.mesh_adapter.mesh.request_timeout,
            "connecting fits inside a request's timeout"
        );
        assert!(
            c.core.lease_timeout >= attempt + std::time::Duration::from_secs(60),
            "lease {:?} vs attempt {attempt:?}",
            c.core.lease_timeout
        );
    }
}
