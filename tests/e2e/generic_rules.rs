//! The five generic (rule-based) subscription rules end to end over HTTP, as scenario
//! tables: reference data and demographics loaded through the real import path,
//! subscriptions created with `POST /STU3/Subscription`, events published through the edge,
//! deliveries read from the folder sink by mailbox once the ledger has settled.
//!
//! Each rule's table runs the same rows (in area, out of area, other country, moved in and
//! moved out by PDS change of address and the events after each move, unregistered,
//! flagged S and I, no demographics record, a birth notification without the mother's NHS
//! number, a terminated postcode) and says per row whether the event is delivered, not
//! matched, or matched but suppressed (no delivery; the ledger records it as suppressed).
//! Every rule is subscribed in two code forms on two mailboxes (ODS and GSS codes, `HSS`
//! for `COUNTRYCODE`), and both must get exactly the same events.
//!
//! Also: explicit and generic matches for one mailbox give one delivery naming both;
//! `GPRegistration` and `Patient.age` filters on generic subscriptions; GSS codes match
//! only once the sub-ICB code map is loaded.

use nems_e2e::stack::TestStack;

use crate::generic_support::*;

/// What should happen to one row's event at the rule's mailboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Delivered once to each of the rule's mailboxes.
    D,
    /// Not matched: no delivery and no ledger row.
    N,
    /// Matched but the patient is flagged: no delivery, recorded as suppressed.
    S,
}
use Outcome::{D, N, S};

/// The events every rule table publishes, in order.
fn rows() -> Vec<(&'static str, Event)> {
    let coa_at = "2025-03-01T10:00:00+00:00";
    vec![
        (
            "in area, registered",
            vaccination(P_IN, "1984-03-02", Some("LS1 4AP"), Some("B86001")),
        ),
        (
            "out of area (England)",
            vaccination(P_OUT, "1990-07-14", Some("NE61 1AA"), Some("A84001")),
        ),
        (
            "other country (Wales)",
            vaccination(P_WALES, "1966-04-12", Some("CF14 4XW"), Some("W97001")),
        ),
        (
            "moved in (change of address, new postcode in area)",
            change_of_address(P_MOVER_IN, "NE46 1BT", "LS6 2AB", coa_at),
        ),
        (
            "after moving in (publisher still sends the old address)",
            vaccination(P_MOVER_IN, "2015-02-20", Some("NE46 1BT"), Some("A84001")),
        ),
        (
            "moved out (change of address, old postcode in area)",
            change_of_address(P_MOVER_OUT, "LS2 7EW", "NE61 1AA", coa_at),
        ),
        (
            "after moving out (publisher still sends the old address)",
            vaccination(P_MOVER_OUT, "2012-11-05", Some("LS2 7EW"), Some("B86002")),
        ),
        (
            "unregistered",
            vaccination(P_UNREGISTERED, "1979-01-30", Some("LS1 4AP"), None),
        ),
        (
            "flagged S",
            vaccination(P_SENSITIVE, "2001-09-09", Some("LS1 4AP"), Some("B86001")),
        ),
        (
            "flagged I",
            vaccination(P_INVALID, "1988-08-08", Some("LS1 4AP"), Some("B86001")),
        ),
        (
            "no demographics record (event's Patient in area)",
            vaccination(P_NO_RECORD, "2000-01-01", Some("LS1 4AP"), Some("B86001")),
        ),
        (
            "birth notification without the mother's NHS number",
            birth_without_mother(P_BABY, "LS6 2AB", "B86001"),
        ),
        (
            "terminated postcode",
            vaccination(P_TERMINATED, "2003-03-03", Some("LS1 1ZZ"), Some("B86002")),
        ),
        (
            "no demographics record (event's Patient out of area)",
            vaccination(P_SPARE[0], "2000-01-01", Some("NE61 1AA"), Some("A84001")),
        ),
    ]
}

/// Event codes every rule subscribes to (one subscription each per mailbox).
const EVENTS: [&str; 3] = [
    "vaccinations-1",
    "pds-change-of-address-1",
    "pds-birth-notification-1",
];

/// Runs the table for one rule: `forms` are (rule type, organisation code, mailbox).
async fn run_table(forms: &[(&str, &str, &str)], expected: &[Outcome]) {
    let stack = TestStack::start().await;
    load_areas(&stack).await;
    for (rule, code, mailbox) in forms {
        for event in EVENTS {
            subscribe(&stack, mailbox, &generic(rule, code, event, "")).await;
        }
    }
    let rows = rows();
    assert_eq!(rows.len(), expected.len(), "one outcome per row");
    for (_, event) in &rows {
        publish(&stack, event).await;
    }
    let delivered = settled(&stack).await;
    let mailboxes: Vec<&str> = forms.iter().map(|(_, _, m)| *m).collect();
    let mut failures = Vec::new();
    for ((name, event), want) in rows.iter().zip(expected) {
        let got = mailboxes_of(&delivered, event);
        let want_set = match want {
            D => set(&mailboxes),
            N | S => set(&[]),
        };
        if got != want_set {
            failures.push(format!(
                "{name}: expected {want:?} at {want_set:?}, got {got:?}"
            ));
        }
    }
    let want_suppressed = expected.iter().filter(|o| **o == S).count() as u64;
    for mailbox in &mailboxes {
        let got = suppressed(&stack, mailbox).await;
        if got != want_suppressed {
            failures.push(format!(
                "{mailbox}: ledger has {got} suppressed deliveries, expected {want_suppressed}"
            ));
        }
    }
    let want_total = expected.iter().filter(|o| **o == D).count() * mailboxes.len();
    if delivered.len() != want_total {
        failures.push(format!(
            "{} deliveries in the folder sink, expected {want_total}",
            delivered.len()
        ));
    }
    assert!(
        failures.is_empty(),
        "rule {}:\n{}",
        forms[0].0,
        failures.join("\n")
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_cho_postcode_ccg_table() {
    run_table(
        &[
            ("CHO_POSTCODE_CCG", "15F", MBX1),
            ("CHO_POSTCODE_CCG", "E38000225", MBX2),
        ],
        &[D, N, N, D, D, D, N, D, S, S, D, D, D, N],
    )
    .await;
}

#[tokio::test]
async fn generic_cho_gp_ccg_table() {
    run_table(
        &[
            ("CHO_GP_CCG", "15F", MBX1),
            ("CHO_GP_CCG", "E38000225", MBX2),
        ],
        &[D, N, N, N, N, D, D, N, S, S, D, D, D, N],
    )
    .await;
}

#[tokio::test]
async fn generic_gp_gp_gp_table() {
    run_table(
        &[("GP_GP_GP", "B86001", MBX1), ("GP_GP_GP", "b86001", MBX2)],
        &[D, N, N, N, N, N, N, N, S, S, D, D, N, N],
    )
    .await;
}

#[tokio::test]
async fn generic_uhv_postcode_lacode_table() {
    run_table(
        &[
            ("UHV_POSTCODE_LACODE", "409", MBX1),
            ("UHV_POSTCODE_LACODE", "E08000035", MBX2),
        ],
        &[D, N, N, D, D, D, N, D, S, S, D, D, D, N],
    )
    .await;
}

#[tokio::test]
async fn generic_countrycode_and_hss_table() {
    run_table(
        &[
            ("COUNTRYCODE", "E92000001", MBX1),
            ("HSS", "E92000001", MBX2),
        ],
        &[D, D, N, D, D, D, D, D, S, S, D, D, D, D],
    )
    .await;
}

#[tokio::test]
async fn generic_and_explicit_matches_of_one_mailbox_give_one_delivery() {
    let stack = TestStack::start().await;
    load_areas(&stack).await;
    let explicit = subscribe(
        &stack,
        MBX1,
        &nems_e2e::spine::explicit(P_IN, &["vaccinations-1"], "&tag=explicit-1"),
    )
    .await;
    let area = subscribe(
        &stack,
        MBX1,
        &generic("CHO_POSTCODE_CCG", "15F", "vaccinations-1", "&tag=area_15F"),
    )
    .await;
    let practice = subscribe(
        &stack,
        MBX1,
        &generic("GP_GP_GP", "B86001", "vaccinations-1", ""),
    )
    .await;
    subscribe(
        &stack,
        MBX2,
        &generic("COUNTRYCODE", "E92000001", "vaccinations-1", ""),
    )
    .await;
    let event = vaccination(P_IN, "1984-03-02", Some("LS1 4AP"), Some("B86001"));
    publish(&stack, &event).await;
    let delivered = settled(&stack).await;
    assert_eq!(mailboxes_of(&delivered, &event), set(&[MBX1, MBX2]));
    let at_mbx1 = deliveries_of(&delivered, &event)
        .into_iter()
        .find(|d| d.mailbox == MBX1)
        .expect("MBX1 delivery");
    let mut partners: Vec<&str> = at_mbx1.partner_id.split("~~~").collect();
    partners.sort_unstable();
    let mut want = vec![format!("{explicit}|explicit-1"), format!("{area}|area_15F")];
    want.sort_unstable();
    assert_eq!(partners, want, "tagged matches in Mex-PartnerID");
    // The untagged practice match is in the ledger row, not in the partner id.
    let deliveries = stack
        .operator()
        .list_deliveries(nems_proto::v1::ListDeliveriesRequest {
            mailbox: MBX1.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    let mut matched = deliveries[0].subscription_ids.clone();
    matched.sort_unstable();
    let mut want_ids = vec![explicit, area, practice];
    want_ids.sort_unstable();
    assert_eq!(matched, want_ids);
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_gp_registration_filter() {
    let stack = TestStack::start().await;
    load_areas(&stack).await;
    let rule = |extra: &str| generic("CHO_POSTCODE_CCG", "15F", "vaccinations-1", extra);
    subscribe(&stack, MBX1, &rule("&GPRegistration=RegisteredOnly")).await;
    subscribe(&stack, MBX2, &rule("&GPRegistration=UnregisteredOnly")).await;
    subscribe(&stack, MBX3, &rule("")).await;
    let table = [
        (
            "registered (store)",
            vaccination(P_IN, "1984-03-02", None, None),
            set(&[MBX1, MBX3]),
        ),
        (
            "unregistered (store), though the publisher names a practice",
            vaccination(P_UNREGISTERED, "1979-01-30", None, Some("B86001")),
            set(&[MBX2, MBX3]),
        ),
        (
            "no record, registered per the event",
            vaccination(P_SPARE[1], "2000-01-01", Some("LS2 7EW"), Some("B86002")),
            set(&[MBX1, MBX3]),
        ),
        (
            "no record, unregistered per the event",
            vaccination(P_SPARE[2], "2000-01-01", Some("LS2 7EW"), None),
            set(&[MBX2, MBX3]),
        ),
    ];
    for (_, event, _) in &table {
        publish(&stack, event).await;
    }
    let delivered = settled(&stack).await;
    for (name, event, want) in &table {
        assert_eq!(&mailboxes_of(&delivered, event), want, "{name}");
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_age_filters() {
    let stack = TestStack::start().await;
    load_areas(&stack).await;
    let rule = |extra: &str| generic("CHO_POSTCODE_CCG", "15F", "vaccinations-1", extra);
    subscribe(&stack, MBX1, &rule("&Patient.age=lt14")).await;
    subscribe(&stack, MBX2, &rule("&Patient.age=gt60")).await;
    subscribe(&stack, MBX3, &rule("&Patient.age=gt5&Patient.age=lt19")).await;
    let aged = |nhs: &str, years: i32| {
        vaccination(nhs, &born_years_ago(years), Some("LS1 4AP"), Some("B86001"))
    };
    let table = [
        ("age 3", aged(P_SPARE[0], 3), set(&[MBX1])),
        ("age 10", aged(P_SPARE[1], 10), set(&[MBX1, MBX3])),
        ("age 14", aged(P_SPARE[2], 14), set(&[MBX3])),
        ("age 30", aged(P_SPARE[3], 30), set(&[])),
        ("age 61", aged(P_NO_RECORD, 61), set(&[MBX2])),
        ("age 60", aged(P_BABY, 60), set(&[])),
    ];
    for (_, event, _) in &table {
        publish(&stack, event).await;
    }
    let delivered = settled(&stack).await;
    for (name, event, want) in &table {
        assert_eq!(&mailboxes_of(&delivered, event), want, "{name}");
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_gss_codes_match_once_the_code_map_is_loaded() {
    let stack = TestStack::start().await;
    import_clean(&stack, "nhg-areas.csv", NHSPD_AREAS).await;
    import_clean(&stack, "epraccur-areas.csv", EPRACCUR_AREAS).await;
    subscribe(
        &stack,
        MBX1,
        &generic("CHO_POSTCODE_CCG", "15F", "vaccinations-1", ""),
    )
    .await;
    subscribe(
        &stack,
        MBX2,
        &generic("CHO_POSTCODE_CCG", "E38000225", "vaccinations-1", ""),
    )
    .await;
    subscribe(
        &stack,
        MBX3,
        &generic("CHO_GP_CCG", "E38000225", "vaccinations-1", ""),
    )
    .await;
    let before = vaccination(P_NO_RECORD, "2000-01-01", Some("LS1 4AP"), Some("B86001"));
    publish(&stack, &before).await;
    let delivered = settled(&stack).await;
    assert_eq!(
        mailboxes_of(&delivered, &before),
        set(&[MBX1]),
        "NHSPD and epraccur carry ODS sub-ICB codes only"
    );
    import_clean(&stack, "sicbl-codes.csv", SICBL_CODES).await;
    let after = vaccination(P_NO_RECORD, "2000-01-01", Some("LS1 4AP"), Some("B86001"));
    publish(&stack, &after).await;
    let delivered = settled(&stack).await;
    assert_eq!(
        mailboxes_of(&delivered, &after),
        set(&[MBX1, MBX2, MBX3]),
        "the code map makes E38000225 and 15F one area"
    );
    stack.shutdown().await;
}
