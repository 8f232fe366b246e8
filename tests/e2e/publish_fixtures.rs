//! The real NEMS example messages (`../shared/fixtures/nems-examples/`, read at test time,
//! skipped with a notice when absent): every one published by the ASID allowed to publish
//! it is accepted with `202` and an empty body and becomes an event in the ledger, except
//! the two known-invalid ones, which are refused with their own Spine code and leave no
//! event behind. Also proves this crate's own fixtures are valid as written.

use nems_e2e::spine::{self, Caller};
use nems_e2e::stack::TestStack;
use nems_e2e::tools;

use crate::publish_common::{
    accepted_event_id, assert_accepted, events_accepted, fixture, get_event, publish,
};
use crate::publish_outcome::assert_refused;

/// Who publishes an event type, and the `InteractionID` event code used. PDS events use
/// the event-code form of the InteractionID, the others the capitalised table code
/// (decisions.md §12 allows both).
fn publisher(event_code: &str) -> (Caller, &'static str) {
    match event_code {
        "vaccinations-1" => (spine::SUBSCRIBER, "Vaccinations"),
        "professional-contacts-1" => (spine::SUBSCRIBER, "Professionalcontacts"),
        "blood-spot-test-outcome-1" => (spine::SCREENING, "Bloodspottestoutcome"),
        "newborn-hearing-1" => (spine::SCREENING, "Newbornhearing"),
        "nipe-outcome-1" => (spine::SCREENING, "Nipeoutcome"),
        "pds-birth-notification-1" => (spine::PDS, "pds-birth-notification-1"),
        "pds-change-of-address-1" => (spine::PDS, "pds-change-of-address-1"),
        "pds-change-of-gp-1" => (spine::PDS, "pds-change-of-gp-1"),
        "pds-death-notification-1" => (spine::PDS, "pds-death-notification-1"),
        "pds-record-change-1" => (spine::PDS, "pds-record-change-1"),
        other => panic!("no publisher known for event code {other}"),
    }
}

/// The `MessageHeader.event.code` of a message (the first `EventType-1` coding).
fn event_code(xml: &str) -> String {
    let (_, after) = xml
        .split_once("https://fhir.nhs.uk/STU3/CodeSystem/EventType-1")
        .expect("an EventType-1 coding");
    let (_, after) = after.split_once("<code value=\"").expect("an event code");
    after.split('"').next().unwrap_or_default().to_string()
}

/// The examples known to be invalid: (file, status, Spine code, a word of the diagnostics).
const KNOWN_INVALID: [(&str, u16, &str, &str); 2] = [
    // The routing NHS number fails the Modulus 11 check.
    (
        "BirthNotificationWithMother.xml",
        400,
        "INVALID_NHS_NUMBER",
        "nhsNumber",
    ),
    // `MessageHeader.timestamp` has the offset `+58:00`.
    (
        "nipe-outcome-1-update.xml",
        400,
        "INVALID_VALUE",
        "timestamp",
    ),
];

#[tokio::test]
async fn publish_every_shared_example_is_accepted_except_the_two_invalid_ones() {
    let Some(shared) = tools::shared_dir("publish_every_shared_example") else {
        return;
    };
    let dir = shared.join("fixtures/nems-examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 20, "the 20 NEMS examples: {files:?}");

    let stack = TestStack::start().await;
    let mut accepted = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(path).unwrap();
        let code = event_code(&String::from_utf8_lossy(&body));
        let (caller, interaction) = publisher(&code);
        let before = events_accepted(&stack).await;
        let response = publish(&stack, caller, interaction, body).await;
        match KNOWN_INVALID.iter().find(|(file, ..)| *file == name) {
            Some((_, status, spine_code, word)) => {
                assert_refused(&response, *status, spine_code, &[word]);
                assert_eq!(
                    events_accepted(&stack).await,
                    before,
                    "{name}: a refused message is not an event"
                );
            }
            None => {
                assert_accepted(&response, &name);
                // Durable before the answer: the event is in the ledger without waiting.
                let event_id = accepted_event_id(&stack, &response).await;
                let event = get_event(&stack, &event_id).await.event.unwrap();
                assert_eq!(event.event_code, code, "{name}");
                assert_eq!(event.publisher_asid, caller.asid, "{name}");
                assert_eq!(event.deliveries, 0, "{name}: nobody subscribed");
                assert_eq!(events_accepted(&stack).await, before + 1, "{name}");
                accepted += 1;
            }
        }
    }
    assert_eq!(accepted, 18);
    stack.shutdown().await;
}

#[tokio::test]
async fn publish_own_fixtures_are_valid() {
    let stack = TestStack::start().await;
    for (name, caller, interaction) in [
        ("vaccinations-1-new.xml", spine::SUBSCRIBER, "Vaccinations"),
        (
            "newborn-hearing-1-new.xml",
            spine::SCREENING,
            "Newbornhearing",
        ),
        ("pds-record-change-1-new.xml", spine::PDS, "Pdsrecordchange"),
    ] {
        let response = publish(&stack, caller, interaction, fixture(name)).await;
        assert_accepted(&response, name);
    }
    assert_eq!(events_accepted(&stack).await, 3);
    stack.shutdown().await;
}
