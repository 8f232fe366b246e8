//! Deliveries through the whole stack into the real `mesh-sandbox`, collected by NHS's own
//! Python `mesh-client` (an independent implementation): events published over HTTP reach
//! every subscribed mailbox exactly once, with the published bytes unchanged and the MESH
//! headers of `shared/spec/decisions.md` §20–21, and the ledger records each delivery with
//! its MESH message id. A MESH non-delivery REPORT from the sandbox dead-letters a delivery.
//! Skipped with a notice when the pinned venv is missing (`tools::venv`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use nems_e2e::eventually::eventually;
use nems_e2e::mesh_sandbox::{MeshSandbox, RECIPIENT_MAILBOXES, SERVICE_MAILBOX};
use nems_e2e::spine::explicit;
use nems_e2e::stack::{Sink, TestStack};
use nems_e2e::tools;
use nems_proto::v1 as pb;

use crate::delivery_support::{
    NHS_NUMBER, WAIT, deliveries, deliveries_to, directory_with, publish, subscribe,
    vaccination_event,
};

const WORKFLOW: &str = "VACCINATIONS_1";

async fn sandbox_stack(sandbox: &MeshSandbox) -> TestStack {
    sandbox_stack_with(sandbox, Duration::ZERO).await
}

/// The stack delivering to the sandbox, with `core.replay_retention = replay`.
pub(crate) async fn sandbox_stack_with(sandbox: &MeshSandbox, replay: Duration) -> TestStack {
    let ids: Vec<&str> = RECIPIENT_MAILBOXES.iter().map(|m| m.id).collect();
    TestStack::builder()
        .core(move |c| c.replay_retention = replay)
        .directory(&directory_with(&ids))
        .sink(Sink::Mesh {
            base_url: sandbox.base_url().to_owned(),
            mailbox: SERVICE_MAILBOX.id.into(),
            password: SERVICE_MAILBOX.password.into(),
        })
        .start()
        .await
}

/// The public NEMS example, read at test time (never copied into the repo).
fn shared_vaccination_example() -> Option<Vec<u8>> {
    let shared = tools::shared_dir("delivery_sandbox: the vaccinations-1-new.xml example")?;
    let path: PathBuf = shared.join("fixtures/nems-examples/vaccinations-1-new.xml");
    std::fs::read(&path).ok()
}

/// Splits a `Mex-PartnerID` into its `id|tag` entries.
fn partner_entries(value: Option<&String>) -> BTreeSet<String> {
    value
        .map(|v| v.split("~~~").map(str::to_owned).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn published_events_reach_each_sandbox_mailbox_once_and_unchanged() {
    let Some(venv) = tools::venv("published_events_reach_each_sandbox_mailbox_once_and_unchanged")
    else {
        return;
    };
    let sandbox = MeshSandbox::start(&venv).await;
    let stack = sandbox_stack(&sandbox).await;
    let [one, two, three] = RECIPIENT_MAILBOXES;

    // One untagged subscriber, one tagged, and one mailbox with two tagged subscriptions
    // (one delivery to it per event, naming both).
    let vaccinations = explicit(NHS_NUMBER, &["vaccinations-1"], "");
    subscribe(&stack, one.id, &vaccinations).await;
    let alpha = subscribe(
        &stack,
        two.id,
        &explicit(NHS_NUMBER, &["vaccinations-1"], "&tag=alpha"),
    )
    .await;
    let beta = subscribe(
        &stack,
        three.id,
        &explicit(NHS_NUMBER, &["vaccinations-1"], "&tag=beta"),
    )
    .await;
    let gamma = subscribe(
        &stack,
        three.id,
        &explicit(
            NHS_NUMBER,
            &["vaccinations-1", "professional-contacts-1"],
            "&tag=gamma",
        ),
    )
    .await;
    let expected_partner: BTreeMap<&str, BTreeSet<String>> = [
        (one.id, BTreeSet::new()),
        (two.id, [format!("{alpha}|alpha")].into()),
        (
            three.id,
            [format!("{beta}|beta"), format!("{gamma}|gamma")].into(),
        ),
    ]
    .into();

    let mut payloads = vec![vaccination_event(NHS_NUMBER, "delivery-sandbox-own").into_bytes()];
    if let Some(example) = shared_vaccination_example() {
        payloads.push(example);
    }
    for payload in &payloads {
        publish(&stack, payload).await;
    }
    let expected_rows = payloads.len() * RECIPIENT_MAILBOXES.len();

    // The ledger settles: every delivery delivered, with a MESH message id.
    let delivered = eventually("every delivery to be delivered", WAIT, || async {
        let rows = deliveries(
            &stack,
            pb::ListDeliveriesRequest {
                state: pb::DeliveryState::Delivered.into(),
                ..Default::default()
            },
        )
        .await;
        (rows.len() == expected_rows).then_some(rows)
    })
    .await;
    assert!(delivered.iter().all(|d| !d.mesh_message_id.is_empty()));
    let events: BTreeSet<&str> = delivered.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(events.len(), payloads.len(), "one event per publish");

    for recipient in RECIPIENT_MAILBOXES {
        let rows = deliveries_to(&stack, recipient.id).await;
        assert_eq!(
            rows.len(),
            payloads.len(),
            "{}: one delivery per event",
            recipient.id
        );
        let received = sandbox.receive_with_mesh_client(&recipient).await;
        assert_eq!(
            received.len(),
            payloads.len(),
            "{}: exactly one MESH message per event: {received:?}",
            recipient.id
        );
        let mut seen_events = BTreeSet::new();
        for message in &received {
            let header = |name: &str| message.headers.get(name).map(String::as_str);
            let row = rows
                .iter()
                .find(|r| r.mesh_message_id == message.id)
                .unwrap_or_else(|| panic!("no ledger row has MESH id {}", message.id));
            assert_eq!(row.state(), pb::DeliveryState::Delivered);
            assert!(
                seen_events.insert(row.event_id.clone()),
                "second copy of an event"
            );
            assert_eq!(
                header("localid"),
                Some(row.local_id.as_str()),
                "mex-LocalID"
            );
            assert_eq!(header("workflowid"), Some(WORKFLOW), "mex-WorkflowID");
            assert_eq!(row.workflow_id, WORKFLOW);
            assert_eq!(header("from"), Some(SERVICE_MAILBOX.id), "mex-From");
            assert_eq!(header("to"), Some(recipient.id), "mex-To");
            assert_eq!(header("messagetype"), Some("DATA"));
            assert_eq!(header("content-type"), Some("application/fhir+xml"));
            assert_eq!(
                partner_entries(message.headers.get("partnerid")),
                expected_partner[recipient.id],
                "{}: mex-PartnerID",
                recipient.id
            );
            assert_eq!(row.partner_id.is_empty(), recipient.id == one.id);
            assert!(
                payloads.contains(&message.payload),
                "{}: payload bytes changed",
                recipient.id
            );
        }
        // Each event's own bytes went to this mailbox (not one payload twice).
        let received_payloads: BTreeSet<&[u8]> =
            received.iter().map(|m| m.payload.as_slice()).collect();
        assert_eq!(received_payloads.len(), payloads.len());
        // Acknowledged by mesh-client: nothing is left, and nothing arrives twice.
        assert!(
            sandbox
                .receive_with_mesh_client(&recipient)
                .await
                .is_empty()
        );
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn sandbox_non_delivery_report_dead_letters_the_delivery() {
    let Some(venv) = tools::venv("sandbox_non_delivery_report_dead_letters_the_delivery") else {
        return;
    };
    let sandbox = MeshSandbox::start(&venv).await;
    let stack = sandbox_stack(&sandbox).await;
    let recipient = RECIPIENT_MAILBOXES[0];
    subscribe(
        &stack,
        recipient.id,
        &explicit(NHS_NUMBER, &["vaccinations-1"], ""),
    )
    .await;
    publish(
        &stack,
        vaccination_event(NHS_NUMBER, "delivery-sandbox-report").as_bytes(),
    )
    .await;
    let row = eventually("the delivery to be delivered", WAIT, || async {
        let rows = deliveries_to(&stack, recipient.id).await;
        rows.into_iter()
            .find(|r| r.state() == pb::DeliveryState::Delivered)
    })
    .await;

    // MESH reports the message uncollected (code 14) to our own mailbox.
    sandbox
        .inject_report(
            SERVICE_MAILBOX.id,
            &row.mesh_message_id,
            &row.local_id,
            WORKFLOW,
            "14",
            "Message not collected by recipient after 5 days",
        )
        .await;
    let dead = eventually(
        "the report to dead-letter the delivery",
        Duration::from_secs(20),
        || async {
            let rows = deliveries_to(&stack, recipient.id).await;
            rows.into_iter()
                .find(|r| r.state() == pb::DeliveryState::DeadLettered)
        },
    )
    .await;
    assert_eq!(dead.delivery_id, row.delivery_id);
    assert_eq!(dead.last_error_code, "MESH_14");
    assert_eq!(dead.mesh_message_id, row.mesh_message_id);
    stack.shutdown().await;
}

/// Replay through the real MESH sandbox: a mailbox's delivered messages, collected by
/// mesh-client, are resent by `nems admin replay` as new MESH messages (new message ids,
/// local ids naming the originals, the same bytes) that mesh-client collects again; a dry
/// run counts and sends nothing; a `since` before the window is refused with the window's
/// start, and nothing is resent.
#[tokio::test]
async fn a_replay_resends_delivered_messages_as_new_sandbox_messages() {
    let Some(venv) = tools::venv("a_replay_resends_delivered_messages_as_new_sandbox_messages")
    else {
        return;
    };
    let sandbox = MeshSandbox::start(&venv).await;
    let stack = sandbox_stack_with(&sandbox, Duration::from_secs(7 * 86_400)).await;
    let [recipient, other, _] = RECIPIENT_MAILBOXES;
    let started = std::time::SystemTime::now();
    let vaccinations = explicit(NHS_NUMBER, &["vaccinations-1"], "");
    subscribe(&stack, recipient.id, &vaccinations).await;
    subscribe(&stack, other.id, &vaccinations).await;
    for n in 0..2 {
        let payload = vaccination_event(NHS_NUMBER, &format!("delivery-sandbox-replay-{n}"));
        publish(&stack, payload.as_bytes()).await;
    }
    let delivered = |mailbox: &'static str, local_suffix: &'static str| {
        let stack = &stack;
        async move {
            eventually("the deliveries to be delivered", WAIT, || async {
                let rows = deliveries_to(stack, mailbox).await;
                let done = rows.len() == 2
                    && rows.iter().all(|r| {
                        r.state() == pb::DeliveryState::Delivered
                            && r.local_id.ends_with(local_suffix)
                    });
                done.then_some(rows)
            })
            .await
        }
    };
    let first = delivered(recipient.id, "").await;
    let before = sandbox.receive_with_mesh_client(&recipient).await;
    assert_eq!(before.len(), 2);

    let operator = stack.operator();
    let replay = |since: std::time::SystemTime, dry_run: bool| pb::ReplayDeliveriesRequest {
        mailbox: recipient.id.to_lowercase(),
        since: Some(since.into()),
        event_code: "vaccinations-1".into(),
        dry_run,
        limit: 0,
    };
    // Before the window: refused, saying where the window starts.
    let refused = operator
        .clone()
        .replay_deliveries(replay(started - Duration::from_secs(8 * 86_400), false))
        .await
        .expect_err("since is before the window");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("replay window") && refused.message().contains("7days"),
        "{}",
        refused.message()
    );
    // A dry run counts both and queues nothing.
    let dry = operator
        .clone()
        .replay_deliveries(replay(started, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (dry.replayed, dry.without_payload, dry.dry_run),
        (2, 0, true)
    );
    assert!(
        deliveries_to(&stack, recipient.id)
            .await
            .iter()
            .all(|r| r.state() == pb::DeliveryState::Delivered && r.replays == 0)
    );

    // The operator's command resends them.
    let url = format!("http://{}", stack.operator_addr);
    let since = prost_types::Timestamp::from(started).to_string();
    nems_cli::admin::run(
        nems_cli::admin::Admin::Replay {
            mailbox: recipient.id.into(),
            since,
            event: None,
            dry_run: false,
            limit: None,
        },
        &url,
    )
    .await
    .expect("nems admin replay");
    let again = delivered(recipient.id, "-p1").await;
    let after = sandbox.receive_with_mesh_client(&recipient).await;
    assert_eq!(after.len(), 2, "one new MESH message per replayed delivery");
    for message in &after {
        let row = again
            .iter()
            .find(|r| r.mesh_message_id == message.id)
            .unwrap_or_else(|| panic!("no ledger row has MESH id {}", message.id));
        let original = first
            .iter()
            .find(|r| r.delivery_id == row.delivery_id)
            .unwrap();
        assert_ne!(
            row.mesh_message_id, original.mesh_message_id,
            "a new message"
        );
        assert_eq!(row.local_id, format!("{}-p1", original.local_id));
        assert_eq!(message.headers.get("localid"), Some(&row.local_id));
        assert_eq!(row.replays, 1);
        assert!(
            before.iter().any(|m| m.payload == message.payload),
            "the replay carries the published bytes"
        );
    }
    // The other mailbox was not replayed.
    assert!(
        deliveries_to(&stack, other.id)
            .await
            .iter()
            .all(|r| r.replays == 0 && !r.local_id.contains("-p"))
    );
    stack.shutdown().await;
}
