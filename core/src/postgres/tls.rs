//! TLS to PostgreSQL through rustls with the ring provider (no OpenSSL).
//!
//! The policy ([`Tls::for_url`]):
//! - `core.database_tls` set: TLS is required (`sslmode` is forced to `require`, so a server
//!   that declines TLS is refused rather than spoken to in clear), the server certificate
//!   must chain to `ca_file` and name the URL's host (or `domain`), and `cert_file` /
//!   `key_file` are presented for certificate authentication.
//! - unset, `sslmode=require` in the URL: TLS is required and verified against the system
//!   roots, as the HTTPS clients do without a CA file.
//! - unset otherwise: no TLS (`sslmode` becomes `disable`: no silent downgrade from a
//!   `prefer`), with a warning at start-up unless the host is loopback or a Unix socket.
//!
//! libpq's `require` encrypts without checking the certificate; here every TLS connection
//! is verified (chain and host name), like libpq's `verify-full`. Channel binding is not
//! offered (SCRAM then runs without the `-PLUS` variant): the verified certificate already
//! binds the session to the server.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use nems_runtime::tls::ClientTls;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// The connector of every connection a core opens to PostgreSQL (pool, migration,
/// listener): TLS with one rustls configuration, or none.
#[derive(Clone)]
pub(crate) struct Tls {
    config: Option<Arc<rustls::ClientConfig>>,
    /// Name to verify instead of the URL's host.
    domain: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("enabled", &self.config.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl Tls {
    /// Applies the policy in the module docs to `config` (its `sslmode` is set to what the
    /// connector will do) and returns the connector; an error names the setting at fault.
    pub(crate) fn for_url(
        config: &mut tokio_postgres::Config,
        tls: Option<&ClientTls>,
    ) -> Result<Tls, String> {
        let required = config.get_ssl_mode() == SslMode::Require;
        let client = match tls {
            Some(tls) => {
                let pair = match (&tls.cert_file, &tls.key_file) {
                    (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
                    (None, None) => None,
                    _ => {
                        return Err("core.database_tls: cert_file and key_file go together".into());
                    }
                };
                Some(
                    nems_runtime::tls::https_client_config(Some(&tls.ca_file), pair)
                        .map_err(|e| format!("core.database_tls: {e}"))?,
                )
            }
            None if required => Some(
                nems_runtime::tls::https_client_config(None, None)
                    .map_err(|e| format!("core.database_url sslmode=require: {e}"))?,
            ),
            None => None,
        };
        match client {
            Some(client) => {
                config.ssl_mode(SslMode::Require);
                Ok(Tls {
                    config: Some(Arc::new(client)),
                    domain: tls.and_then(|t| t.domain.clone()),
                })
            }
            None => {
                config.ssl_mode(SslMode::Disable);
                let remote = config.get_hosts().iter().any(|host| match host {
                    Host::Tcp(name) => !is_loopback(name),
                    Host::Unix(_) => false,
                });
                if remote {
                    tracing::warn!(
                        "PostgreSQL connections are not encrypted: set core.database_tls (or sslmode=require) for a database on another host"
                    );
                }
                Ok(Tls {
                    config: None,
                    domain: None,
                })
            }
        }
    }

    /// True when connections use TLS.
    pub(crate) fn enabled(&self) -> bool {
        self.config.is_some()
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl<S> MakeTlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, io::Error> {
        // Called for every connection, also with `sslmode=disable` (when `connect` is not).
        let Some(config) = self.config.clone() else {
            return Ok(Connect(None));
        };
        let name = self.domain.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .to_owned();
        Ok(Connect(Some((
            tokio_rustls::TlsConnector::from(config),
            name,
        ))))
    }
}

/// One connection's TLS handshake (`None` without TLS: never started, as the connection's
/// `sslmode` is `disable`).
pub(crate) struct Connect(Option<(tokio_rustls::TlsConnector, ServerName<'static>)>);

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let (connector, name) = self
                .0
                .ok_or_else(|| io::Error::other("TLS to PostgreSQL is not configured"))?;
            let stream = connector.connect(name, stream).await?;
            Ok(Stream(stream))
        })
    }
}

/// A TLS stream to the server.
pub(crate) struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> tokio_postgres::Config {
        url.parse().unwrap()
    }

    #[test]
    fn without_settings_tls_is_off_and_prefer_does_not_downgrade_silently() {
        let mut config = parse("postgres://nems@db.example:5432/nems?sslmode=prefer");
        let tls = Tls::for_url(&mut config, None).unwrap();
        assert!(!tls.enabled());
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn a_ca_file_makes_tls_required() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["db.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let mut config = parse("postgres://nems@db.example:5432/nems?sslmode=disable");
        let settings = ClientTls {
            ca_file,
            cert_file: None,
            key_file: None,
            domain: None,
        };
        let tls = Tls::for_url(&mut config, Some(&settings)).unwrap();
        assert!(tls.enabled());
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn unreadable_or_half_given_files_name_the_setting() {
        let mut config = parse("postgres://nems@db.example/nems");
        let missing = ClientTls {
            ca_file: "/nonexistent/ca.pem".into(),
            cert_file: None,
            key_file: None,
            domain: None,
        };
        let e = Tls::for_url(&mut config, Some(&missing)).unwrap_err();
        assert!(
            e.starts_with("core.database_tls: ca /nonexistent/ca.pem"),
            "{e}"
        );
        let half = ClientTls {
            cert_file: Some("/x.pem".into()),
            ..missing
        };
        let e = Tls::for_url(&mut config, Some(&half)).unwrap_err();
        assert!(e.contains("cert_file and key_file go together"), "{e}");
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in ["localhost", "127.0.0.1", "::1", "[::1]"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["db.example", "10.0.0.5"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
