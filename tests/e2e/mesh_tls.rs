//! Mutual TLS like real MESH: the sandbox served by uvicorn over HTTPS, requiring a client
//! certificate signed by a throwaway CA (`shared/spec/mesh.md` §7, "TLS and mTLS").

use std::path::Path;

use nems_e2e::mesh_sandbox::{MeshSandbox, RECIPIENT_MAILBOXES, SERVICE_MAILBOX, SandboxTls};
use nems_e2e::tools;
use nems_mesh_adapter::error::DeliveryError;
use nems_mesh_adapter::mesh::{MeshClient, OutboundMessage, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Writes `ca.pem`, `server.pem`/`server.key` and `client.pem`/`client.key` into `dir`.
fn write_certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "nems test ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "nemssvc01.x26.api.mesh-client.nhs.uk");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();

    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("client.pem"), client_cert.pem()).unwrap();
    std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
}

#[tokio::test]
async fn mutual_tls_with_a_client_certificate() {
    let Some(venv) = tools::venv("mutual_tls_with_a_client_certificate") else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    write_certificates(certs.path());
    let sandbox = MeshSandbox::start_with(
        &venv,
        Some(SandboxTls {
            cert_pem: certs.path().join("server.pem"),
            key_pem: certs.path().join("server.key"),
            client_ca_pem: Some(certs.path().join("ca.pem")),
        }),
    )
    .await;
    assert!(sandbox.base_url().starts_with("https://"));

    let full = TlsConfig {
        ca_pem: Some(certs.path().join("ca.pem")),
        client_cert_pem: Some(certs.path().join("client.pem")),
        client_key_pem: Some(certs.path().join("client.key")),
    };
    let client = MeshClient::new(sandbox.tls_client_config(&SERVICE_MAILBOX, full)).unwrap();
    client.handshake().await.unwrap();
    let id = client
        .send(&OutboundMessage::new(
            RECIPIENT_MAILBOXES[0].id,
            "NEMS_TEST_WF",
            "nems-tls",
            "over mtls",
        ))
        .await
        .unwrap();
    let tracked = client.track_by_local_id("nems-tls").await.unwrap().unwrap();
    assert_eq!(tracked.message_id, id);

    // Without a client certificate the server rejects the connection: never a permanent
    // refusal (our misconfiguration must not dead-letter deliveries).
    let no_cert = TlsConfig {
        ca_pem: Some(certs.path().join("ca.pem")),
        ..TlsConfig::default()
    };
    let anonymous = MeshClient::new(sandbox.tls_client_config(&SERVICE_MAILBOX, no_cert)).unwrap();
    let error = anonymous.handshake().await.unwrap_err();
    assert!(
        !matches!(error, DeliveryError::Permanent { .. }),
        "{error:?}"
    );

    // A server we do not trust is refused before anything is sent.
    let other_ca = tempfile::tempdir().unwrap();
    write_certificates(other_ca.path());
    let untrusted = TlsConfig {
        ca_pem: Some(other_ca.path().join("ca.pem")),
        client_cert_pem: Some(certs.path().join("client.pem")),
        client_key_pem: Some(certs.path().join("client.key")),
    };
    let wary = MeshClient::new(sandbox.tls_client_config(&SERVICE_MAILBOX, untrusted)).unwrap();
    let error = wary
        .send(&OutboundMessage::new(
            RECIPIENT_MAILBOXES[0].id,
            "WF",
            "nems-tls-2",
            "x",
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, DeliveryError::Transient { code, .. } if code == "CONNECT"),
        "{error:?}"
    );
}
