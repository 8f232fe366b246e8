//! TLS settings shared by the services' configuration files, and their tonic forms.
//! Certificates and keys are PEM files.

use std::path::PathBuf;

use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A TLS server: its certificate and key, and (for mutual TLS) the CA that client
/// certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
