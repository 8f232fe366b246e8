//! Roles and identities at core (issue 10 §1): core decides who a gRPC caller is from what
//! it can verify. Both of core's listeners run mutual TLS and trust one bundle of the
//! internal and operators' CAs, so every client below passes the handshake and only the
//! role its certificate's identity is given separates them: an edge may not administer, an
//! adapter may not publish, an operator may not pull deliveries. A caller named in a request
//! counts only from an edge and only with a Spine certificate core verifies itself; a
//! direct caller is the ASID its certificate is bound to. Every refusal is
//! `PERMISSION_DENIED` with `ACCESS_DENIED` in the details and is found in the audit trail.

use std::path::Path;
use std::time::Duration;

use http::Method;
use nems_core::trust::DirectClient;
use nems_e2e::eventually::eventually;
use nems_e2e::pki::{self, Pair, TestPki};
use nems_e2e::spine::{self, Op, SUBSCRIBER};
use nems_e2e::stack::{TEST_DIRECTORY, TestStack};
use nems_e2e::{events, outbox};
use nems_proto::spine::{SpineCode, code_of};
use nems_proto::v1 as pb;
use nems_proto::v1::delivery_service_client::DeliveryServiceClient;
use nems_proto::v1::event_service_client::EventServiceClient;
use nems_proto::v1::operator_service_client::OperatorServiceClient;
use nems_proto::v1::subscription_service_client::SubscriptionServiceClient;
use nems_runtime::tls::{ClientTls, ServerTls};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const RR8_ASID: &str = "200000000111";

fn directory_with_identity() -> String {
    TEST_DIRECTORY.replacen(
        "description = \"subscriber and publisher RR8\"",
        &format!(
            "description = \"subscriber and publisher RR8\"\ncertificate_identity = \"{}\"",
            pki::RR8_IDENTITY
        ),
        1,
    )
}

fn client_tls(pki: &TestPki, pair: &Pair) -> ClientTls {
    ClientTls {
        ca_file: pki.ca.clone(),
        cert_file: Some(pair.cert.clone()),
        key_file: Some(pair.key.clone()),
        domain: Some("localhost".into()),
    }
}

/// The whole stack over mutual TLS: the edge (Spine mutual TLS for its clients, its own
/// certificate to core), the adapter (its certificate to core), core with the roles and
/// the Spine CA.
async fn start(dir: &Path, pki: &TestPki) -> TestStack {
    let clients_ca = pki::bundle(
        &dir.join("clients-ca.pem"),
        &[&pki.internal_ca, &pki.operator_ca],
    );
    let core_tls = ServerTls {
        cert_file: pki.server.cert.clone(),
        key_file: pki.server.key.clone(),
        client_ca_file: Some(clients_ca),
    };
    let edge_tls = ServerTls {
        client_ca_file: Some(pki.ca.clone()),
        ..core_tls.clone()
    };
    let spine_ca = pki.ca.clone();
    let edge_to_core = client_tls(pki, &pki.edge);
    let adapter_to_core = client_tls(pki, &pki.adapter);
    TestStack::builder()
        .directory(&directory_with_identity())
        .core(move |c| {
            c.tls = Some(core_tls.clone());
            c.operator_tls = Some(core_tls);
            c.clients.edge = vec![pki::EDGE_IDENTITY.into()];
            c.clients.adapter = vec![pki::ADAPTER_IDENTITY.into()];
            c.clients.operator = vec![pki::OPERATOR_IDENTITY.into()];
            c.clients.direct = vec![DirectClient {
                identity: pki::DIRECT_IDENTITY.into(),
                asid: RR8_ASID.into(),
            }];
            c.spine_ca_file = Some(spine_ca);
        })
        .edge(move |c| {
            c.tls = Some(edge_tls);
            c.core_url = c.core_url.replace("http://", "https://");
            c.core_tls = Some(edge_to_core);
        })
        .adapter(move |c| {
            c.core_url = c.core_url.replace("http://", "https://");
            c.core_tls = Some(adapter_to_core);
        })
        .start()
        .await
}

fn channel(addr: std::net::SocketAddr, tls: ClientTls) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tls_config(tls.to_tonic().unwrap())
        .unwrap()
        .connect_lazy()
}

fn operator(stack: &TestStack, pki: &TestPki) -> OperatorServiceClient<Channel> {
    OperatorServiceClient::new(channel(stack.operator_addr, client_tls(pki, &pki.operator)))
}

fn assert_denied(status: &tonic::Status, what: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert_eq!(
        code_of(status),
        Some(SpineCode::AccessDenied),
        "{what}: {status:?}"
    );
}

/// Waits until the audit trail holds a record matching `filter` and `matches`.
async fn audited(
    operator: &OperatorServiceClient<Channel>,
    filter: pb::ListAuditRequest,
    what: &str,
    matches: impl Fn(&pb::AuditRecord) -> bool,
) -> pb::AuditRecord {
    eventually(what, Duration::from_secs(10), || {
        let (mut operator, filter) = (operator.clone(), filter.clone());
        let matches = &matches;
        async move {
            let page = operator.list_audit(filter).await.ok()?.into_inner();
            page.records.into_iter().find(|r| matches(r))
        }
    })
    .await
}

#[tokio::test]
async fn each_role_reaches_only_its_services_and_refusals_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let stack = start(dir.path(), &pki).await;

    // The edge's certificate on the operator API.
    let edge_on_operator =
        OperatorServiceClient::new(channel(stack.operator_addr, client_tls(&pki, &pki.edge)))
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap_err();
    assert_denied(&edge_on_operator, "edge calling OperatorService");

    // The adapter's certificate publishing.
    let adapter_publishing =
        EventServiceClient::new(channel(stack.core_addr, client_tls(&pki, &pki.adapter)))
            .publish_event(pb::PublishEventRequest {
                caller: Some(spine::pb_caller(SUBSCRIBER)),
                interaction_id: "urn:nhs:names:services:events:Vaccinations.Write".into(),
                message: None,
                payload: b"<Bundle/>".to_vec().into(),
            })
            .await
            .unwrap_err();
    assert_denied(&adapter_publishing, "adapter calling EventService");

    // An operator pulling deliveries, and a direct caller too.
    for (pair, what) in [
        (&pki.operator, "operator calling DeliveryService"),
        (&pki.direct, "direct caller calling DeliveryService"),
    ] {
        let refused = DeliveryServiceClient::new(channel(stack.core_addr, client_tls(&pki, pair)))
            .stream_deliveries(pb::StreamDeliveriesRequest {
                consumer: "intruder".into(),
                max_in_flight: 10,
                max_in_flight_per_mailbox: 1,
            })
            .await
            .unwrap_err();
        assert_denied(&refused, what);
    }

    // A self-signed certificate never gets past the handshake, whatever it names.
    let forged =
        OperatorServiceClient::new(channel(stack.operator_addr, client_tls(&pki, &pki.forged)))
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap_err();
    assert_ne!(forged.code(), Code::Ok);

    // The operator's own certificate works, and finds each refusal in the audit trail.
    let operator = operator(&stack, &pki);
    operator
        .clone()
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
    let rpc = pb::ListAuditRequest {
        action: "rpc".into(),
        page_size: 100,
        ..Default::default()
    };
    for (path, identity) in [
        (
            "/nems.core.v1.OperatorService/GetStatus",
            pki::EDGE_IDENTITY,
        ),
        (
            "/nems.core.v1.EventService/PublishEvent",
            pki::ADAPTER_IDENTITY,
        ),
        (
            "/nems.core.v1.DeliveryService/StreamDeliveries",
            pki::OPERATOR_IDENTITY,
        ),
        (
            "/nems.core.v1.DeliveryService/StreamDeliveries",
            pki::DIRECT_IDENTITY,
        ),
    ] {
        let record = audited(&operator, rpc.clone(), path, |r| {
            r.resource_id == path && r.user == identity
        })
        .await;
        assert_eq!(record.outcome, "ACCESS_DENIED", "{record:?}");
    }
    stack.shutdown().await;
}

fn create_request(caller: Option<pb::Caller>, nhs: &str) -> pb::CreateSubscriptionRequest {
    pb::CreateSubscriptionRequest {
        caller,
        subscription: Some(spine::subscription_pb(
            "RR8",
            "RR8MBX01",
            &spine::explicit(nhs, &["vaccinations-1"], ""),
        )),
    }
}

fn rr8_forwarding(certificate: Vec<u8>) -> pb::Caller {
    pb::Caller {
        client_certificate: certificate,
        ..spine::pb_caller(SUBSCRIBER)
    }
}

#[tokio::test]
async fn core_verifies_the_certificate_an_edge_forwards() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let stack = start(dir.path(), &pki).await;

    // Through the edge with RR8's Spine certificate: subscribe, publish, delivered by the
    // adapter (which streams deliveries with its own certificate).
    let nhs = "9434765919";
    let created = pki::https(
        stack.edge_addr,
        &pki.ca,
        Some(&pki.rr8),
        Method::POST,
        "/STU3/Subscription",
        &spine::with_media(SUBSCRIBER, Op::Create, "application/fhir+xml", None),
        spine::subscription_xml(
            "RR8",
            "RR8MBX01",
            &spine::explicit(nhs, &["vaccinations-1"], ""),
        ),
    )
    .await
    .unwrap();
    assert_eq!(created.status, 201, "{}", created.text());
    let published = pki::https(
        stack.edge_addr,
        &pki.ca,
        Some(&pki.rr8),
        Method::POST,
        "/STU3/Events/1/$process-message",
        &spine::with_media(
            SUBSCRIBER,
            Op::Publish("Vaccinations"),
            "application/fhir+xml",
            None,
        ),
        events::vaccination(nhs, "2015-06-01", 0),
    )
    .await
    .unwrap();
    assert_eq!(published.status, 202, "{}", published.text());
    let delivered = eventually(
        "the delivery in the folder sink",
        Duration::from_secs(20),
        || {
            let found = outbox::read(&stack.outbox);
            async move { (!found.is_empty()).then_some(found) }
        },
    )
    .await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].mailbox, "RR8MBX01");
    // A Spine certificate from an intermediate CA: the edge forwards the intermediate the
    // client sent, and core builds the chain to the Spine CA from it.
    let read = pki::https(
        stack.edge_addr,
        &pki.ca,
        Some(&pki.rr8_via_intermediate),
        Method::GET,
        created
            .header("location")
            .and_then(|l| l.find("/STU3/").map(|i| &l[i..]))
            .unwrap(),
        &spine::with_media(
            SUBSCRIBER,
            Op::Read,
            "application/fhir+xml",
            Some("application/fhir+xml"),
        ),
        "",
    )
    .await
    .unwrap();
    assert_eq!(read.status, 200, "{}", read.text());

    // Whoever holds the edge's certificate still cannot name a caller without RR8's
    // certificate: a forgery of the right name, an expired one, or none at all.
    let mut as_edge =
        SubscriptionServiceClient::new(channel(stack.core_addr, client_tls(&pki, &pki.edge)));
    for (certificate, text, what) in [
        (
            pki::der(&pki.forged.cert),
            "does not chain",
            "self-signed forgery",
        ),
        (
            pki::der(&pki.expired.cert),
            "expired",
            "expired certificate",
        ),
        (Vec::new(), "mutual TLS is required", "no certificate"),
        (
            pki::der(&pki.other.cert),
            "does not belong",
            "another identity",
        ),
    ] {
        let refused = as_edge
            .create_subscription(create_request(
                Some(rr8_forwarding(certificate)),
                "9912003888",
            ))
            .await
            .unwrap_err();
        assert_denied(&refused, what);
        assert!(refused.message().contains(text), "{what}: {refused:?}");
    }
    // The real one is honoured.
    as_edge
        .create_subscription(create_request(
            Some(rr8_forwarding(pki::der(&pki.rr8.cert))),
            "9912003888",
        ))
        .await
        .unwrap();

    let operator = operator(&stack, &pki);
    let creates = pb::ListAuditRequest {
        asid: RR8_ASID.into(),
        action: "create".into(),
        page_size: 100,
        ..Default::default()
    };
    let records = eventually(
        "four refused creates audited",
        Duration::from_secs(10),
        || {
            let (mut operator, filter) = (operator.clone(), creates.clone());
            async move {
                let page = operator.list_audit(filter).await.ok()?.into_inner();
                let denied = page
                    .records
                    .iter()
                    .filter(|r| r.outcome == "ACCESS_DENIED")
                    // Identical refusals within an audit window are one record with a count.
                    .map(|r| r.count.max(1))
                    .sum::<u32>();
                (denied == 4).then_some(page.records)
            }
        },
    )
    .await;
    assert_eq!(records.iter().filter(|r| r.outcome == "ok").count(), 2);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_direct_caller_acts_as_the_asid_of_its_certificate_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let stack = start(dir.path(), &pki).await;
    let direct = channel(stack.core_addr, client_tls(&pki, &pki.direct));
    let mut subscriptions = SubscriptionServiceClient::new(direct.clone());

    // Without naming anyone, it creates and reads back a subscription as its own ASID.
    let created = subscriptions
        .create_subscription(create_request(None, "9434765919"))
        .await
        .unwrap()
        .into_inner();
    let read = subscriptions
        .get_subscription(pb::GetSubscriptionRequest {
            caller: None,
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(read.subscription.is_some());

    // Naming another ASID is refused: a subscriber, and the PDS publisher (whose pds-*
    // events rewrite demographics).
    let other = subscriptions
        .create_subscription(create_request(
            Some(spine::pb_caller(spine::OTHER)),
            "9912003888",
        ))
        .await
        .unwrap_err();
    assert_denied(&other, "direct caller naming another ASID");
    assert!(
        other.message().contains("bound to ASID 200000000111"),
        "{other:?}"
    );
    // Even as itself, a direct caller may not send a summary with a payload (the summary
    // could describe another patient than the payload): it publishes the bundle through
    // the edge's BundleService.
    let valid = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("e2e/fixtures/events/vaccinations-1-new.xml"),
    )
    .unwrap();
    let summary = nems_edge::translate::bundle::extract(valid.as_bytes()).unwrap();
    let mismatched = EventServiceClient::new(direct.clone())
        .publish_event(pb::PublishEventRequest {
            caller: None,
            interaction_id: "urn:nhs:names:services:events:Vaccinations.Write".into(),
            message: Some(summary),
            payload: b"hello".to_vec().into(),
        })
        .await
        .unwrap_err();
    assert_denied(&mismatched, "direct caller publishing a summary");
    assert!(
        mismatched.message().contains("BundleService"),
        "{mismatched:?}"
    );
    let as_pds = EventServiceClient::new(direct)
        .publish_event(pb::PublishEventRequest {
            caller: Some(spine::pb_caller(spine::PDS)),
            interaction_id: "urn:nhs:names:services:events:PDSChangeOfAddress.Write".into(),
            message: None,
            payload: b"<Bundle/>".to_vec().into(),
        })
        .await
        .unwrap_err();
    assert_denied(&as_pds, "direct caller publishing as PDS");

    // The audit trail has the create as the bound ASID, and both refusals under it.
    let operator = operator(&stack, &pki);
    let mine = |action: &str| pb::ListAuditRequest {
        asid: RR8_ASID.into(),
        action: action.into(),
        page_size: 100,
        ..Default::default()
    };
    let ok = audited(&operator, mine("create"), "the direct create", |r| {
        r.outcome == "ok" && r.resource_id == created.id
    })
    .await;
    assert_eq!(ok.asid, RR8_ASID);
    audited(&operator, mine("create"), "the refused create", |r| {
        r.outcome == "ACCESS_DENIED"
    })
    .await;
    audited(&operator, mine("publish"), "the refused publish", |r| {
        r.outcome == "ACCESS_DENIED"
    })
    .await;
    stack.shutdown().await;
}
