//! The demographics store behind generic matching, end to end over HTTP: PDS events the
//! service accepts update the store (change of GP, change of address, record change
//! setting and clearing the S flag, with a `U` label or with none), so later events from
//! other publishers match by the new facts even when the publisher's own copy of the
//! patient is stale; a record change is itself matched with the flag it states; and a PDS
//! event older (`MessageHeader.meta.lastUpdated`) than what the store holds never
//! overwrites it.

use nems_e2e::stack::TestStack;

use crate::generic_support::*;

#[tokio::test]
async fn generic_pds_change_of_gp_moves_later_events_to_the_new_practice() {
    let stack = TestStack::start().await;
    load_areas(&stack).await;
    subscribe(
        &stack,
        MBX1,
        &generic("GP_GP_GP", "B86001", "vaccinations-1", ""),
    )
    .await;
    subscribe(
        &stack,
        MBX2,
        &generic("CHO_GP_CCG", "00L", "vaccinations-1", ""),
    )
    .await;
    subscribe(
        &stack,
        MBX3,
        &generic("CHO_GP_CCG", "15F", "pds-change-of-gp-1", ""),
    )
    .await;
    // The publisher's copy names the old practice every time.
    let stale = || vaccination(P_GP_CHANGE, "1958-12-24", Some("NE61 1AA"), Some("A84001"));
    let before = stale();
    let change = change_of_gp(P_GP_CHANGE, "B86001", "15F", "2025-01-15T12:00:00+00:00");
    let after = stale();
    for event in [&before, &change, &after] {
        publish(&stack, event).await;
    }
    let delivered = settled(&stack).await;
    assert_eq!(
        mailboxes_of(&delivered, &before),
        set(&[MBX2]),
        "before: A84001 (00L)"
    );
    assert_eq!(
        mailboxes_of(&delivered, &change),
        set(&[MBX3]),
        "the change of GP routes by its new practice's parent (15F)"
    );
    assert_eq!(
        mailboxes_of(&delivered, &after),
        set(&[MBX1]),
        "after: the store says B86001"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_an_older_pds_event_does_not_overwrite_newer_data() {
    let stack = TestStack::start().await;
    load_areas(&stack).await;
    // P_NEWER lives at LS6 2AB (15F) with B86001, both as of 2024-06-01.
    subscribe(
        &stack,
        MBX1,
        &generic("GP_GP_GP", "B86001", "vaccinations-1", ""),
    )
    .await;
    subscribe(
        &stack,
        MBX2,
        &generic("GP_GP_GP", "A84001", "vaccinations-1", ""),
    )
    .await;
    subscribe(
        &stack,
        MBX3,
        &generic("CHO_POSTCODE_CCG", "15F", "vaccinations-1", ""),
    )
    .await;
    let older = "2024-01-01T00:00:00+00:00";
    let newer = "2024-09-01T00:00:00+00:00";
    let vaccinate = || vaccination(P_NEWER, "1995-05-05", None, None);
    let old_gp = change_of_gp(P_NEWER, "A84001", "00L", older);
    let old_move = change_of_address(P_NEWER, "LS6 2AB", "NE61 1AA", older);
    let after_old = vaccinate();
    let new_gp = change_of_gp(P_NEWER, "A84001", "00L", newer);
    let new_move = change_of_address(P_NEWER, "LS6 2AB", "NE61 1AA", newer);
    let after_new = vaccinate();
    for event in [
        &old_gp, &old_move, &after_old, &new_gp, &new_move, &after_new,
    ] {
        publish(&stack, event).await;
    }
    let delivered = settled(&stack).await;
    assert_eq!(
        mailboxes_of(&delivered, &after_old),
        set(&[MBX1, MBX3]),
        "events dated before the store's facts leave them alone"
    );
    assert_eq!(
        mailboxes_of(&delivered, &after_new),
        set(&[MBX2]),
        "newer events replace them"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_a_record_change_sets_and_clears_the_s_flag() {
    let stack = TestStack::start().await;
    load_areas(&stack).await;
    subscribe(
        &stack,
        MBX1,
        &generic("CHO_POSTCODE_CCG", "15F", "vaccinations-1", ""),
    )
    .await;
    // The record changes themselves go to MBX2: one that sets the flag is suppressed, one
    // that clears it is delivered.
    subscribe(
        &stack,
        MBX2,
        &generic("CHO_POSTCODE_CCG", "15F", "pds-record-change-1", ""),
    )
    .await;
    let vaccinate = || vaccination(P_RECORD_CHANGE, "1977-07-07", None, None);
    let before = vaccinate();
    let restrict = record_change(P_RECORD_CHANGE, "R", "2025-01-01T00:00:00+00:00");
    let while_flagged = vaccinate();
    let unrestrict = record_change(P_RECORD_CHANGE, "U", "2025-02-01T00:00:00+00:00");
    let after = vaccinate();
    // Again, now cleared by a record change whose Patient has no security label at all.
    let restrict_again = record_change(P_RECORD_CHANGE, "R", "2025-03-01T00:00:00+00:00");
    let flagged_again = vaccinate();
    let unlabelled = record_change_without_label(P_RECORD_CHANGE, "2025-04-01T00:00:00+00:00");
    let after_unlabelled = vaccinate();
    for event in [
        &before,
        &restrict,
        &while_flagged,
        &unrestrict,
        &after,
        &restrict_again,
        &flagged_again,
        &unlabelled,
        &after_unlabelled,
    ] {
        publish(&stack, event).await;
    }
    let delivered = settled(&stack).await;
    assert_eq!(mailboxes_of(&delivered, &before), set(&[MBX1]));
    assert_eq!(mailboxes_of(&delivered, &restrict), set(&[]));
    assert_eq!(mailboxes_of(&delivered, &while_flagged), set(&[]));
    assert_eq!(mailboxes_of(&delivered, &unrestrict), set(&[MBX2]));
    assert_eq!(mailboxes_of(&delivered, &after), set(&[MBX1]));
    assert_eq!(mailboxes_of(&delivered, &restrict_again), set(&[]));
    assert_eq!(mailboxes_of(&delivered, &flagged_again), set(&[]));
    assert_eq!(
        mailboxes_of(&delivered, &unlabelled),
        set(&[MBX2]),
        "a record change without a label clears the flag for itself too"
    );
    assert_eq!(mailboxes_of(&delivered, &after_unlabelled), set(&[MBX1]));
    assert_eq!(
        suppressed(&stack, MBX1).await,
        2,
        "the flagged vaccinations are in the ledger as suppressed"
    );
    assert_eq!(
        suppressed(&stack, MBX2).await,
        2,
        "the record changes setting the flag are in the ledger as suppressed"
    );
    stack.shutdown().await;
}
