//! TLS settings shared by the services' configuration files, and their tonic forms;
//! the rustls client configuration of the HTTPS clients (MESH, PDS). Certificates and keys
//! are PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A TLS server: its certificate and key, and (for mutual TLS) the CA that client
/// certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// Certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Private key (PEM).
    pub key_file: PathBuf,
    /// CA certificates (PEM) client certificates must chain to; when set, a client
    /// certificate is required (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

/// A TLS client: the CA to trust, and (for mutual TLS) its own certificate and key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// CA certificates (PEM) the server's certificate must chain to.
    pub ca_file: PathBuf,
    /// Client certificate chain (PEM), for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Name to verify in the server certificate, when it differs from the URL's host.
    pub domain: Option<String>,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

impl ServerTls {
    /// Reads the files into tonic's server TLS settings.
    pub fn to_tonic(&self) -> Result<ServerTlsConfig, String> {
        let identity = Identity::from_pem(
            read(&self.cert_file, "certificate")?,
            read(&self.key_file, "key")?,
        );
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_file {
            config = config.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
        }
        Ok(config)
    }

    /// Checks the files exist and are readable (start-up validation).
    pub fn check(&self, key: &str) -> Result<(), String> {
        read(&self.cert_file, "certificate").map_err(|e| format!("{key}.cert_file: {e}"))?;
        read(&self.key_file, "key").map_err(|e| format!("{key}.key_file: {e}"))?;
        if let Some(ca) = &self.client_ca_file {
            read(ca, "client CA").map_err(|e| format!("{key}.client_ca_file: {e}"))?;
        }
        Ok(())
    }
}

impl ClientTls {
    /// Reads the files into tonic's client TLS settings.
    pub fn to_tonic(&self) -> Result<ClientTlsConfig, String> {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca_file, "CA")?));
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read(cert, "certificate")?,
                    read(key, "key")?,
                ));
            }
            (None, None) => {}
            _ => return Err("cert_file and key_file go together".into()),
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        Ok(config)
    }

    /// Checks the files exist and are readable (start-up validation).
    pub fn check(&self, key: &str) -> Result<(), String> {
        self.to_tonic()
            .map(|_| ())
            .map_err(|e| format!("{key}: {e}"))
    }
}

/// Why an HTTPS client's TLS settings could not be used: the setting, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    /// Which setting: `ca`, `client_cert`, `client_key` or `tls`.
    pub setting: &'static str,
    /// The file, when one is involved.
    pub path: Option<PathBuf>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{} {}: {}", self.setting, path.display(), self.reason),
            None => write!(f, "{}: {}", self.setting, self.reason),
        }
    }
}

impl std::error::Error for TlsFileError {}

fn file_error(setting: &'static str, path: &Path, reason: impl ToString) -> TlsFileError {
    TlsFileError {
        setting,
        path: Some(path.to_path_buf()),
        reason: reason.to_string(),
    }
}

fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(setting, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(setting, path, e))?;
    if certs.is_empty() {
        return Err(file_error(setting, path, "no certificates found"));
    }
    Ok(certs)
}

/// The rustls client configuration (ring provider) of an HTTPS client: trusts the CA
/// certificates in `ca` (the system roots when `None`) and presents `client` (certificate
/// chain, key) for mutual TLS.
pub fn https_client_config(
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsFileError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificates("ca", path)? {
                roots.add(cert).map_err(|e| file_error("ca", path, e))?;
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(TlsFileError {
                    setting: "ca",
                    path: None,
                    reason: "no system root certificates found; give a CA file".into(),
                });
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsFileError {
        setting: "tls",
        path: None,
        reason: e.to_string(),
    })?
    .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certificates("client_cert", cert)?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("client_key", key, e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| file_error("client_cert", cert, e))
        }
    }
}
