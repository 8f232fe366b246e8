//! The foundation: the whole stack starts in-process, serves the CapabilityStatement in
//! XML and JSON, answers gRPC health, lists its services through reflection (tonic's v1
//! client and the real grpcurl, which speaks v1alpha), and hands a delivery from core to
//! the folder sink end to end.

use std::time::Duration;

use nems_e2e::eventually::eventually;
use nems_e2e::outbox;
use nems_e2e::stack::TestStack;
use nems_e2e::tools;
use nems_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn metadata_in_xml_and_json() {
    let stack = TestStack::start().await;
    let xml = stack.http.get("/STU3/metadata", &[]).await;
    assert_eq!(xml.status, 200);
    assert!(
        xml.header("content-type")
            .unwrap()
            .starts_with("application/fhir+xml")
    );
    let text = xml.text();
    assert!(
        text.contains("<CapabilityStatement xmlns=\"http://hl7.org/fhir\">"),
        "{text}"
    );
    assert!(text.contains("<fhirVersion value=\"3.0.1\"/>"));
    assert!(text.contains(&format!("<url value=\"{}/STU3\"/>", stack.base_url())));

    let json = stack
        .http
        .get(
            "/STU3/metadata",
            &[("Accept", "application/fhir+json".into())],
        )
        .await;
    assert_eq!(json.status, 200);
    assert!(
        json.header("content-type")
            .unwrap()
            .starts_with("application/fhir+json")
    );
    let body = json.json();
    assert_eq!(body["resourceType"], "CapabilityStatement");
    assert_eq!(body["rest"][0]["resource"][0]["type"], "Subscription");
    let same = stack.http.get("/STU3/metadata?_format=json", &[]).await;
    assert_eq!(same.json(), body);
    stack.shutdown().await;
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    let stack = TestStack::start().await;
    let mut health = HealthClient::new(stack.core_channel());
    for service in [
        "",
        "nems.core.v1.SubscriptionService",
        "nems.core.v1.EventService",
        "nems.core.v1.DeliveryService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    stack.shutdown().await;
}

async fn reflected_services(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = stream.next().await.unwrap().unwrap();
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

#[tokio::test]
async fn reflection_lists_the_services_on_both_listeners() {
    let stack = TestStack::start().await;
    let services = reflected_services(stack.core_channel()).await;
    for name in [
        "nems.core.v1.SubscriptionService",
        "nems.core.v1.EventService",
        "nems.core.v1.DeliveryService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|s| s == name),
            "{name} missing from {services:?}"
        );
    }
    // Operator services are only on the operator listener.
    assert!(
        !services.iter().any(|s| s == "nems.core.v1.OperatorService"),
        "{services:?}"
    );
    let operator =
        tonic::transport::Endpoint::from_shared(format!("http://{}", stack.operator_addr))
            .unwrap()
            .connect_lazy();
    let services = reflected_services(operator).await;
    for name in [
        "nems.core.v1.OperatorService",
        "nems.core.v1.DirectoryService",
    ] {
        assert!(
            services.iter().any(|s| s == name),
            "{name} missing from {services:?}"
        );
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls() {
    let Some(venv) = tools::venv("grpcurl_lists_describes_and_calls") else {
        return;
    };
    let stack = TestStack::start().await;
    let grpcurl = venv.join("bin/grpcurl");
    let run = move |args: Vec<String>| {
        let out = std::process::Command::new(&grpcurl)
            .args(&args)
            .output()
            .expect("run grpcurl");
        assert!(
            out.status.success(),
            "grpcurl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let addr = stack.core_addr.to_string();
    let list = tokio::task::spawn_blocking({
        let addr = addr.clone();
        let run = run.clone();
        move || run(vec!["-plaintext".into(), addr, "list".into()])
    })
    .await
    .unwrap();
    assert!(list.contains("nems.core.v1.EventService"), "{list}");
    let described = tokio::task::spawn_blocking({
        let addr = addr.clone();
        let run = run.clone();
        move || {
            run(vec![
                "-plaintext".into(),
                addr,
                "describe".into(),
                "nems.core.v1.DeliveryService".into(),
            ])
        }
    })
    .await
    .unwrap();
    assert!(described.contains("rpc StreamDeliveries"), "{described}");
    assert!(
        described.contains("Streams leased deliveries"),
        "comments are served: {described}"
    );
    let operator = stack.operator_addr.to_string();
    let status = tokio::task::spawn_blocking({
        let run = run.clone();
        move || {
            run(vec![
                "-plaintext".into(),
                operator,
                "nems.core.v1.OperatorService/ListEventTypes".into(),
            ])
        }
    })
    .await
    .unwrap();
    assert!(status.contains("VACCINATIONS_1"), "{status}");
    // The edge's BundleService: listed by reflection, and a Bundle published as the
    // README shows (the bytes base64 in grpcurl's JSON).
    let bundle = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("e2e/fixtures/events/vaccinations-1-new.xml"),
    )
    .unwrap();
    let request = serde_json::json!({
        "caller": {"asid": "200000000111", "odsCode": "RR8"},
        "interactionId": "urn:nhs:names:services:events:Vaccinations.Write",
        "bundle": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bundle),
    })
    .to_string();
    let edge = stack.edge_grpc_addr.to_string();
    let (edge_list, published) = tokio::task::spawn_blocking(move || {
        let list = run(vec!["-plaintext".into(), edge.clone(), "list".into()]);
        let published = run(vec![
            "-plaintext".into(),
            "-d".into(),
            request,
            edge,
            "nems.core.v1.BundleService/PublishBundle".into(),
        ]);
        (list, published)
    })
    .await
    .unwrap();
    assert!(
        edge_list.contains("nems.core.v1.BundleService"),
        "{edge_list}"
    );
    let answer: serde_json::Value = serde_json::from_str(&published).unwrap();
    assert_eq!(
        answer["eventId"].as_str().map(str::len),
        Some(32),
        "{published}"
    );
    // A subscription created, read and deleted on core as the README shows.
    let subscription = serde_json::json!({
        "caller": {"asid": "200000000111", "odsCode": "RR8"},
        "subscription": {
            "meta": {"profile": ["https://fhir.nhs.uk/STU3/StructureDefinition/EMS-Subscription-1"]},
            "status": "requested",
            "contact": [{"system": "url", "use": "work",
                "value": "https://directory.spineservices.nhs.uk/STU3/Organization/RR8"}],
            "reason": "Direct care",
            "criteria": "/Bundle?type=message&Patient.identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919&MessageHeader.event=vaccinations-1",
            "channel": {"type": "message", "endpoint": "RR8MBX01"},
        },
    })
    .to_string();
    let grpcurl = venv.join("bin/grpcurl");
    let core = addr.clone();
    let (created, read, deleted) = tokio::task::spawn_blocking(move || {
        let call = |body: String, method: &str| {
            std::process::Command::new(&grpcurl)
                .args(["-plaintext", "-d", &body, &core, method])
                .output()
                .expect("run grpcurl")
        };
        let created = call(
            subscription,
            "nems.core.v1.SubscriptionService/CreateSubscription",
        );
        let id = serde_json::from_slice::<serde_json::Value>(&created.stdout)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let key =
            format!(r#"{{"caller": {{"asid": "200000000111", "odsCode": "RR8"}}, "id": "{id}"}}"#);
        let read = call(
            key.clone(),
            "nems.core.v1.SubscriptionService/GetSubscription",
        );
        let deleted = call(key, "nems.core.v1.SubscriptionService/DeleteSubscription");
        (created, read, deleted)
    })
    .await
    .unwrap();
    let created: serde_json::Value = serde_json::from_slice(&created.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&created.stderr)));
    assert_eq!(created["id"].as_str().map(str::len), Some(32), "{created}");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(read["subscription"]["status"], "active", "{read}");
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    // A refusal's Spine code is in google.rpc.ErrorInfo, which grpcurl decodes through
    // reflection (error_details.proto is served).
    let grpcurl = venv.join("bin/grpcurl");
    let refused = tokio::task::spawn_blocking(move || {
        std::process::Command::new(grpcurl)
            .args([
                "-plaintext",
                "-d",
                r#"{"caller": {"asid": "200000000999", "odsCode": "ZZZ"}, "id": "0123456789abcdef0123456789abcdef"}"#,
                &addr,
                "nems.core.v1.SubscriptionService/GetSubscription",
            ])
            .output()
            .expect("run grpcurl")
    })
    .await
    .unwrap();
    assert!(!refused.status.success());
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        shown.contains(r#""@type":"type.googleapis.com/google.rpc.ErrorInfo""#)
            && shown.contains(r#""reason":"ASID_CHECK_FAILED""#),
        "{shown}"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn core_hands_a_delivery_to_the_folder_sink() {
    let stack = TestStack::start().await;
    let payload =
        b"<Bundle xmlns=\"http://hl7.org/fhir\"><type value=\"message\"/></Bundle>".to_vec();
    let injected = stack
        .operator()
        .inject_delivery(pb::InjectDeliveryRequest {
            mailbox: "RR8MBX01".into(),
            event_code: "vaccinations-1".into(),
            payload: payload.clone().into(),
            partner_id: "sub1|tag1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let delivered = eventually(
        "the delivery to reach the folder sink",
        Duration::from_secs(10),
        || async {
            let found = outbox::read(&stack.outbox);
            (!found.is_empty()).then_some(found)
        },
    )
    .await;
    assert_eq!(delivered.len(), 1);
    let d = &delivered[0];
    assert_eq!(
        (d.mailbox.as_str(), d.workflow_id.as_str()),
        ("RR8MBX01", "VACCINATIONS_1")
    );
    assert_eq!(d.local_id, format!("{}-0", injected.event_id));
    assert_eq!(d.partner_id, "sub1|tag1");
    assert_eq!(d.payload, payload);
    // The ledger settles: delivered, and the payload released.
    let mut operator = stack.operator();
    let event = eventually(
        "the ledger to record the delivery",
        Duration::from_secs(10),
        || {
            let mut operator = operator.clone();
            let id = injected.event_id.clone();
            async move {
                let e = operator
                    .get_event(pb::GetEventRequest { event_id: id })
                    .await
                    .ok()?
                    .into_inner();
                (e.deliveries.first()?.state() == pb::DeliveryState::Delivered).then_some(e)
            }
        },
    )
    .await;
    assert!(!event.event.unwrap().payload_held);
    assert_eq!(
        event.deliveries[0].mesh_message_id,
        format!("FOLDER-{}-0", injected.event_id)
    );
    let stats = operator
        .get_mailbox_stats(pb::GetMailboxStatsRequest {
            mailbox: "RR8MBX01".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.mailboxes[0].delivered, 1);
    stack.shutdown().await;
}
