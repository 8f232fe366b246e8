//! Thin gRPC service implementations: decode → domain rules → store → encode.

use std::time::Duration;

use nems_proto::spine::{self, SpineCode};
use tonic::Status;

use crate::store::StoreError;

pub(crate) mod deliveries;
pub(crate) mod directory;
pub(crate) mod events;
pub(crate) mod operator;
pub(crate) mod subscriptions;

/// `Retry-After` of a refusal while the store is failed (it reopens by itself once the
/// disk has room again; see `store/writer.rs`).
pub(crate) const STORE_FAILED_RETRY: Duration = Duration::from_secs(10);

/// Maps a storage failure to the status returned: overload, a failed store (a storage I/O
/// or commit error: the write was not committed, and the writer reopens the store) and a
/// stopped store are `UNAVAILABLE` with a retry delay (the edge answers `503` with
/// `Retry-After`); anything else is `INTERNAL`, logged in full with the request id and
/// answered with that id only.
pub(crate) fn store_status(e: StoreError, request_id: &str) -> Status {
    match e {
        StoreError::Busy => {
            spine::unavailable("the service is busy; retry shortly", Duration::from_secs(1))
        }
        StoreError::Io(_) | StoreError::Commit(_) | StoreError::Poisoned => {
            // The writer logged the storage error once; a refusal per request is counted.
            crate::metrics::metrics().store_refusals.inc();
            spine::unavailable(
                "the store is unavailable (storage failure); retry later",
                STORE_FAILED_RETRY,
            )
        }
        StoreError::Closed => {
            spine::unavailable("the store is unavailable", Duration::from_secs(30))
        }
        other => {
            tracing::error!(error = %other, request_id, "store failure");
            Status::internal(format!(
                "unexpected internal error; quote reference {request_id}"
            ))
        }
    }
}

/// Who called the operator API, as core can verify it (never a value the caller filled in):
/// with operator mutual TLS, the client certificate's first DNS subjectAltName (or, without
/// one, `sha256:` and the start of the certificate's fingerprint) and the peer address,
/// `operator:ops.example.nhs.uk@10.0.0.5`; without, the peer address, `operator@127.0.0.1`.
pub(crate) fn operator_identity<T>(request: &tonic::Request<T>) -> String {
    let ip = request.remote_addr().map(|a| a.ip().to_string());
    let certificate = request
        .peer_certs()
        .and_then(|certs| certs.first().map(|der| certificate_name(der.as_ref())));
    match (certificate, ip) {
        (Some(name), Some(ip)) => format!("operator:{name}@{ip}"),
        (Some(name), None) => format!("operator:{name}"),
        (None, Some(ip)) => format!("operator@{ip}"),
        (None, None) => "operator".to_owned(),
    }
}

/// The first DNS name a certificate's subjectAltName gives, else `sha256:` and the first 16
/// hex digits of its fingerprint.
fn certificate_name(der: &[u8]) -> String {
    let cert = rustls_pki_types::CertificateDer::from(der);
    let dns = webpki::EndEntityCert::try_from(&cert)
        .ok()
        .and_then(|ee| ee.valid_dns_names().next().map(str::to_owned));
    dns.unwrap_or_else(|| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(der);
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    })
}

/// A missing required request field (a client programming error).
pub(crate) fn missing(field: &str) -> Status {
    spine::status(SpineCode::BadRequest, format!("{field} is required"))
}
