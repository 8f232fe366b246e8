//! Shared by the generic-subscription tests (`generic_rules`, `generic_demographics`,
//! `generic_refdata`); proves nothing by itself.
//!
//! - The fixtures under `fixtures/generic/`: small reference files in the official shapes
//!   (NHSPD, NSPL, epraccur, the ONS sub-ICB code lookup, our demographics CSV) and event
//!   message templates authored for these tests, with `{{PLACEHOLDER}}`s filled per event.
//! - Loading files through the real import path (`nems_cli::import::import` streaming to
//!   core's `ImportReferenceData` / `ImportDemographics` over gRPC).
//! - Creating subscriptions with `POST /STU3/Subscription` and publishing events with
//!   `POST /STU3/Events/1/$process-message`, both over HTTP through the edge.
//! - [`settled`]: waits until core's ledger has nothing queued or in flight, so the folder
//!   sink then holds every delivery there will ever be and an absence means something.

use std::collections::BTreeSet;
use std::time::Duration;

use nems_cli::import::{self, Summary};
use nems_e2e::eventually::eventually;
use nems_e2e::outbox::{self, FolderDelivery};
use nems_e2e::spine::{Caller, Op, PDS, SUBSCRIBER, subscription_xml, with_media};
use nems_e2e::stack::TestStack;
use nems_proto::v1 as pb;

/// The postcode → area table of these tests (NHSPD: ODS sub-ICB and LA codes, GSS LAD and
/// country). `LS…` postcodes are in sub-ICB `15F` (GSS `E38000225`), local authority `409`
/// (`E08000035`); `NE…` in `00L` / `929` (`E06000057`); `CF14 4XW` in Wales (`7A4`, `052`,
/// `W92000004`); `SW1A 1AA` in `W2U3Z`. `LS1 1ZZ` is terminated.
pub(crate) const NHSPD_AREAS: &[u8] = include_bytes!("fixtures/generic/nhg-areas.csv");
/// epraccur: `B86001`, `B86002` → `15F`; `A84001`, `A84002` → `00L`; `W97001` → `7A4`.
pub(crate) const EPRACCUR_AREAS: &[u8] = include_bytes!("fixtures/generic/epraccur-areas.csv");
/// The sub-ICB GSS ↔ ODS lookup (`E38000225` ↔ `15F`, `E38000130` ↔ `00L`, `W11000029` ↔ `7A4`).
pub(crate) const SICBL_CODES: &[u8] = include_bytes!("fixtures/generic/sicbl-codes.csv");
/// The demographics store's starting content (see the `P_*` constants).
pub(crate) const DEMOGRAPHICS: &[u8] = include_bytes!("fixtures/generic/demographics.csv");
/// An NSPL (August 2025 layout) with `LS1 4AP` moved to `E38000130` and a new `LS9 7TF`.
pub(crate) const NSPL_REPLACEMENT: &[u8] = include_bytes!("fixtures/generic/nspl-replacement.csv");
/// NHSPD with a bad postcode on line 2 and a short row on line 4 among three good rows.
pub(crate) const NHSPD_MALFORMED: &[u8] = include_bytes!("fixtures/generic/nhg-malformed.csv");
/// A CSV of no reference shape at all.
pub(crate) const WRONG_SHAPE: &[u8] = include_bytes!("fixtures/generic/wrong-shape.csv");

const VACCINATIONS: &str = include_str!("fixtures/generic/vaccinations-1.xml");
const CHANGE_OF_ADDRESS: &str = include_str!("fixtures/generic/pds-change-of-address-1.xml");
const CHANGE_OF_GP: &str = include_str!("fixtures/generic/pds-change-of-gp-1.xml");
const BIRTH_WITHOUT_MOTHER: &str = include_str!("fixtures/generic/pds-birth-notification-1.xml");
const RECORD_CHANGE: &str = include_str!("fixtures/generic/pds-record-change-1.xml");

/// Lives at `LS1 4AP`, registered at `B86001`: in every area of the rule tables.
pub(crate) const P_IN: &str = "9991000003";
/// Lives at `NE61 1AA` (England, `00L`), registered at `A84001`.
pub(crate) const P_OUT: &str = "9991000011";
/// Lives at `NE46 1BT`, registered at `A84001`; moves to `LS6 2AB`.
pub(crate) const P_MOVER_IN: &str = "9991000038";
/// Lives at `LS2 7EW`, registered at `B86002`; moves to `NE61 1AA`.
pub(crate) const P_MOVER_OUT: &str = "9991000046";
/// Lives at `LS1 4AP`, not registered with a practice.
pub(crate) const P_UNREGISTERED: &str = "9991000054";
/// Flagged S (sensitive); `LS1 4AP`, `B86001`.
pub(crate) const P_SENSITIVE: &str = "9991000062";
/// Lives in Cardiff (`CF14 4XW`, Wales), registered at `W97001`.
pub(crate) const P_WALES: &str = "9991000070";
/// Not in the demographics store at all.
pub(crate) const P_NO_RECORD: &str = "9991000089";
/// A baby born without the mother's NHS number; not in the store before the birth.
pub(crate) const P_BABY: &str = "9991000097";
/// Lives at `NE61 1AA`, registered at `A84001`; changes practice to `B86001`.
pub(crate) const P_GP_CHANGE: &str = "9991000100";
/// Lives at `LS6 2AB`, registered at `B86001`, both as of 2024-06-01.
pub(crate) const P_NEWER: &str = "9991000119";
/// Lives at the terminated postcode `LS1 1ZZ`, registered at `B86002`.
pub(crate) const P_TERMINATED: &str = "9991000127";
/// Flagged I (invalid); `LS1 4AP`, `B86001`.
pub(crate) const P_INVALID: &str = "9991000135";
/// Lives at `LS2 7EW`, registered at `B86001`; gets a PDS record change.
pub(crate) const P_RECORD_CHANGE: &str = "9991000143";
/// More patients not in the store (age filter rows).
pub(crate) const P_SPARE: [&str; 4] = ["9991000151", "9991000178", "9991000186", "9991000194"];

/// The three mailboxes of the test directory (all RR8's).
pub(crate) const MBX1: &str = "RR8MBX01";
pub(crate) const MBX2: &str = "RR8MBX02";
pub(crate) const MBX3: &str = "RR8MBX03";

/// Core's operator URL.
pub(crate) fn operator_url(stack: &TestStack) -> String {
    format!("http://{}", stack.operator_addr)
}

/// Imports a file through `nems_cli::import::import` (the `nems import` path).
pub(crate) async fn import_bytes(
    stack: &TestStack,
    name: &str,
    bytes: &'static [u8],
) -> anyhow::Result<Summary> {
    import::import(bytes, name, &operator_url(stack), false).await
}

/// Imports a file that must load with no bad rows; returns the rows core stored.
pub(crate) async fn import_clean(stack: &TestStack, name: &str, bytes: &'static [u8]) -> u64 {
    let summary = import_bytes(stack, name, bytes)
        .await
        .unwrap_or_else(|e| panic!("importing {name}: {e:#}"));
    assert_eq!(summary.bad, 0, "{name}: {summary:?}");
    summary.rows
}

/// Loads the test areas (postcodes, practices, the code map) and the demographics.
pub(crate) async fn load_areas(stack: &TestStack) {
    assert_eq!(import_clean(stack, "nhg-areas.csv", NHSPD_AREAS).await, 8);
    assert_eq!(
        import_clean(stack, "epraccur-areas.csv", EPRACCUR_AREAS).await,
        5
    );
    // Both directions of three pairs.
    assert_eq!(import_clean(stack, "sicbl-codes.csv", SICBL_CODES).await, 6);
    assert_eq!(
        import_clean(stack, "demographics.csv", DEMOGRAPHICS).await,
        12
    );
}

/// Core's status.
pub(crate) async fn status(stack: &TestStack) -> pb::GetStatusResponse {
    stack
        .operator()
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

/// Looks a postcode up in the reference data in force.
pub(crate) async fn lookup_postcode(stack: &TestStack, postcode: &str) -> Option<pb::PostcodeRow> {
    let answer = stack
        .operator()
        .lookup_area(pb::LookupAreaRequest {
            key: Some(pb::lookup_area_request::Key::Postcode(postcode.into())),
        })
        .await
        .expect("lookup")
        .into_inner();
    assert_eq!(answer.found, answer.postcode.is_some());
    answer.postcode
}

/// Generic criteria for `rule`/`code`/`event` plus extra components.
pub(crate) fn generic(rule: &str, code: &str, event: &str, extra: &str) -> String {
    nems_e2e::spine::generic(rule, code, event, extra)
}

/// Creates a subscription for RR8 over HTTP; returns its id.
pub(crate) async fn subscribe(stack: &TestStack, mailbox: &str, criteria: &str) -> String {
    let response = stack
        .http
        .post(
            "/STU3/Subscription",
            &with_media(SUBSCRIBER, Op::Create, "application/fhir+xml", None),
            subscription_xml("RR8", mailbox, criteria),
        )
        .await;
    assert_eq!(response.status, 201, "{criteria}: {}", response.text());
    let location = response.header("location").expect("Location");
    let id = location
        .rsplit_once("STU3/Subscription/")
        .map(|(_, id)| id.to_string())
        .expect("id in Location");
    assert_eq!(id.len(), 32, "{location}");
    id
}

/// An event message ready to publish.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// Event code (also the publish interaction name).
    pub(crate) code: &'static str,
    /// Who publishes it.
    pub(crate) caller: Caller,
    /// The Bundle.
    pub(crate) xml: String,
    /// `MessageHeader.id`, unique per event: finds its deliveries in the folder sink.
    pub(crate) marker: String,
}

/// Fills a template: fresh UUIDs for every `…_ID`, then `values`.
fn fill(template: &str, code: &'static str, caller: Caller, values: &[(&str, String)]) -> Event {
    let marker = uuid::Uuid::new_v4().to_string();
    let mut xml = template.replace("{{MESSAGE_ID}}", &marker);
    for id in [
        "BUNDLE_ID",
        "FOCUS_ID",
        "PATIENT_ID",
        "ORG_ID",
        "SERVICE_ID",
        "PRACTICE_ID",
        "RELATED_ID",
        "BABY_ID",
    ] {
        xml = xml.replace(&format!("{{{{{id}}}}}"), &uuid::Uuid::new_v4().to_string());
    }
    for (name, value) in values {
        xml = xml.replace(&format!("{{{{{name}}}}}"), value);
    }
    assert!(!xml.contains("{{"), "unfilled placeholder in {code}: {xml}");
    Event {
        code,
        caller,
        xml,
        marker,
    }
}

/// A vaccinations event from RR8 carrying the publisher's copy of the patient: a home
/// address and a registered practice when given.
pub(crate) fn vaccination(
    nhs: &str,
    birth_date: &str,
    postcode: Option<&str>,
    practice: Option<&str>,
) -> Event {
    let address = postcode.map_or_else(String::new, |p| {
        format!(
            "\t\t\t\t<address>\n\t\t\t\t\t<use value=\"home\"/>\n\t\t\t\t\t<line value=\"5 TEST STREET\"/>\n\t\t\t\t\t<postalCode value=\"{p}\"/>\n\t\t\t\t</address>"
        )
    });
    let gp = practice.map_or_else(String::new, |g| {
        format!(
            "\t\t\t\t<generalPractitioner>\n\t\t\t\t\t<reference value=\"https://directory.spineservices.nhs.uk/STU3/Organization/{g}\"/>\n\t\t\t\t</generalPractitioner>"
        )
    });
    fill(
        VACCINATIONS,
        "vaccinations-1",
        SUBSCRIBER,
        &[
            ("NHS", nhs.into()),
            ("BIRTH_DATE", birth_date.into()),
            ("LAST_UPDATED", "2025-03-01T10:00:00+00:00".into()),
            ("ADDRESSES", address),
            ("GENERAL_PRACTITIONER", gp),
        ],
    )
}

/// A PDS change of address from `old` to `new`, as of `last_updated`.
pub(crate) fn change_of_address(nhs: &str, old: &str, new: &str, last_updated: &str) -> Event {
    fill(
        CHANGE_OF_ADDRESS,
        "pds-change-of-address-1",
        PDS,
        &[
            ("NHS", nhs.into()),
            ("BIRTH_DATE", "2015-02-20".into()),
            ("OLD_POSTCODE", old.into()),
            ("NEW_POSTCODE", new.into()),
            ("LAST_UPDATED", last_updated.into()),
        ],
    )
}

/// A PDS change of GP to `practice` (whose parent sub-ICB is `parent`), as of `last_updated`.
pub(crate) fn change_of_gp(nhs: &str, practice: &str, parent: &str, last_updated: &str) -> Event {
    fill(
        CHANGE_OF_GP,
        "pds-change-of-gp-1",
        PDS,
        &[
            ("NHS", nhs.into()),
            ("BIRTH_DATE", "1958-12-24".into()),
            ("PRACTICE", practice.into()),
            ("PARENT", parent.into()),
            ("LAST_UPDATED", last_updated.into()),
        ],
    )
}

/// A PDS birth notification without the mother's NHS number; the baby lives at `postcode`
/// (an address without `use`, as in the published example) and is registered at `practice`.
pub(crate) fn birth_without_mother(baby: &str, postcode: &str, practice: &str) -> Event {
    fill(
        BIRTH_WITHOUT_MOTHER,
        "pds-birth-notification-1",
        PDS,
        &[
            ("NHS", baby.into()),
            ("BIRTH_DATE", "2025-02-27".into()),
            ("POSTCODE", postcode.into()),
            ("PRACTICE", practice.into()),
            ("LAST_UPDATED", "2025-03-01T10:00:00+00:00".into()),
        ],
    )
}

/// A PDS record change whose Patient carries security label `security` (`R` sets the S
/// flag, `U` clears it), as of `last_updated`.
pub(crate) fn record_change(nhs: &str, security: &str, last_updated: &str) -> Event {
    fill(
        RECORD_CHANGE,
        "pds-record-change-1",
        PDS,
        &[
            ("NHS", nhs.into()),
            ("BIRTH_DATE", "1977-07-07".into()),
            ("SECURITY", security.into()),
            ("LAST_UPDATED", last_updated.into()),
        ],
    )
}

/// A PDS record change whose Patient has no security label at all (PDS sends the whole
/// record, so this clears an S or I flag), as of `last_updated`.
pub(crate) fn record_change_without_label(nhs: &str, last_updated: &str) -> Event {
    let start = RECORD_CHANGE
        .find("<security>")
        .expect("the template has a security label");
    let end = RECORD_CHANGE
        .find("</security>")
        .expect("the template has a security label")
        + "</security>".len();
    let template = format!("{}{}", &RECORD_CHANGE[..start], &RECORD_CHANGE[end..]);
    let event = fill(
        &template,
        "pds-record-change-1",
        PDS,
        &[
            ("NHS", nhs.into()),
            ("BIRTH_DATE", "1977-07-07".into()),
            ("LAST_UPDATED", last_updated.into()),
        ],
    );
    assert!(!event.xml.contains("<security>"), "{}", event.xml);
    event
}

/// Publishes an event over HTTP; it must be accepted (`202`).
pub(crate) async fn publish(stack: &TestStack, event: &Event) {
    let response = stack
        .http
        .post(
            "/STU3/Events/1/$process-message",
            &with_media(
                event.caller,
                Op::Publish(event.code),
                "application/fhir+xml",
                None,
            ),
            event.xml.clone(),
        )
        .await;
    assert_eq!(response.status, 202, "{}: {}", event.code, response.text());
}

/// Waits until core holds no queued or in-flight delivery (every publish so far was
/// committed before its `202`), then returns everything in the folder sink.
pub(crate) async fn settled(stack: &TestStack) -> Vec<FolderDelivery> {
    let operator = stack.operator();
    eventually(
        "every delivery to settle in the ledger",
        Duration::from_secs(30),
        || {
            let mut operator = operator.clone();
            async move {
                let status = operator
                    .get_status(pb::GetStatusRequest {})
                    .await
                    .ok()?
                    .into_inner();
                (status.deliveries_pending == 0).then_some(())
            }
        },
    )
    .await;
    outbox::read(&stack.outbox)
}

/// The deliveries of one event (by its marker).
pub(crate) fn deliveries_of<'a>(
    all: &'a [FolderDelivery],
    event: &Event,
) -> Vec<&'a FolderDelivery> {
    all.iter()
        .filter(|d| String::from_utf8_lossy(&d.payload).contains(&event.marker))
        .collect()
}

/// The mailboxes an event was delivered to; panics when one got it twice or the payload
/// was altered.
pub(crate) fn mailboxes_of(all: &[FolderDelivery], event: &Event) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for d in deliveries_of(all, event) {
        assert_eq!(
            d.payload,
            event.xml.as_bytes(),
            "payload delivered unchanged"
        );
        assert!(
            out.insert(d.mailbox.clone()),
            "{} got event {} twice",
            d.mailbox,
            event.marker
        );
    }
    out
}

/// A set of mailbox names.
pub(crate) fn set(mailboxes: &[&str]) -> BTreeSet<String> {
    mailboxes.iter().map(|m| (*m).to_string()).collect()
}

/// The ledger's count of suppressed deliveries per mailbox.
pub(crate) async fn suppressed(stack: &TestStack, mailbox: &str) -> u64 {
    stack
        .operator()
        .get_mailbox_stats(pb::GetMailboxStatsRequest {
            mailbox: mailbox.into(),
        })
        .await
        .expect("mailbox stats")
        .into_inner()
        .mailboxes
        .first()
        .map_or(0, |m| m.suppressed)
}

/// A birth date about `years` and a half years before today (UTC): the age in completed
/// years is `years` whatever today is.
pub(crate) fn born_years_ago(years: i32) -> String {
    let today = time::OffsetDateTime::now_utc().date();
    let half_year_ago = today - time::Duration::days(180);
    let shifted = half_year_ago.year() - years;
    let birth = half_year_ago
        .replace_year(shifted)
        .or_else(|_| (half_year_ago - time::Duration::days(1)).replace_year(shifted))
        .expect("a valid date");
    let mut age = today.year() - birth.year();
    if (u8::from(today.month()), today.day()) < (u8::from(birth.month()), birth.day()) {
        age -= 1;
    }
    assert_eq!(age, years, "born {birth}");
    format!(
        "{:04}-{:02}-{:02}",
        birth.year(),
        u8::from(birth.month()),
        birth.day()
    )
}
