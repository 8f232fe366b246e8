//! Publish validation: one row per rule, each with the Spine code it must give.

use std::collections::HashMap;

use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;

use super::*;

const NHS: &str = "9912003888";

fn coding(system: &str, code: &str, display: &str) -> pb::Coding {
    pb::Coding {
        system: system.into(),
        code: code.into(),
        display: display.into(),
        ..Default::default()
    }
}

/// A valid vaccinations-1 `new` message, as the edge would extract it.
pub(crate) fn vaccination() -> pb::EventMessage {
    let counts: HashMap<String, u32> = [
        ("id", 1),
        ("meta", 1),
        ("extension", 2),
        ("event", 1),
        ("timestamp", 1),
        ("source", 1),
        ("responsible", 1),
        ("focus", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    pb::EventMessage {
        bundle_type: "message".into(),
        bundle_id: "b1".into(),
        entries: vec![
            pb::BundleEntry {
                full_url: "urn:uuid:mh".into(),
                resource_type: "MessageHeader".into(),
                resource_id: "mh".into(),
                subject_references: vec![],
            },
            pb::BundleEntry {
                full_url: "urn:uuid:imm".into(),
                resource_type: "Immunization".into(),
                resource_id: "imm".into(),
                subject_references: vec!["urn:uuid:pat".into()],
            },
            pb::BundleEntry {
                full_url: "urn:uuid:pat".into(),
                resource_type: "Patient".into(),
                resource_id: "pat".into(),
                subject_references: vec![],
            },
        ],
        header: Some(pb::MessageHeaderSummary {
            id: "mh".into(),
            last_updated: "2017-11-01T15:00:33+00:00".into(),
            profile: vec![],
            event: vec![coding(EVENT_TYPE_SYSTEM, "vaccinations-1", "Vaccinations")],
            message_event_type: vec![coding(
                MESSAGE_EVENT_TYPE_SYSTEM,
                "new",
                "New event message",
            )],
            message_event_type_extensions: 1,
            routing: vec![pb::RoutingDemographics {
                nhs_number_system: NHS_NUMBER_SYSTEM.into(),
                nhs_number: NHS.into(),
                nhs_number_count: 1,
                birth_date_time: "2017-10-02T12:00:00+00:00".into(),
                name_present: true,
            }],
            timestamp: "2017-02-14T15:00:00+00:00".into(),
            focus: vec!["urn:uuid:imm".into()],
            responsible: vec!["urn:uuid:org".into()],
            source_endpoint: "urn:nhs:addressing:asid:300000000161".into(),
            element_counts: counts,
        }),
        patients: vec![pb::PatientSummary {
            full_url: "urn:uuid:pat".into(),
            nhs_numbers: vec![NHS.into()],
            birth_date: "2013-10-12".into(),
            ..Default::default()
        }],
    }
}

fn check(m: &pb::EventMessage) -> Result<ValidEvent, Rejection> {
    let c = Catalogue::default();
    let interaction = c.get("vaccinations-1").unwrap().clone();
    validate(m, &interaction, &c)
}

fn header(m: &mut pb::EventMessage) -> &mut pb::MessageHeaderSummary {
    m.header.as_mut().unwrap()
}

#[test]
fn valid_message_gives_routing_facts() {
    let v = check(&vaccination()).unwrap();
    assert_eq!(v.nhs_number.as_deref(), Some(NHS));
    assert_eq!(v.message_event_type, "new");
    assert_eq!(v.birth_date.unwrap().to_string(), "2017-10-02");
    assert!(v.subject.is_some());
    assert!(v.notices.is_empty());
    assert!(v.last_updated_ms.is_some());
}

#[test]
fn rule_table() {
    type Edit = fn(&mut pb::EventMessage);
    let cases: Vec<(Edit, SpineCode, &str)> = vec![
        (
            |m| m.bundle_type = "document".into(),
            SpineCode::InvalidResource,
            "Bundle.type",
        ),
        (
            |m| m.entries.swap(0, 1),
            SpineCode::InvalidResource,
            "first entry",
        ),
        (
            |m| m.header = None,
            SpineCode::InvalidResource,
            "first entry",
        ),
        (
            |m| {
                header(m).element_counts.insert("receiver".into(), 1);
            },
            SpineCode::InvalidResource,
            "receiver must not be present",
        ),
        (
            |m| {
                header(m).element_counts.insert("focus".into(), 2);
            },
            SpineCode::InvalidResource,
            "focus must appear exactly 1",
        ),
        (
            |m| {
                header(m).element_counts.remove("timestamp");
            },
            SpineCode::InvalidResource,
            "timestamp",
        ),
        (
            |m| header(m).responsible = vec![String::new()],
            SpineCode::InvalidResource,
            "responsible.reference",
        ),
        (
            |m| header(m).event[0].system = "http://other".into(),
            SpineCode::InvalidCodeSystem,
            "event.system",
        ),
        (
            |m| header(m).event[0].code = "referral-1".into(),
            SpineCode::InvalidCodeValue,
            "not an event type NEMS supports",
        ),
        (
            |m| header(m).event[0].code = "nonsense".into(),
            SpineCode::InvalidCodeValue,
            "not a code",
        ),
        (
            |m| header(m).event[0].code = "newborn-hearing-1".into(),
            SpineCode::MissingOrInvalidHeader,
            "InteractionID names vaccinations-1",
        ),
        (
            |m| header(m).event[0].display = String::new(),
            SpineCode::InvalidResource,
            "display",
        ),
        (
            |m| header(m).event[0].user_selected_present = true,
            SpineCode::InvalidResource,
            "userSelected",
        ),
        (
            |m| header(m).message_event_type_extensions = 0,
            SpineCode::InvalidResource,
            "MessageEventType",
        ),
        (
            |m| header(m).message_event_type[0].system = "x".into(),
            SpineCode::InvalidCodeSystem,
            "system",
        ),
        (
            |m| header(m).message_event_type[0].code = "upsert".into(),
            SpineCode::InvalidCodeValue,
            "new, update or delete",
        ),
        (
            |m| header(m).message_event_type[0].display = "New".into(),
            SpineCode::InvalidResource,
            "New event message",
        ),
        (
            |m| header(m).focus = vec!["urn:uuid:missing".into()],
            SpineCode::ReferenceNotFound,
            "does not resolve",
        ),
        (
            |m| header(m).focus = vec!["urn:uuid:pat".into()],
            SpineCode::InvalidResource,
            "must reference a Immunization",
        ),
        (
            |m| header(m).routing.clear(),
            SpineCode::InvalidResource,
            "routing demographics",
        ),
        (
            |m| header(m).routing[0].nhs_number = "9912003887".into(),
            SpineCode::InvalidNhsNumber,
            "Modulus 11",
        ),
        (
            |m| header(m).routing[0].nhs_number_system = "http://fhir.nhs.net/Id/nhs-number".into(),
            SpineCode::InvalidIdentifierSystem,
            "system",
        ),
        (
            |m| header(m).routing[0].name_present = false,
            SpineCode::InvalidResource,
            "name and birthDateTime",
        ),
        (
            |m| header(m).routing[0].birth_date_time = "02/10/2017".into(),
            SpineCode::InvalidValue,
            "birthDateTime",
        ),
        (
            |m| header(m).timestamp = "2017-11-01T16:02:04+58:00".into(),
            SpineCode::InvalidValue,
            "timestamp",
        ),
        (
            |m| header(m).timestamp = "2017-11-01T16:02:04".into(),
            SpineCode::InvalidValue,
            "timestamp",
        ),
        (
            |m| header(m).last_updated = String::new(),
            SpineCode::InvalidResource,
            "lastUpdated is required",
        ),
        (
            |m| header(m).last_updated = "yesterday".into(),
            SpineCode::InvalidValue,
            "lastUpdated",
        ),
    ];
    for (edit, code, needle) in cases {
        let mut m = vaccination();
        edit(&mut m);
        let e = check(&m).unwrap_err();
        assert_eq!(e.code, code, "{}", e.diagnostics);
        assert!(
            e.diagnostics.contains(needle),
            "`{}` lacks `{needle}`",
            e.diagnostics
        );
        assert!(!e.diagnostics.contains(NHS));
    }
}

#[test]
fn delete_messages_may_omit_name_and_birth_date() {
    let mut m = vaccination();
    header(&mut m).message_event_type = vec![coding(
        MESSAGE_EVENT_TYPE_SYSTEM,
        "delete",
        "Delete event message",
    )];
    header(&mut m).routing[0].name_present = false;
    header(&mut m).routing[0].birth_date_time = String::new();
    let v = check(&m).unwrap();
    // Without routing birth date, the Patient's birthDate is used.
    assert_eq!(v.birth_date.unwrap().to_string(), "2013-10-12");
}

#[test]
fn disallowed_message_event_type_for_the_event() {
    let c = Catalogue::default();
    let mut m = vaccination();
    header(&mut m).event = vec![coding(
        EVENT_TYPE_SYSTEM,
        "newborn-hearing-1",
        "Newborn Hearing",
    )];
    header(&mut m).message_event_type = vec![coding(
        MESSAGE_EVENT_TYPE_SYSTEM,
        "update",
        "Update event message",
    )];
    m.entries[1].resource_type = "Encounter".into();
    let interaction = c.get("newborn-hearing-1").unwrap().clone();
    let e = validate(&m, &interaction, &c).unwrap_err();
    assert_eq!(e.code, SpineCode::InvalidCodeValue);
    assert!(e.diagnostics.contains("new, delete"), "{}", e.diagnostics);
}

#[test]
fn interaction_ids() {
    let c = Catalogue::default();
    for ok in [
        "urn:nhs:names:services:events:Vaccinations.Write",
        "urn:nhs:names:services:events:vaccinations-1.Write",
        "urn:nhs:names:services:events:VACCINATIONS.Write",
    ] {
        assert_eq!(
            interaction_event(ok, &c).unwrap().code,
            "vaccinations-1",
            "{ok}"
        );
    }
    for bad in [
        "",
        "urn:nhs:names:services:events:Vaccinations",
        "urn:nhs:names:services:clinicals-sync:SubscriptionsApiPost",
        "urn:nhs:names:services:events:Nothing.Write",
        "urn:nhs:names:services:events:.Write",
    ] {
        assert_eq!(
            interaction_event(bad, &c).unwrap_err().code,
            SpineCode::MissingOrInvalidHeader,
            "{bad}"
        );
    }
}

#[test]
fn birth_notification_without_mother_routes_by_baby() {
    let c = Catalogue::default();
    let birth = c.get("pds-birth-notification-1").unwrap().clone();
    let mut m = vaccination();
    header(&mut m).event = vec![coding(
        EVENT_TYPE_SYSTEM,
        "pds-birth-notification-1",
        "PDS Birth Notification",
    )];
    header(&mut m).routing.clear();
    header(&mut m).last_updated = String::new();
    m.entries[1].resource_type = "Communication".into();
    m.entries.push(pb::BundleEntry {
        full_url: "urn:uuid:rp".into(),
        resource_type: "RelatedPerson".into(),
        resource_id: "rp".into(),
        subject_references: vec!["urn:uuid:baby".into()],
    });
    m.patients.push(pb::PatientSummary {
        full_url: "urn:uuid:baby".into(),
        birth_date: "2024-05-01".into(),
        ..Default::default()
    });
    let v = validate(&m, &birth, &c).unwrap();
    assert_eq!(v.nhs_number, None);
    assert_eq!(v.baby.unwrap().full_url, "urn:uuid:baby");
}

#[test]
fn deprecated_and_withdrawn_event_types() {
    use crate::domain::catalogue::{EventTypeOverride, LifecycleState};
    let with = |state| {
        Catalogue::new(&[EventTypeOverride {
            code: "vaccinations-1".into(),
            state: Some(state),
            lifecycle_note: None,
            display: None,
            workflow_id: None,
            publish_interaction_code: None,
            pds_only: None,
            message_event_types: None,
            focus_resource_type: None,
            routing_optional: None,
        }])
        .unwrap()
    };
    for (state, ok) in [
        (LifecycleState::Deprecated, true),
        (LifecycleState::NoLongerSupported, true),
        (LifecycleState::Withdrawn, false),
    ] {
        let c = with(state);
        let interaction = c.get("vaccinations-1").unwrap().clone();
        let r = validate(&vaccination(), &interaction, &c);
        match (r, ok) {
            (Ok(v), true) => assert_eq!(v.notices[0].spine_code, "DEPRECATED"),
            (Err(e), false) => assert_eq!(e.code, SpineCode::Withdrawn),
            (other, _) => panic!("{state:?}: {other:?}"),
        }
    }
}
