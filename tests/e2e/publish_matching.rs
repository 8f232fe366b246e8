//! Matching and delivery end to end through the folder sink (nems.md §5, decisions.md
//! §16, §19–§21): a published event reaches exactly the mailboxes with a live matching
//! subscription created before it was accepted, once per mailbox however many of the
//! mailbox's subscriptions match, with the workflow id, the `Mex-PartnerID` of its tagged
//! matches and the published bytes unchanged; age filters use the routing birth date; other
//! events, other patients, deleted and later subscriptions get nothing; the ledger agrees
//! with the sink; publishing the same message again delivers it again.

use std::collections::BTreeSet;

use nems_e2e::outbox::FolderDelivery;
use nems_e2e::spine;
use nems_e2e::stack::TestStack;
use nems_proto::v1 as pb;
use time::OffsetDateTime;

use crate::publish_common::{
    VACC_NHS, accepted_event_id, assert_accepted, edit, event_of, get_event, ledger, publish,
    subscribe, unsubscribe, vaccination_for, wait_for_deliveries, wait_quiet, wait_settled,
};

/// Another valid NHS number, for "another patient".
const OTHER_NHS: &str = "9434765927";

/// A birth date giving a completed age of `years` (here ten) today (UTC), whatever today is: the
/// 1st of January ten years ago. The age filters used are far from ten, so a publish near
/// midnight on the 31st of December cannot change an outcome.
fn ten_years_ago() -> String {
    years_ago(10)
}

fn years_ago(years: i32) -> String {
    let year = OffsetDateTime::now_utc().year() - years;
    format!("{year:04}-01-01")
}

/// The partner id's entries as a set (their order is not specified).
fn entries(partner_id: &str) -> BTreeSet<String> {
    partner_id
        .split("~~~")
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// What one mailbox must receive.
#[derive(Clone)]
struct Expected {
    mailbox: &'static str,
    partner: BTreeSet<String>,
    subscriptions: BTreeSet<String>,
}

fn tagged(pairs: &[(&str, &str)]) -> BTreeSet<String> {
    pairs
        .iter()
        .map(|(id, tag)| format!("{id}|{tag}"))
        .collect()
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

/// Checks one event's deliveries in the sink and the ledger against `expected`.
async fn check_event(
    stack: &TestStack,
    event_id: &str,
    delivered: &[FolderDelivery],
    payload: &[u8],
    expected: &[Expected],
) {
    let mine: Vec<&FolderDelivery> = delivered
        .iter()
        .filter(|d| event_of(d) == event_id)
        .collect();
    let mailboxes: Vec<&str> = mine.iter().map(|d| d.mailbox.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|e| e.mailbox).collect();
    assert_eq!(mailboxes, want, "one delivery per matching mailbox");
    let event = wait_settled(stack, event_id).await;
    let record = event.event.expect("event record");
    assert_eq!(record.deliveries as usize, expected.len());
    let matched: usize = expected.iter().map(|e| e.subscriptions.len()).sum();
    assert_eq!(record.matched_subscriptions as usize, matched);
    assert_eq!(record.payload_bytes as usize, payload.len());
    assert!(
        !record.payload_held,
        "payload released once all are delivered"
    );
    let rows = ledger(stack, event_id).await;
    assert_eq!(rows.len(), expected.len(), "{rows:#?}");
    for (want, sent) in expected.iter().zip(&mine) {
        assert_eq!(sent.workflow_id, "VACCINATIONS_1");
        assert_eq!(sent.payload, payload, "payload bytes unchanged");
        assert_eq!(entries(&sent.partner_id), want.partner, "{}", want.mailbox);
        let row = rows
            .iter()
            .find(|r| r.mailbox == want.mailbox)
            .unwrap_or_else(|| panic!("no ledger row for {}", want.mailbox));
        assert_eq!(row.state(), pb::DeliveryState::Delivered);
        assert_eq!(row.local_id, sent.local_id);
        assert_eq!(row.partner_id, sent.partner_id);
        assert_eq!(row.workflow_id, "VACCINATIONS_1");
        assert_eq!(row.event_code, "vaccinations-1");
        assert_eq!(row.mesh_message_id, format!("FOLDER-{}", sent.local_id));
        let subscriptions: BTreeSet<String> = row.subscription_ids.iter().cloned().collect();
        assert_eq!(subscriptions, want.subscriptions, "{}", want.mailbox);
    }
}

#[tokio::test]
async fn publish_delivers_once_per_matching_mailbox_with_tags_and_age_filters() {
    let stack = TestStack::start().await;
    let rr8 = spine::SUBSCRIBER;
    let vacc = ["vaccinations-1"];
    let explicit = |events: &[&str], extra: &str| spine::explicit(VACC_NHS, events, extra);

    // RR8MBX01: two overlapping subscriptions, one tagged.
    let a1 = subscribe(&stack, rr8, "RR8MBX01", &explicit(&vacc, "")).await;
    let a2 = subscribe(
        &stack,
        rr8,
        "RR8MBX01",
        &explicit(&["vaccinations-1", "professional-contacts-1"], "&tag=tagA"),
    )
    .await;
    // RR8MBX02: two tagged ones, one with an age range the patient is in.
    let b1 = subscribe(
        &stack,
        rr8,
        "RR8MBX02",
        &explicit(&vacc, "&Patient.age=gt5&Patient.age=lt19&tag=tagB"),
    )
    .await;
    let b2 = subscribe(&stack, rr8, "RR8MBX02", &explicit(&vacc, "&tag=tagC")).await;
    // ABCMBX01 (another organisation): untagged, with an age filter that matches.
    let c1 = subscribe(
        &stack,
        spine::OTHER,
        "ABCMBX01",
        &explicit(&vacc, "&Patient.age=gt5"),
    )
    .await;
    // RR8MBX03: nothing of these may match; each is tagged so a wrong match names itself.
    subscribe(
        &stack,
        rr8,
        "RR8MBX03",
        &explicit(&vacc, "&Patient.age=lt5&tag=under5"),
    )
    .await;
    subscribe(
        &stack,
        rr8,
        "RR8MBX03",
        &explicit(&["professional-contacts-1"], "&tag=otherEvent"),
    )
    .await;
    subscribe(
        &stack,
        rr8,
        "RR8MBX03",
        &spine::explicit(OTHER_NHS, &vacc, "&tag=otherPatient"),
    )
    .await;
    let deleted = subscribe(&stack, rr8, "RR8MBX03", &explicit(&vacc, "&tag=deleted")).await;
    unsubscribe(&stack, rr8, &deleted).await;

    // Ten years old by the routing demographics, which age filters use; the Patient
    // resource says two, so using it instead would flip every age filter below.
    let message = edit(
        &vaccination_for(VACC_NHS, &ten_years_ago()),
        &format!("<birthDate value=\"{}\"/>", ten_years_ago()),
        &format!("<birthDate value=\"{}\"/>", years_ago(2)),
    );
    let response = publish(&stack, rr8, "Vaccinations", message.clone()).await;
    assert_accepted(&response, "first publish");
    let first = accepted_event_id(&stack, &response).await;

    // Created after the first publish: matches only the second.
    let later = subscribe(&stack, rr8, "RR8MBX03", &explicit(&vacc, "&tag=later")).await;

    let delivered = wait_for_deliveries(&stack, 3).await;
    let first_expected = [
        Expected {
            mailbox: "ABCMBX01",
            partner: BTreeSet::new(),
            subscriptions: ids(&[&c1]),
        },
        Expected {
            mailbox: "RR8MBX01",
            partner: tagged(&[(&a2, "tagA")]),
            subscriptions: ids(&[&a1, &a2]),
        },
        Expected {
            mailbox: "RR8MBX02",
            partner: tagged(&[(&b1, "tagB"), (&b2, "tagC")]),
            subscriptions: ids(&[&b1, &b2]),
        },
    ];
    check_event(
        &stack,
        &first,
        &delivered,
        message.as_bytes(),
        &first_expected,
    )
    .await;

    // The same message again is a new event, delivered again (no de-duplication), now
    // also to the subscription created in between.
    let response = publish(&stack, rr8, "Vaccinations", message.clone()).await;
    assert_accepted(&response, "second publish");
    let second = accepted_event_id(&stack, &response).await;
    assert_ne!(first, second);
    let delivered = wait_for_deliveries(&stack, 7).await;
    let mut second_expected = first_expected.to_vec();
    second_expected.push(Expected {
        mailbox: "RR8MBX03",
        partner: tagged(&[(&later, "later")]),
        subscriptions: ids(&[&later]),
    });
    check_event(
        &stack,
        &second,
        &delivered,
        message.as_bytes(),
        &second_expected,
    )
    .await;
    check_event(
        &stack,
        &first,
        &delivered,
        message.as_bytes(),
        &first_expected,
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test]
async fn publish_without_any_matching_subscription_delivers_nothing() {
    let stack = TestStack::start().await;
    let rr8 = spine::SUBSCRIBER;
    // Only non-matching subscriptions: another event, another patient, an age the patient
    // is not, and one deleted before the publish.
    subscribe(
        &stack,
        rr8,
        "RR8MBX01",
        &spine::explicit(VACC_NHS, &["professional-contacts-1"], ""),
    )
    .await;
    subscribe(
        &stack,
        rr8,
        "RR8MBX01",
        &spine::explicit(OTHER_NHS, &["vaccinations-1"], ""),
    )
    .await;
    subscribe(
        &stack,
        rr8,
        "RR8MBX01",
        &spine::explicit(
            VACC_NHS,
            &["vaccinations-1"],
            "&Patient.age=gt5&Patient.age=lt9",
        ),
    )
    .await;
    let deleted = subscribe(
        &stack,
        rr8,
        "RR8MBX01",
        &spine::explicit(VACC_NHS, &["vaccinations-1"], ""),
    )
    .await;
    unsubscribe(&stack, rr8, &deleted).await;
    let response = publish(
        &stack,
        rr8,
        "Vaccinations",
        vaccination_for(VACC_NHS, &ten_years_ago()),
    )
    .await;
    assert_accepted(&response, "publish");
    let event_id = accepted_event_id(&stack, &response).await;
    // Matching is decided at acceptance, in the same transaction as the event.
    let event = get_event(&stack, &event_id).await;
    let record = event.event.unwrap();
    assert_eq!((record.deliveries, record.matched_subscriptions), (0, 0));
    assert!(event.deliveries.is_empty());
    assert!(
        !record.payload_held,
        "a payload nobody will receive is not kept"
    );

    // A matching event published afterwards to the same mailbox is the only delivery.
    let other = vaccination_for(OTHER_NHS, &ten_years_ago());
    let response = publish(&stack, rr8, "Vaccinations", other.clone()).await;
    assert_accepted(&response, "publish for the other patient");
    let delivered = wait_for_deliveries(&stack, 1).await;
    assert_eq!(delivered[0].payload, other.as_bytes());
    wait_quiet(&stack).await;
    stack.shutdown().await;
}
