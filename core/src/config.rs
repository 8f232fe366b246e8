//! Core's configuration: the `[core]` section of the nems TOML file. Unknown keys are
//! refused; durations are human-readable (`90s`, `5m`, `30days`). The launcher reads the
//! file and applies environment overrides; core receives the typed value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::catalogue::EventTypeOverride;

/// The `[core]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoreConfig {
    /// gRPC address of the service API (subscriptions, events, deliveries, health,
    /// reflection). Env: `NEMS_CORE_LISTEN`.
    pub listen: SocketAddr,
    /// gRPC address of the operator API (directory, operator, health, reflection); always
    /// its own listener. Env: `NEMS_CORE_OPERATOR_LISTEN`.
    pub operator_listen: SocketAddr,
    /// Serve the service API without TLS on a non-loopback `listen` address (a trusted
    /// network only: every caller then gets the edge and adapter roles).
    pub allow_plaintext: bool,
    /// Serve the operator API without TLS on a non-loopback `operator_listen` address
    /// (every caller then gets the operator role).
    pub operator_allow_plaintext: bool,
    /// The roles of TLS clients by certificate identity (`[core.clients]`).
    pub clients: crate::trust::ClientRoles,
    /// CA certificates (PEM) the Spine client certificates an edge forwards must chain to.
    /// Set it when the edge runs mutual TLS: core then verifies each forwarded certificate
    /// itself (chain, validity period, identity of the ASID) and refuses edge requests
    /// without one. Unset, an edge request carrying a certificate is refused (core could
    /// not verify it).
    pub spine_ca_file: Option<PathBuf>,
    /// Folder holding the redb database. Env: `NEMS_DATA_DIR`.
    pub data_dir: PathBuf,
    /// PostgreSQL database holding the store instead of redb under `data_dir`
    /// (`postgres://user[:password]@host:port/database`): any number of cores may share one.
    /// Env: `NEMS_DATABASE_URL`.
    pub database_url: Option<String>,
    /// TLS to PostgreSQL (`[core.database_tls]`: `ca_file`, and `cert_file` / `key_file`
    /// for certificate authentication, `domain` when the certificate names another host).
    /// Set, every connection is encrypted and the server's certificate verified (chain and
    /// host name); a server that declines TLS is refused. Unset, `sslmode=require` in the URL
    /// verifies against the system roots; otherwise connections are not encrypted (a warning
    /// at start-up names a database not on loopback).
    pub database_tls: Option<nems_runtime::tls::ClientTls>,
    /// Connections each core keeps to PostgreSQL.
    pub database_pool: usize,
    /// Spine directory file applied at start-up (see `directory` module docs).
    /// Env: `NEMS_DIRECTORY_FILE`.
    pub directory_file: Option<PathBuf>,
    /// Fsync every commit before answering (production: true). False is for benchmarks.
    pub durable: bool,
    /// Commit in two phases (redb's `set_two_phase_commit`): the commit record is written and
    /// synced only after the data it points at, so that no crash mid-fsync can leave a
    /// partially committed transaction whose pages an attacker chose (published payloads are
    /// attacker-controlled values). Default true; costs one more fsync per group commit.
    pub two_phase_commit: bool,
    /// Capacity of the store's write queue; a full queue makes publish answer 503.
    pub write_queue: usize,
    /// Most write jobs in one group commit.
    pub max_batch: usize,
    /// Memory for the store's page cache, in MiB (hot subscription indexes, queued rows).
    pub cache_mib: usize,
    /// After a storage failure (a full disk, an I/O error) the writer reopens the store by
    /// itself once the data directory's filesystem has at least this much free, in MiB
    /// (checked a few times a second). `0` reopens without looking at free space.
    pub reopen_min_free_mib: u64,
    /// How long a delivery handed to an adapter stays leased before it is handed out again.
    /// Must exceed the longest attempt an adapter may make (the MESH adapter: 3 ×
    /// `mesh_adapter.mesh.request_timeout`, 3 min by default), else a slow send can be handed
    /// out a second time while it is still open. Leases of a stream that ends (the adapter
    /// crashed or went away) and every lease at core start are given back at once; this
    /// bounds only how long an adapter that stops answering on an open stream holds them.
    #[serde(with = "duration")]
    pub lease_timeout: Duration,
    /// Default most unacknowledged deliveries per adapter stream.
    pub max_in_flight: u32,
    /// Default most unacknowledged deliveries per mailbox.
    pub max_in_flight_per_mailbox: u32,
    /// Most payload MiB leased and unacknowledged per adapter stream; a stream with nothing
    /// in flight always gets one delivery, however large.
    pub max_in_flight_mib: u64,
    /// Most delivery streams open at once; one more is refused with `RESOURCE_EXHAUSTED`.
    pub max_streams: usize,
    /// How long settled ledger rows (events and deliveries) are kept for audit.
    #[serde(with = "duration")]
    pub ledger_retention: Duration,
    /// How long a dead letter keeps its payload for redrive.
    #[serde(with = "duration")]
    pub dead_letter_retention: Duration,
    /// How long a delivered message keeps its payload, so that an operator can replay it
    /// (`nems admin replay`); `0s`, the default, keeps none and refuses replays.
    #[serde(with = "duration")]
    pub replay_retention: Duration,
    /// How often the retention sweeper runs.
    #[serde(with = "duration")]
    pub sweep_interval: Duration,
    /// Most index rows one retention pass reads (each pass is one write; the sweeper runs
    /// passes until one finds less to do), bounding how long a pass holds up other writes.
    pub sweep_batch: usize,
    /// How long audit records are kept.
    #[serde(with = "duration")]
    pub audit_retention: Duration,
    /// How long records of refused requests are kept (aggregated: one record per caller,
    /// action, resource and outcome within an audit window, with its count).
    #[serde(with = "duration")]
    pub refusal_audit_retention: Duration,
    /// Most live subscriptions one ASID may own; a create beyond it is refused `403`
    /// `ACCESS_DENIED` (deleted subscriptions free their place; ended ones count until
    /// they are deleted).
    pub subscription_quota_per_asid: u64,
    /// Publish answers 503 when more deliveries than this are waiting (backpressure).
    pub max_pending_deliveries: u64,
    /// Event catalogue overrides and additions (`[[core.event_types]]`).
    pub event_types: Vec<EventTypeOverride>,
    /// TLS for the service API (`[core.tls]`, `client_ca_file` required): clients (edges,
    /// adapters, direct callers) present a certificate from that CA, and get their role
    /// from its identity (`[core.clients]`).
    pub tls: Option<nems_runtime::tls::ServerTls>,
    /// TLS for the operator API (`[core.operator_tls]`, `client_ca_file` required); give it
    /// the operators' CA so that the edge's and adapters' certificates cannot reach it.
    pub operator_tls: Option<nems_runtime::tls::ServerTls>,
    /// Lookup of patients the demographics store does not know from a PDS FHIR API
    /// (`[core.pds]`); off when absent.
    pub pds: Option<crate::pds::PdsConfig>,
    /// Limits that refuse a reference data import which would destroy the set in force
    /// (`[core.import]`).
    pub import: ImportLimits,
}

/// The `[core.import]` section: when an import of a reference data set is refused (the set
/// in force is kept). An import that would leave the set empty is always refused. A caller
/// may pass other limits with an import, or `force` it (`nems import --force`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportLimits {
    /// Refuse a new set with more than this percentage fewer rows than the set in force.
    pub max_shrink_percent: f64,
    /// Refuse an import in which more than this percentage of the rows read were malformed.
    pub max_bad_row_percent: f64,
}

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            max_shrink_percent: 10.0,
            max_bad_row_percent: 1.0,
        }
    }
}

impl ImportLimits {
    /// Checks that both limits are percentages (0 to 100); the message names the key.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        for (name, value) in [
            ("max_shrink_percent", self.max_shrink_percent),
            ("max_bad_row_percent", self.max_bad_row_percent),
        ] {
            if !(0.0..=100.0).contains(&value) {
                return Err(format!("{prefix}.{name} must be between 0 and 100"));
            }
        }
        Ok(())
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            operator_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            allow_plaintext: false,
            operator_allow_plaintext: false,
            clients: crate::trust::ClientRoles::default(),
            spine_ca_file: None,
            data_dir: PathBuf::from("nems-data"),
            database_url: None,
            database_tls: None,
            database_pool: 32,
            directory_file: None,
            durable: true,
            two_phase_commit: true,
            write_queue: 8192,
            max_batch: 1024,
            cache_mib: 256,
            reopen_min_free_mib: 64,
            lease_timeout: Duration::from_secs(5 * 60),
            max_in_flight: 256,
            max_in_flight_per_mailbox: 8,
            max_in_flight_mib: 64,
            max_streams: 32,
            ledger_retention: Duration::from_secs(90 * 24 * 3600),
            audit_retention: Duration::from_secs(2 * 365 * 24 * 3600),
            refusal_audit_retention: Duration::from_secs(30 * 24 * 3600),
            subscription_quota_per_asid: 1_000_000,
            dead_letter_retention: Duration::from_secs(30 * 24 * 3600),
            replay_retention: Duration::ZERO,
            sweep_interval: Duration::from_secs(600),
            sweep_batch: 1_000,
            max_pending_deliveries: 1_000_000,
            event_types: Vec::new(),
            tls: None,
            operator_tls: None,
            pds: None,
            import: ImportLimits::default(),
        }
    }
}

impl CoreConfig {
    /// Checks values that serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.write_queue == 0 {
            return Err("core.write_queue must be at least 1".into());
        }
        if self.max_batch == 0 {
            return Err("core.max_batch must be at least 1".into());
        }
        if self.cache_mib < 16 {
            return Err("core.cache_mib must be at least 16".into());
        }
        if let Some(url) = &self.database_url
            && url.parse::<tokio_postgres::Config>().is_err()
        {
            // The parser's message could echo the password: name the key only.
            return Err(
                "core.database_url is not a PostgreSQL URL (postgres://user@host:port/database)"
                    .into(),
            );
        }
        if let Some(tls) = &self.database_tls {
            if self.database_url.is_none() {
                return Err("core.database_tls is set but core.database_url is not: TLS to PostgreSQL needs a PostgreSQL database".into());
            }
            tls.check("core.database_tls")?;
        }
        if self.database_url.is_some() && self.database_pool == 0 {
            return Err("core.database_pool must be at least 1".into());
        }
        if let Some(pds) = &self.pds {
            pds.validate()?;
        }
        self.import.validate("core.import")?;
        if self.lease_timeout < Duration::from_secs(1) {
            return Err("core.lease_timeout must be at least 1s".into());
        }
        if self.max_in_flight == 0 || self.max_in_flight_per_mailbox == 0 {
            return Err(
                "core.max_in_flight and core.max_in_flight_per_mailbox must be at least 1".into(),
            );
        }
        if self.max_in_flight_mib == 0 {
            return Err("core.max_in_flight_mib must be at least 1".into());
        }
        if self.max_streams == 0 {
            return Err("core.max_streams must be at least 1".into());
        }
        if self.sweep_batch == 0 {
            return Err("core.sweep_batch must be at least 1".into());
        }
        if self.subscription_quota_per_asid == 0 {
            return Err("core.subscription_quota_per_asid must be at least 1".into());
        }
        if self.sweep_interval < Duration::from_secs(1) {
            return Err("core.sweep_interval must be at least 1s".into());
        }
        if self.listen.port() != 0 && self.operator_listen == self.listen {
            return Err("core.operator_listen must differ from core.listen".into());
        }
        self.validate_transport()?;
        self.clients.validate()?;
        if let Some(path) = &self.spine_ca_file {
            crate::trust::SpineCa::load(path).map_err(|e| format!("core.spine_ca_file: {e}"))?;
        }
        crate::domain::catalogue::Catalogue::new(&self.event_types)
            .map_err(|e| format!("core.event_types: {e}"))?;
        Ok(())
    }
}

impl CoreConfig {
    /// The secure defaults of the listeners: core authenticates its clients itself, so TLS
    /// always comes with a client CA, and plaintext (where core can verify nobody) is for
    /// loopback unless a listener's `allow_plaintext` says otherwise.
    fn validate_transport(&self) -> Result<(), String> {
        for (key, tls, addr, allow, allow_key) in [
            (
                "core.tls",
                &self.tls,
                self.listen,
                self.allow_plaintext,
                "core.allow_plaintext",
            ),
            (
                "core.operator_tls",
                &self.operator_tls,
                self.operator_listen,
                self.operator_allow_plaintext,
                "core.operator_allow_plaintext",
            ),
        ] {
            match tls {
                Some(tls) => {
                    tls.check(key)?;
                    if tls.client_ca_file.is_none() {
                        return Err(format!(
                            "{key} needs client_ca_file: core gives its clients roles from their certificates, so every client must present one"
                        ));
                    }
                }
                None if !addr.ip().is_loopback() && !allow => {
                    return Err(format!(
                        "{addr} is not a loopback address and {key} is not set: serve it with TLS, or set {allow_key} = true for a trusted network"
                    ));
                }
                None => {}
            }
        }
        if self.tls.is_some() {
            // With TLS on, administration must not be reachable with the edge's or an
            // adapter's certificate, nor anonymously: its own client CA.
            if self.operator_tls.is_none() {
                return Err("core.tls is set, so the operator API needs its own client CA: set core.operator_tls with client_ca_file".into());
            }
            let service = &self.clients;
            if service.edge.is_empty() && service.adapter.is_empty() && service.direct.is_empty() {
                return Err("core.tls is set but core.clients names no edge, adapter or direct identity: every call to the service API would be refused".into());
            }
        }
        if self.operator_tls.is_some() && self.clients.operator.is_empty() {
            return Err("core.operator_tls is set but core.clients.operator names no identity: every operator call would be refused".into());
        }
        Ok(())
    }
}

pub use nems_runtime::config::duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_section_and_rejects_unknown_keys() {
        let c: CoreConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:7001"
            operator_listen = "127.0.0.1:7002"
            data_dir = "/tmp/x"
            lease_timeout = "45s"
            ledger_retention = "30days"
            [[event_types]]
            code = "newborn-hearing-1"
            state = "deprecated"
            "#,
        )
        .unwrap();
        assert_eq!(c.lease_timeout, Duration::from_secs(45));
        assert_eq!(c.event_types.len(), 1);
        c.validate().unwrap();

        let e = toml::from_str::<CoreConfig>("colour = \"red\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = toml::from_str::<CoreConfig>("lease_timeout = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("soon") && e.contains("lease_timeout"), "{e}");
        let e = toml::from_str::<CoreConfig>("listen = \"nowhere\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn validate_names_the_key() {
        let c = CoreConfig {
            max_batch: 0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("core.max_batch"));
        let c = CoreConfig {
            cache_mib: 1,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("core.cache_mib"));
        for (c, key) in [
            (
                CoreConfig {
                    max_in_flight_mib: 0,
                    ..Default::default()
                },
                "core.max_in_flight_mib",
            ),
            (
                CoreConfig {
                    max_streams: 0,
                    ..Default::default()
                },
                "core.max_streams",
            ),
            (
                CoreConfig {
                    subscription_quota_per_asid: 0,
                    ..Default::default()
                },
                "core.subscription_quota_per_asid",
            ),
            (
                CoreConfig {
                    sweep_batch: 0,
                    ..Default::default()
                },
                "core.sweep_batch",
            ),
        ] {
            assert!(c.validate().unwrap_err().contains(key), "{key}");
        }
        let c: CoreConfig = toml::from_str("[import]\nmax_shrink_percent = 25").unwrap();
        assert_eq!(
            c.import,
            ImportLimits {
                max_shrink_percent: 25.0,
                max_bad_row_percent: 1.0
            }
        );
        let c: CoreConfig = toml::from_str("[import]\nmax_bad_row_percent = 101.0").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .contains("core.import.max_bad_row_percent")
        );
        let c: CoreConfig = toml::from_str("two_phase_commit = false").unwrap();
        assert!(!c.two_phase_commit);
        assert!(CoreConfig::default().two_phase_commit, "on by default");
        assert!(CoreConfig::default().validate().is_ok());
    }

    fn tls(client_ca: bool) -> nems_runtime::tls::ServerTls {
        nems_runtime::tls::ServerTls {
            cert_file: "Cargo.toml".into(),
            key_file: "Cargo.toml".into(),
            client_ca_file: client_ca.then(|| "Cargo.toml".into()),
        }
    }

    fn roles() -> crate::trust::ClientRoles {
        crate::trust::ClientRoles {
            edge: vec!["edge.nems.test".into()],
            adapter: vec!["adapter.nems.test".into()],
            operator: vec!["ops.nems.test".into()],
            direct: vec![],
        }
    }

    fn refused(c: &CoreConfig, needles: &[&str]) {
        let e = c.validate().expect_err("refused");
        for needle in needles {
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn secure_defaults_of_the_listeners() {
        let public: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        let public_operator: SocketAddr = "0.0.0.0:9091".parse().unwrap();
        // Plaintext on a non-loopback address: refused unless allowed for that listener.
        refused(
            &CoreConfig {
                listen: public,
                ..Default::default()
            },
            &["0.0.0.0:9090", "core.allow_plaintext"],
        );
        refused(
            &CoreConfig {
                operator_listen: public_operator,
                ..Default::default()
            },
            &["0.0.0.0:9091", "core.operator_allow_plaintext"],
        );
        for c in [
            CoreConfig {
                listen: public,
                allow_plaintext: true,
                ..Default::default()
            },
            CoreConfig {
                operator_listen: public_operator,
                operator_allow_plaintext: true,
                ..Default::default()
            },
            CoreConfig {
                listen: "[::1]:9090".parse().unwrap(),
                ..Default::default()
            },
        ] {
            c.validate().unwrap();
        }
        // TLS without a client CA leaves callers anonymous: refused, on either listener.
        refused(
            &CoreConfig {
                tls: Some(tls(false)),
                operator_tls: Some(tls(true)),
                clients: roles(),
                ..Default::default()
            },
            &["core.tls needs client_ca_file"],
        );
        refused(
            &CoreConfig {
                operator_tls: Some(tls(false)),
                clients: roles(),
                ..Default::default()
            },
            &["core.operator_tls needs client_ca_file"],
        );
        // With TLS on the service API, the operator API needs TLS and its own CA too.
        refused(
            &CoreConfig {
                tls: Some(tls(true)),
                clients: roles(),
                ..Default::default()
            },
            &["core.operator_tls"],
        );
        // TLS with nobody given a role would refuse every call.
        refused(
            &CoreConfig {
                tls: Some(tls(true)),
                operator_tls: Some(tls(true)),
                clients: crate::trust::ClientRoles {
                    operator: vec!["ops.nems.test".into()],
                    ..Default::default()
                },
                ..Default::default()
            },
            &["core.clients names no edge"],
        );
        refused(
            &CoreConfig {
                operator_tls: Some(tls(true)),
                ..Default::default()
            },
            &["core.clients.operator"],
        );
        CoreConfig {
            tls: Some(tls(true)),
            operator_tls: Some(tls(true)),
            clients: roles(),
            ..Default::default()
        }
        .validate()
        .unwrap();
        // A Spine CA that cannot be read stops start-up.
        refused(
            &CoreConfig {
                spine_ca_file: Some("/nonexistent/spine-ca.pem".into()),
                ..Default::default()
            },
            &["core.spine_ca_file"],
        );
    }

    #[test]
    fn database_tls_parses_and_needs_a_database_and_its_files() {
        let c: CoreConfig = toml::from_str(
            r#"
            database_url = "postgres://nems@db.example:5432/nems"
            [database_tls]
            ca_file = "Cargo.toml"
            domain = "db.internal"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.database_tls.as_ref().and_then(|t| t.domain.as_deref()),
            Some("db.internal")
        );
        refused(
            &CoreConfig {
                database_url: None,
                ..c.clone()
            },
            &["core.database_tls", "core.database_url"],
        );
        let mut missing = c.clone();
        missing.database_tls = Some(nems_runtime::tls::ClientTls {
            ca_file: "/nonexistent/ca.pem".into(),
            cert_file: None,
            key_file: None,
            domain: None,
        });
        refused(&missing, &["core.database_tls", "/nonexistent/ca.pem"]);
    }

    #[test]
    fn client_roles_parse_and_are_checked() {
        let c: CoreConfig = toml::from_str(
            r#"
            [clients]
            edge = ["edge.nems.test"]
            adapter = ["adapter.nems.test"]
            operator = ["ops.nems.test"]
            [[clients.direct]]
            identity = "pds-feed.nems.test"
            asid = "200000000333"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.clients.direct[0].asid, "200000000333");
        for (clients, needle) in [
            (
                crate::trust::ClientRoles {
                    edge: vec!["both.nems.test".into()],
                    adapter: vec!["BOTH.nems.test".into()],
                    ..Default::default()
                },
                "one role",
            ),
            (
                crate::trust::ClientRoles {
                    edge: vec!["not a name".into()],
                    ..Default::default()
                },
                "not a DNS name",
            ),
            (
                crate::trust::ClientRoles {
                    direct: vec![crate::trust::DirectClient {
                        identity: "x.nems.test".into(),
                        asid: "123".into(),
                    }],
                    ..Default::default()
                },
                "12 digits",
            ),
        ] {
            refused(
                &CoreConfig {
                    clients,
                    ..Default::default()
                },
                &[needle],
            );
        }
        let e = toml::from_str::<CoreConfig>("[clients]\nedges = [\"x\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("edges"), "{e}");
    }
}
