//! The rustls client configuration (ring provider): trusted roots and the optional client
//! certificate for mutual TLS.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::ring;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::config::{ConfigError, TlsConfig};

/// Builds the rustls client configuration from the TLS settings.
///
/// Without `ca_pem` the system roots are trusted. The client certificate and key must be given
/// together.
pub(super) fn client_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, ConfigError> {
    let roots = match &tls.ca_pem {
        Some(path) => roots_from_file(path)?,
        None => native_roots()?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| setting_error("tls", e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain = certs_from_file("client_cert_pem", cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| tls_error("client_key_pem", key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| setting_error("client_cert_pem", e.to_string()))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) | (None, Some(_)) => {
            return Err(setting_error(
                "client_cert_pem",
                "client_cert_pem and client_key_pem must be set together".to_owned(),
            ));
        }
    };
    Ok(config)
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_file("ca_pem", path)? {
        roots
            .add(cert)
            .map_err(|e| tls_error("ca_pem", path, e.to_string()))?;
    }
    Ok(roots)
}

fn native_roots() -> Result<RootCertStore, ConfigError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        return Err(setting_error(
            "tls",
            "no system root certificates found; set ca_pem".to_owned(),
        ));
    }
    Ok(roots)
}

fn certs_from_file(
    name: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(name, path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error(name, path, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_error(name, path, "no certificates found".to_owned()));
    }
    Ok(certs)
}

fn tls_error(name: &'static str, path: &Path, reason: String) -> ConfigError {
    ConfigError::Tls {
        name,
        path: path.display().to_string(),
        reason,
    }
}

fn setting_error(name: &'static str, reason: String) -> ConfigError {
    ConfigError::Setting { name, reason }
}
