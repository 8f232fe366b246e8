//! Parity of the publish doors: core's `EventService.PublishEvent` (given the message the
//! edge extracts, `nems_edge::translate::bundle::extract`, and the same bytes) and the
//! edge's `BundleService.PublishBundle` (given only the bytes) refuse with the same Spine
//! code as `POST /STU3/Events/1/$process-message` for the same broken message, and accept
//! what HTTP accepts (an event that is then in the ledger). A bundle the edge cannot read
//! is refused by the bundle door as by HTTP.

use nems_e2e::spine::{self, Caller};
use nems_e2e::stack::TestStack;
use nems_proto::spine::code_of;
use nems_proto::v1 as pb;

use crate::publish_common::{
    VACC_NHS, accepted_event_id, assert_accepted, edit, fixture, get_event, publish,
};
use crate::publish_outcome::parse_outcome;

/// Publishes over gRPC; `Ok(event id)` or `Err(Spine code)`.
async fn publish_grpc(
    stack: &TestStack,
    caller: Caller,
    interaction: &str,
    body: &str,
) -> Result<String, String> {
    let message = nems_edge::translate::bundle::extract(body.as_bytes()).expect("extractable");
    let request = pb::PublishEventRequest {
        caller: Some(spine::pb_caller(caller)),
        interaction_id: format!("urn:nhs:names:services:events:{interaction}.Write"),
        message: Some(message),
        payload: body.as_bytes().to_vec().into(),
    };
    match stack.events().publish_event(request).await {
        Ok(response) => Ok(response.into_inner().event_id),
        Err(status) => {
            assert!(
                !status.message().contains(VACC_NHS),
                "no NHS number in {status:?}"
            );
            Err(code_of(&status)
                .map(|c| c.as_str().to_string())
                .unwrap_or_else(|| panic!("a Spine code in {status:?}")))
        }
    }
}

/// Publishes the bytes through the edge's `BundleService`; `Ok(event id)` or
/// `Err(Spine code)`.
async fn publish_bundle(
    stack: &TestStack,
    caller: Caller,
    interaction: &str,
    body: &str,
) -> Result<String, String> {
    let request = pb::PublishBundleRequest {
        caller: Some(spine::pb_caller(caller)),
        interaction_id: format!("urn:nhs:names:services:events:{interaction}.Write"),
        bundle: body.as_bytes().to_vec().into(),
    };
    match stack.bundles().publish_bundle(request).await {
        Ok(response) => Ok(response.into_inner().event_id),
        Err(status) => {
            assert!(
                !status.message().contains(VACC_NHS),
                "no NHS number in {status:?}"
            );
            Err(code_of(&status)
                .map(|c| c.as_str().to_string())
                .unwrap_or_else(|| panic!("a Spine code in {status:?}")))
        }
    }
}

#[tokio::test]
async fn publish_over_grpc_gives_the_same_spine_codes_as_http() {
    let stack = TestStack::start().await;
    let valid = fixture("vaccinations-1-new.xml");
    let hearing = fixture("newborn-hearing-1-new.xml");
    let cases: Vec<(&str, Caller, &str, String, &str)> = vec![
        (
            "invalid NHS number",
            spine::SUBSCRIBER,
            "Vaccinations",
            edit(&valid, VACC_NHS, "9434765918"),
            "INVALID_NHS_NUMBER",
        ),
        (
            "InteractionID names another event",
            spine::SUBSCRIBER,
            "Professionalcontacts",
            valid.clone(),
            "MISSING_OR_INVALID_HEADER",
        ),
        (
            "focus does not resolve",
            spine::SUBSCRIBER,
            "Vaccinations",
            edit(
                &valid,
                "<reference value=\"urn:uuid:a1d4e6f0-0002-4c1e-9b6a-000000000002\"/>",
                "<reference value=\"urn:uuid:a1d4e6f0-0099-4c1e-9b6a-000000000099\"/>",
            ),
            "REFERENCE_NOT_FOUND",
        ),
        (
            "Bundle.type not message",
            spine::SUBSCRIBER,
            "Vaccinations",
            edit(
                &valid,
                "<type value=\"message\"/>",
                "<type value=\"history\"/>",
            ),
            "INVALID_RESOURCE",
        ),
        (
            "update not allowed for newborn hearing",
            spine::SCREENING,
            "Newbornhearing",
            edit(
                &edit(
                    &hearing,
                    "<code value=\"new\"/>",
                    "<code value=\"update\"/>",
                ),
                "New event message",
                "Update event message",
            ),
            "INVALID_CODE_VALUE",
        ),
        (
            "ASID not allowed",
            spine::SCREENING,
            "Vaccinations",
            valid.clone(),
            "ASID_CHECK_FAILED",
        ),
    ];
    for (what, caller, interaction, body, code) in cases {
        let http = publish(&stack, caller, interaction, body.clone()).await;
        let outcome = parse_outcome(&http.text());
        assert_eq!(outcome.issues[0].spine_code, code, "HTTP: {what}");
        let grpc = publish_grpc(&stack, caller, interaction, &body).await;
        assert_eq!(grpc, Err(code.to_string()), "gRPC: {what}");
        let bundle = publish_bundle(&stack, caller, interaction, &body).await;
        assert_eq!(bundle, Err(code.to_string()), "BundleService: {what}");
    }
    // What only the edge can see (a bundle it cannot read) is refused by both its doors.
    for (what, body, code) in [
        (
            "not well formed",
            "<Bundle xmlns=\"http://hl7.org/fhir\"><id",
            "MESSAGE_NOT_WELL_FORMED",
        ),
        (
            "an attribute FHIR does not allow",
            &edit(
                &valid,
                "<Bundle xmlns=\"http://hl7.org/fhir\"",
                "<Bundle xmlns=\"http://hl7.org/fhir\" junk=\"1\"",
            ),
            "INVALID_RESOURCE",
        ),
        ("empty", "", "BAD_REQUEST"),
    ] {
        let http = publish(&stack, spine::SUBSCRIBER, "Vaccinations", body.to_string()).await;
        let outcome = parse_outcome(&http.text());
        assert_eq!(
            outcome.issues[0].spine_code,
            code,
            "HTTP: {what}: {}",
            http.text()
        );
        let bundle = publish_bundle(&stack, spine::SUBSCRIBER, "Vaccinations", body).await;
        assert_eq!(bundle, Err(code.to_string()), "BundleService: {what}");
    }
    // A caller without an ASID is refused before anything is read.
    let anonymous = stack
        .bundles()
        .publish_bundle(pb::PublishBundleRequest {
            caller: None,
            interaction_id: "urn:nhs:names:services:events:Vaccinations.Write".into(),
            bundle: valid.clone().into_bytes().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&anonymous).map(|c| c.as_str()),
        Some("MISSING_OR_INVALID_HEADER"),
        "{anonymous:?}"
    );
    let over_bundle = publish_bundle(&stack, spine::SUBSCRIBER, "Vaccinations", &valid)
        .await
        .expect("accepted over BundleService");
    let event = get_event(&stack, &over_bundle).await.event.unwrap();
    assert_eq!(event.event_code, "vaccinations-1");
    assert_eq!(event.payload_bytes as usize, valid.len());

    // Both doors accept the valid message; each makes an event.
    let http = publish(&stack, spine::SUBSCRIBER, "Vaccinations", valid.clone()).await;
    assert_accepted(&http, "HTTP");
    let over_http = accepted_event_id(&stack, &http).await;
    let over_grpc = publish_grpc(&stack, spine::SUBSCRIBER, "Vaccinations", &valid)
        .await
        .expect("accepted over gRPC");
    assert_ne!(over_http, over_grpc);
    for id in [over_http, over_grpc] {
        let event = get_event(&stack, &id).await.event.unwrap();
        assert_eq!(event.event_code, "vaccinations-1");
        assert_eq!(event.payload_bytes as usize, valid.len());
    }
    stack.shutdown().await;
}
