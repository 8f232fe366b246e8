//! What the ledger records of a published event (decisions.md §18, §22; reliability.md
//! §5.2): a patient flagged S or I in the demographics store gets no delivery, the match is
//! recorded as `suppressed` and counted in the mailbox statistics, and clearing the flag lets
//! the next event through; an event's payload is held while any of its deliveries is
//! unsettled (queued, in flight, waiting to retry) and released when the last is delivered;
//! an accepted event's deliveries survive a restart of the service.

use std::time::Duration;

use nems_e2e::spine;
use nems_e2e::stack::{Sink, TestStack};
use nems_proto::v1 as pb;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::publish_common::{
    VACC_NHS, WAIT, accepted_event_id, assert_accepted, fixture, get_event, ledger, publish,
    subscribe, vaccination_for, wait_for_deliveries, wait_quiet, wait_settled,
};
use crate::publish_outcome::has_nhs_number_like;

const SENSITIVE_NHS: &str = "9434765935";
const INVALID_NHS: &str = "9434765943";
const PLAIN_NHS: &str = "9434765951";

fn record(nhs: &str, flag: pb::PatientFlag, last_updated: OffsetDateTime) -> pb::PatientRecord {
    pb::PatientRecord {
        nhs_number: nhs.into(),
        postcode: "LS1 4AP".into(),
        gp_practice: "B86056".into(),
        birth_date: "2016-05-20".into(),
        flag: flag.into(),
        last_updated: last_updated.format(&Rfc3339).unwrap(),
        ..Default::default()
    }
}

async fn import(stack: &TestStack, patients: Vec<pb::PatientRecord>) {
    let count = patients.len() as u64;
    let written = stack
        .operator()
        .import_demographics(tokio_stream::once(pb::ImportDemographicsRequest {
            patients,
        }))
        .await
        .expect("import demographics")
        .into_inner()
        .written;
    assert_eq!(written, count);
}

async fn stats(stack: &TestStack, mailbox: &str) -> pb::MailboxStats {
    let mut all = stack
        .operator()
        .get_mailbox_stats(pb::GetMailboxStatsRequest {
            mailbox: mailbox.into(),
        })
        .await
        .expect("mailbox stats")
        .into_inner()
        .mailboxes;
    assert_eq!(all.len(), 1);
    all.remove(0)
}

#[tokio::test]
async fn publish_for_a_flagged_patient_is_suppressed_and_recorded() {
    let stack = TestStack::start().await;
    let imported_at = OffsetDateTime::now_utc() - Duration::from_secs(60);
    import(
        &stack,
        vec![
            record(SENSITIVE_NHS, pb::PatientFlag::Sensitive, imported_at),
            record(INVALID_NHS, pb::PatientFlag::Invalid, imported_at),
            record(PLAIN_NHS, pb::PatientFlag::Unspecified, imported_at),
        ],
    )
    .await;
    let mut subscriptions = Vec::new();
    for nhs in [SENSITIVE_NHS, INVALID_NHS, PLAIN_NHS] {
        let criteria = spine::explicit(nhs, &["vaccinations-1"], "");
        subscriptions.push(subscribe(&stack, spine::SUBSCRIBER, "RR8MBX01", &criteria).await);
    }

    let mut suppressed_events = Vec::new();
    for nhs in [SENSITIVE_NHS, INVALID_NHS] {
        let message = vaccination_for(nhs, "2016-05-20");
        let response = publish(&stack, spine::SUBSCRIBER, "Vaccinations", message).await;
        // The publisher is not told: a flag is not the publisher's business.
        assert_accepted(&response, nhs);
        let event_id = accepted_event_id(&stack, &response).await;
        let event = get_event(&stack, &event_id).await;
        let record = event.event.unwrap();
        assert_eq!((record.deliveries, record.matched_subscriptions), (1, 1));
        assert!(
            !record.payload_held,
            "nothing will be sent, nothing is kept"
        );
        let [row] = event.deliveries.as_slice() else {
            panic!("one ledger row: {:#?}", event.deliveries);
        };
        assert_eq!(row.state(), pb::DeliveryState::Suppressed);
        assert_eq!(row.mailbox, "RR8MBX01");
        assert_eq!(row.last_error_code, "PATIENT_FLAGGED");
        assert_eq!(row.attempts, 0);
        assert!(!has_nhs_number_like(&row.last_error), "{}", row.last_error);
        suppressed_events.push(event_id);
    }

    // The unflagged patient's event, published after them to the same mailbox, is the
    // only delivery.
    let plain = vaccination_for(PLAIN_NHS, "2016-05-20");
    let response = publish(&stack, spine::SUBSCRIBER, "Vaccinations", plain.clone()).await;
    assert_accepted(&response, "unflagged patient");
    let plain_event = accepted_event_id(&stack, &response).await;
    let delivered = wait_for_deliveries(&stack, 1).await;
    assert_eq!(delivered[0].payload, plain.as_bytes());
    wait_settled(&stack, &plain_event).await;

    let counts = stats(&stack, "RR8MBX01").await;
    assert_eq!(
        (
            counts.suppressed,
            counts.delivered,
            counts.queued,
            counts.in_flight
        ),
        (2, 1, 0, 0)
    );
    let suppressed = stack
        .operator()
        .list_deliveries(pb::ListDeliveriesRequest {
            state: pb::DeliveryState::Suppressed.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    let mut events: Vec<String> = suppressed.iter().map(|d| d.event_id.clone()).collect();
    events.sort();
    suppressed_events.sort();
    assert_eq!(events, suppressed_events);

    // Clearing the flag (newer PDS data) lets the next event through.
    import(
        &stack,
        vec![record(
            SENSITIVE_NHS,
            pb::PatientFlag::Unspecified,
            OffsetDateTime::now_utc(),
        )],
    )
    .await;
    let message = vaccination_for(SENSITIVE_NHS, "2016-05-20");
    let response = publish(&stack, spine::SUBSCRIBER, "Vaccinations", message.clone()).await;
    assert_accepted(&response, "flag cleared");
    let delivered = wait_for_deliveries(&stack, 2).await;
    assert!(delivered.iter().any(|d| d.payload == message.as_bytes()));
    wait_quiet(&stack).await;
    let counts = stats(&stack, "RR8MBX01").await;
    assert_eq!((counts.suppressed, counts.delivered), (2, 2));
    stack.shutdown().await;
}

/// Takes the next leased delivery from the stream.
async fn next_delivery(
    stream: &mut tonic::Streaming<pb::StreamDeliveriesResponse>,
) -> pb::Delivery {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a delivery is offered in time")
        .expect("stream open")
        .expect("stream not finished")
        .delivery
        .expect("a delivery")
}

async fn complete(
    stack: &TestStack,
    delivery: &pb::Delivery,
    outcome: pb::complete_delivery_request::Outcome,
) -> pb::DeliveryState {
    stack
        .deliveries()
        .complete_delivery(pb::CompleteDeliveryRequest {
            delivery_id: delivery.delivery_id,
            attempt: delivery.attempt,
            outcome: Some(outcome),
        })
        .await
        .expect("complete delivery")
        .into_inner()
        .state()
}

async fn payload_held(stack: &TestStack, event_id: &str) -> bool {
    get_event(stack, event_id).await.event.unwrap().payload_held
}

#[tokio::test]
async fn publish_payload_is_held_until_the_last_delivery_is_delivered() {
    use pb::complete_delivery_request::Outcome;
    // No adapter: this test plays the adapter over the delivery API.
    let stack = TestStack::builder().sink(Sink::None).start().await;
    for mailbox in ["RR8MBX01", "RR8MBX02"] {
        let criteria = spine::explicit(VACC_NHS, &["vaccinations-1"], "");
        subscribe(&stack, spine::SUBSCRIBER, mailbox, &criteria).await;
    }
    let message = fixture("vaccinations-1-new.xml");
    let response = publish(&stack, spine::SUBSCRIBER, "Vaccinations", message.clone()).await;
    assert_accepted(&response, "publish");
    let event_id = accepted_event_id(&stack, &response).await;
    let event = get_event(&stack, &event_id).await;
    assert!(event.event.unwrap().payload_held, "held while queued");
    assert!(
        event
            .deliveries
            .iter()
            .all(|d| d.state() == pb::DeliveryState::Queued),
        "{:#?}",
        event.deliveries
    );

    let mut stream = stack
        .deliveries()
        .stream_deliveries(pb::StreamDeliveriesRequest {
            consumer: "publish-ledger-test".into(),
            max_in_flight: 10,
            max_in_flight_per_mailbox: 1,
        })
        .await
        .expect("stream deliveries")
        .into_inner();
    let first = next_delivery(&mut stream).await;
    let second = next_delivery(&mut stream).await;
    let mut mailboxes = [first.mailbox.as_str(), second.mailbox.as_str()];
    mailboxes.sort_unstable();
    assert_eq!(mailboxes, ["RR8MBX01", "RR8MBX02"]);
    for d in [&first, &second] {
        assert_eq!(d.payload, message.as_bytes(), "the published bytes");
        assert_eq!(d.event_id, event_id);
        assert_eq!(d.workflow_id, "VACCINATIONS_1");
    }
    assert!(
        payload_held(&stack, &event_id).await,
        "held while in flight"
    );

    let sent = |id: &str| {
        Outcome::Sent(pb::DeliverySent {
            mesh_message_id: id.into(),
        })
    };
    let state = complete(&stack, &first, sent("MSG-1")).await;
    assert_eq!(state, pb::DeliveryState::Delivered);
    assert!(payload_held(&stack, &event_id).await, "one delivery left");

    // A transient failure: the delivery is offered again, still with its payload.
    let retry = Outcome::Retry(pb::DeliveryRetry {
        code: "503".into(),
        reason: "mailbox busy".into(),
        retry_after: Some(prost_types::Duration {
            seconds: 0,
            nanos: 10_000_000,
        }),
    });
    let state = complete(&stack, &second, retry).await;
    assert_eq!(state, pb::DeliveryState::Queued);
    assert!(payload_held(&stack, &event_id).await, "held for the retry");
    let again = next_delivery(&mut stream).await;
    assert_eq!((again.delivery_id, again.attempt), (second.delivery_id, 2));
    assert_eq!(again.payload, message.as_bytes());
    let state = complete(&stack, &again, sent("MSG-2")).await;
    assert_eq!(state, pb::DeliveryState::Delivered);

    let event = get_event(&stack, &event_id).await;
    assert!(
        !event.event.unwrap().payload_held,
        "released after the last delivery"
    );
    let rows = ledger(&stack, &event_id).await;
    let mut ids: Vec<&str> = rows.iter().map(|r| r.mesh_message_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["MSG-1", "MSG-2"]);
    drop(stream);
    stack.shutdown().await;
}

#[tokio::test]
async fn publish_accepted_event_is_delivered_after_a_restart() {
    // Accepted with no adapter running, so the delivery can only come from the store.
    let data = tempfile::tempdir().unwrap();
    let stack = TestStack::builder()
        .data_dir(data.path())
        .sink(Sink::None)
        .start()
        .await;
    let criteria = spine::explicit(VACC_NHS, &["vaccinations-1"], "&tag=restart");
    let subscription = subscribe(&stack, spine::SUBSCRIBER, "RR8MBX02", &criteria).await;
    let message = fixture("vaccinations-1-new.xml");
    let response = publish(&stack, spine::SUBSCRIBER, "Vaccinations", message.clone()).await;
    assert_accepted(&response, "publish before the restart");
    let event_id = accepted_event_id(&stack, &response).await;
    stack.shutdown().await;

    let stack = TestStack::builder().data_dir(data.path()).start().await;
    let delivered = wait_for_deliveries(&stack, 1).await;
    assert_eq!(delivered[0].mailbox, "RR8MBX02");
    assert_eq!(delivered[0].payload, message.as_bytes());
    assert_eq!(delivered[0].partner_id, format!("{subscription}|restart"));
    let event = wait_settled(&stack, &event_id).await;
    assert_eq!(event.deliveries[0].local_id, delivered[0].local_id);
    stack.shutdown().await;
}
