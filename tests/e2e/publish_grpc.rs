//! Parity of the two publish doors: core's `EventService.PublishEvent`, given the message
//! the edge extracts (`nems_edge::translate::bundle::extract`) and the same bytes, refuses
//! with the same Spine code as `POST /STU3/Events/1/$process-message` for the same broken
//! message, and accepts what HTTP accepts (an event that is then in the ledger).

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
    }

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
