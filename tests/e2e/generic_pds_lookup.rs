//! The optional PDS lookup (`[core.pds]`), end to end over HTTP against an in-process PDS
//! FHIR API: a patient the demographics store does not know is looked up once and matched
//! by what PDS says (not by the publisher's copy); restricted and invalidated records are
//! suppressed; PDS failing or not answering in time never loses the event (the event's own
//! Patient is used); known patients and PDS's own events are never looked up.

use std::time::Duration;

use nems_e2e::pds_fake::{self, Answer, PdsFake};
use nems_e2e::stack::TestStack;

use crate::generic_support::*;

async fn stack_with(pds: &PdsFake) -> TestStack {
    let base_url = pds.base_url();
    let stack = TestStack::builder()
        .core(move |c| {
            c.pds = Some(nems_core::pds::PdsConfig {
                base_url,
                timeout: Duration::from_millis(300),
                bearer_token: Some("test-token".into()),
                ..Default::default()
            });
        })
        .start()
        .await;
    load_areas(&stack).await;
    // MBX1: home postcode in 15F (LS…); MBX2: registered at B86001.
    subscribe(
        &stack,
        MBX1,
        &generic("CHO_POSTCODE_CCG", "15F", "vaccinations-1", ""),
    )
    .await;
    subscribe(
        &stack,
        MBX2,
        &generic("GP_GP_GP", "B86001", "vaccinations-1", ""),
    )
    .await;
    stack
}

#[tokio::test]
async fn generic_pds_lookup_matches_unknown_patients_by_what_pds_says() {
    let pds = PdsFake::start().await;
    let stack = stack_with(&pds).await;
    pds.answer(
        P_NO_RECORD,
        Answer::Json(200, pds_fake::patient(P_NO_RECORD, "LS1 4AP", "B86001")),
    );
    // The publisher's copy says Newcastle and A84001 (00L): PDS wins for an unknown patient.
    let first = vaccination(P_NO_RECORD, "2010-10-22", Some("NE61 1AA"), Some("A84001"));
    let second = vaccination(P_NO_RECORD, "2010-10-22", Some("NE61 1AA"), Some("A84001"));
    publish(&stack, &first).await;
    publish(&stack, &second).await;
    let delivered = settled(&stack).await;
    assert_eq!(mailboxes_of(&delivered, &first), set(&[MBX1, MBX2]));
    assert_eq!(
        mailboxes_of(&delivered, &second),
        set(&[MBX1, MBX2]),
        "the answer was kept in the demographics store"
    );
    assert_eq!(
        pds.requests_for(P_NO_RECORD),
        1,
        "looked up once, then known"
    );
    let request = &pds.requests()[0];
    assert_eq!(request.authorization, "Bearer test-token");
    assert!(
        uuid::Uuid::parse_str(&request.request_id).is_ok(),
        "X-Request-ID is a UUID: {request:?}"
    );

    // A patient the store knows (P_OUT: Newcastle, A84001) is not looked up.
    let known = vaccination(P_OUT, "1980-01-01", None, None);
    publish(&stack, &known).await;
    // Nor is the patient of a PDS event (PDS's own facts).
    let moved = change_of_address(
        P_SPARE[3],
        "NE61 1AA",
        "LS6 2AB",
        "2025-01-15T12:00:00+00:00",
    );
    publish(&stack, &moved).await;
    let delivered = settled(&stack).await;
    assert!(mailboxes_of(&delivered, &known).is_empty());
    assert_eq!(pds.requests_for(P_OUT), 0);
    assert_eq!(pds.requests_for(P_SPARE[3]), 0);
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_pds_lookup_suppresses_restricted_and_invalidated_patients() {
    let pds = PdsFake::start().await;
    let stack = stack_with(&pds).await;
    pds.answer(
        P_SPARE[0],
        Answer::Json(200, pds_fake::restricted(P_SPARE[0])),
    );
    pds.answer(
        P_SPARE[1],
        Answer::Json(404, pds_fake::not_found("INVALIDATED_RESOURCE")),
    );
    let before = suppressed(&stack, MBX1).await;
    // Both publishers' copies put the patient in Leeds: matched, but never sent.
    let sensitive = vaccination(P_SPARE[0], "2010-10-22", Some("LS1 4AP"), None);
    let invalid = vaccination(P_SPARE[1], "2010-10-22", Some("LS1 4AP"), None);
    publish(&stack, &sensitive).await;
    publish(&stack, &invalid).await;
    let delivered = settled(&stack).await;
    assert!(mailboxes_of(&delivered, &sensitive).is_empty());
    assert!(mailboxes_of(&delivered, &invalid).is_empty());
    assert_eq!(suppressed(&stack, MBX1).await, before + 2);
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_pds_lookup_failures_fall_back_to_the_events_patient() {
    let pds = PdsFake::start().await;
    let stack = stack_with(&pds).await;
    pds.answer(
        P_SPARE[0],
        Answer::Json(503, pds_fake::not_found("SERVICE_UNAVAILABLE")),
    );
    pds.answer(P_SPARE[1], Answer::Hang);
    // Not known to PDS: a 404 that is not an invalidation.
    let unavailable = vaccination(P_SPARE[0], "2010-10-22", Some("LS1 4AP"), None);
    let timed_out = vaccination(P_SPARE[1], "2010-10-22", Some("LS2 7EW"), Some("B86001"));
    let unknown = vaccination(P_SPARE[2], "2010-10-22", None, Some("B86001"));
    for event in [&unavailable, &timed_out, &unknown] {
        publish(&stack, event).await;
    }
    let delivered = settled(&stack).await;
    assert_eq!(mailboxes_of(&delivered, &unavailable), set(&[MBX1]));
    assert_eq!(mailboxes_of(&delivered, &timed_out), set(&[MBX1, MBX2]));
    assert_eq!(mailboxes_of(&delivered, &unknown), set(&[MBX2]));
    for nhs in [P_SPARE[0], P_SPARE[1], P_SPARE[2]] {
        assert_eq!(pds.requests_for(nhs), 1, "{nhs} was asked");
    }
    stack.shutdown().await;
}
