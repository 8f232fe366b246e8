//! The Rust MESH client against the real `mesh-sandbox`, cross-checked with NHS's Python
//! `mesh-client` as the independent receiver (or sender). Skipped with a notice when the
//! pinned venv is missing (`tools::venv`).

use nems_e2e::mesh_sandbox::{MeshSandbox, RECIPIENT_MAILBOXES, SERVICE_MAILBOX};
use nems_e2e::tools;
use nems_mesh_adapter::error::DeliveryError;
use nems_mesh_adapter::mesh::{LOCAL_ID_NOT_UNIQUE, OutboundMessage};
use nems_mesh_adapter::reports;
use nems_mesh_adapter::sink::mesh::MeshSink;
use nems_mesh_adapter::sink::{Sink, SinkOutcome};
use nems_proto::v1 as pb;

async fn sandbox(test: &str) -> Option<MeshSandbox> {
    let venv = tools::venv(test)?;
    Some(MeshSandbox::start(&venv).await)
}

/// Bytes that are not valid UTF-8, with every byte value, to prove nothing is re-encoded.
fn binary_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 256) as u8).collect()
}

#[tokio::test]
async fn rust_sends_and_mesh_client_receives_unchanged() {
    let Some(sandbox) = sandbox("rust_sends_and_mesh_client_receives_unchanged").await else {
        return;
    };
    let recipient = RECIPIENT_MAILBOXES[0];
    let client = sandbox.client(&SERVICE_MAILBOX);
    client.handshake().await.unwrap();

    let payload = binary_payload(4096);
    let mut message =
        OutboundMessage::new(recipient.id, "NEMS_TEST_WF", "nems-d-1", payload.clone());
    message.partner_id = Some("sub-1|tag-a~~~sub-2".into());
    message.subject = Some("NEMS pds-change-of-address-1".into());
    message.file_name = Some("nems-d-1.xml".into());
    message.content_type = Some("application/fhir+xml".into());
    let message_id = client.send(&message).await.unwrap();

    let tracked = client.track_by_local_id("nems-d-1").await.unwrap().unwrap();
    assert_eq!(tracked.message_id, message_id);
    assert_eq!(tracked.status.as_deref(), Some("accepted"));
    assert_eq!(tracked.recipient.as_deref(), Some(recipient.id));
    assert_eq!(client.track_by_local_id("never-sent").await.unwrap(), None);

    let received = sandbox.receive_with_mesh_client(&recipient).await;
    assert_eq!(received.len(), 1, "{received:?}");
    let got = &received[0];
    assert_eq!(got.id, message_id);
    assert_eq!(got.payload, payload, "payload bytes unchanged");
    for (header, expected) in [
        ("from", SERVICE_MAILBOX.id),
        ("to", recipient.id),
        ("workflowid", "NEMS_TEST_WF"),
        ("localid", "nems-d-1"),
        ("partnerid", "sub-1|tag-a~~~sub-2"),
        ("subject", "NEMS pds-change-of-address-1"),
        ("filename", "nems-d-1.xml"),
        ("content-type", "application/fhir+xml"),
        ("messagetype", "DATA"),
    ] {
        assert_eq!(
            got.headers.get(header).map(String::as_str),
            Some(expected),
            "mex-{header}"
        );
    }

    // mesh-client acknowledged it; tracking by id (v2) shows that.
    let tracked = client.track(&message_id).await.unwrap().unwrap();
    assert_eq!(tracked.status.as_deref(), Some("acknowledged"));
}

#[tokio::test]
async fn chunked_send_arrives_intact() {
    let Some(sandbox) = sandbox("chunked_send_arrives_intact").await else {
        return;
    };
    let recipient = RECIPIENT_MAILBOXES[1];
    let mut config = sandbox.client_config(&SERVICE_MAILBOX);
    config.chunk_size = 10_000;
    let client = nems_mesh_adapter::mesh::MeshClient::new(config).unwrap();
    let payload = binary_payload(45_001);
    let message_id = client
        .send(&OutboundMessage::new(
            recipient.id,
            "NEMS_TEST_WF",
            "nems-chunked",
            payload.clone(),
        ))
        .await
        .unwrap();
    let details = sandbox.message_details(&message_id).await.unwrap();
    assert_eq!(details["chunk_count"], 5);
    let tracked = client
        .track_by_local_id("nems-chunked")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tracked.message_id, message_id);
    assert_eq!(tracked.status.as_deref(), Some("accepted"));

    let received = sandbox.receive_with_mesh_client(&recipient).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].payload, payload);
    assert_eq!(
        received[0].headers.get("localid").map(String::as_str),
        Some("nems-chunked")
    );
}

#[tokio::test]
async fn refusals_and_credential_failures_are_classified() {
    let Some(sandbox) = sandbox("refusals_and_credential_failures_are_classified").await else {
        return;
    };
    let client = sandbox.client(&SERVICE_MAILBOX);
    let unknown = client
        .send(&OutboundMessage::new(
            "NOSUCHMB9",
            "NEMS_TEST_WF",
            "nems-x",
            "x",
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&unknown, DeliveryError::Permanent { code, .. } if code == "12"),
        "{unknown:?}"
    );

    let mut config = sandbox.client_config(&SERVICE_MAILBOX);
    config.password = "not-the-password".into();
    let wrong = nems_mesh_adapter::mesh::MeshClient::new(config).unwrap();
    let denied = wrong
        .send(&OutboundMessage::new(
            RECIPIENT_MAILBOXES[0].id,
            "WF",
            "nems-y",
            "y",
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&denied, DeliveryError::Transient { code, .. } if code == "403"),
        "{denied:?}"
    );
    assert!(wrong.handshake().await.unwrap_err().is_transient());

    let mut config = sandbox.client_config(&SERVICE_MAILBOX);
    config.shared_key = "WrongKey".into();
    let wrong_key = nems_mesh_adapter::mesh::MeshClient::new(config).unwrap();
    assert_eq!(wrong_key.list_inbox().await.unwrap_err().code(), "403");

    let sink = MeshSink::new(client);
    let outcome = sink.deliver(&delivery("NOSUCHMB9", "nems-z", 1)).await;
    assert!(
        matches!(&outcome, SinkOutcome::Refused { code, .. } if code == "12"),
        "{outcome:?}"
    );
}

fn delivery(mailbox: &str, local_id: &str, attempt: u32) -> pb::Delivery {
    pb::Delivery {
        delivery_id: 1,
        attempt,
        local_id: local_id.into(),
        event_id: "evt".into(),
        event_code: "vaccinations-1".into(),
        mailbox: mailbox.into(),
        workflow_id: "NEMS_TEST_WF".into(),
        payload: b"<Bundle/>".to_vec().into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_sink_never_creates_a_second_copy() {
    let Some(sandbox) = sandbox("the_sink_never_creates_a_second_copy").await else {
        return;
    };
    let recipient = RECIPIENT_MAILBOXES[2];
    let sink = MeshSink::new(sandbox.client(&SERVICE_MAILBOX));
    let SinkOutcome::Sent { message_id } =
        sink.deliver(&delivery(recipient.id, "nems-once", 1)).await
    else {
        panic!("first attempt should send");
    };
    let again = sink.deliver(&delivery(recipient.id, "nems-once", 2)).await;
    assert_eq!(
        again,
        SinkOutcome::Sent {
            message_id: message_id.clone()
        }
    );
    let received = sandbox.receive_with_mesh_client(&recipient).await;
    assert_eq!(received.len(), 1, "one copy only");
    assert_eq!(received[0].id, message_id);
    assert_eq!(
        received[0].headers.get("content-type").map(String::as_str),
        Some("application/fhir+xml")
    );
    assert_eq!(
        received[0].headers.get("subject").map(String::as_str),
        Some("NEMS vaccinations-1")
    );

    // Two messages with one local id (sent outside the sink): the sandbox answers 300 and the
    // sink refuses to add a third.
    let client = sandbox.client(&SERVICE_MAILBOX);
    for _ in 0..2 {
        client
            .send(&OutboundMessage::new(recipient.id, "WF", "nems-dup", "x"))
            .await
            .unwrap();
    }
    let duplicate = client.track_by_local_id("nems-dup").await.unwrap_err();
    assert_eq!(duplicate.code(), LOCAL_ID_NOT_UNIQUE);
    let outcome = sink.deliver(&delivery(recipient.id, "nems-dup", 2)).await;
    assert!(
        matches!(&outcome, SinkOutcome::Refused { code, .. } if code == LOCAL_ID_NOT_UNIQUE),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn reports_are_polled_and_acknowledged() {
    let Some(sandbox) = sandbox("reports_are_polled_and_acknowledged").await else {
        return;
    };
    let client = sandbox.client(&SERVICE_MAILBOX);
    let sent = client
        .send(&OutboundMessage::new(
            RECIPIENT_MAILBOXES[0].id,
            "NEMS_TEST_WF",
            "nems-r-1",
            "x",
        ))
        .await
        .unwrap();
    let report_id = sandbox
        .inject_report(
            SERVICE_MAILBOX.id,
            &sent,
            "nems-r-1",
            "NEMS_TEST_WF",
            "14",
            "Message not collected by recipient after 5 days",
        )
        .await;
    // A DATA message from mesh-client in our inbox must be left alone.
    let data_id = sandbox
        .send_with_mesh_client(
            &RECIPIENT_MAILBOXES[0],
            SERVICE_MAILBOX.id,
            "NEMS_TEST_WF_ACK",
            "ack-1",
            b"ack payload",
        )
        .await;

    let found = reports::poll_once(&client).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let report = &found[0];
    assert_eq!(report.report_id, report_id);
    assert_eq!(report.linked_message_id.as_deref(), Some(sent.as_str()));
    assert_eq!(report.local_id.as_deref(), Some("nems-r-1"));
    assert_eq!(report.status_code.as_deref(), Some("14"));
    assert_eq!(
        report.status_description.as_deref(),
        Some("Message not collected by recipient after 5 days")
    );
    assert_eq!(
        client.list_inbox().await.unwrap(),
        std::slice::from_ref(&data_id),
        "report acknowledged"
    );

    // The Rust client reads the DATA message mesh-client sent.
    let downloaded = client.download(&data_id).await.unwrap();
    assert_eq!(&downloaded.payload[..], b"ack payload");
    assert_eq!(
        downloaded.message.header("mex-from"),
        Some(RECIPIENT_MAILBOXES[0].id)
    );
    assert_eq!(downloaded.message.header("mex-localid"), Some("ack-1"));
    client.acknowledge(&data_id).await.unwrap();
    assert!(client.list_inbox().await.unwrap().is_empty());
}

#[tokio::test]
async fn reset_clears_the_store() {
    let Some(sandbox) = sandbox("reset_clears_the_store").await else {
        return;
    };
    let client = sandbox.client(&SERVICE_MAILBOX);
    let id = client
        .send(&OutboundMessage::new(
            RECIPIENT_MAILBOXES[0].id,
            "WF",
            "nems-reset",
            "x",
        ))
        .await
        .unwrap();
    assert!(sandbox.message_details(&id).await.is_some());
    sandbox.reset().await;
    assert!(sandbox.message_details(&id).await.is_none());
    assert_eq!(client.track_by_local_id("nems-reset").await.unwrap(), None);
    // Provisioned mailboxes survive a reset (it reloads the copied data files).
    client.handshake().await.unwrap();
}
