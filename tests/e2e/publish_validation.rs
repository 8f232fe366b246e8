//! Publish validation of the message itself, end to end (nems.md §3.2–§3.5): each rule
//! broken on its own, starting from this crate's valid fixtures, is refused with its HTTP
//! status and Spine code in a Spine OperationOutcome (XML, profile, `id` = request id, one
//! issue with the spec's issue type and display) whose diagnostics name what is wrong and
//! never carry an NHS number, and nothing refused becomes an event: well-formedness and
//! DOCTYPE, the Bundle shape, event codes and the InteractionID they must match, message
//! event types per event, `focus`, routing demographics and NHS numbers, date forms and
//! `meta.lastUpdated`. The variants the rules allow (update, delete without name and birth
//! date, record change without `lastUpdated`, the extreme offsets) are accepted.

use nems_e2e::spine;
use nems_e2e::stack::TestStack;

use crate::publish_common::{
    Case, VACC_NHS, assert_accepted, edit, edit_once, fixture, publish, refuse_all, vacc,
    vaccination,
};

/// The end of the routing demographics extension in `vaccinations-1-new.xml`.
const ROUTING_END: &str = "</extension>\n        <extension url=\"https://fhir.nhs.uk/STU3/StructureDefinition/Extension-MessageEventType-1\">";

/// `text` without the part from `from` (included) to `until` (excluded).
fn cut(text: &str, from: &str, until: &str) -> String {
    let start = text.find(from).unwrap_or_else(|| panic!("no `{from}`"));
    let end = start
        + text[start..]
            .find(until)
            .unwrap_or_else(|| panic!("no `{until}`"));
    format!("{}{}", &text[..start], &text[end..])
}

/// The message with its first two entries swapped.
fn swap_first_entries(text: &str) -> String {
    let mut parts: Vec<&str> = text.split("<entry>").collect();
    assert!(parts.len() >= 3, "two entries at least");
    parts.swap(1, 2);
    parts.join("<entry>")
}

#[tokio::test]
async fn publish_refuses_unreadable_or_misshapen_bundles() {
    let stack = TestStack::start().await;
    let valid = vaccination();
    let doctype = edit_once(
        &valid,
        "<Bundle xmlns",
        "<!DOCTYPE Bundle [<!ENTITY nhs \"x\">]>\n<Bundle xmlns",
    );
    let wrong_root = edit(
        &edit_once(&valid, "<Bundle xmlns", "<Parameters xmlns"),
        "</Bundle>",
        "</Parameters>",
    );
    let not_fhir = edit_once(
        &valid,
        "<Bundle xmlns=\"http://hl7.org/fhir\">",
        "<Bundle xmlns=\"urn:example:not-fhir\">",
    );
    let cases = vec![
        vacc(
            "truncated",
            valid[..valid.len() / 2].to_string(),
            400,
            "MESSAGE_NOT_WELL_FORMED",
            &[],
        ),
        vacc(
            "mismatched end tag",
            edit_once(&valid, "</MessageHeader>", "</MessageHeadr>"),
            400,
            "MESSAGE_NOT_WELL_FORMED",
            &["end tag"],
        ),
        vacc("empty body", String::new(), 400, "BAD_REQUEST", &["Bundle"]),
        vacc(
            "DOCTYPE",
            doctype,
            400,
            "MESSAGE_NOT_WELL_FORMED",
            &["DOCTYPE"],
        ),
        vacc(
            "wrong root",
            wrong_root,
            422,
            "INVALID_RESOURCE",
            &["Bundle"],
        ),
        vacc("not FHIR", not_fhir, 422, "INVALID_RESOURCE", &["Bundle"]),
        vacc(
            "Bundle.type collection",
            edit_once(
                &valid,
                "<type value=\"message\"/>",
                "<type value=\"collection\"/>",
            ),
            422,
            "INVALID_RESOURCE",
            &["Bundle.type", "message"],
        ),
        vacc(
            "first entry not the MessageHeader",
            swap_first_entries(&valid),
            422,
            "INVALID_RESOURCE",
            &["first entry", "MessageHeader"],
        ),
    ];
    refuse_all(&stack, cases).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn publish_refuses_bad_event_codes_and_interactions() {
    let stack = TestStack::start().await;
    let valid = vaccination();
    let event_system = "<system value=\"https://fhir.nhs.uk/STU3/CodeSystem/EventType-1\"/>";
    let cases = vec![
        vacc(
            "legacy event system",
            edit_once(
                &valid,
                event_system,
                "<system value=\"https://fhir.nhs.uk/STU3/CodeSystem/EMS-EventType-1\"/>",
            ),
            400,
            "INVALID_CODE_SYSTEM",
            &["event.system", "EventType-1"],
        ),
        vacc(
            "unknown event code",
            edit_once(
                &valid,
                "<code value=\"vaccinations-1\"/>",
                "<code value=\"vaccinations-9\"/>",
            ),
            400,
            "INVALID_CODE_VALUE",
            &["event.code"],
        ),
        vacc(
            "EventType-1 code NEMS does not support",
            edit_once(
                &valid,
                "<code value=\"vaccinations-1\"/>",
                "<code value=\"problem-list-1\"/>",
            ),
            400,
            "INVALID_CODE_VALUE",
            &["event.code", "not an event type NEMS supports"],
        ),
        // The caller may publish professional contacts, but the message is a vaccination.
        Case {
            what: "InteractionID names another event",
            caller: spine::SUBSCRIBER,
            interaction: "Professionalcontacts",
            body: valid.clone(),
            status: 400,
            code: "MISSING_OR_INVALID_HEADER",
            mentions: &["InteractionID", "vaccinations-1", "professional-contacts-1"],
        },
        Case {
            what: "unknown InteractionID event",
            caller: spine::SUBSCRIBER,
            interaction: "Allergies",
            body: valid.clone(),
            status: 400,
            code: "MISSING_OR_INVALID_HEADER",
            mentions: &["InteractionID"],
        },
        Case {
            what: "superseded InteractionID form",
            caller: spine::SUBSCRIBER,
            interaction: "Vaccinations.write:1",
            body: valid.clone(),
            status: 400,
            code: "MISSING_OR_INVALID_HEADER",
            mentions: &["InteractionID"],
        },
    ];
    refuse_all(&stack, cases).await;

    // The event-code form of the InteractionID is accepted too (decisions.md §12).
    let response = publish(&stack, spine::SUBSCRIBER, "vaccinations-1", valid).await;
    assert_accepted(&response, "InteractionID vaccinations-1.Write");
    stack.shutdown().await;
}

#[tokio::test]
async fn publish_refuses_bad_message_event_types() {
    let stack = TestStack::start().await;
    let valid = vaccination();
    let hearing = fixture("newborn-hearing-1-new.xml");
    let hearing_update = edit_once(
        &edit_once(
            &hearing,
            "<code value=\"new\"/>",
            "<code value=\"update\"/>",
        ),
        "New event message",
        "Update event message",
    );
    let cases = vec![
        vacc(
            "messageEventType missing",
            cut(
                &valid,
                "<extension url=\"https://fhir.nhs.uk/STU3/StructureDefinition/Extension-MessageEventType-1\">",
                "<event>",
            ),
            422,
            "INVALID_RESOURCE",
            &["MessageEventType"],
        ),
        vacc(
            "messageEventType code unknown",
            edit_once(&valid, "<code value=\"new\"/>", "<code value=\"created\"/>"),
            400,
            "INVALID_CODE_VALUE",
            &["new, update or delete"],
        ),
        Case {
            what: "update is not used for newborn hearing",
            caller: spine::SCREENING,
            interaction: "Newbornhearing",
            body: hearing_update,
            status: 400,
            code: "INVALID_CODE_VALUE",
            mentions: &["newborn-hearing-1", "update"],
        },
    ];
    refuse_all(&stack, cases).await;

    // `update` is allowed for vaccinations, `delete` for newborn hearing.
    let update = edit_once(
        &edit_once(&valid, "<code value=\"new\"/>", "<code value=\"update\"/>"),
        "New event message",
        "Update event message",
    );
    let response = publish(&stack, spine::SUBSCRIBER, "Vaccinations", update).await;
    assert_accepted(&response, "vaccinations update");
    let delete = edit_once(
        &edit_once(
            &hearing,
            "<code value=\"new\"/>",
            "<code value=\"delete\"/>",
        ),
        "New event message",
        "Delete event message",
    );
    let response = publish(&stack, spine::SCREENING, "Newbornhearing", delete).await;
    assert_accepted(&response, "newborn hearing delete");
    stack.shutdown().await;
}

#[tokio::test]
async fn publish_refuses_bad_focus_routing_and_dates() {
    let stack = TestStack::start().await;
    let valid = vaccination();
    let focus =
        "<focus>\n          <reference value=\"urn:uuid:a1d4e6f0-0002-4c1e-9b6a-000000000002\"/>";
    let routing_start = "<extension url=\"https://fhir.nhs.uk/STU3/StructureDefinition/Extension-RoutingDemographics-1\">";
    let message_event_type_start = "<extension url=\"https://fhir.nhs.uk/STU3/StructureDefinition/Extension-MessageEventType-1\">";
    let cases = vec![
        vacc(
            "focus does not resolve",
            edit_once(
                &valid,
                focus,
                "<focus>\n          <reference value=\"urn:uuid:a1d4e6f0-0099-4c1e-9b6a-000000000099\"/>",
            ),
            422,
            "REFERENCE_NOT_FOUND",
            &["focus"],
        ),
        vacc(
            "focus is the Patient",
            edit_once(
                &valid,
                focus,
                "<focus>\n          <reference value=\"urn:uuid:a1d4e6f0-0004-4c1e-9b6a-000000000004\"/>",
            ),
            422,
            "INVALID_RESOURCE",
            &["focus", "Immunization", "Patient"],
        ),
        vacc(
            "routing demographics missing",
            cut(&valid, routing_start, message_event_type_start),
            422,
            "INVALID_RESOURCE",
            &["routing demographics"],
        ),
        vacc(
            "routing name and birth date missing on a new message",
            cut(&valid, "<extension url=\"name\">", ROUTING_END),
            422,
            "INVALID_RESOURCE",
            &["name", "birthDateTime"],
        ),
        vacc(
            "NHS number fails Modulus 11",
            edit(&valid, VACC_NHS, "9434765918"),
            400,
            "INVALID_NHS_NUMBER",
            &["nhsNumber", "Modulus 11"],
        ),
        vacc(
            "NHS number of nine digits",
            edit(&valid, VACC_NHS, "943476591"),
            400,
            "INVALID_NHS_NUMBER",
            &["nhsNumber"],
        ),
        vacc(
            "routing NHS number in the old-style system",
            edit_once(
                &valid,
                "<system value=\"https://fhir.nhs.uk/Id/nhs-number\"/>\n              <value",
                "<system value=\"http://fhir.nhs.net/Id/nhs-number\"/>\n              <value",
            ),
            400,
            "INVALID_IDENTIFIER_SYSTEM",
            &["nhsNumber", "https://fhir.nhs.uk/Id/nhs-number"],
        ),
        vacc(
            "timestamp with a date only",
            edit_once(
                &valid,
                "<timestamp value=\"2024-03-01T10:16:00+00:00\"/>",
                "<timestamp value=\"2024-03-01\"/>",
            ),
            400,
            "INVALID_VALUE",
            &["timestamp"],
        ),
        vacc(
            "timestamp offset beyond +14:00",
            edit_once(
                &valid,
                "<timestamp value=\"2024-03-01T10:16:00+00:00\"/>",
                "<timestamp value=\"2024-03-01T10:16:00+14:30\"/>",
            ),
            400,
            "INVALID_VALUE",
            &["timestamp"],
        ),
        vacc(
            "timestamp without an offset",
            edit_once(
                &valid,
                "<timestamp value=\"2024-03-01T10:16:00+00:00\"/>",
                "<timestamp value=\"2024-03-01T10:16:00\"/>",
            ),
            400,
            "INVALID_VALUE",
            &["timestamp", "offset"],
        ),
        vacc(
            "lastUpdated without an offset",
            edit_once(
                &valid,
                "<lastUpdated value=\"2024-03-01T10:15:00+00:00\"/>",
                "<lastUpdated value=\"2024-03-01T10:15:00\"/>",
            ),
            400,
            "INVALID_VALUE",
            &["lastUpdated"],
        ),
        vacc(
            "birthDateTime with a time but no offset",
            edit_once(
                &valid,
                "<valueDateTime value=\"2016-05-20\"/>",
                "<valueDateTime value=\"2016-05-20T08:00:00\"/>",
            ),
            400,
            "INVALID_VALUE",
            &["birthDateTime"],
        ),
        vacc(
            "lastUpdated missing",
            edit_once(
                &valid,
                "<lastUpdated value=\"2024-03-01T10:15:00+00:00\"/>",
                "",
            ),
            422,
            "INVALID_RESOURCE",
            &["lastUpdated", "vaccinations-1"],
        ),
    ];
    refuse_all(&stack, cases).await;

    // Instants in `Z`, with fractions and with the extreme offsets are fine.
    for timestamp in [
        "2024-03-01T10:16:00.123Z",
        "2024-03-01T10:16:00+14:00",
        "2024-03-01T10:16:00-12:00",
    ] {
        let body = edit_once(
            &valid,
            "<timestamp value=\"2024-03-01T10:16:00+00:00\"/>",
            &format!("<timestamp value=\"{timestamp}\"/>"),
        );
        let response = publish(&stack, spine::SUBSCRIBER, "Vaccinations", body).await;
        assert_accepted(&response, timestamp);
    }
    // Record change events may omit `meta.lastUpdated` (nems.md §3.3): the fixture does.
    let record_change = fixture("pds-record-change-1-new.xml");
    assert!(!record_change.contains("<lastUpdated"));
    let response = publish(&stack, spine::PDS, "Pdsrecordchange", record_change).await;
    assert_accepted(&response, "record change without lastUpdated");
    // A delete may leave out the name and birth date (nems.md §3.3).
    let delete = edit_once(
        &edit_once(
            &cut(&valid, "<extension url=\"name\">", ROUTING_END),
            "<code value=\"new\"/>",
            "<code value=\"delete\"/>",
        ),
        "New event message",
        "Delete event message",
    );
    let response = publish(&stack, spine::SUBSCRIBER, "Vaccinations", delete).await;
    assert_accepted(&response, "delete with the NHS number only");
    stack.shutdown().await;
}
