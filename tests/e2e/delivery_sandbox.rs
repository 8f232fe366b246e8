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
    let ids: Vec<&str> = RECIPIENT_MAILBOXES.iter().map(|m| m.id).collect();
    TestStack::builder()
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
