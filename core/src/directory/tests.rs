//! Permission checks of the directory, one row per rule of decisions.md §13–14.

use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;

use super::*;
use crate::domain::catalogue::Catalogue;
use crate::domain::subscription::validate;

const FILE: &str = r#"
[[system]]
asid = "200000000111"
ods_codes = ["RR8", "X26"]
category_bags = ["NEMS_SUBS_TYPE:EXPLICIT", "NEMS_EVENT_ID:CHANGEOFADDRESS_1"]
publish_message_sets = ["Vaccinations"]

[[system]]
asid = "200000000222"
ods_codes = ["ABC"]
category_bags = ["NEMS_SUBS_TYPE:GENERIC"]

[[system]]
asid = "200000000333"
ods_codes = ["X26"]
pds_publisher = true

[[mailbox]]
id = "rr8mbx01"
ods_code = "RR8"

[[mailbox]]
id = "X26MBX01"
ods_code = "X26"
"#;

fn directory() -> Directory {
    let file = DirectoryFile::parse(FILE).unwrap();
    Directory::new(
        file.system.iter().map(SystemEntry::to_pb).collect(),
        file.mailbox.iter().map(MailboxEntry::to_pb).collect(),
    )
}

fn caller(asid: &str, ods: &str) -> pb::Caller {
    pb::Caller {
        asid: asid.into(),
        ods_code: ods.into(),
        ..Default::default()
    }
}

fn subscription(contact: &str, mailbox: &str, criteria: &str) -> ValidSubscription {
    let r = pb::SubscriptionResource {
        status: "requested".into(),
        contact: vec![pb::ContactPoint {
            system: "url".into(),
            value: format!("{}{contact}", crate::domain::subscription::CONTACT_PREFIX),
            r#use: "work".into(),
        }],
        reason: "care".into(),
        criteria: criteria.into(),
        channel: Some(pb::SubscriptionChannel {
            r#type: "message".into(),
            endpoint: mailbox.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    validate(&r, &Catalogue::default(), 0).unwrap()
}

const ADDRESS: &str = "/Bundle?type=message&Patient.identifier=9434765919&MessageHeader.event=pds-change-of-address-1";

#[test]
fn caller_checks() {
    let d = directory();
    assert!(
        d.caller(&caller("200000000111", "rr8"), Proof::Forwarded(None))
            .is_ok()
    );
    assert_eq!(
        d.caller(&caller("999999999999", "RR8"), Proof::Forwarded(None))
            .unwrap_err()
            .code,
        SpineCode::AsidCheckFailed
    );
    assert_eq!(
        d.caller(&caller("200000000111", "ABC"), Proof::Forwarded(None))
            .unwrap_err()
            .code,
        SpineCode::AccessDenied
    );
}

#[test]
fn subscription_permission_table() {
    let d = directory();
    let sys = d.system("200000000111").unwrap().clone();
    let generic_sys = d.system("200000000222").unwrap().clone();
    let cases: Vec<(&pb::SpineSystem, ValidSubscription, Option<SpineCode>, &str)> = vec![
        (&sys, subscription("RR8", "RR8MBX01", ADDRESS), None, ""),
        // Missing category bag for the event.
        (
            &sys,
            subscription(
                "RR8",
                "RR8MBX01",
                "/Bundle?type=message&Patient.identifier=9434765919&MessageHeader.event=vaccinations-1",
            ),
            Some(SpineCode::AccessDenied),
            "NEMS_EVENT_ID:VACCINATIONS_1",
        ),
        // Missing subscription-type bag.
        (
            &generic_sys,
            subscription("ABC", "RR8MBX01", ADDRESS),
            Some(SpineCode::AccessDenied),
            "NEMS_SUBS_TYPE:EXPLICIT",
        ),
        // Contact organisation unknown anywhere: answered as not linked, so that answers
        // do not reveal which ODS codes exist.
        (
            &sys,
            subscription("ZZZ", "RR8MBX01", ADDRESS),
            Some(SpineCode::AccessDenied),
            "the contact organisation ZZZ is not linked to ASID 200000000111",
        ),
        // Contact organisation known but not linked to the ASID.
        (
            &sys,
            subscription("ABC", "RR8MBX01", ADDRESS),
            Some(SpineCode::AccessDenied),
            "the contact organisation ABC is not linked to ASID 200000000111",
        ),
        // Unknown mailbox.
        (
            &sys,
            subscription("RR8", "NOPE01", ADDRESS),
            Some(SpineCode::InvalidRequestMessage),
            "not a registered MESH mailbox",
        ),
        // Mailbox of another organisation.
        (
            &sys,
            subscription("RR8", "X26MBX01", ADDRESS),
            Some(SpineCode::AccessDenied),
            "belongs to organisation X26",
        ),
    ];
    for (system, sub, expected, needle) in cases {
        match (d.authorise_subscription(system, &sub), expected) {
            (Ok(()), None) => {}
            (Err(e), Some(code)) => {
                assert_eq!(e.code, code, "{}", e.diagnostics);
                assert!(e.diagnostics.contains(needle), "{}", e.diagnostics);
            }
            (got, want) => panic!("{got:?} but wanted {want:?}"),
        }
    }
}

#[test]
fn publish_permissions() {
    let d = directory();
    let c = Catalogue::default();
    let publisher = d.system("200000000111").unwrap();
    let pds = d.system("200000000333").unwrap();
    assert!(
        d.authorise_publish(publisher, c.get("vaccinations-1").unwrap())
            .is_ok()
    );
    let e = d
        .authorise_publish(publisher, c.get("newborn-hearing-1").unwrap())
        .unwrap_err();
    assert_eq!(e.code, SpineCode::AsidCheckFailed);
    let e = d
        .authorise_publish(publisher, c.get("pds-change-of-gp-1").unwrap())
        .unwrap_err();
    assert_eq!(e.code, SpineCode::AsidCheckFailed);
    assert!(
        d.authorise_publish(pds, c.get("pds-change-of-gp-1").unwrap())
            .is_ok()
    );
    // Being the PDS publisher grants pds-* events only (decisions.md §14): other events
    // need their message set, as for any ASID.
    let e = d
        .authorise_publish(pds, c.get("vaccinations-1").unwrap())
        .unwrap_err();
    assert_eq!(e.code, SpineCode::AsidCheckFailed);
    assert!(e.diagnostics.contains("Vaccinations"), "{}", e.diagnostics);
}

#[test]
fn directory_file_errors_name_the_entry() {
    let e = DirectoryFile::parse("[[system]]\nasid = \"12\"\n").unwrap_err();
    assert!(e.contains("system 12") && e.contains("12 digits"), "{e}");
    let e = DirectoryFile::parse("[[system]]\nasid = \"200000000111\"\ncolour = 1\n").unwrap_err();
    assert!(e.contains("colour"), "{e}");
    let e = DirectoryFile::parse("[[mailbox]]\nid = \"a b\"\nods_code = \"X\"\n").unwrap_err();
    assert!(e.contains("mailbox a b"), "{e}");
}

#[test]
fn directory_file_syntax_errors_give_key_and_position_but_not_the_line() {
    // toml's own Display would print the whole offending line.
    let e = DirectoryFile::parse(
        "[[system]]\nasid = \"200000000111\"\ndescription = Leeds child health\n",
    )
    .unwrap_err();
    assert!(
        e.contains("system.description") && e.contains("line 3"),
        "{e}"
    );
    assert!(!e.contains("Leeds"), "{e}");
    let e = DirectoryFile::parse("[[mailbox]]\nid = \"RR8MBX01\"\nods_code = 42\n").unwrap_err();
    assert!(
        e.contains("mailbox.ods_code") && e.contains("line 3"),
        "{e}"
    );
}
