//! The rustls client configuration of the MESH client (ring provider): trusted roots and
//! the optional client certificate for mutual TLS, named by the MESH settings' keys.

use nems_runtime::tls::{TlsFileError, https_client_config};

use super::config::{ConfigError, TlsConfig};

/// Builds the rustls client configuration from the TLS settings.
///
/// Without `ca_pem` the system roots are trusted. The client certificate and key must be given
/// together.
pub(super) fn client_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, ConfigError> {
    let client = match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(ConfigError::Setting {
                name: "client_cert_pem",
                reason: "client_cert_pem and client_key_pem must be set together".to_owned(),
            });
        }
    };
    https_client_config(tls.ca_pem.as_deref(), client).map_err(config_error)
}

/// Names the failing setting as the MESH configuration does.
fn config_error(e: TlsFileError) -> ConfigError {
    let name = match e.setting {
        "ca" => "ca_pem",
        "client_cert" => "client_cert_pem",
        "client_key" => "client_key_pem",
        _ => "tls",
    };
    match e.path {
        Some(path) => ConfigError::Tls {
            name,
            path: path.display().to_string(),
            reason: e.reason,
        },
        None => ConfigError::Setting {
            name,
            reason: e.reason,
        },
    }
}
