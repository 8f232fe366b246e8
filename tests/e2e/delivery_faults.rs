//! Deliveries that survive MESH faults, proved at the stack level (core → adapter → the
//! in-process MESH fake): rate limiting and unavailability with `Retry-After` (retried no
//! sooner than asked, then delivered), a timeout or dropped connection after MESH stored the
//! message (exactly one copy), a dead and a hung mailbox beside a healthy one (no
//! head-of-line blocking), a permanent refusal dead-lettered with MESH's code and redriven by
//! the `nems admin redrive` command, an adapter killed mid-send and replaced (the lease
//! expires, tracking by local id prevents a second copy), a MESH non-delivery REPORT
//! (`MESH_14`), an exhausted retry time (`RETRY_EXHAUSTED`), and such a dead letter
//! redriven after its retry time (a new retry time starts at the redrive).

use std::time::{Duration, Instant, SystemTime};

use nems_cli::admin::Admin;
use nems_e2e::eventually::eventually;
use nems_e2e::mesh_fake::{Behaviour, FakeReport, MeshFake, RecordedRequest};
use nems_proto::v1 as pb;

use crate::delivery_support::{
    NHS_NUMBER, SERVICE, WAIT, deliveries_to, delivery, fake, fake_stack, inject, stats,
    vaccination_event, wait_for_state,
};

/// `mex-WorkflowID` of vaccinations events.
const WORKFLOW: &str = "VACCINATIONS_1";

fn payload(marker: &str) -> Vec<u8> {
    vaccination_event(NHS_NUMBER, marker).into_bytes()
}

/// The first sends (`POST …/outbox`) addressed to `mailbox`, in arrival order.
fn sends_to(fake: &MeshFake, mailbox: &str) -> Vec<RecordedRequest> {
    fake.sends()
        .into_iter()
        .filter(|r| r.header("mex-to") == Some(mailbox))
        .collect()
}

/// Tracking requests by local id (`GET …/outbox/tracking/{local_id}`).
fn tracking_by_local_id(fake: &MeshFake, local_id: &str) -> usize {
    let suffix = format!("/outbox/tracking/{local_id}");
    fake.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&suffix))
        .count()
}

/// A 429 or 503 with `Retry-After: 2`: the second send comes no sooner than asked, then
/// the delivery is delivered with two attempts and one stored copy.
async fn retried_no_sooner_than_asked(status: u16, mailbox: &str) {
    let fake = fake().await;
    fake.set_behaviour(
        mailbox,
        Behaviour::Fail {
            times: 1,
            status,
            retry_after: Some("2".into()),
        },
    );
    let stack = fake_stack(&fake, &[mailbox]).start().await;
    let (event_id, id) = inject(&stack, mailbox, &payload(mailbox)).await;

    // While waiting, the ledger shows the delivery queued with the error, its next attempt
    // at least the asked delay after the failure was recorded.
    let waiting = eventually("the failure to be recorded", WAIT, || async {
        let row = delivery(&stack, &event_id, id).await;
        let queued = row.state() == pb::DeliveryState::Queued;
        (queued && row.last_error_code == status.to_string()).then_some(row)
    })
    .await;
    let ms = |t: prost_types::Timestamp| t.seconds * 1000 + i64::from(t.nanos / 1_000_000);
    let next = ms(waiting.next_attempt_at.expect("next attempt time"));
    let failed = ms(waiting.updated_at.expect("updated time"));
    assert!(
        next >= failed + 2000,
        "next attempt {next} is at least 2 s after the failure at {failed}"
    );

    let row = wait_for_state(&stack, &event_id, id, pb::DeliveryState::Delivered).await;
    assert_eq!(row.attempts, 2, "one failed attempt, one successful");
    let sends = sends_to(&fake, mailbox);
    assert_eq!(sends.len(), 2, "one failed send and one retry");
    assert_eq!(sends[0].status, Some(status));
    assert_eq!(sends[1].status, Some(202));
    let gap = sends[1].at.duration_since(sends[0].at);
    // Core stores times in whole milliseconds: allow that rounding, nothing more.
    assert!(
        gap >= Duration::from_millis(1995),
        "retried {gap:?} after a {status} asking for 2 s"
    );
    assert!(
        gap < Duration::from_secs(6),
        "retried promptly after the delay: {gap:?}"
    );
    let stored = fake.messages_to(mailbox);
    assert_eq!(stored.len(), 1, "exactly one copy");
    assert_eq!(row.mesh_message_id, stored[0].message_id);
    assert_eq!(stored[0].payload(), payload(mailbox));
    stack.shutdown().await;
}

#[tokio::test]
async fn delivery_rate_limited_429_waits_for_retry_after_then_delivers() {
    retried_no_sooner_than_asked(429, "RATE429MB").await;
}

#[tokio::test]
async fn delivery_unavailable_503_waits_for_retry_after_then_delivers() {
    retried_no_sooner_than_asked(503, "BUSY503MB").await;
}

/// MESH stores the message but the answer never arrives (`behaviour`): the adapter times
/// out (or sees the connection drop), reconciles by local id, and records the stored copy.
async fn stored_but_unanswered(behaviour: Behaviour, mailbox: &str) {
    let fake = fake().await;
    fake.set_behaviour(mailbox, behaviour);
    let stack = fake_stack(&fake, &[mailbox])
        .adapter(|c| c.mesh.request_timeout = Duration::from_millis(500))
        .start()
        .await;
    let (event_id, id) = inject(&stack, mailbox, &payload(mailbox)).await;
    let row = wait_for_state(&stack, &event_id, id, pb::DeliveryState::Delivered).await;
    let stored = fake.messages_to(mailbox);
    assert_eq!(stored.len(), 1, "exactly one copy at MESH: {stored:?}");
    assert_eq!(
        sends_to(&fake, mailbox).len(),
        1,
        "the send was never repeated"
    );
    assert_eq!(row.mesh_message_id, stored[0].message_id);
    assert_eq!(
        stored[0].mex_header("mex-localid"),
        Some(row.local_id.as_str())
    );
    assert!(
        tracking_by_local_id(&fake, &row.local_id) >= 1,
        "the ambiguous send was reconciled through tracking"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn delivery_timeout_after_mesh_stored_leaves_one_copy() {
    stored_but_unanswered(Behaviour::StoreThenHang, "HANGMB01").await;
}

#[tokio::test]
async fn delivery_connection_dropped_after_mesh_stored_leaves_one_copy() {
    stored_but_unanswered(Behaviour::StoreThenDrop, "DROPMB01").await;
}

/// Publishes one delivery to `mailbox` and returns how long until MESH stored it.
async fn healthy_latency(
    stack: &nems_e2e::stack::TestStack,
    fake: &MeshFake,
    mailbox: &str,
    n: usize,
) -> Duration {
    let before = fake.messages_to(mailbox).len();
    let start = Instant::now();
    inject(stack, mailbox, &payload(&format!("{mailbox}-{n}"))).await;
    eventually("the healthy delivery to reach MESH", WAIT, || async {
        (fake.messages_to(mailbox).len() > before).then_some(())
    })
    .await;
    start.elapsed()
}

#[tokio::test]
async fn delivery_to_a_healthy_mailbox_is_not_held_up_by_dead_neighbours() {
    const HEALTHY: &str = "HEALTHY01";
    const DEAD: &str = "DEADMB01";
    const HUNG: &str = "HUNGMB01";
    const ROUNDS: usize = 5;
    let fake = fake().await;
    fake.set_behaviour(DEAD, Behaviour::Dead);
    fake.set_behaviour(HUNG, Behaviour::Hang);
    let stack = fake_stack(&fake, &[HEALTHY, DEAD, HUNG])
        .adapter(|c| {
            c.mesh.request_timeout = Duration::from_secs(3);
            c.max_in_flight = 16;
            c.max_in_flight_per_mailbox = 4;
        })
        .start()
        .await;

    let mut alone = Duration::ZERO;
    for n in 0..ROUNDS {
        alone = alone.max(healthy_latency(&stack, &fake, HEALTHY, n).await);
    }

    // A backlog for the dead mailbox (refused at once) and the hung one (each send holds
    // a slot until the request times out, then is retried).
    for n in 0..200 {
        inject(&stack, DEAD, &payload(&format!("dead-{n}"))).await;
    }
    for n in 0..40 {
        inject(&stack, HUNG, &payload(&format!("hung-{n}"))).await;
    }
    eventually("the hung mailbox to hold its slots", WAIT, || async {
        (sends_to(&fake, HUNG).len() >= 4).then_some(())
    })
    .await;
    let mut beside = Duration::ZERO;
    for n in ROUNDS..2 * ROUNDS {
        beside = beside.max(healthy_latency(&stack, &fake, HEALTHY, n).await);
        let hung = stats(&stack, HUNG).await;
        assert!(hung.in_flight <= 4, "per-mailbox limit: {hung:?}");
    }
    #[allow(clippy::print_stderr, reason = "the measurement is the point")]
    {
        eprintln!(
            "healthy mailbox end-to-end latency, worst of {ROUNDS}: alone {alone:?}, beside a dead and a hung mailbox {beside:?}"
        );
    }
    assert!(
        beside < Duration::from_secs(2),
        "healthy deliveries beside dead neighbours took up to {beside:?} (alone {alone:?})"
    );

    // The dead mailbox's deliveries are refused with MESH's code; the hung one's are
    // retried and none was stored.
    let dead = eventually("the dead mailbox's backlog to settle", WAIT, || async {
        let s = stats(&stack, DEAD).await;
        (s.dead_lettered == 200).then_some(s)
    })
    .await;
    assert_eq!((dead.delivered, dead.queued, dead.in_flight), (0, 0, 0));
    let rows = deliveries_to(&stack, DEAD).await;
    assert!(rows.iter().all(|r| r.last_error_code == "12"), "code 12");
    assert!(fake.messages_to(DEAD).is_empty());
    let hung = stats(&stack, HUNG).await;
    assert_eq!((hung.delivered, hung.dead_lettered), (0, 0));
    assert_eq!(hung.queued + hung.in_flight, 40);
    assert!(fake.messages_to(HUNG).is_empty());
    assert_eq!(stats(&stack, HEALTHY).await.delivered, 2 * ROUNDS as u64);

    // Stop the fake first: the hung requests end at once instead of at their timeout.
    fake.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn delivery_refused_by_mesh_is_dead_lettered_then_redriven_by_the_cli() {
    const MAILBOX: &str = "REFUSEMB01";
    let fake = fake().await;
    fake.set_behaviour(MAILBOX, Behaviour::Dead);
    let stack = fake_stack(&fake, &[MAILBOX]).start().await;
    let (event_id, id) = inject(&stack, MAILBOX, &payload(MAILBOX)).await;
    let dead = wait_for_state(&stack, &event_id, id, pb::DeliveryState::DeadLettered).await;
    assert_eq!(
        dead.last_error_code, "12",
        "MESH's own error code: {dead:?}"
    );
    assert_eq!(dead.attempts, 1, "a permanent refusal is not retried");
    assert!(dead.mesh_message_id.is_empty());
    // Counted as a dead letter (one process per test: the counter is this test's).
    let dead_letters = nems_runtime::ops::encode().lines().find_map(|l| {
        l.strip_prefix("nems_dead_letters_total ")?
            .trim()
            .parse::<f64>()
            .ok()
    });
    assert_eq!(dead_letters, Some(1.0));
    let sends = sends_to(&fake, MAILBOX);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].status, Some(417));
    assert!(fake.messages_to(MAILBOX).is_empty());

    // The mailbox is registered now; the operator redrives its code-12 dead letters.
    fake.set_behaviour(MAILBOX, Behaviour::Accept);
    nems_cli::admin::run(
        Admin::Redrive {
            yes: false,
            ids: Vec::new(),
            mailbox: Some(MAILBOX.to_ascii_lowercase()),
            event_code: None,
            error_code: Some("12".into()),
        },
        &format!("http://{}", stack.operator_addr),
    )
    .await
    .expect("nems admin redrive");
    let row = wait_for_state(&stack, &event_id, id, pb::DeliveryState::Delivered).await;
    assert_eq!(row.attempts, 2);
    assert!(row.last_error_code.is_empty(), "{row:?}");
    let stored = fake.messages_to(MAILBOX);
    assert_eq!(stored.len(), 1);
    assert_eq!(row.mesh_message_id, stored[0].message_id);
    assert_eq!(
        stored[0].payload(),
        payload(MAILBOX),
        "the payload was kept for redrive"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn delivery_survives_an_adapter_killed_mid_send_without_a_second_copy() {
    const MAILBOX: &str = "KILLMB01";
    let fake = fake().await;
    // MESH takes a while to store the message: the adapter dies while the send is open.
    fake.set_behaviour(MAILBOX, Behaviour::Slow(Duration::from_millis(700)));
    let stack = fake_stack(&fake, &[MAILBOX])
        .core(|c| c.lease_timeout = Duration::from_secs(3))
        .adapter_stopped()
        .start()
        .await;
    let first = stack.spawn_adapter();
    let (event_id, id) = inject(&stack, MAILBOX, &payload(MAILBOX)).await;
    eventually("the first adapter's send to reach MESH", WAIT, || async {
        (!sends_to(&fake, MAILBOX).is_empty()).then_some(())
    })
    .await;
    first.kill().await;
    // From now on MESH stores at once, so a blind resend would leave a second copy.
    fake.set_behaviour(MAILBOX, Behaviour::Accept);
    fake.wait_for_messages(1, WAIT).await;
    // Nothing was reported, but the adapter's stream ended: its lease is given back at once
    // (queued, not in flight until the lease would have expired).
    let given_back = wait_for_state(&stack, &event_id, id, pb::DeliveryState::Queued).await;
    assert_eq!(given_back.attempts, 1);

    let second = stack.spawn_adapter();
    let row = wait_for_state(&stack, &event_id, id, pb::DeliveryState::Delivered).await;
    assert_eq!(row.attempts, 2, "handed out again, as a later attempt");
    let stored = fake.messages_to(MAILBOX);
    assert_eq!(stored.len(), 1, "exactly one copy at MESH");
    assert_eq!(
        sends_to(&fake, MAILBOX).len(),
        1,
        "the new adapter did not resend"
    );
    assert_eq!(row.mesh_message_id, stored[0].message_id);
    assert!(tracking_by_local_id(&fake, &row.local_id) >= 1);
    second.stop().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn delivery_reported_undelivered_by_mesh_is_dead_lettered_mesh_14() {
    const MAILBOX: &str = "REPORTMB01";
    let fake = fake().await;
    let stack = fake_stack(&fake, &[MAILBOX]).start().await;
    let mut rows = Vec::new();
    for n in 0..3 {
        let (event_id, id) = inject(&stack, MAILBOX, &payload(&format!("report-{n}"))).await;
        rows.push(wait_for_state(&stack, &event_id, id, pb::DeliveryState::Delivered).await);
    }
    // A report naming the local id, and one naming only the MESH message id.
    let by_local_id = fake.inject_report(
        SERVICE,
        &FakeReport {
            linked_message_id: rows[0].mesh_message_id.clone(),
            local_id: rows[0].local_id.clone(),
            workflow_id: WORKFLOW.into(),
            code: "14".into(),
            description: "Message not collected by recipient after 5 days".into(),
        },
    );
    let by_message_id = fake.inject_report(
        SERVICE,
        &FakeReport {
            linked_message_id: rows[1].mesh_message_id.clone(),
            workflow_id: WORKFLOW.into(),
            code: "14".into(),
            description: "Message not collected by recipient after 5 days".into(),
            ..Default::default()
        },
    );
    for row in &rows[..2] {
        let dead = wait_for_state(
            &stack,
            &row.event_id,
            row.delivery_id,
            pb::DeliveryState::DeadLettered,
        )
        .await;
        assert_eq!(dead.last_error_code, "MESH_14");
        assert_eq!(dead.mesh_message_id, row.mesh_message_id);
    }
    for report in [by_local_id, by_message_id] {
        eventually("the report to be acknowledged", WAIT, || async {
            let status = fake.message(&report).map(|m| m.status);
            (status.as_deref() == Some("acknowledged")).then_some(())
        })
        .await;
    }
    // A reported message's payload went when it was delivered (decisions §22): such a
    // dead letter is a record for the operator, and a redrive skips it.
    let redrive = stack
        .operator()
        .redrive_deliveries(pb::RedriveDeliveriesRequest {
            mailbox: MAILBOX.into(),
            error_code: "MESH_14".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redrive.redriven, 0);
    assert_eq!(
        redrive
            .skipped
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [rows[0].delivery_id, rows[1].delivery_id].into()
    );
    let untouched = delivery(&stack, &rows[2].event_id, rows[2].delivery_id).await;
    assert_eq!(untouched.state(), pb::DeliveryState::Delivered);
    let counts = stats(&stack, MAILBOX).await;
    assert_eq!((counts.delivered, counts.dead_lettered), (1, 2));
    stack.shutdown().await;
}

#[tokio::test]
async fn delivery_still_failing_when_retry_time_runs_out_is_dead_lettered() {
    const MAILBOX: &str = "FLAKYMB01";
    let fake = fake().await;
    fake.set_behaviour(
        MAILBOX,
        Behaviour::Fail {
            times: u32::MAX,
            status: 503,
            retry_after: None,
        },
    );
    let stack = fake_stack(&fake, &[MAILBOX])
        .adapter(|c| {
            c.retry_initial = Duration::from_millis(50);
            c.retry_max_delay = Duration::from_millis(200);
            c.retry_max_elapsed = Duration::from_secs(1);
        })
        .start()
        .await;
    let (event_id, id) = inject(&stack, MAILBOX, &payload(MAILBOX)).await;
    let dead = wait_for_state(&stack, &event_id, id, pb::DeliveryState::DeadLettered).await;
    assert_eq!(dead.last_error_code, "RETRY_EXHAUSTED");
    assert!(dead.last_error.contains("503"), "{}", dead.last_error);
    assert!(dead.attempts >= 2, "retried before giving up: {dead:?}");
    let sends = sends_to(&fake, MAILBOX);
    assert_eq!(sends.len(), dead.attempts as usize, "one send per attempt");
    assert!(sends.iter().all(|s| s.status == Some(503)));
    let elapsed = sends[sends.len() - 1].at.duration_since(sends[0].at);
    assert!(
        elapsed < Duration::from_secs(5),
        "gave up soon after the retry time: {elapsed:?}"
    );
    assert!(fake.messages_to(MAILBOX).is_empty());
    stack.shutdown().await;
}

#[tokio::test]
async fn delivery_redriven_after_its_retry_time_ran_out_gets_a_new_retry_time() {
    const MAILBOX: &str = "REDRIVEMB01";
    const WINDOW: Duration = Duration::from_secs(3);
    let fake = fake().await;
    fake.set_behaviour(
        MAILBOX,
        Behaviour::Fail {
            times: u32::MAX,
            status: 503,
            retry_after: None,
        },
    );
    let stack = fake_stack(&fake, &[MAILBOX])
        .adapter(|c| {
            c.retry_initial = Duration::from_millis(50);
            c.retry_max_delay = Duration::from_millis(200);
            c.retry_max_elapsed = WINDOW;
        })
        .start()
        .await;
    let (event_id, id) = inject(&stack, MAILBOX, &payload(MAILBOX)).await;
    let dead = wait_for_state(&stack, &event_id, id, pb::DeliveryState::DeadLettered).await;
    assert_eq!(dead.last_error_code, "RETRY_EXHAUSTED");
    let accepted = SystemTime::try_from(dead.accepted_at.unwrap()).unwrap();

    // MESH recovers but answers 503 once more: a redriven delivery must survive that
    // failure, although its acceptance is older than the retry time.
    fake.set_behaviour(
        MAILBOX,
        Behaviour::Fail {
            times: 1,
            status: 503,
            retry_after: None,
        },
    );
    let sends_before = sends_to(&fake, MAILBOX).len();
    let redriven_at = SystemTime::now();
    assert!(
        redriven_at.duration_since(accepted).unwrap() >= WINDOW,
        "accepted longer ago than the retry time"
    );
    let redrive = stack
        .operator()
        .redrive_deliveries(pb::RedriveDeliveriesRequest {
            delivery_ids: vec![id],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redrive.redriven, 1);

    let row = wait_for_state(&stack, &event_id, id, pb::DeliveryState::Delivered).await;
    assert_eq!(
        row.attempts,
        dead.attempts + 2,
        "one failed attempt after the redrive, then the send: {row:?}"
    );
    let statuses: Vec<Option<u16>> = sends_to(&fake, MAILBOX)[sends_before..]
        .iter()
        .map(|s| s.status)
        .collect();
    assert_eq!(statuses, [Some(503), Some(202)]);
    let stored = fake.messages_to(MAILBOX);
    assert_eq!(stored.len(), 1);
    assert_eq!(row.mesh_message_id, stored[0].message_id);
    stack.shutdown().await;
}
