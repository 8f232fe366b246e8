//! Event facts and demographics updates of PDS events.

use nems_proto::v1 as pb;

use super::*;
use crate::domain::catalogue::Catalogue;

fn address(use_: &str, postcode: &str) -> pb::PatientAddress {
    pb::PatientAddress {
        r#use: use_.into(),
        postal_code: postcode.into(),
        ..Default::default()
    }
}

fn event(code: &str, patient: pb::PatientSummary) -> ValidEvent {
    ValidEvent {
        event_type: Catalogue::default().get(code).unwrap().clone(),
        message_event_type: "new".into(),
        nhs_number: Some("9912003888".into()),
        birth_date: None,
        last_updated_ms: Some(1_000),
        subject: Some(patient),
        baby: None,
        notices: Vec::new(),
    }
}

#[test]
fn change_of_address_gives_new_and_old_postcodes() {
    let p = pb::PatientSummary {
        addresses: vec![
            address("old", "wf14 0bq"),
            address("home", "LS17 7DF"),
            address("temp", "B1 1AA"),
        ],
        ..Default::default()
    };
    let e = event("pds-change-of-address-1", p);
    let f = facts(&e);
    assert!(f.authoritative);
    assert_eq!(f.postcodes, vec!["WF140BQ", "LS177DF"]);
    let u = updates(&e, 5);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].postcode, Some(("LS177DF".into(), "WF140BQ".into())));
    assert_eq!(u[0].at_ms, 1_000);
}

#[test]
fn other_events_use_only_the_home_address_and_update_nothing() {
    let p = pb::PatientSummary {
        addresses: vec![address("old", "WF14 0BQ"), address("home", "LS17 7DF")],
        ..Default::default()
    };
    let e = event("vaccinations-1", p);
    assert_eq!(facts(&e).postcodes, vec!["LS177DF"]);
    assert!(!facts(&e).authoritative);
    assert!(updates(&e, 5).is_empty());
}

#[test]
fn gp_death_and_flags() {
    let gp = event(
        "pds-change-of-gp-1",
        pb::PatientSummary {
            gp_present: true,
            gp_practice_code: "b86056".into(),
            ..Default::default()
        },
    );
    assert_eq!(updates(&gp, 0)[0].gp_practice.as_deref(), Some("B86056"));
    let deregistered = event("pds-change-of-gp-1", pb::PatientSummary::default());
    assert_eq!(
        updates(&deregistered, 0)[0].gp_practice.as_deref(),
        Some("")
    );
    let death = event(
        "pds-death-notification-1",
        pb::PatientSummary {
            deceased_date_time: "2017-11-01T10:00:00+00:00".into(),
            death_notification_status: "2".into(),
            ..Default::default()
        },
    );
    assert_eq!(
        updates(&death, 0)[0].date_of_death.as_deref(),
        Some("2017-11-01")
    );
    let removed = event(
        "pds-death-notification-1",
        pb::PatientSummary {
            death_notification_status: "U".into(),
            ..Default::default()
        },
    );
    assert_eq!(updates(&removed, 0)[0].date_of_death.as_deref(), Some(""));
    let flagged = event(
        "pds-record-change-1",
        pb::PatientSummary {
            security_codes: vec!["R".into()],
            ..Default::default()
        },
    );
    assert_eq!(facts(&flagged).flag, Some(pb::PatientFlag::Sensitive));
    assert_eq!(
        updates(&flagged, 0)[0].flag,
        Some(pb::PatientFlag::Sensitive)
    );
    let cleared = event(
        "pds-record-change-1",
        pb::PatientSummary {
            security_codes: vec!["U".into()],
            ..Default::default()
        },
    );
    assert_eq!(
        updates(&cleared, 0)[0].flag,
        Some(pb::PatientFlag::Unspecified)
    );
    let invalid = event(
        "pds-record-change-1",
        pb::PatientSummary {
            security_codes: vec!["REDACTED".into()],
            ..Default::default()
        },
    );
    assert_eq!(facts(&invalid).flag, Some(pb::PatientFlag::Invalid));
}

#[test]
fn a_record_change_without_a_label_states_no_flag_for_matching_and_the_store_alike() {
    // Regression: facts() gave `None` here (so matching fell back to the stored S flag and
    // suppressed this very event) while updates() cleared the stored flag.
    let unlabelled = event(
        "pds-record-change-1",
        pb::PatientSummary {
            birth_date: "1977-07-07".into(),
            ..Default::default()
        },
    );
    let stated = facts(&unlabelled).flag;
    assert_eq!(stated, Some(pb::PatientFlag::Unspecified));
    assert_eq!(updates(&unlabelled, 0)[0].flag, stated);
    // Other events state no flag: matching reads the stored one.
    let vaccination = event("vaccinations-1", pb::PatientSummary::default());
    assert_eq!(facts(&vaccination).flag, None);
}

#[test]
fn birth_without_mother_uses_and_records_the_baby() {
    let mut e = event("pds-birth-notification-1", pb::PatientSummary::default());
    e.nhs_number = None;
    e.subject = None;
    e.baby = Some(pb::PatientSummary {
        nhs_numbers: vec!["9990000018".into()],
        birth_date: "2024-05-01".into(),
        addresses: vec![address("home", "LS1 4AP")],
        gp_present: true,
        gp_practice_code: "B86001".into(),
        ..Default::default()
    });
    let f = facts(&e);
    assert_eq!(f.postcodes, vec!["LS14AP"]);
    let u = updates(&e, 9);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].birth_date.as_deref(), Some("2024-05-01"));
    assert_eq!(u[0].gp_practice.as_deref(), Some("B86001"));
}

#[test]
fn an_address_without_use_is_home_only_when_none_says_home() {
    let mut e = event("pds-birth-notification-1", pb::PatientSummary::default());
    e.nhs_number = None;
    e.subject = None;
    e.baby = Some(pb::PatientSummary {
        nhs_numbers: vec!["9990000018".into()],
        addresses: vec![address("", "LS1 4AP")],
        ..Default::default()
    });
    assert_eq!(facts(&e).postcodes, vec!["LS14AP"]);
    assert_eq!(
        updates(&e, 9)[0].postcode,
        Some(("LS14AP".into(), String::new()))
    );
    let both = pb::PatientSummary {
        addresses: vec![address("", "B1 1AA"), address("home", "LS17 7DF")],
        ..Default::default()
    };
    assert_eq!(
        facts(&event("vaccinations-1", both)).postcodes,
        vec!["LS177DF"]
    );
}
