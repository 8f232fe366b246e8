//! Thin gRPC service implementations: decode → domain rules → store → encode.

pub(crate) mod deliveries;
pub(crate) mod directory;
pub(crate) mod events;
pub(crate) mod fault;
pub(crate) mod operator;
pub(crate) mod subscriptions;

pub(crate) use fault::Fault;

/// Who called the operator API, as core can verify it (never a value the caller filled in):
/// with operator mutual TLS, the client certificate's first DNS subjectAltName (or, without
/// one, `sha256:` and the start of the certificate's fingerprint) and the peer address,
/// `operator:ops.example.nhs.uk@10.0.0.5`; without, the peer address, `operator@127.0.0.1`.
/// A verified caller may add the console user it acts for
/// (`operator:console.example.nhs.uk@10.0.0.5 (console user alice)`).
pub(crate) fn operator_identity<T>(request: &tonic::Request<T>) -> String {
    let ip = request.remote_addr().map(|a| a.ip().to_string());
    let certificate = request
        .peer_certs()
        .and_then(|certs| certs.first().map(|der| certificate_name(der.as_ref())));
    // The operator a verified caller (the console, holding an operator certificate) says
    // it acts for; recorded beside the certificate, never instead of it.
    let acting_for = || {
        request
            .metadata()
            .get(nems_runtime::ops::CONSOLE_USER_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|name| nems_runtime::ops::is_console_user_name(name))
            .map_or_else(String::new, |name| format!(" (console user {name})"))
    };
    match (certificate, ip) {
        (Some(name), Some(ip)) => format!("operator:{name}@{ip}{}", acting_for()),
        (Some(name), None) => format!("operator:{name}{}", acting_for()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_user_is_recorded_only_beside_a_verified_certificate() {
        // Without a client certificate (plaintext, loopback), the console user a caller
        // names is ignored: nothing verified vouches for it.
        let mut request = tonic::Request::new(());
        request.metadata_mut().insert(
            nems_runtime::ops::CONSOLE_USER_METADATA,
            tonic::metadata::AsciiMetadataValue::from_static("alice"),
        );
        assert_eq!(operator_identity(&request), "operator");
    }
}
