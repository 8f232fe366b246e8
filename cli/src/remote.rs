//! Reaching core's operator API from the operator commands (`nems admin`, `nems import`):
//! which URL and TLS settings to use, and one-line errors when the call does not get an
//! answer from core's operator API.

use std::error::Error as _;
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::config::NemsConfig;

/// Where the operator API is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// Client TLS for an `https://` URL.
    pub tls: Option<ClientTlsConfig>,
}

/// An answer core gave that means "no such record": the command exits with
/// [`NOT_FOUND_EXIT`] rather than 1, so that scripts can tell it from a failure.
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not found: {}", self.0)
    }
}

impl std::error::Error for NotFound {}

/// The exit code of a command whose record does not exist.
pub const NOT_FOUND_EXIT: i32 = 3;

/// A command given wrongly in a way the argument parser cannot see (exit code 2, as for
/// clap's own usage errors).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The exit code of a usage error.
pub const USAGE_EXIT: i32 = 2;

impl Remote {
    /// The operator API the configuration names: `explicit` (`--operator`) first, then
    /// `operator_url` (`NEMS_OPERATOR_URL`), else core's own `core.operator_listen`
    /// (`127.0.0.1:9091` by default). An `https://` URL uses `[operator_tls]`.
    pub fn from_config(config: &NemsConfig, explicit: Option<&str>) -> anyhow::Result<Remote> {
        let url = match explicit.or(config.operator_url.as_deref()) {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if config.operator_tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", config.core.operator_listen)
            }
        };
        check_url(&url)?;
        let tls = if url.starts_with("https://") {
            let Some(tls) = &config.operator_tls else {
                anyhow::bail!(
                    "operator URL {url} is https:// but no [operator_tls] is configured \
                     (ca_file, and the operator certificate's cert_file and key_file)"
                );
            };
            Some(tls.to_tonic().map_err(anyhow::Error::msg)?)
        } else {
            None
        };
        Ok(Remote { url, tls })
    }

    /// A plaintext remote (tests, loopback).
    pub fn plain(url: &str) -> Remote {
        Remote {
            url: url.to_owned(),
            tls: None,
        }
    }

    /// A lazily connecting channel to the operator API.
    pub fn channel(&self) -> anyhow::Result<Channel> {
        check_url(&self.url)?;
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|_| anyhow::anyhow!("operator URL {} is not a valid URL", self.url))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| anyhow::anyhow!("operator TLS for {}: {e}", self.url))?;
        }
        Ok(endpoint
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .connect_lazy())
    }

    /// The one-line error for a call `what` that failed with `status`: whether core was
    /// reached at all, and a hint when the URL points at something else than core's
    /// operator API.
    pub fn explain(&self, what: &str, status: &tonic::Status) -> anyhow::Error {
        explain(&self.url, what, status)
    }
}

/// Refuses a URL without `http://` or `https://`, with the URL it probably meant.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    let Some((scheme, rest)) = url.split_once("://") else {
        anyhow::bail!(
            "operator URL `{url}` has no scheme: write http://{url} (or https://{url} with \
             [operator_tls])"
        );
    };
    if scheme != "http" && scheme != "https" {
        anyhow::bail!("operator URL `{url}`: the scheme must be http or https, not {scheme}");
    }
    if rest.is_empty() || rest.starts_with('/') {
        anyhow::bail!("operator URL `{url}` names no host");
    }
    Ok(())
}

/// Core's operator API is not what answered: the hint for each kind of wrong address.
const OPERATOR_HINT: &str = "core's operator API listens on core.operator_listen \
(127.0.0.1:9091 by default); give its URL with --operator or NEMS_OPERATOR_URL";

/// See [`Remote::explain`].
pub fn explain(url: &str, what: &str, status: &tonic::Status) -> anyhow::Error {
    let message = status.message();
    // The transport error's own chain says what happened on the wire.
    let mut chain = message.to_owned();
    let mut source = status.source();
    while let Some(e) = source {
        chain.push_str(": ");
        chain.push_str(&e.to_string());
        source = e.source();
    }
    let lower = chain.to_ascii_lowercase();
    // Core's own answers carry a Spine code (google.rpc.ErrorInfo).
    if nems_proto::spine::code_of(status).is_some() {
        return match status.code() {
            tonic::Code::NotFound => NotFound(format!("{what}: {}", first_line(message))).into(),
            code => anyhow::anyhow!("core refused {what}: {} ({code:?})", first_line(message)),
        };
    }
    let unreachable = |why: &str| anyhow::anyhow!("cannot reach core at {url}: {why}");
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
            if lower.contains("connection refused") =>
        {
            unreachable("connection refused")
        }
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
            if lower.contains("dns error")
                || lower.contains("failed to lookup")
                || lower.contains("name or service not known") =>
        {
            unreachable("host not found")
        }
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            if lower.contains("timed out")
                || lower.contains("timeout expired")
                || lower.contains("deadline") =>
        {
            anyhow::anyhow!(
                "no answer from core at {url} in time for {what}; a change may still have \
                 taken effect: check before repeating it"
            )
        }
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
            if lower.contains("certificate")
                || lower.contains("handshake")
                || lower.contains("tls") =>
        {
            unreachable(&format!(
                "the TLS handshake failed ({}); check [operator_tls]",
                tls_reason(&lower)
            ))
        }
        // Something that speaks HTTP but not gRPC (the edge's FHIR port, an ops endpoint).
        _ if lower.contains("http status code")
            || lower.contains("while receiving response with status")
            || lower.contains("invalid compression flag")
            || lower.contains("invalid content-type") =>
        {
            anyhow::anyhow!(
                "{url} answered, but not with gRPC: it is not core's operator API (the edge's \
                 HTTP port?); {OPERATOR_HINT}"
            )
        }
        // A gRPC server without the operator services: core's service listener, the edge's
        // BundleService listener.
        tonic::Code::Unimplemented => anyhow::anyhow!(
            "{url} is a gRPC server without the operator API (core's service listener?); \
             {OPERATOR_HINT}"
        ),
        // The connection broke: core restarting, a reset, or TLS spoken to by plaintext.
        _ if lower.contains("frame with invalid size")
            || lower.contains("http2 error")
            || lower.contains("h2 protocol error")
            || lower.contains("connection reset") =>
        {
            let hint = if url.starts_with("http://") {
                "; if core's operator API uses TLS, give an https:// URL (with [operator_tls])"
            } else {
                ""
            };
            unreachable(&format!(
                "the connection broke ({}){hint}",
                first_line(message)
            ))
        }
        tonic::Code::Unavailable => unreachable(&first_line(message)),
        tonic::Code::NotFound => NotFound(format!("{what}: {}", first_line(message))).into(),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => anyhow::anyhow!(
            "core at {url} refused {what}: {} (operator commands need an operator \
             certificate: [operator_tls] cert_file and key_file)",
            first_line(message)
        ),
        code => anyhow::anyhow!("core refused {what}: {} ({code:?})", first_line(message)),
    }
}

/// The part of a TLS failure worth printing.
fn tls_reason(lower: &str) -> &'static str {
    if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        "core's certificate is not signed by operator_tls.ca_file"
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        "core's certificate does not name this host; set operator_tls.domain"
    } else if lower.contains("expired") {
        "a certificate has expired"
    } else if lower.contains("certificate required") || lower.contains("certificaterequired") {
        "core requires a client certificate: operator_tls.cert_file and key_file"
    } else {
        "see core's log"
    }
}

/// The first line of a message (tonic's transport texts can be long).
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_a_scheme_gets_the_url_it_meant() {
        let e = check_url("127.0.0.1:9091").unwrap_err().to_string();
        assert!(e.contains("http://127.0.0.1:9091"), "{e}");
        assert!(check_url("ftp://x:1").is_err());
        assert!(check_url("http://").is_err());
        check_url("https://core-1.example:9091").unwrap();
    }

    #[test]
    fn an_explicit_url_wins_and_https_needs_operator_tls() {
        let mut config = NemsConfig::default();
        let remote = Remote::from_config(&config, None).unwrap();
        assert_eq!(remote.url, "http://127.0.0.1:9091");
        config.operator_url = Some("http://10.1.2.3:9191/".into());
        assert_eq!(
            Remote::from_config(&config, None).unwrap().url,
            "http://10.1.2.3:9191"
        );
        assert_eq!(
            Remote::from_config(&config, Some("http://h:1"))
                .unwrap()
                .url,
            "http://h:1"
        );
        let e = Remote::from_config(&config, Some("https://h:1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[operator_tls]"), "{e}");
    }

    #[test]
    fn not_found_and_refusals_read_as_such() {
        let e = explain(
            "http://h:1",
            "event 7",
            &tonic::Status::not_found("no event with that id"),
        );
        assert!(e.downcast_ref::<NotFound>().is_some(), "{e}");
        let e = explain(
            "http://h:1",
            "status",
            &tonic::Status::unimplemented("unknown service"),
        )
        .to_string();
        assert!(e.contains("without the operator API"), "{e}");
        let e = explain(
            "http://h:1",
            "status",
            &tonic::Status::unknown("grpc-status header missing, mapped from HTTP status code 404"),
        )
        .to_string();
        assert!(e.contains("not with gRPC"), "{e}");
    }
}
