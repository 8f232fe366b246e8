//! Extraction of every real NEMS example event message (`shared/fixtures/nems-examples`).
//!
//! The examples live outside the repository; when they are absent each test prints a
//! `skipping` notice and passes.

use std::path::{Path, PathBuf};

use nems_edge::translate::bundle::extract;
use nems_proto::v1 as pb;

const ROUTING_NHS_NUMBER: &str = "9912003888";

/// Returns the examples folder, or `None` (after a notice) when it is not there.
#[allow(
    clippy::print_stdout,
    reason = "the skip notice is meant for the test output"
)]
fn examples_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/nems-examples");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipping: {} not found", dir.display());
        None
    }
}

/// Extracts one example; `None` when the examples are absent.
fn example(name: &str) -> Option<pb::EventMessage> {
    let path = examples_dir()?.join(name);
    let body = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    Some(extract(&body).unwrap_or_else(|err| panic!("{name}: {err}")))
}

fn header(msg: &pb::EventMessage) -> &pb::MessageHeaderSummary {
    msg.header
        .as_ref()
        .expect("the first entry is a MessageHeader")
}

/// Returns the entry a reference names by `fullUrl`.
fn resolve<'a>(msg: &'a pb::EventMessage, reference: &str) -> &'a pb::BundleEntry {
    msg.entries
        .iter()
        .find(|entry| entry.full_url == reference)
        .unwrap_or_else(|| panic!("no entry with fullUrl {reference}"))
}

/// Returns the resource type of the (single) focus resource.
fn focus_type(msg: &pb::EventMessage) -> &str {
    let focus = &header(msg).focus;
    assert_eq!(focus.len(), 1, "one focus reference");
    &resolve(msg, &focus[0]).resource_type
}

/// Checks what every NEMS event message carries in its header.
fn check_common(name: &str, msg: &pb::EventMessage, event_code: &str, message_event_type: &str) {
    assert_eq!(msg.bundle_type, "message", "{name}");
    assert!(!msg.bundle_id.is_empty(), "{name}");
    assert_eq!(msg.entries[0].resource_type, "MessageHeader", "{name}");
    let header = header(msg);
    assert_eq!(header.id, msg.entries[0].resource_id, "{name}");
    assert_eq!(header.event.len(), 1, "{name}");
    assert_eq!(
        header.event[0].system, "https://fhir.nhs.uk/STU3/CodeSystem/EventType-1",
        "{name}"
    );
    assert_eq!(header.event[0].code, event_code, "{name}");
    assert!(!header.event[0].display.is_empty(), "{name}");
    assert!(!header.event[0].user_selected_present, "{name}");
    assert_eq!(header.message_event_type_extensions, 1, "{name}");
    assert_eq!(header.message_event_type.len(), 1, "{name}");
    assert_eq!(
        header.message_event_type[0].system,
        "https://fhir.nhs.uk/STU3/CodeSystem/MessageEventType-1",
        "{name}"
    );
    assert_eq!(
        header.message_event_type[0].code, message_event_type,
        "{name}"
    );
    assert_eq!(header.routing.len(), 1, "{name}");
    let routing = &header.routing[0];
    assert_eq!(routing.nhs_number_count, 1, "{name}");
    assert_eq!(
        routing.nhs_number_system, "https://fhir.nhs.uk/Id/nhs-number",
        "{name}"
    );
    // Name and birth date may be left out of a DCH `delete` (the blood spot example does).
    let minimal_delete = name == "blood-spot-test-outcome-1-delete.xml";
    assert_eq!(routing.name_present, !minimal_delete, "{name}");
    assert_eq!(routing.birth_date_time.is_empty(), minimal_delete, "{name}");
    assert!(!header.timestamp.is_empty(), "{name}");
    assert!(header.source_endpoint.starts_with("urn:nhs"), "{name}");
    assert_eq!(header.responsible.len(), 1, "{name}");
    assert_eq!(
        header.profile,
        ["https://fhir.nhs.uk/STU3/StructureDefinition/Event-MessageHeader-1"],
        "{name}"
    );
    for (element, count) in [
        ("id", 1),
        ("meta", 1),
        ("extension", 2),
        ("event", 1),
        ("timestamp", 1),
        ("source", 1),
        ("responsible", 1),
        ("focus", 1),
    ] {
        assert_eq!(
            header.element_counts.get(element),
            Some(&count),
            "{name}: {element}"
        );
    }
    for absent in ["receiver", "author", "reason", "response"] {
        assert_eq!(header.element_counts.get(absent), None, "{name}: {absent}");
    }
    for patient in &msg.patients {
        let entry = resolve(msg, &patient.full_url);
        assert_eq!(entry.resource_type, "Patient", "{name}");
        assert_eq!(entry.resource_id, patient.resource_id, "{name}");
    }
}

/// Every example: (file, event code, messageEventType code, focus type, number of Patients).
/// The DCH `-update` examples really send `new`: those events do not use `update`.
#[rustfmt::skip]
const EXAMPLES: &[(&str, &str, &str, &str, usize)] = &[
    ("BirthNotificationWithMother.xml",                 "pds-birth-notification-1", "new", "Communication", 2),
    ("PDS-Change-Of-Address-ems-example.xml",           "pds-change-of-address-1", "new", "Communication", 1),
    ("PDS-Change-Of-GP-ems-example.xml",                "pds-change-of-gp-1", "new", "Communication", 1),
    ("PDS-Death-Notification-formal-ems-example.xml",   "pds-death-notification-1", "new", "Communication", 1),
    ("PDS-Death-Notification-informal-ems-example.xml", "pds-death-notification-1", "new", "Communication", 1),
    ("PDS-Death-Notification-removed-ems-example.xml",  "pds-death-notification-1", "new", "Communication", 1),
    ("PDS-Record-Change.xml",                           "pds-record-change-1", "new", "Patient", 1),
    ("Professional-Contacts-1-delete.xml",              "professional-contacts-1", "delete", "EpisodeOfCare", 1),
    ("Professional-Contacts-1-new.xml",                 "professional-contacts-1", "new", "EpisodeOfCare", 1),
    ("blood-spot-test-outcome-1-delete.xml",            "blood-spot-test-outcome-1", "delete", "Encounter", 0),
    ("blood-spot-test-outcome-1-new.xml",               "blood-spot-test-outcome-1", "new", "Encounter", 1),
    ("blood-spot-test-outcome-1-update.xml",            "blood-spot-test-outcome-1", "new", "Encounter", 1),
    ("newborn-hearing-1-delete.xml",                    "newborn-hearing-1", "delete", "Encounter", 0),
    ("newborn-hearing-1-new.xml",                       "newborn-hearing-1", "new", "Encounter", 1),
    ("newborn-hearing-1-update.xml",                    "newborn-hearing-1", "new", "Encounter", 1),
    ("nipe-outcome-1-new.xml",                          "nipe-outcome-1", "new", "Encounter", 1),
    ("nipe-outcome-1-update.xml",                       "nipe-outcome-1", "new", "Encounter", 1),
    ("vaccinations-1-delete.xml",                       "vaccinations-1", "delete", "Immunization", 1),
    ("vaccinations-1-new.xml",                          "vaccinations-1", "new", "Immunization", 1),
    ("vaccinations-1-update.xml",                       "vaccinations-1", "update", "Immunization", 1),
];

#[test]
fn every_example_extracts_with_its_event_and_focus() {
    let Some(dir) = examples_dir() else { return };
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".xml"))
        .collect();
    names.sort();
    let mut expected: Vec<&str> = EXAMPLES.iter().map(|example| example.0).collect();
    expected.sort_unstable();
    assert_eq!(
        names, expected,
        "every example file has its expectations here"
    );

    for &(name, event_code, message_event_type, focus, patients) in EXAMPLES {
        let msg = example(name).unwrap();
        check_common(name, &msg, event_code, message_event_type);
        assert_eq!(focus_type(&msg), focus, "{name}");
        assert_eq!(msg.patients.len(), patients, "{name}");
        let routing = &header(&msg).routing[0];
        if name.starts_with("BirthNotification") {
            assert_eq!(routing.nhs_number, "1112223330", "{name}: the mother");
        } else {
            assert_eq!(routing.nhs_number, ROUTING_NHS_NUMBER, "{name}");
        }
        // Entries keep document order: the MessageHeader first, no nested resource counted.
        let body = std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(
            msg.entries.len(),
            body.matches("<fullUrl ").count(),
            "{name}"
        );
    }
}

#[test]
fn vaccinations_focus_an_immunization_about_the_patient() {
    let Some(msg) = example("vaccinations-1-new.xml") else {
        return;
    };
    let immunization = resolve(&msg, &header(&msg).focus[0]);
    assert_eq!(immunization.resource_type, "Immunization");
    assert_eq!(immunization.subject_references.len(), 1);
    let patient = resolve(&msg, &immunization.subject_references[0]);
    assert_eq!(patient.resource_type, "Patient");
    assert_eq!(msg.patients[0].nhs_numbers, [ROUTING_NHS_NUMBER]);
    assert_eq!(header(&msg).last_updated, "2017-11-01T15:00:33+00:00");
}

#[test]
fn change_of_address_gives_home_and_old_postcodes() {
    let Some(msg) = example("PDS-Change-Of-Address-ems-example.xml") else {
        return;
    };
    let patient = &msg.patients[0];
    let postcode = |use_: &str| {
        patient
            .addresses
            .iter()
            .find(|address| address.r#use == use_)
            .unwrap_or_else(|| panic!("no {use_} address"))
    };
    let home = postcode("home");
    assert_eq!(home.postal_code, "LS17 7DF");
    assert_eq!(home.period_start, "2019-11-01");
    assert_eq!(home.period_end, "");
    let old = postcode("old");
    assert_eq!(old.postal_code, "WF14 0BQ");
    assert_eq!(old.period_end, "2019-11-01");
    assert_eq!(patient.nhs_numbers, [ROUTING_NHS_NUMBER]);
    assert_eq!(patient.birth_date, "2019-10-02");
    assert!(!patient.gp_present);
    // The Communication's subject is the Patient.
    let communication = resolve(&msg, &header(&msg).focus[0]);
    assert_eq!(
        communication.subject_references,
        [patient.full_url.as_str()]
    );
}

#[test]
fn change_of_gp_resolves_the_practice_through_the_bundle() {
    let Some(msg) = example("PDS-Change-Of-GP-ems-example.xml") else {
        return;
    };
    let patient = &msg.patients[0];
    assert!(patient.gp_present);
    // B86056 is the new practice; B85612 (the previous one) is only on the EpisodeOfCare.
    assert_eq!(patient.gp_practice_code, "B86056");
    // This example's MessageHeader fullUrl lacks `urn:uuid:`; it is reported as sent.
    assert_eq!(
        msg.entries[0].full_url,
        "3cfdf880-13e9-4f6b-8299-53e96ef5ec02"
    );
    assert_eq!(
        header(&msg).responsible,
        ["https://directory.spineservices.nhs.uk/STU3/Organization/X26"]
    );
    let episode = msg
        .entries
        .iter()
        .find(|entry| entry.resource_type == "EpisodeOfCare")
        .unwrap();
    assert_eq!(episode.subject_references, [patient.full_url.as_str()]);
}

#[test]
fn death_notifications_give_the_status_code() {
    for (name, status, deceased) in [
        ("PDS-Death-Notification-formal-ems-example.xml", "2", true),
        ("PDS-Death-Notification-informal-ems-example.xml", "1", true),
        ("PDS-Death-Notification-removed-ems-example.xml", "U", false),
    ] {
        let Some(msg) = example(name) else { return };
        let patient = &msg.patients[0];
        assert_eq!(patient.death_notification_status, status, "{name}");
        assert_eq!(!patient.deceased_date_time.is_empty(), deceased, "{name}");
    }
}

#[test]
fn record_change_focuses_the_patient_with_its_serial_change_number() {
    let Some(msg) = example("PDS-Record-Change.xml") else {
        return;
    };
    let patient = &msg.patients[0];
    assert_eq!(header(&msg).focus, [patient.full_url.as_str()]);
    assert_eq!(patient.version_id, "1");
    assert_eq!(patient.birth_date, "2017-10-02");
    assert!(patient.security_codes.is_empty());
    // No meta.lastUpdated in this example: reported empty, core decides.
    assert_eq!(header(&msg).last_updated, "");
    assert_eq!(header(&msg).element_counts.get("meta"), Some(&1));
}

#[test]
fn birth_notification_has_mother_and_baby() {
    let Some(msg) = example("BirthNotificationWithMother.xml") else {
        return;
    };
    assert_eq!(msg.patients.len(), 2);
    let related = msg
        .entries
        .iter()
        .find(|entry| entry.resource_type == "RelatedPerson")
        .expect("a RelatedPerson");
    assert_eq!(related.subject_references.len(), 1);
    let baby = msg
        .patients
        .iter()
        .find(|patient| patient.full_url == related.subject_references[0])
        .expect("RelatedPerson.patient is one of the Patients");
    let mother = msg
        .patients
        .iter()
        .find(|patient| patient.full_url != baby.full_url)
        .unwrap();
    assert_eq!(mother.nhs_numbers, ["1112223330"]);
    assert_eq!(baby.nhs_numbers, [ROUTING_NHS_NUMBER]);
    assert_eq!(baby.birth_date, "2017-10-02");
    assert_eq!(baby.addresses.len(), 1);
    assert_eq!(baby.addresses[0].postal_code, "LS17 7DF");
    // The mother's practice is an absolute Spine directory reference.
    assert!(mother.gp_present);
    assert_eq!(mother.gp_practice_code, "B86056");
    // The Communication (focus) is about the mother.
    let communication = resolve(&msg, &header(&msg).focus[0]);
    assert_eq!(communication.subject_references, [mother.full_url.as_str()]);
    assert_eq!(header(&msg).element_counts.get("enterer"), Some(&1));
    assert_eq!(header(&msg).routing[0].birth_date_time, "1987-10-02");
}

#[test]
fn dch_delete_carries_only_the_encounter() {
    let Some(msg) = example("blood-spot-test-outcome-1-delete.xml") else {
        return;
    };
    let types: Vec<&str> = msg
        .entries
        .iter()
        .map(|entry| entry.resource_type.as_str())
        .collect();
    assert_eq!(types, ["MessageHeader", "Organization", "Encounter"]);
    assert!(msg.patients.is_empty());
}

#[test]
fn invalid_timezone_is_extracted_as_sent() {
    let Some(msg) = example("nipe-outcome-1-update.xml") else {
        return;
    };
    assert_eq!(header(&msg).timestamp, "2017-11-01T16:02:04+58:00");
}
