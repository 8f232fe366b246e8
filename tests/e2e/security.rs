//! Transport security: the edge without TLS (every other test), with server TLS, and with
//! mutual TLS where the client certificate must chain to the configured CA and name the
//! identity the directory registers for the caller's ASID (checked again by core against
//! `core.spine_ca_file`); core's service and operator listeners with TLS and separate
//! client CAs, so the edge's identity cannot reach the operator API and anonymous clients
//! reach neither. Roles at core: `security_roles.rs`.

use std::time::Duration;

use http::Method;
use nems_e2e::pki::{self, RR8_IDENTITY, TestPki};
use nems_e2e::spine::{self, Op, SUBSCRIBER};
use nems_e2e::stack::{Sink, TEST_DIRECTORY, TestStack};
use nems_proto::v1 as pb;
use nems_proto::v1::bundle_service_client::BundleServiceClient;
use nems_proto::v1::operator_service_client::OperatorServiceClient;
use nems_runtime::tls::{ClientTls, ServerTls};
use tonic::transport::Endpoint;

fn directory_with_identity() -> String {
    TEST_DIRECTORY.replacen(
        "description = \"subscriber and publisher RR8\"",
        &format!("description = \"subscriber and publisher RR8\"\ncertificate_identity = \"{RR8_IDENTITY}\""),
        1,
    )
}

fn subscription_body() -> String {
    spine::subscription_xml(
        "RR8",
        "RR8MBX01",
        &spine::explicit("9434765919", &["vaccinations-1"], ""),
    )
}

fn create_headers() -> Vec<(&'static str, String)> {
    spine::with_media(SUBSCRIBER, Op::Create, "application/fhir+xml", None)
}

#[tokio::test]
async fn edge_with_server_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let server = ServerTls {
        cert_file: pki.server.cert.clone(),
        key_file: pki.server.key.clone(),
        client_ca_file: None,
    };
    let stack = TestStack::builder()
        .sink(Sink::None)
        .edge(move |c| c.tls = Some(server))
        .start()
        .await;
    let ok = pki::https(
        stack.edge_addr,
        &pki.ca,
        None,
        Method::GET,
        "/STU3/metadata",
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200);
    let created = pki::https(
        stack.edge_addr,
        &pki.ca,
        None,
        Method::POST,
        "/STU3/Subscription",
        &create_headers(),
        subscription_body(),
    )
    .await
    .unwrap();
    assert_eq!(created.status, 201, "{}", created.text());
    // A client that does not trust the server's CA refuses the connection.
    let untrusted = pki::https(
        stack.edge_addr,
        &pki.operator_ca,
        None,
        Method::GET,
        "/STU3/metadata",
        &[],
        "",
    )
    .await;
    assert!(untrusted.is_err());
    stack.shutdown().await;
}

#[tokio::test]
async fn edge_with_mutual_tls_checks_the_certificate_against_the_asid() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let server = ServerTls {
        cert_file: pki.server.cert.clone(),
        key_file: pki.server.key.clone(),
        client_ca_file: Some(pki.ca.clone()),
    };
    // Core verifies the certificates the edge forwards against the same (Spine) CA.
    let spine_ca = pki.ca.clone();
    let stack = TestStack::builder()
        .sink(Sink::None)
        .directory(&directory_with_identity())
        .core(move |c| c.spine_ca_file = Some(spine_ca))
        .edge(move |c| c.tls = Some(server))
        .start()
        .await;
    let call = |client: Option<&pki::Pair>| {
        let (ca, client) = (pki.ca.clone(), client.cloned());
        let addr = stack.edge_addr;
        async move {
            pki::https(
                addr,
                &ca,
                client.as_ref(),
                Method::POST,
                "/STU3/Subscription",
                &create_headers(),
                subscription_body(),
            )
            .await
        }
    };

    // The registered certificate is accepted.
    let created = call(Some(&pki.rr8)).await.unwrap();
    assert_eq!(created.status, 201, "{}", created.text());

    // Missing, untrusted and expired certificates never reach a handler: no HTTP answer.
    for (name, client) in [
        ("missing", None),
        ("wrong CA", Some(&pki.rogue)),
        ("expired", Some(&pki.expired)),
    ] {
        let refused = call(client).await;
        assert!(
            refused.is_err(),
            "{name} certificate got an HTTP answer: {:?}",
            refused.map(|r| r.status)
        );
    }

    // A valid certificate of another identity is refused for this ASID.
    let mismatch = call(Some(&pki.other)).await.unwrap();
    assert_eq!(mismatch.status, 403);
    assert!(
        mismatch.text().contains("ACCESS_DENIED"),
        "{}",
        mismatch.text()
    );
    assert!(
        mismatch
            .text()
            .contains("does not belong to ASID 200000000111"),
        "{}",
        mismatch.text()
    );

    // The gRPC BundleService takes the same certificates for the same ASIDs.
    let bundle = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("e2e/fixtures/events/vaccinations-1-new.xml"),
    )
    .unwrap();
    let publish = |client: Option<&pki::Pair>| {
        let tls = ClientTls {
            ca_file: pki.ca.clone(),
            cert_file: client.map(|c| c.cert.clone()),
            key_file: client.map(|c| c.key.clone()),
            domain: Some("localhost".into()),
        };
        let (addr, bundle) = (stack.edge_grpc_addr, bundle.clone());
        async move {
            let channel = Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
                .tls_config(tls.to_tonic().unwrap())
                .unwrap()
                .connect()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            BundleServiceClient::new(channel)
                .publish_bundle(pb::PublishBundleRequest {
                    caller: Some(spine::pb_caller(spine::SUBSCRIBER)),
                    interaction_id: "urn:nhs:names:services:events:Vaccinations.Write".into(),
                    bundle: bundle.into(),
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    let accepted = publish(Some(&pki.rr8)).await.unwrap();
    assert_eq!(accepted.event_id.len(), 32);
    let other = publish(Some(&pki.other)).await.unwrap_err();
    assert_eq!(
        nems_proto::spine::code_of(&other),
        Some(nems_proto::spine::SpineCode::AccessDenied),
        "{other:?}"
    );
    assert!(
        publish(None).await.is_err(),
        "a connection without a certificate published"
    );

    // An ASID with no registered identity cannot be used under mutual TLS.
    let other_asid = spine::with_media(spine::OTHER, Op::Read, "application/fhir+xml", None);
    let read = pki::https(
        stack.edge_addr,
        &pki.ca,
        Some(&pki.rr8),
        Method::GET,
        "/STU3/Subscription/0123456789abcdef0123456789abcdef",
        &other_asid,
        "",
    )
    .await
    .unwrap();
    assert_eq!(read.status, 403, "{}", read.text());
    assert!(
        read.text().contains("no certificate identity"),
        "{}",
        read.text()
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn core_listeners_with_tls_and_separate_client_cas() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let service_tls = ServerTls {
        cert_file: pki.server.cert.clone(),
        key_file: pki.server.key.clone(),
        client_ca_file: Some(pki.ca.clone()),
    };
    let operator_tls = ServerTls {
        client_ca_file: Some(pki.operator_ca.clone()),
        ..service_tls.clone()
    };
    // The edge's identity: a certificate from the service CA.
    let edge_identity = ClientTls {
        ca_file: pki.ca.clone(),
        cert_file: Some(pki.other.cert.clone()),
        key_file: Some(pki.other.key.clone()),
        domain: Some("localhost".into()),
    };
    let edge_tls = edge_identity.clone();
    let stack = TestStack::builder()
        .sink(Sink::None)
        .core(move |c| {
            c.tls = Some(service_tls);
            c.operator_tls = Some(operator_tls);
            c.clients.edge = vec!["other.client.nems.test".into()];
            c.clients.operator = vec![pki::OPERATOR_IDENTITY.into()];
        })
        .edge(move |c| {
            c.core_url = c.core_url.replace("http://", "https://");
            c.core_tls = Some(edge_tls);
        })
        .start()
        .await;

    // The edge reaches core over mutual TLS.
    let created = stack
        .http
        .post("/STU3/Subscription", &create_headers(), subscription_body())
        .await;
    assert_eq!(created.status, 201, "{}", created.text());

    let operator = |tls: Option<ClientTls>| {
        let addr = stack.operator_addr;
        async move {
            let mut endpoint = Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .connect_timeout(Duration::from_secs(5));
            if let Some(tls) = tls {
                endpoint = endpoint.tls_config(tls.to_tonic().unwrap()).unwrap();
            }
            let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
            OperatorServiceClient::new(channel)
                .get_status(pb::GetStatusRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.to_string())
        }
    };
    // An operator certificate reaches the operator API...
    let status = operator(Some(ClientTls {
        ca_file: pki.ca.clone(),
        cert_file: Some(pki.operator.cert.clone()),
        key_file: Some(pki.operator.key.clone()),
        domain: Some("localhost".into()),
    }))
    .await
    .unwrap();
    assert_eq!(status.subscriptions, 1);
    // The audit trail names the operator by the certificate core verified, not by anything
    // the caller sent.
    let operator_channel = Endpoint::from_shared(format!("https://{}", stack.operator_addr))
        .unwrap()
        .tls_config(
            ClientTls {
                ca_file: pki.ca.clone(),
                cert_file: Some(pki.operator.cert.clone()),
                key_file: Some(pki.operator.key.clone()),
                domain: Some("localhost".into()),
            }
            .to_tonic()
            .unwrap(),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    nems_proto::v1::directory_service_client::DirectoryServiceClient::new(operator_channel.clone())
        .put_mailbox(pb::PutMailboxRequest {
            mailbox: Some(pb::MeshMailbox {
                mailbox_id: "RR8MBX99".into(),
                ods_code: "RR8".into(),
                description: "added over operator mutual TLS".into(),
            }),
        })
        .await
        .unwrap();
    let audit = OperatorServiceClient::new(operator_channel)
        .list_audit(pb::ListAuditRequest {
            action: "directory.put-mailbox".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let users: Vec<&str> = audit.records.iter().map(|r| r.user.as_str()).collect();
    assert_eq!(
        users,
        ["operator:operator.nems.test@127.0.0.1"],
        "{audit:?}"
    );
    assert!(audit.records[0].at.is_some());
    // ...the edge's identity and anonymous clients do not.
    assert!(operator(Some(edge_identity)).await.is_err());
    assert!(
        operator(Some(ClientTls {
            ca_file: pki.ca.clone(),
            cert_file: None,
            key_file: None,
            domain: Some("localhost".into()),
        }))
        .await
        .is_err()
    );
    // Plain gRPC to the service listener fails too.
    let plain = tonic_health::pb::health_client::HealthClient::new(
        Endpoint::from_shared(format!("http://{}", stack.core_addr))
            .unwrap()
            .connect_lazy(),
    )
    .check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await;
    assert!(plain.is_err());
    stack.shutdown().await;
}
