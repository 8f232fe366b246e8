//! The operator's view of deliveries to MESH: with mailboxes in every state at once
//! (delivered, dead-lettered by MESH, held in flight by a hung MESH route, queued behind a
//! long `Retry-After`), `GetMailboxStats` counts each mailbox exactly, `ListDeliveries`
//! filters by state, mailbox and error code (and pages), the `nems admin stats` and
//! `nems admin deliveries` commands run against the same API, and a redrive by error code
//! requeues only the matching dead letters, which are then delivered.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nems_cli::admin::Admin;
use nems_e2e::eventually::eventually;
use nems_e2e::mesh_fake::Behaviour;
use nems_proto::v1 as pb;

use crate::delivery_support::{
    NHS_NUMBER, WAIT, deliveries, deliveries_to, fake, fake_stack, inject, stats, vaccination_event,
};

const OK: &str = "OPOKMB01";
const DEAD: &str = "OPDEADMB01";
const HUNG: &str = "OPHUNGMB01";
const WAITING: &str = "OPWAITMB01";

/// (queued, in flight, delivered, dead-lettered) of one mailbox.
fn counts(s: &pb::MailboxStats) -> (u64, u64, u64, u64) {
    (s.queued, s.in_flight, s.delivered, s.dead_lettered)
}

fn query() -> pb::ListDeliveriesRequest {
    pb::ListDeliveriesRequest::default()
}

#[tokio::test]
async fn delivery_states_are_counted_listed_and_redriven_per_mailbox() {
    let fake = fake().await;
    fake.set_behaviour(DEAD, Behaviour::Dead);
    fake.set_behaviour(HUNG, Behaviour::Hang);
    fake.set_behaviour(
        WAITING,
        Behaviour::Fail {
            times: u32::MAX,
            status: 503,
            retry_after: Some("3600".into()),
        },
    );
    let stack = fake_stack(&fake, &[OK, DEAD, HUNG, WAITING])
        // Long enough that the hung send stays in flight for the whole test.
        .adapter(|c| c.mesh.request_timeout = Duration::from_secs(60))
        .start()
        .await;
    let plan = [(OK, 3), (DEAD, 2), (HUNG, 1), (WAITING, 2)];
    for (mailbox, n) in plan {
        for i in 0..n {
            let marker = format!("{mailbox}-{i}");
            inject(
                &stack,
                mailbox,
                vaccination_event(NHS_NUMBER, &marker).as_bytes(),
            )
            .await;
        }
    }
    let expected = [
        (OK, (0, 0, 3, 0)),
        (DEAD, (0, 0, 0, 2)),
        (HUNG, (0, 1, 0, 0)),
        (WAITING, (2, 0, 0, 0)),
    ];
    eventually("every mailbox to reach its state", WAIT, || async {
        let response = stack
            .operator()
            .get_mailbox_stats(pb::GetMailboxStatsRequest::default())
            .await
            .ok()?
            .into_inner();
        let all: Vec<(String, (u64, u64, u64, u64))> = response
            .mailboxes
            .iter()
            .map(|s| (s.mailbox.clone(), counts(s)))
            .collect();
        let wanted: Vec<(String, (u64, u64, u64, u64))> = {
            let mut w: Vec<_> = expected
                .iter()
                .map(|(m, c)| ((*m).to_owned(), *c))
                .collect();
            w.sort();
            w
        };
        // Queued also describes the waiting mailbox before its first attempt: wait for the
        // attempts to have failed.
        let waiting = deliveries_to(&stack, WAITING).await;
        let attempted = waiting.iter().all(|d| d.last_error_code == "503");
        (all == wanted && attempted).then_some(())
    })
    .await;
    for (mailbox, count) in expected {
        assert_eq!(
            counts(&stats(&stack, mailbox).await),
            count,
            "{mailbox} alone"
        );
    }

    // By state.
    let dead = deliveries(
        &stack,
        pb::ListDeliveriesRequest {
            state: pb::DeliveryState::DeadLettered.into(),
            ..query()
        },
    )
    .await;
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter()
            .all(|d| d.mailbox == DEAD && d.last_error_code == "12"),
        "{dead:?}"
    );
    let in_flight = deliveries(
        &stack,
        pb::ListDeliveriesRequest {
            state: pb::DeliveryState::InFlight.into(),
            ..query()
        },
    )
    .await;
    assert_eq!(in_flight.len(), 1);
    assert_eq!(
        (in_flight[0].mailbox.as_str(), in_flight[0].attempts),
        (HUNG, 1)
    );
    // By mailbox: queued behind MESH's `Retry-After: 3600`.
    let waiting = deliveries_to(&stack, WAITING).await;
    assert_eq!(waiting.len(), 2);
    let in_50_minutes = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 3000;
    for row in &waiting {
        assert_eq!(row.state(), pb::DeliveryState::Queued);
        assert_eq!(row.last_error_code, "503");
        let next = row
            .next_attempt_at
            .expect("a queued row has its next attempt time");
        assert!(
            next.seconds > in_50_minutes,
            "next attempt honours Retry-After: {next:?}"
        );
    }
    // By error code, and by mailbox and state together.
    let by_code = |code: &'static str| {
        deliveries(
            &stack,
            pb::ListDeliveriesRequest {
                error_code: code.into(),
                ..query()
            },
        )
    };
    let ids = |rows: &[pb::DeliveryRecord]| -> BTreeSet<u64> {
        rows.iter().map(|r| r.delivery_id).collect()
    };
    assert_eq!(ids(&by_code("503").await), ids(&waiting));
    assert_eq!(ids(&by_code("12").await), ids(&dead));
    assert!(by_code("429").await.is_empty());
    let delivered = deliveries(
        &stack,
        pb::ListDeliveriesRequest {
            mailbox: OK.into(),
            state: pb::DeliveryState::Delivered.into(),
            ..query()
        },
    )
    .await;
    let stored: BTreeSet<String> = fake
        .messages_to(OK)
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    let recorded: BTreeSet<String> = delivered
        .iter()
        .map(|d| d.mesh_message_id.clone())
        .collect();
    assert_eq!(recorded, stored, "the ledger names each MESH message");
    assert_eq!(recorded.len(), 3);
    // Paging returns the same rows as one big page.
    let mut operator = stack.operator();
    let (mut paged, mut token) = (Vec::new(), String::new());
    loop {
        let page = operator
            .list_deliveries(pb::ListDeliveriesRequest {
                page_size: 3,
                page_token: token,
                ..query()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.deliveries.len() <= 3);
        paged.extend(page.deliveries);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids(&paged), ids(&deliveries(&stack, query()).await));
    assert_eq!(paged.len(), 8);

    // The CLI reads the same API.
    let url = format!("http://{}", stack.operator_addr);
    nems_cli::admin::run(Admin::Stats { mailbox: None }, &url)
        .await
        .expect("nems admin stats");
    nems_cli::admin::run(
        Admin::Deliveries {
            mailbox: Some(DEAD.into()),
            state: Some("dead-lettered".into()),
            event: None,
            event_code: None,
            error_code: Some("12".into()),
            limit: 10,
        },
        &url,
    )
    .await
    .expect("nems admin deliveries");

    // Redrive by error code: only the code-12 dead letters move, and are delivered.
    fake.set_behaviour(DEAD, Behaviour::Accept);
    let redriven = stack
        .operator()
        .redrive_deliveries(pb::RedriveDeliveriesRequest {
            error_code: "12".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redriven.redriven, 2);
    assert!(redriven.skipped.is_empty());
    eventually("the redriven deliveries to be delivered", WAIT, || async {
        (counts(&stats(&stack, DEAD).await) == (0, 0, 2, 0)).then_some(())
    })
    .await;
    assert_eq!(fake.messages_to(DEAD).len(), 2);
    assert_eq!(counts(&stats(&stack, WAITING).await), (2, 0, 0, 0));
    assert_eq!(counts(&stats(&stack, HUNG).await), (0, 1, 0, 0));
    assert_eq!(counts(&stats(&stack, OK).await), (0, 0, 3, 0));

    // Stop the fake first: the hung send ends at once instead of at its timeout.
    fake.shutdown().await;
    stack.shutdown().await;
}
