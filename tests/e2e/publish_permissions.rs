//! Who may publish what, and when (nems.md §2.5, §7; decisions.md §2, §13, §14): an ASID
//! without the event's message set (the PDS publisher included: it may publish PDS events
//! only), a non-PDS ASID publishing a PDS event (under any InteractionID), an unknown ASID and an organisation not linked to the ASID are refused
//! with `403`; a withdrawn event type is refused with `400 WITHDRAWN`, while deprecated and
//! no-longer-supported ones are accepted with `202` and an information OperationOutcome.

use nems_core::domain::catalogue::EventTypeOverride;
use nems_e2e::spine::{self, Caller};
use nems_e2e::stack::TestStack;
use serde_json::json;

use crate::publish_common::{
    Case, assert_accepted, events_accepted, fixture, publish, refuse_all, vacc, vaccination,
};
use crate::publish_outcome::assert_outcome;

#[tokio::test]
async fn publish_refuses_asids_not_allowed_to_publish_the_event() {
    let stack = TestStack::start().await;
    let record_change = fixture("pds-record-change-1-new.xml");
    let unknown = Caller {
        asid: "299999999999",
        ods: "RR8",
    };
    let cases = vec![
        Case {
            what: "screening ASID publishing vaccinations",
            caller: spine::SCREENING,
            interaction: "Vaccinations",
            body: vaccination(),
            status: 403,
            code: "ASID_CHECK_FAILED",
            mentions: &["200000000222", "vaccinations-1"],
        },
        // decisions.md §14 reserves pds-* events for the PDS publisher; it grants nothing
        // else, so the PDS publisher needs the message set like any other ASID.
        Case {
            what: "PDS publisher publishing vaccinations without the message set",
            caller: spine::PDS,
            interaction: "Vaccinations",
            body: vaccination(),
            status: 403,
            code: "ASID_CHECK_FAILED",
            mentions: &["200000000333", "vaccinations-1", "message set Vaccinations"],
        },
        Case {
            what: "subscriber ASID publishing a PDS event",
            caller: spine::SUBSCRIBER,
            interaction: "Pdsrecordchange",
            body: record_change.clone(),
            status: 403,
            code: "ASID_CHECK_FAILED",
            mentions: &["PDS"],
        },
        Case {
            what: "screening ASID publishing a PDS event by its event code",
            caller: spine::SCREENING,
            interaction: "pds-record-change-1",
            body: record_change,
            status: 403,
            code: "ASID_CHECK_FAILED",
            mentions: &["PDS"],
        },
        Case {
            what: "unknown ASID",
            caller: unknown,
            interaction: "Vaccinations",
            body: vaccination(),
            status: 403,
            code: "ASID_CHECK_FAILED",
            mentions: &["not registered"],
        },
        // Naming an event the caller may publish does not let it publish a PDS event.
        Case {
            what: "PDS event under the vaccinations interaction",
            caller: spine::SUBSCRIBER,
            interaction: "Vaccinations",
            body: fixture("pds-record-change-1-new.xml"),
            status: 400,
            code: "MISSING_OR_INVALID_HEADER",
            mentions: &["InteractionID", "pds-record-change-1"],
        },
        // An ODS claim holding an NHS number is not echoed back.
        Case {
            what: "organisation claim holding an NHS number",
            caller: Caller {
                asid: spine::SUBSCRIBER.asid,
                ods: "9434765919",
            },
            interaction: "Vaccinations",
            body: vaccination(),
            status: 403,
            code: "ACCESS_DENIED",
            mentions: &["not linked"],
        },
        // decisions.md §13: an ODS code in the JWT not linked to the ASID.
        Case {
            what: "organisation not linked to the ASID",
            caller: Caller {
                asid: spine::SUBSCRIBER.asid,
                ods: "ABC",
            },
            interaction: "Vaccinations",
            body: vaccination(),
            status: 403,
            code: "ACCESS_DENIED",
            mentions: &["ABC"],
        },
    ];
    refuse_all(&stack, cases).await;
    stack.shutdown().await;
}

fn lifecycle(state: &str, note: &str) -> Vec<EventTypeOverride> {
    vec![
        serde_json::from_value(json!({
            "code": "vaccinations-1",
            "state": state,
            "lifecycle_note": note,
        }))
        .unwrap(),
    ]
}

#[tokio::test]
async fn publish_of_a_withdrawn_event_type_is_refused() {
    let stack = TestStack::builder()
        .core(|c| c.event_types = lifecycle("withdrawn", "withdrawn on 01/01/2026"))
        .start()
        .await;
    refuse_all(
        &stack,
        vec![vacc(
            "withdrawn",
            vaccination(),
            400,
            "WITHDRAWN",
            &["vaccinations-1", "withdrawn"],
        )],
    )
    .await;
    // Other event types are unaffected.
    let response = publish(
        &stack,
        spine::SCREENING,
        "Newbornhearing",
        fixture("newborn-hearing-1-new.xml"),
    )
    .await;
    assert_accepted(&response, "newborn hearing");
    stack.shutdown().await;
}

#[tokio::test]
async fn publish_of_a_deprecated_event_type_is_accepted_with_a_notice() {
    let note = "deprecation will occur on 31/12/2027, see https://example.nhs.uk/events";
    let stack = TestStack::builder()
        .core(move |c| c.event_types = lifecycle("deprecated", note))
        .start()
        .await;
    let response = publish(&stack, spine::SUBSCRIBER, "Vaccinations", vaccination()).await;
    assert_outcome(
        &response,
        202,
        "information",
        "DEPRECATED",
        &["vaccinations-1", note],
    );
    assert_eq!(
        events_accepted(&stack).await,
        1,
        "accepted despite the notice"
    );
    // Event types that are not deprecated answer with an empty body.
    let response = publish(
        &stack,
        spine::SCREENING,
        "Newbornhearing",
        fixture("newborn-hearing-1-new.xml"),
    )
    .await;
    assert_accepted(&response, "newborn hearing");
    stack.shutdown().await;
}

#[tokio::test]
async fn publish_of_a_no_longer_supported_event_type_is_accepted_with_a_warning() {
    // nems.md §7: publishers of a no-longer-supported event type must keep publishing and
    // get the warning OperationOutcome (whose code the spec gives as DEPRECATED).
    let stack = TestStack::builder()
        .core(|c| c.event_types = lifecycle("no-longer-supported", "ends 31/12/2027"))
        .start()
        .await;
    let response = publish(&stack, spine::SUBSCRIBER, "Vaccinations", vaccination()).await;
    assert_outcome(
        &response,
        202,
        "information",
        "DEPRECATED",
        &["vaccinations-1", "no longer supported", "ends 31/12/2027"],
    );
    assert_eq!(events_accepted(&stack).await, 1);
    stack.shutdown().await;
}
