//! The MESH client and sink against the in-process fake: scripted faults, reconciliation of
//! ambiguous sends, chunking and report polling.

use std::time::{Duration, SystemTime};

use nems_e2e::mesh_fake::{Behaviour, FakeReport, MeshFake, SHARED_KEY};
use nems_mesh_adapter::error::DeliveryError;
use nems_mesh_adapter::mesh::{LOCAL_ID_NOT_UNIQUE, MeshClient, MeshClientConfig, OutboundMessage};
use nems_mesh_adapter::reports::{self, MeshReport};
use nems_mesh_adapter::retry::RetryPolicy;
use nems_mesh_adapter::sink::mesh::MeshSink;
use nems_mesh_adapter::sink::{Sink, SinkOutcome};
use nems_proto::v1 as pb;

const SERVICE: &str = "NEMSSVC01";
const PASSWORD: &str = "service-password";
const WAIT: Duration = Duration::from_secs(10);

async fn fake() -> MeshFake {
    let fake = MeshFake::start().await;
    fake.add_mailbox(SERVICE, PASSWORD);
    fake
}

fn config(fake: &MeshFake) -> MeshClientConfig {
    let mut config = MeshClientConfig::new(fake.base_url(), SERVICE, PASSWORD, SHARED_KEY);
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(5);
    config.chunk_retry_policy = RetryPolicy::for_test();
    config
}

fn client(config: MeshClientConfig) -> MeshClient {
    MeshClient::new(config).unwrap()
}

fn delivery(mailbox: &str, local_id: &str, attempt: u32) -> pb::Delivery {
    pb::Delivery {
        delivery_id: 42,
        attempt,
        local_id: local_id.into(),
        event_id: "evt-1".into(),
        event_code: "pds-change-of-address-1".into(),
        mailbox: mailbox.into(),
        workflow_id: "NEMS_PDS_WF".into(),
        partner_id: "sub-1|tag-a~~~sub-2".into(),
        payload: b"<Bundle xmlns=\"http://hl7.org/fhir\"/>".to_vec().into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn accepted_send_carries_every_header() {
    let fake = fake().await;
    let sink = MeshSink::new(client(config(&fake)));
    let outcome = sink.deliver(&delivery("RECIP01", "d-1", 1)).await;
    let SinkOutcome::Sent { message_id } = outcome else {
        panic!("expected sent, got {outcome:?}");
    };
    let sends = fake.sends();
    assert_eq!(sends.len(), 1);
    let send = &sends[0];
    assert_eq!(send.path, "/messageexchange/NEMSSVC01/outbox");
    for (name, value) in [
        ("accept", "application/vnd.mesh.v2+json"),
        ("content-type", "application/octet-stream"),
        ("mex-from", SERVICE),
        ("mex-to", "RECIP01"),
        ("mex-workflowid", "NEMS_PDS_WF"),
        ("mex-localid", "d-1"),
        ("mex-partnerid", "sub-1|tag-a~~~sub-2"),
        ("mex-subject", "NEMS pds-change-of-address-1"),
        ("mex-filename", "d-1.xml"),
        ("mex-content-type", "application/fhir+xml"),
    ] {
        assert_eq!(send.header(name), Some(value), "{name}");
    }
    assert!(
        send.header("authorization")
            .unwrap()
            .starts_with("NHSMESH NEMSSVC01:")
    );
    assert_eq!(send.header("content-encoding"), None);
    assert_eq!(send.header("mex-chunk-range"), None);
    let stored = fake.message(&message_id).unwrap();
    assert_eq!(stored.payload(), delivery("RECIP01", "d-1", 1).payload);
    assert_eq!(stored.status, "accepted");
}

#[tokio::test]
async fn handshake_announces_the_client() {
    let fake = fake().await;
    client(config(&fake)).handshake().await.unwrap();
    let requests = fake.requests();
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/messageexchange/NEMSSVC01");
    assert!(
        requests[0]
            .header("mex-clientversion")
            .unwrap()
            .starts_with("nems-mesh-adapter==")
    );
    assert!(requests[0].header("mex-osname").is_some());
    assert!(requests[0].header("mex-osversion").is_some());
}

#[tokio::test]
async fn rate_limit_429_asks_for_a_retry_after_the_given_delay() {
    let fake = fake().await;
    fake.set_behaviour(
        "RECIP01",
        Behaviour::Fail {
            times: 1,
            status: 429,
            retry_after: Some("7".into()),
        },
    );
    let sink = MeshSink::new(client(config(&fake)));
    let outcome = sink.deliver(&delivery("RECIP01", "d-429", 1)).await;
    let SinkOutcome::Retry {
        code, retry_after, ..
    } = outcome
    else {
        panic!("expected retry, got {outcome:?}");
    };
    assert_eq!(code, "429");
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
    assert!(fake.messages().is_empty(), "a refused send stores nothing");

    // The next attempt checks tracking first, finds nothing and sends.
    let outcome = sink.deliver(&delivery("RECIP01", "d-429", 2)).await;
    assert!(matches!(outcome, SinkOutcome::Sent { .. }), "{outcome:?}");
    assert_eq!(fake.messages_to("RECIP01").len(), 1);
    assert_eq!(fake.sends().len(), 2);
}

#[tokio::test]
async fn unavailable_503_with_an_http_date_asks_for_that_delay() {
    let fake = fake().await;
    let at = time::OffsetDateTime::from(SystemTime::now() + Duration::from_secs(120));
    let http_date = at
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap()
        .replace("+0000", "GMT");
    fake.set_behaviour(
        "RECIP01",
        Behaviour::Fail {
            times: 1,
            status: 503,
            retry_after: Some(http_date),
        },
    );
    let sink = MeshSink::new(client(config(&fake)));
    let outcome = sink.deliver(&delivery("RECIP01", "d-503", 1)).await;
    let SinkOutcome::Retry {
        code, retry_after, ..
    } = outcome
    else {
        panic!("expected retry, got {outcome:?}");
    };
    assert_eq!(code, "503");
    let delay = retry_after.expect("retry-after honoured");
    assert!(
        delay > Duration::from_secs(100) && delay <= Duration::from_secs(120),
        "{delay:?}"
    );
}

/// The fake stores the message, then never answers: the client times out after writing the
/// request, the outcome is ambiguous, and tracking by local id proves MESH has it.
#[tokio::test]
async fn store_then_time_out_is_reconciled_to_sent_with_one_copy() {
    let fake = fake().await;
    fake.set_behaviour("RECIP01", Behaviour::StoreThenHang);
    let mut config = config(&fake);
    config.request_timeout = Duration::from_millis(500);
    let client = client(config);

    let direct = client
        .send(&OutboundMessage::new("RECIP01", "WF", "d-hang-direct", "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(direct, DeliveryError::Ambiguous { .. }),
        "{direct:?}"
    );
    assert_eq!(direct.code(), "TIMEOUT");

    let sink = MeshSink::new(client);
    let outcome = sink.deliver(&delivery("RECIP01", "d-hang", 1)).await;
    let SinkOutcome::Sent { message_id } = outcome else {
        panic!("expected sent, got {outcome:?}");
    };
    let copies: Vec<_> = fake
        .messages_to("RECIP01")
        .into_iter()
        .filter(|m| m.mex_header("mex-localid") == Some("d-hang"))
        .collect();
    assert_eq!(copies.len(), 1, "exactly one copy");
    assert_eq!(copies[0].message_id, message_id);
    let sends_for_delivery = fake
        .sends()
        .iter()
        .filter(|r| r.header("mex-localid") == Some("d-hang"))
        .count();
    assert_eq!(sends_for_delivery, 1, "the send was never repeated");
}

#[tokio::test]
async fn store_then_drop_is_reconciled_to_sent_with_one_copy() {
    let fake = fake().await;
    fake.set_behaviour("RECIP01", Behaviour::StoreThenDrop);
    let sink = MeshSink::new(client(config(&fake)));
    let outcome = sink.deliver(&delivery("RECIP01", "d-drop", 1)).await;
    let SinkOutcome::Sent { message_id } = outcome else {
        panic!("expected sent, got {outcome:?}");
    };
    assert_eq!(fake.messages_to("RECIP01").len(), 1);
    assert_eq!(fake.messages_to("RECIP01")[0].message_id, message_id);
    assert_eq!(fake.sends().len(), 1);
}

/// MESH is slower than our timeout and stores the message only after tracking said "absent":
/// the sink asks for a retry, and the retry finds the copy instead of sending a second one.
#[tokio::test]
async fn slow_store_after_timeout_is_found_by_the_next_attempt() {
    let fake = fake().await;
    fake.set_behaviour("RECIP01", Behaviour::Slow(Duration::from_millis(1500)));
    let mut config = config(&fake);
    config.request_timeout = Duration::from_millis(300);
    let sink = MeshSink::new(client(config));
    let outcome = sink.deliver(&delivery("RECIP01", "d-slow", 1)).await;
    let SinkOutcome::Retry { code, .. } = outcome else {
        panic!("expected retry, got {outcome:?}");
    };
    assert_eq!(code, "AMBIGUOUS");

    let stored = fake.wait_for_messages(1, WAIT).await;
    let outcome = sink.deliver(&delivery("RECIP01", "d-slow", 2)).await;
    assert_eq!(
        outcome,
        SinkOutcome::Sent {
            message_id: stored[0].message_id.clone()
        }
    );
    assert_eq!(fake.sends().len(), 1, "no second POST");
}

#[tokio::test]
async fn a_repeated_attempt_finds_the_earlier_copy_without_posting_again() {
    let fake = fake().await;
    let sink = MeshSink::new(client(config(&fake)));
    let SinkOutcome::Sent { message_id } = sink.deliver(&delivery("RECIP01", "d-again", 1)).await
    else {
        panic!("first attempt should send");
    };
    // The adapter crashed before reporting: core hands the delivery out again.
    let outcome = sink.deliver(&delivery("RECIP01", "d-again", 2)).await;
    assert_eq!(outcome, SinkOutcome::Sent { message_id });
    assert_eq!(fake.sends().len(), 1);
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.method, "GET");
    assert_eq!(
        last.path,
        "/messageexchange/NEMSSVC01/outbox/tracking/d-again"
    );
}

#[tokio::test]
async fn a_copy_mesh_gave_up_on_is_sent_again_not_taken_for_sent() {
    let fake = fake().await;
    let sink = MeshSink::new(client(config(&fake)));
    let SinkOutcome::Sent { message_id: first } =
        sink.deliver(&delivery("RECIP01", "d-ndr", 1)).await
    else {
        panic!("first attempt should send");
    };
    for status in ["undeliverable", "error"] {
        // MESH reported the copy undeliverable; the delivery is attempted again (a redrive
        // that kept the local id, or a lease given back after the report).
        let held = fake.messages().len();
        let last = fake.messages().pop().unwrap().message_id;
        assert!(fake.set_message_status(&last, status));
        let outcome = sink.deliver(&delivery("RECIP01", "d-ndr", 2)).await;
        let SinkOutcome::Sent { message_id } = outcome else {
            panic!("a {status} copy must be sent anew, got {outcome:?}");
        };
        assert_ne!(message_id, first, "not the copy MESH gave up on");
        assert_ne!(message_id, last);
        assert_eq!(fake.messages().len(), held + 1, "a new copy after {status}");
        assert_eq!(fake.message(&message_id).unwrap().status, "accepted");
        // Local ids are not unique any more; only a redrive generation (a new local id)
        // keeps later lookups unambiguous, which core gives every redriven delivery.
        if status == "undeliverable" {
            let outcome = sink.deliver(&delivery("RECIP01", "d-ndr", 3)).await;
            assert!(
                matches!(outcome, SinkOutcome::Refused { ref code, .. } if code == LOCAL_ID_NOT_UNIQUE),
                "{outcome:?}"
            );
            return;
        }
    }
}

#[tokio::test]
async fn an_accepted_or_acknowledged_copy_counts_as_sent() {
    let fake = fake().await;
    let sink = MeshSink::new(client(config(&fake)));
    let SinkOutcome::Sent { message_id } = sink.deliver(&delivery("RECIP01", "d-ack", 1)).await
    else {
        panic!("first attempt should send");
    };
    assert!(fake.set_message_status(&message_id, "acknowledged"));
    let outcome = sink.deliver(&delivery("RECIP01", "d-ack", 2)).await;
    assert_eq!(outcome, SinkOutcome::Sent { message_id });
    assert_eq!(fake.sends().len(), 1);
}

#[tokio::test]
async fn a_withdrawn_local_id_route_is_not_taken_for_no_such_message() {
    let fake = fake().await;
    let sink = MeshSink::new(client(config(&fake)));
    // A message MESH accepted from us: the client remembers its local id.
    let SinkOutcome::Sent { .. } = sink.deliver(&delivery("RECIP01", "d-known", 1)).await else {
        panic!("first send");
    };
    // The deprecated route goes away; a delivery needing reconciliation must not be sent
    // blindly (MESH may hold an earlier copy we can no longer find).
    fake.withdraw_local_id_tracking(true);
    let outcome = sink.deliver(&delivery("RECIP01", "d-unsure", 2)).await;
    let SinkOutcome::Retry { code, .. } = &outcome else {
        panic!("expected a retry, got {outcome:?}");
    };
    assert_eq!(code, "TRACKING_LOCAL_ID_ROUTE_UNCONFIRMED");
    assert!(
        fake.messages()
            .iter()
            .all(|m| m.mex_header("mex-localid") != Some("d-unsure")),
        "nothing sent while the route is in doubt"
    );
    // Restored: a 404 means "no such message" again (the known local id is found).
    fake.withdraw_local_id_tracking(false);
    let outcome = sink.deliver(&delivery("RECIP01", "d-unsure", 3)).await;
    assert!(matches!(outcome, SinkOutcome::Sent { .. }), "{outcome:?}");

    // A fresh client knows no local id: the route shows itself by answering another
    // method with 405, and does not while withdrawn.
    let fresh = MeshSink::new(client(config(&fake)));
    let outcome = fresh.deliver(&delivery("RECIP01", "d-fresh", 2)).await;
    assert!(matches!(outcome, SinkOutcome::Sent { .. }), "{outcome:?}");
    fake.withdraw_local_id_tracking(true);
    let fresh = MeshSink::new(client(config(&fake)));
    let outcome = fresh.deliver(&delivery("RECIP01", "d-fresh-2", 2)).await;
    assert!(
        matches!(outcome, SinkOutcome::Retry { ref code, .. } if code == "TRACKING_LOCAL_ID_ROUTE_UNCONFIRMED"),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_dead_mailbox_is_refused_with_code_12() {
    let fake = fake().await;
    fake.set_behaviour("DEADMB01", Behaviour::Dead);
    let sink = MeshSink::new(client(config(&fake)));
    let outcome = sink.deliver(&delivery("DEADMB01", "d-dead", 1)).await;
    let SinkOutcome::Refused { code, reason } = outcome else {
        panic!("expected refused, got {outcome:?}");
    };
    assert_eq!(code, "12");
    assert_eq!(reason, "http 417: Unregistered to address");
    // Other mailboxes are unaffected.
    let outcome = sink.deliver(&delivery("RECIP01", "d-alive", 1)).await;
    assert!(matches!(outcome, SinkOutcome::Sent { .. }));
}

#[tokio::test]
async fn a_wrong_password_is_transient() {
    let fake = fake().await;
    let mut config = config(&fake);
    config.password = "wrong".into();
    let sink = MeshSink::new(client(config));
    let outcome = sink.deliver(&delivery("RECIP01", "d-auth", 1)).await;
    let SinkOutcome::Retry { code, .. } = outcome else {
        panic!("expected retry, got {outcome:?}");
    };
    assert_eq!(code, "403");
    assert!(fake.messages().is_empty());
}

#[tokio::test]
async fn control_characters_are_refused_before_sending() {
    let fake = fake().await;
    let sink = MeshSink::new(client(config(&fake)));
    let mut bad = delivery("RECIP01", "d-ctl", 1);
    bad.partner_id = "sub-1\r\nX-Injected: 1".into();
    let outcome = sink.deliver(&bad).await;
    let SinkOutcome::Refused { code, reason } = outcome else {
        panic!("expected refused, got {outcome:?}");
    };
    assert_eq!(code, "INVALID_HEADER");
    assert!(!reason.contains("Injected"));
    assert!(fake.requests().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn chunked_sends_reassemble_and_retry_failed_chunks() {
    let fake = fake().await;
    fake.set_behaviour(
        "RECIP01",
        Behaviour::FailChunks {
            times: 2,
            status: 503,
        },
    );
    let mut config = config(&fake);
    config.chunk_size = 1000;
    let client = client(config);
    let payload: Vec<u8> = (0..3500u32).map(|i| (i * 7 % 256) as u8).collect();
    let message = OutboundMessage::new("RECIP01", "WF", "d-chunks", payload.clone());
    let message_id = client.send(&message).await.unwrap();

    let stored = fake.message(&message_id).unwrap();
    assert_eq!(stored.status, "accepted");
    assert_eq!(stored.chunks.len(), 4);
    assert_eq!(stored.payload(), payload);
    let requests = fake.requests();
    let first = requests.iter().find(|r| r.is_send()).unwrap();
    assert_eq!(first.header("mex-chunk-range"), Some("1:4"));
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    let chunk_posts: Vec<(String, Option<u16>)> = requests
        .iter()
        .filter(|r| r.method == "POST" && !r.is_send())
        .map(|r| (r.path.rsplit('/').next().unwrap().to_owned(), r.status))
        .collect();
    assert_eq!(
        chunk_posts,
        [
            ("2".into(), Some(503)),
            ("2".into(), Some(503)),
            ("2".into(), Some(202)),
            ("3".into(), Some(202)),
            ("4".into(), Some(202)),
        ]
    );
    for post in requests
        .iter()
        .filter(|r| r.method == "POST" && !r.is_send())
    {
        assert_eq!(post.header("content-encoding"), Some("gzip"));
        let number = post.path.rsplit('/').next().unwrap();
        assert_eq!(
            post.header("mex-chunk-range"),
            Some(format!("{number}:4").as_str())
        );
    }

    // The Rust client downloads it again intact, as the recipient.
    fake.add_mailbox("RECIP01", "recipient-pw");
    let recipient = MeshClient::new(MeshClientConfig::new(
        fake.base_url(),
        "RECIP01",
        "recipient-pw",
        SHARED_KEY,
    ))
    .unwrap();
    assert_eq!(
        recipient.list_inbox().await.unwrap(),
        std::slice::from_ref(&message_id)
    );
    let downloaded = recipient.download(&message_id).await.unwrap();
    assert_eq!(downloaded.payload, payload);
    recipient.acknowledge(&message_id).await.unwrap();
    assert!(recipient.list_inbox().await.unwrap().is_empty());
}

/// A chunked upload that never completed was never delivered: the next attempt sends a new
/// copy; a local id held by several messages then stops the sink from adding another.
#[tokio::test]
async fn incomplete_uploads_are_resent_and_duplicates_refused() {
    let fake = fake().await;
    fake.set_behaviour(
        "RECIP01",
        Behaviour::FailChunks {
            times: 100,
            status: 503,
        },
    );
    let mut config = config(&fake);
    config.chunk_size = 10;
    config.chunk_retries = 1;
    let sink = MeshSink::new(client(config));
    let outcome = sink.deliver(&delivery("RECIP01", "d-partial", 1)).await;
    assert!(
        matches!(&outcome, SinkOutcome::Retry { code, .. } if code == "503"),
        "{outcome:?}"
    );
    assert_eq!(fake.messages_to("RECIP01")[0].status, "uploading");

    fake.set_behaviour("RECIP01", Behaviour::Accept);
    let outcome = sink.deliver(&delivery("RECIP01", "d-partial", 2)).await;
    let SinkOutcome::Sent { message_id } = outcome else {
        panic!("expected sent, got {outcome:?}");
    };
    let copies = fake.messages_to("RECIP01");
    assert_eq!(copies.len(), 2);
    assert_eq!(copies[1].message_id, message_id);
    assert_eq!(copies[1].status, "accepted");

    let outcome = sink.deliver(&delivery("RECIP01", "d-partial", 3)).await;
    assert!(
        matches!(&outcome, SinkOutcome::Refused { code, .. } if code == LOCAL_ID_NOT_UNIQUE),
        "{outcome:?}"
    );
    assert_eq!(fake.messages_to("RECIP01").len(), 2, "no third copy");
}

#[tokio::test]
async fn tracking_by_message_id() {
    let fake = fake().await;
    let client = client(config(&fake));
    let id = client
        .send(&OutboundMessage::new("RECIP01", "WF", "d-track", "x"))
        .await
        .unwrap();
    let tracked = client.track(&id).await.unwrap().unwrap();
    assert_eq!(tracked.message_id, id);
    assert_eq!(tracked.local_id.as_deref(), Some("d-track"));
    assert_eq!(tracked.status.as_deref(), Some("accepted"));
    assert_eq!(client.track("NOSUCHID").await.unwrap(), None);
    assert_eq!(client.track_by_local_id("nope").await.unwrap(), None);
}

#[tokio::test]
async fn reports_are_acknowledged_only_after_the_handler_succeeds() {
    let fake = fake().await;
    fake.set_inbox_page_size(1);
    let first = fake.inject_report(
        SERVICE,
        &FakeReport {
            linked_message_id: "SENT1".into(),
            local_id: "d-1".into(),
            workflow_id: "WF".into(),
            code: "14".into(),
            description: "Message not collected by recipient after 5 days".into(),
        },
    );
    let data = fake.inject_data(SERVICE, "OTHER01", "WF", b"not a report");
    let second = fake.inject_report(
        SERVICE,
        &FakeReport {
            linked_message_id: "SENT2".into(),
            local_id: "d-2".into(),
            code: "14".into(),
            ..FakeReport::default()
        },
    );
    let client = client(config(&fake));
    assert_eq!(
        client.list_inbox().await.unwrap(),
        [first.clone(), data.clone(), second.clone()]
    );

    // A handler that fails for d-1: only d-2 is acknowledged.
    let picky = |report: MeshReport| async move {
        if report.local_id.as_deref() == Some("d-1") {
            Err("core unavailable".to_owned())
        } else {
            Ok(())
        }
    };
    assert_eq!(reports::forward(&client, &picky).await.unwrap(), 1);
    assert_eq!(
        client.list_inbox().await.unwrap(),
        [first.clone(), data.clone()]
    );

    let reports = reports::poll_once(&client).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].report_id, first);
    assert_eq!(reports[0].linked_message_id.as_deref(), Some("SENT1"));
    assert_eq!(reports[0].status_code.as_deref(), Some("14"));
    assert_eq!(
        reports[0].status_description.as_deref(),
        Some("Message not collected by recipient after 5 days")
    );
    assert_eq!(
        client.list_inbox().await.unwrap(),
        [data],
        "data messages are left alone"
    );
}

#[tokio::test]
async fn the_report_loop_forwards_and_stops_on_shutdown() {
    let fake = fake().await;
    let client = client(config(&fake));
    let (reports_tx, mut reports_rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |report: MeshReport| {
        let sent = reports_tx.send(report).map_err(|e| e.to_string());
        async move { sent }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stop_rx.await;
    };
    let poller = tokio::spawn(reports::run(
        client,
        Duration::from_millis(50),
        handler,
        std::sync::Arc::default(),
        shutdown,
    ));
    let id = fake.inject_report(
        SERVICE,
        &FakeReport {
            linked_message_id: "SENT9".into(),
            code: "14".into(),
            ..FakeReport::default()
        },
    );
    let report = tokio::time::timeout(WAIT, reports_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.report_id, id);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, poller).await.unwrap().unwrap();
    assert_eq!(fake.message(&id).unwrap().status, "acknowledged");
    let handshakes = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/messageexchange/NEMSSVC01")
        .count();
    assert_eq!(handshakes, 1, "one handshake per day");
}

#[tokio::test]
async fn every_request_has_a_fresh_token() {
    let fake = fake().await;
    let client = client(config(&fake));
    for _ in 0..5 {
        client.list_inbox().await.unwrap();
    }
    let requests = fake.wait_for_requests(5, WAIT).await;
    let tokens: std::collections::HashSet<_> = requests
        .iter()
        .map(|r| r.header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(tokens.len(), 5);
    assert!(requests.iter().all(|r| r.status == Some(200)));
}
