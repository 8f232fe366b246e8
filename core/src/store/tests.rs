//! Ledger tests over a real store in a temporary directory: the conservation invariant
//! (every delivery ends delivered, dead-lettered or suppressed), payload lifetime, leases
//! and their expiry, stale reports, redrive, MESH reports, retention, and reopening.

use nems_proto::v1 as pb;
use redb::ReadableTable;

use super::events::{accept, get_by_id};
use super::ledger;
use super::tables::PAYLOADS;
use super::{Store, StoreOptions};
use crate::backend::{NewDelivery, NewEvent, Outcome, Query, Selection};

fn store(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap()
}

fn event(id: u128, mailboxes: &[&str], suppressed: bool, at: u64) -> NewEvent {
    NewEvent {
        event_id: id,
        event_code: "vaccinations-1".into(),
        message_event_type: "new".into(),
        publisher_asid: "200000000111".into(),
        workflow_id: "VACCINATIONS_1".into(),
        payload: bytes::Bytes::from_static(b"<Bundle/>"),
        deliveries: mailboxes
            .iter()
            .map(|m| NewDelivery {
                mailbox: (*m).into(),
                partner_id: String::new(),
                subscription_ids: vec!["s".into()],
                suppressed,
            })
            .collect(),
        matched_subscriptions: mailboxes.len() as u32,
        accepted_ms: at,
    }
}

fn payload_held(s: &Store, seq: u64) -> bool {
    s.read_now(|tx| Ok(tx.open_table(PAYLOADS)?.get(seq)?.is_some()))
        .unwrap()
}

async fn lease(s: &Store, mailbox: &str, now: u64) -> Vec<pb::Delivery> {
    let picks = vec![(mailbox.to_string(), 10)];
    let mut leases = s
        .writer()
        .write(move |tx| ledger::lease(tx, &picks, now, 1_000, crate::backend::Budget::UNLIMITED))
        .await
        .unwrap()
        .leases;
    leases.remove(0).deliveries
}

async fn complete(
    s: &Store,
    id: u64,
    attempt: u32,
    outcome: Outcome,
    now: u64,
) -> pb::DeliveryState {
    s.writer()
        .write(move |tx| ledger::complete(tx, id, attempt, &outcome, now))
        .await
        .unwrap()
        .unwrap()
        .state
}

fn sent(id: &str) -> Outcome {
    Outcome::Sent {
        mesh_message_id: id.into(),
        keep_payload: false,
    }
}

#[tokio::test]
async fn payload_lives_until_every_delivery_is_settled() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let e = event(1, &["A", "B"], false, 100);
    let accepted = s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    assert_eq!(accepted.queued_mailboxes, vec!["A", "B"]);
    assert!(payload_held(&s, accepted.seq));

    let a = lease(&s, "A", 200).await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].attempt, 1);
    assert_eq!(&a[0].payload[..], b"<Bundle/>");
    assert_eq!(a[0].local_id, format!("{:032x}-0", 1));
    assert_eq!(
        complete(&s, a[0].delivery_id, 1, sent("M1"), 300).await,
        pb::DeliveryState::Delivered
    );
    assert!(payload_held(&s, accepted.seq), "B still needs the payload");

    let b = lease(&s, "B", 300).await;
    assert_eq!(
        complete(&s, b[0].delivery_id, 1, sent("M2"), 400).await,
        pb::DeliveryState::Delivered
    );
    assert!(
        !payload_held(&s, accepted.seq),
        "payload dropped once all settled"
    );
    // A second report for a settled delivery changes nothing.
    assert_eq!(
        complete(
            &s,
            b[0].delivery_id,
            1,
            Outcome::Refused {
                code: "12".into(),
                reason: "x".into()
            },
            500
        )
        .await,
        pb::DeliveryState::Delivered
    );
}

#[tokio::test]
async fn suppressed_deliveries_are_recorded_and_never_queued() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let e = event(2, &["A"], true, 100);
    let accepted = s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    assert!(accepted.queued_mailboxes.is_empty());
    assert!(!payload_held(&s, accepted.seq));
    assert!(lease(&s, "A", 200).await.is_empty());
    let stats = s.read_now(|tx| ledger::stats(tx, "A")).unwrap();
    assert_eq!(stats[0].suppressed, 1);
    assert_eq!(stats[0].queued, 0);
}

#[tokio::test]
async fn expired_leases_come_back_and_stale_reports_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let e = event(3, &["A"], false, 100);
    s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    let first = lease(&s, "A", 200).await;
    assert_eq!(first.len(), 1);
    // Leased until 1200: not available before.
    assert!(lease(&s, "A", 1_100).await.is_empty());
    let second = lease(&s, "A", 1_300).await;
    assert_eq!(second[0].attempt, 2);
    let id = second[0].delivery_id;
    // A retry from attempt 1 is stale: still in flight.
    let retry = Outcome::Retry {
        code: "503".into(),
        reason: "busy".into(),
        retry_after_ms: 10,
    };
    assert_eq!(
        complete(&s, id, 1, retry.clone(), 1_400).await,
        pb::DeliveryState::InFlight
    );
    // The current attempt's retry requeues it for later.
    assert_eq!(
        complete(&s, id, 2, retry, 1_400).await,
        pb::DeliveryState::Queued
    );
    assert!(lease(&s, "A", 1_405).await.is_empty());
    let third = lease(&s, "A", 1_410).await;
    assert_eq!(third[0].attempt, 3);
    // A late success from an old attempt still settles it (MESH has the message).
    assert_eq!(
        complete(&s, id, 1, sent("M"), 1_500).await,
        pb::DeliveryState::Delivered
    );
}

#[tokio::test]
async fn dead_letters_keep_their_payload_for_redrive() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let e = event(4, &["A"], false, 100);
    let accepted = s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    let d = lease(&s, "A", 200).await;
    assert_eq!(
        d[0].retry_window_start,
        Some(super::keys::timestamp(100)),
        "the retry window starts at acceptance"
    );
    let refused = Outcome::Refused {
        code: "12".into(),
        reason: "Unregistered to address".into(),
    };
    assert_eq!(
        complete(&s, d[0].delivery_id, 1, refused, 300).await,
        pb::DeliveryState::DeadLettered
    );
    assert!(payload_held(&s, accepted.seq));
    let listed = s
        .read_now(|tx| {
            ledger::list(
                tx,
                &Query {
                    state: Some(pb::DeliveryState::DeadLettered),
                    ..Default::default()
                },
                "",
                10,
            )
        })
        .unwrap()
        .0;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_error_code, "12");

    let sel = Selection {
        mailbox: "A".into(),
        ..Default::default()
    };
    let (redriven, skipped) = s
        .writer()
        .write(move |tx| ledger::redrive(tx, &sel, 400))
        .await
        .unwrap();
    assert_eq!(redriven.len(), 1);
    assert!(skipped.is_empty());
    let again = lease(&s, "A", 400).await;
    assert_eq!(again[0].attempt, 2);
    assert_eq!(
        again[0].retry_window_start,
        Some(super::keys::timestamp(400)),
        "a redrive starts the retry window again"
    );
    assert_eq!(again[0].accepted_at, Some(super::keys::timestamp(100)));
    assert_eq!(
        complete(&s, again[0].delivery_id, 2, sent("M9"), 500).await,
        pb::DeliveryState::Delivered
    );
    assert!(!payload_held(&s, accepted.seq));
    // Nothing left to redrive.
    let sel = Selection {
        ids: vec![again[0].delivery_id],
        ..Default::default()
    };
    let (redriven, skipped) = s
        .writer()
        .write(move |tx| ledger::redrive(tx, &sel, 600))
        .await
        .unwrap();
    assert!(redriven.is_empty());
    assert_eq!(skipped, vec![again[0].delivery_id]);
}

#[tokio::test]
async fn mesh_reports_find_deliveries_by_local_or_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let e = event(5, &["A", "B"], false, 100);
    s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    let a = lease(&s, "A", 200).await;
    complete(&s, a[0].delivery_id, 1, sent("MSG-A"), 300).await;
    let local = a[0].local_id.clone();
    let found = s
        .writer()
        .write(move |tx| {
            let by_local = ledger::find_reported(tx, "", &local)?;
            let by_mesh = ledger::find_reported(tx, "MSG-A", "")?;
            let nothing = ledger::find_reported(tx, "NOPE", "junk")?;
            if let Some(id) = by_mesh {
                ledger::record_report(tx, id, "14", "not collected", 400)?;
            }
            Ok((by_local, by_mesh, nothing))
        })
        .await
        .unwrap();
    assert_eq!(found.0, Some(a[0].delivery_id));
    assert_eq!(found.1, Some(a[0].delivery_id));
    assert_eq!(found.2, None);
    let rows = s
        .read_now(|tx| {
            ledger::list(
                tx,
                &Query {
                    mailbox: "A".into(),
                    ..Default::default()
                },
                "",
                10,
            )
        })
        .unwrap()
        .0;
    assert_eq!(rows[0].state(), pb::DeliveryState::DeadLettered);
    assert_eq!(rows[0].last_error_code, "MESH_14");
}

#[tokio::test]
async fn retention_removes_old_settled_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let old = event(6, &["A"], false, 100);
    let fresh = event(7, &["A"], false, 10_000);
    s.writer().write(move |tx| accept(tx, &old)).await.unwrap();
    s.writer()
        .write(move |tx| accept(tx, &fresh))
        .await
        .unwrap();
    let d = lease(&s, "A", 20_000).await;
    assert_eq!(d.len(), 2);
    complete(&s, d[0].delivery_id, 1, sent("M"), 20_100).await;
    // Retention counts from settling (20,100), not from acceptance (100).
    let swept = s
        .writer()
        .write(|tx| ledger::sweep(tx, 25_000, 5_000, 1_000_000, 0, 100))
        .await
        .unwrap();
    assert_eq!(swept, crate::backend::Swept::default(), "settled 4.9 s ago");
    // The fresh event's delivery stays in flight.
    let swept = s
        .writer()
        .write(|tx| ledger::sweep(tx, 25_200, 5_000, 1_000_000, 0, 100))
        .await
        .unwrap();
    assert_eq!(swept.deliveries_removed, 1);
    assert_eq!(swept.events_removed, 1);
    assert!(s.read_now(|tx| get_by_id(tx, 6)).unwrap().is_none());
    assert!(s.read_now(|tx| get_by_id(tx, 7)).unwrap().is_some());
    let stats = s.read_now(|tx| ledger::stats(tx, "A")).unwrap();
    assert_eq!((stats[0].delivered, stats[0].in_flight), (0, 1));
}

#[tokio::test]
async fn the_queue_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path());
        let e = event(8, &["A", "B"], false, 100);
        s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
        lease(&s, "A", 200).await;
        s.close();
    }
    let s = store(dir.path());
    let heads = s.read_now(ledger::queue_heads).unwrap();
    assert_eq!(
        heads,
        vec![("A".to_string(), 1_200), ("B".to_string(), 100)]
    );
    assert_eq!(s.read_now(ledger::pending).unwrap(), 2);
}

#[tokio::test]
async fn audit_records_are_listed_filtered_and_pruned_by_age() {
    use super::audit;
    use crate::backend::AuditFilter;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.writer()
        .write(|tx| {
            for (at, action) in [(1_000, "read"), (2_000, "create"), (3_000, "publish")] {
                let record = pb::AuditRecord {
                    action: action.into(),
                    asid: "200000000111".into(),
                    outcome: "ok".into(),
                    count: 0,
                    ..Default::default()
                };
                audit::append(tx, at, &record)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let all = s
        .read_now(|tx| audit::list(tx, &AuditFilter::default(), "", 10))
        .unwrap()
        .0;
    assert_eq!(
        all.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
        vec!["read", "create", "publish"]
    );
    let since = AuditFilter {
        since_ms: 1_500,
        ..Default::default()
    };
    assert_eq!(
        s.read_now(|tx| audit::list(tx, &since, "", 10))
            .unwrap()
            .0
            .len(),
        2
    );
    let (page, token) = s
        .read_now(|tx| audit::list(tx, &AuditFilter::default(), "", 2))
        .unwrap();
    assert_eq!(page.len(), 2);
    let (rest, _) = s
        .read_now(|tx| audit::list(tx, &AuditFilter::default(), &token, 2))
        .unwrap();
    assert_eq!(rest[0].action, "publish");
    let pruned = s
        .writer()
        .write(|tx| audit::prune(tx, 2_500, 100))
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    let left = s
        .read_now(|tx| audit::list(tx, &AuditFilter::default(), "", 10))
        .unwrap()
        .0;
    assert_eq!(left.len(), 1);
    // The index by action lost the pruned records with them, and the migration that
    // builds it (schema 3 to 4) indexes what is left, once.
    let by_action = |action: &'static str| {
        let filter = AuditFilter {
            action: action.into(),
            ..Default::default()
        };
        s.read_now(move |tx| audit::list(tx, &filter, "", 10))
            .unwrap()
            .0
            .len()
    };
    assert_eq!((by_action("read"), by_action("publish")), (0, 1));
    let indexed = s
        .writer()
        .write(|tx| {
            tx.delete_table(super::tables::AUDIT_BY_ACTION)?;
            audit::build_action_index(tx)
        })
        .await
        .unwrap();
    assert_eq!(indexed, 1);
    assert_eq!((by_action("create"), by_action("publish")), (0, 1));
}

/// Every row `query` matches, read one page of `page_size` at a time through the tokens.
fn list_paged(s: &Store, query: &Query, page_size: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut token = String::new();
    for _ in 0..1_000 {
        let q = query.clone();
        let t = token.clone();
        let (rows, next) = s
            .read_now(move |tx| ledger::list(tx, &q, &t, page_size))
            .unwrap();
        assert!(rows.len() <= page_size);
        ids.extend(rows.iter().map(|r| r.delivery_id));
        if next.is_empty() {
            return ids;
        }
        assert_eq!(
            next,
            rows.last().expect("a full page").delivery_id.to_string(),
            "the token is the last id returned"
        );
        token = next;
    }
    panic!("paging did not end");
}

#[tokio::test]
async fn ledger_pages_follow_every_index_and_agree_with_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    // 12 events to A, B and C; A's deliveries alternately delivered and dead-lettered.
    for n in 0..12u64 {
        let e = event(100 + u128::from(n), &["A", "B", "C"], false, 1_000 + n);
        s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    }
    let leased = lease(&s, "A", 2_000).await;
    assert_eq!(leased.len(), 10);
    for (i, d) in leased.iter().enumerate() {
        let outcome = if i % 2 == 0 {
            sent(&format!("M{i}"))
        } else {
            Outcome::Refused {
                code: "12".into(),
                reason: "x".into(),
            }
        };
        complete(&s, d.delivery_id, 1, outcome, 2_100).await;
    }
    let rows = |q: &Query| {
        let q = q.clone();
        s.read_now(move |tx| ledger::list(tx, &q, "", 1_000))
            .unwrap()
            .0
    };
    let all = rows(&Query::default());
    assert_eq!(all.len(), 36);
    let queries = [
        Query::default(),
        Query {
            mailbox: "A".into(),
            ..Default::default()
        },
        Query {
            mailbox: "B".into(),
            ..Default::default()
        },
        Query {
            state: Some(pb::DeliveryState::DeadLettered),
            ..Default::default()
        },
        Query {
            state: Some(pb::DeliveryState::Queued),
            ..Default::default()
        },
        Query {
            mailbox: "A".into(),
            state: Some(pb::DeliveryState::Delivered),
            ..Default::default()
        },
        Query {
            state: Some(pb::DeliveryState::DeadLettered),
            error_code: "12".into(),
            ..Default::default()
        },
        Query {
            mailbox: "NONE".into(),
            ..Default::default()
        },
    ];
    for query in &queries {
        let expected: Vec<u64> = all
            .iter()
            .filter(|r| query.mailbox.is_empty() || r.mailbox == query.mailbox)
            .filter(|r| query.state.is_none_or(|st| r.state() == st))
            .filter(|r| query.error_code.is_empty() || r.last_error_code == query.error_code)
            .map(|r| r.delivery_id)
            .collect();
        assert_eq!(
            rows(query)
                .iter()
                .map(|r| r.delivery_id)
                .collect::<Vec<_>>(),
            expected,
            "{query:?}"
        );
        for page_size in [1, 2, 5, 7, 36] {
            assert_eq!(
                list_paged(&s, query, page_size),
                expected,
                "{query:?} by {page_size}"
            );
        }
    }
    let dead = rows(&queries[3]);
    assert_eq!(dead.len(), 5);
    assert_eq!(rows(&queries[4]).len(), 2 + 12 + 12);
}

fn retry(after: u64) -> Outcome {
    Outcome::Retry {
        code: "503".into(),
        reason: "busy".into(),
        retry_after_ms: after,
    }
}

fn deferred(after: u64) -> Outcome {
    Outcome::Deferred {
        code: "CIRCUIT_OPEN".into(),
        reason: "mesh endpoint unavailable".into(),
        retry_after_ms: after,
    }
}

fn refused() -> Outcome {
    Outcome::Refused {
        code: "12".into(),
        reason: "Unregistered to address".into(),
    }
}

fn row(s: &Store, id: u64) -> pb::DeliveryRecord {
    s.read_now(|tx| {
        ledger::list(
            tx,
            &Query::default(),
            &id.checked_sub(1).map_or(String::new(), |p| p.to_string()),
            1,
        )
    })
    .unwrap()
    .0
    .remove(0)
}

async fn redrive_ids(s: &Store, ids: Vec<u64>, now: u64) -> usize {
    let sel = Selection {
        ids,
        ..Default::default()
    };
    s.writer()
        .write(move |tx| ledger::redrive(tx, &sel, now))
        .await
        .unwrap()
        .0
        .len()
}

#[tokio::test]
async fn failures_count_current_retries_and_restart_at_redrive() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let e = event(20, &["A"], false, 100);
    s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    let d = lease(&s, "A", 200).await;
    assert_eq!(d[0].failures, 0);
    let id = d[0].delivery_id;
    assert_eq!(
        complete(&s, id, 1, retry(0), 300).await,
        pb::DeliveryState::Queued
    );
    let d = lease(&s, "A", 300).await;
    assert_eq!((d[0].attempt, d[0].failures), (2, 1));
    // A stale retry (attempt 1) counts nothing; the current one does.
    assert_eq!(
        complete(&s, id, 1, retry(0), 400).await,
        pb::DeliveryState::InFlight
    );
    complete(&s, id, 2, retry(0), 400).await;
    let d = lease(&s, "A", 400).await;
    assert_eq!((d[0].attempt, d[0].failures), (3, 2));
    // A deferral counts no failure either.
    complete(&s, id, 3, deferred(0), 500).await;
    let d = lease(&s, "A", 500).await;
    assert_eq!((d[0].attempt, d[0].failures), (4, 2));
    complete(&s, id, 4, refused(), 600).await;
    assert_eq!(redrive_ids(&s, vec![id], 700).await, 1);
    let d = lease(&s, "A", 700).await;
    assert_eq!(
        (d[0].attempt, d[0].failures),
        (5, 0),
        "a redrive restarts the backoff from its first step"
    );
}

#[tokio::test]
async fn time_spent_deferred_moves_the_retry_window_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let e = event(23, &["A"], false, 100);
    s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    let d = lease(&s, "A", 200).await;
    let id = d[0].delivery_id;
    assert_eq!(d[0].retry_window_start, Some(super::keys::timestamp(100)));
    // Deferred at 300 (the circuit opened), leased again only at 10,300: the 10 s spent
    // deferred are not charged to the retry window.
    complete(&s, id, 1, deferred(0), 300).await;
    let d = lease(&s, "A", 10_300).await;
    assert_eq!(
        d[0].retry_window_start,
        Some(super::keys::timestamp(10_100))
    );
    // A retry is charged as before; two deferrals add up.
    complete(&s, id, 2, deferred(0), 10_400).await;
    let d = lease(&s, "A", 11_400).await;
    assert_eq!(
        d[0].retry_window_start,
        Some(super::keys::timestamp(11_100))
    );
    complete(&s, id, 3, retry(0), 11_500).await;
    let d = lease(&s, "A", 12_500).await;
    assert_eq!(
        d[0].retry_window_start,
        Some(super::keys::timestamp(11_100))
    );
    // A refusal and a redrive start a new window, with nothing deferred in it.
    complete(&s, id, 4, refused(), 12_600).await;
    assert_eq!(redrive_ids(&s, vec![id], 13_000).await, 1);
    let d = lease(&s, "A", 13_000).await;
    assert_eq!(
        d[0].retry_window_start,
        Some(super::keys::timestamp(13_000))
    );
}

#[tokio::test]
async fn deferrals_requeue_without_failing_and_stale_ones_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let e = event(21, &["A"], false, 100);
    s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    let d = lease(&s, "A", 200).await;
    let id = d[0].delivery_id;
    // Many deferrals never dead-letter it; each queues it again after its delay.
    let mut now = 200;
    for attempt in 1..=20 {
        assert_eq!(
            complete(&s, id, attempt, deferred(50), now).await,
            pb::DeliveryState::Queued
        );
        let r = row(&s, id);
        assert_eq!(r.next_attempt_at, Some(super::keys::timestamp(now + 50)));
        assert_eq!(r.last_error_code, "CIRCUIT_OPEN");
        assert_eq!(r.last_error, "mesh endpoint unavailable");
        assert!(
            lease(&s, "A", now + 49).await.is_empty(),
            "not before its time"
        );
        now += 50;
        let d = lease(&s, "A", now).await;
        assert_eq!((d[0].attempt, d[0].failures), (attempt + 1, 0));
    }
    // Attempt 21 is in flight: a deferral of attempt 20 is stale.
    assert_eq!(
        complete(&s, id, 20, deferred(0), now).await,
        pb::DeliveryState::InFlight
    );
    // Once requeued (no longer in flight), another deferral of the same attempt is ignored.
    complete(&s, id, 21, deferred(1_000), now).await;
    complete(&s, id, 21, deferred(0), now).await;
    assert_eq!(
        row(&s, id).next_attempt_at,
        Some(super::keys::timestamp(now + 1_000))
    );
}

#[test]
fn local_ids_parse_in_both_generations() {
    let event = format!("{:032x}", 0xabcdu128);
    assert_eq!(
        ledger::parse_local_id(&format!("{event}-3")),
        Some((0xabcd, 3, 0))
    );
    assert_eq!(
        ledger::parse_local_id(&format!("{event}-3-r12")),
        Some((0xabcd, 3, 12))
    );
    assert_eq!(
        ledger::parse_local_id(&format!("{event}-3-p4")),
        Some((0xabcd, 3, 4)),
        "a replay's generation"
    );
    assert_eq!(ledger::local_id(&event, 3, 0), format!("{event}-3"));
    assert_eq!(ledger::local_id(&event, 3, 2), format!("{event}-3-r2"));
    for bad in [
        "junk".to_string(),
        format!("{event}-"),
        format!("{event}-x"),
        format!("{event}-3-"),
        format!("{event}-3-r"),
        format!("{event}-3-2"),
        format!("{event}-3-r2-r3"),
        "abc-1".to_string(),
    ] {
        assert_eq!(ledger::parse_local_id(&bad), None, "{bad}");
    }
}

#[tokio::test]
async fn reports_on_an_earlier_generation_leave_the_redriven_delivery_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    // B's delivery stays queued and keeps the payload, so A's can be redriven after MESH
    // reports it (a delivered message's payload is otherwise gone).
    let e = event(22, &["A", "B"], false, 100);
    s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    let d = lease(&s, "A", 200).await;
    let (id, first_local) = (d[0].delivery_id, d[0].local_id.clone());
    complete(&s, id, 1, sent("MSG-1"), 300).await;
    // MESH reports the first message undelivered: dead-lettered.
    let report = |mesh: &str, local: &str, at: u64| {
        let (mesh, local) = (mesh.to_string(), local.to_string());
        s.writer().write(move |tx| {
            let Some(found) = ledger::find_reported(tx, &mesh, &local)? else {
                return Ok(None);
            };
            ledger::record_report(tx, found, "14", "not collected", at)?;
            Ok(Some(found))
        })
    };
    assert_eq!(report("MSG-1", &first_local, 400).await.unwrap(), Some(id));
    assert_eq!(row(&s, id).state(), pb::DeliveryState::DeadLettered);
    assert_eq!(redrive_ids(&s, vec![id], 500).await, 1);
    let d = lease(&s, "A", 500).await;
    let second_local = d[0].local_id.clone();
    assert_eq!(
        second_local,
        format!("{first_local}-r1"),
        "a new generation"
    );
    // While the resend is in flight, repeated reports of the first message find nothing.
    for (mesh, local) in [
        ("MSG-1", first_local.as_str()),
        ("", first_local.as_str()),
        ("MSG-1", ""),
    ] {
        assert_eq!(
            report(mesh, local, 600).await.unwrap(),
            None,
            "{mesh:?} {local:?}"
        );
    }
    assert_eq!(row(&s, id).state(), pb::DeliveryState::InFlight);
    complete(&s, id, 2, sent("MSG-2"), 700).await;
    for (mesh, local) in [
        ("MSG-1", first_local.as_str()),
        ("MSG-1", ""),
        ("MSG-1", second_local.as_str()),
    ] {
        assert_eq!(
            report(mesh, local, 800).await.unwrap(),
            None,
            "{mesh:?} {local:?}"
        );
    }
    assert_eq!(row(&s, id).state(), pb::DeliveryState::Delivered);
    assert_eq!(row(&s, id).mesh_message_id, "MSG-2");
    // A report of the current generation still dead-letters it, by either id.
    assert_eq!(report("MSG-2", "", 900).await.unwrap(), Some(id));
    assert_eq!(row(&s, id).state(), pb::DeliveryState::DeadLettered);
    assert_eq!(redrive_ids(&s, vec![id], 1_000).await, 1);
    let d = lease(&s, "A", 1_000).await;
    assert_eq!(d[0].local_id, format!("{first_local}-r2"));
    assert_eq!(
        report("", &d[0].local_id, 1_100).await.unwrap(),
        Some(id),
        "the current local id"
    );
}

async fn give_back(s: &Store, held: Vec<(u64, u32)>, now: u64) -> Vec<u64> {
    s.writer()
        .write(move |tx| ledger::give_back(tx, &held, now))
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

#[tokio::test]
async fn leases_given_back_are_offered_at_once_and_late_reports_are_judged() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let e = event(30, &["A", "B", "C"], false, 100);
    s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    let a = lease(&s, "A", 200).await[0].delivery_id;
    let b = lease(&s, "B", 200).await[0].delivery_id;
    let c = lease(&s, "C", 200).await[0].delivery_id;
    // The leases run until 1200; given back at 300, all three are available at 300.
    assert_eq!(
        give_back(&s, vec![(a, 1), (b, 1), (c, 1)], 300).await,
        vec![a, b, c]
    );
    for id in [a, b, c] {
        let r = row(&s, id);
        assert_eq!(r.state(), pb::DeliveryState::Queued);
        assert_eq!(r.next_attempt_at, Some(super::keys::timestamp(300)));
    }
    // Late reports on the given-back attempt: Sent still settles (MESH has the message);
    // a retry, deferral or refusal is stale (core took the attempt back).
    assert_eq!(
        complete(&s, a, 1, sent("M-A"), 310).await,
        pb::DeliveryState::Delivered
    );
    assert_eq!(
        complete(&s, b, 1, retry(0), 310).await,
        pb::DeliveryState::Queued
    );
    assert_eq!(
        complete(&s, b, 1, deferred(0), 310).await,
        pb::DeliveryState::Queued
    );
    assert_eq!(
        complete(&s, c, 1, refused(), 310).await,
        pb::DeliveryState::Queued
    );
    assert_eq!(row(&s, b).last_error_code, "", "nothing recorded");
    // The next hand-out is attempt 2 (the sink reconciles before it sends again).
    let again = lease(&s, "B", 320).await;
    assert_eq!((again[0].delivery_id, again[0].attempt), (b, 2));
    // A give-back that lost the race to a re-lease or a settling report changes nothing.
    assert!(
        give_back(&s, vec![(a, 1), (b, 1), (999, 1)], 330)
            .await
            .is_empty()
    );
    assert_eq!(row(&s, b).state(), pb::DeliveryState::InFlight);
    assert_eq!(row(&s, a).state(), pb::DeliveryState::Delivered);
}

#[tokio::test]
async fn every_lease_is_given_back_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let e = event(31, &["A", "B"], false, 100);
    s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    let a = lease(&s, "A", 200).await;
    let b = lease(&s, "B", 200).await;
    complete(&s, b[0].delivery_id, 1, sent("M"), 250).await;
    let n = s
        .writer()
        .write(|tx| ledger::give_back_all(tx, 300))
        .await
        .unwrap();
    assert_eq!(n, 1, "only the delivery in flight");
    assert_eq!(
        s.read_now(ledger::queue_heads).unwrap(),
        vec![("A".to_string(), 300)]
    );
    let again = lease(&s, "A", 300).await;
    assert_eq!(
        (again[0].delivery_id, again[0].attempt),
        (a[0].delivery_id, 2)
    );
}

#[tokio::test]
async fn a_lease_shares_payloads_and_keeps_to_its_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    for id in 40..44 {
        // "<Bundle/>" is 9 bytes.
        let e = event(id, &["A", "B"], false, 100);
        s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    }
    let call = |budget: crate::backend::Budget, now: u64| {
        let picks = vec![("A".to_string(), 10), ("B".to_string(), 10)];
        s.writer()
            .write(move |tx| ledger::lease(tx, &picks, now, 1_000, budget))
    };
    let leased = call(
        crate::backend::Budget {
            bytes: 27,
            take_one: false,
        },
        200,
    )
    .await
    .unwrap();
    assert!(leased.out_of_budget);
    let a = &leased.leases[0].deliveries;
    let b = &leased.leases[1].deliveries;
    assert_eq!((a.len(), b.len()), (3, 0), "27 bytes: three payloads");
    assert_eq!(
        leased.leases[1].next_ready,
        Some(100),
        "B still has work now"
    );
    // Nothing fits and the stream has something in flight: nothing.
    let leased = call(
        crate::backend::Budget {
            bytes: 5,
            take_one: false,
        },
        200,
    )
    .await
    .unwrap();
    assert!(leased.out_of_budget);
    assert!(leased.leases.iter().all(|l| l.deliveries.is_empty()));
    // With nothing in flight, one delivery passes however small the budget.
    let leased = call(
        crate::backend::Budget {
            bytes: 0,
            take_one: true,
        },
        200,
    )
    .await
    .unwrap();
    assert_eq!(
        leased
            .leases
            .iter()
            .map(|l| l.deliveries.len())
            .sum::<usize>(),
        1
    );
    // Unlimited: the rest; the two mailboxes' deliveries of one event share one buffer.
    let leased = call(crate::backend::Budget::UNLIMITED, 200).await.unwrap();
    assert!(!leased.out_of_budget);
    let a = &leased.leases[0].deliveries;
    let b = &leased.leases[1].deliveries;
    assert_eq!((a.len(), b.len()), (0, 4));
    let leased_a = call(crate::backend::Budget::UNLIMITED, 1_300)
        .await
        .unwrap();
    let (a, b) = (
        &leased_a.leases[0].deliveries,
        &leased_a.leases[1].deliveries,
    );
    assert_eq!((a.len(), b.len()), (4, 4), "expired leases come back");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.event_id, y.event_id);
        assert_eq!(
            x.payload.as_ptr(),
            y.payload.as_ptr(),
            "one buffer per event"
        );
    }
}

async fn sweep(
    s: &Store,
    now: u64,
    retention: u64,
    dl_retention: u64,
    limit: usize,
) -> crate::backend::Swept {
    s.writer()
        .write(move |tx| ledger::sweep(tx, now, retention, dl_retention, 0, limit))
        .await
        .unwrap()
}

#[tokio::test]
async fn retention_reads_only_due_index_entries_a_bounded_number_per_pass() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    // Ten events to A (dead-lettered at 1,000) and B (delivered at 1,000), one suppressed
    // event, one event that matched nobody.
    for n in 0..10u128 {
        let e = event(50 + n, &["A", "B"], false, 100);
        s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    }
    let flagged = event(60, &["C"], true, 100);
    s.writer()
        .write(move |tx| accept(tx, &flagged))
        .await
        .unwrap();
    let nobody = event(61, &[], false, 100);
    s.writer()
        .write(move |tx| accept(tx, &nobody))
        .await
        .unwrap();
    for d in lease(&s, "A", 1_000).await {
        complete(&s, d.delivery_id, 1, refused(), 1_000).await;
    }
    for d in lease(&s, "B", 1_000).await {
        complete(
            &s,
            d.delivery_id,
            1,
            sent(&format!("M{}", d.delivery_id)),
            1_000,
        )
        .await;
    }
    let held = |s: &Store| {
        s.read_now(|tx| Ok(tx.open_table(PAYLOADS)?.iter()?.count()))
            .unwrap()
    };
    assert_eq!(held(&s), 10, "the dead letters keep the payloads");
    // Dead letters are kept 5,000 ms, ledger rows 10,000 ms after settling. Before 6,000
    // nothing is due: a pass reads nothing at all, however many dead letters wait.
    assert_eq!(
        sweep(&s, 5_999, 10_000, 5_000, 3).await,
        crate::backend::Swept::default()
    );
    // Due: a pass reads at most 3 index entries.
    let swept = sweep(&s, 6_001, 10_000, 5_000, 3).await;
    assert_eq!((swept.scanned, swept.dead_letter_payloads_released), (3, 3));
    let mut released = 3;
    while released < 10 {
        let swept = sweep(&s, 6_001, 10_000, 5_000, 3).await;
        assert!(swept.scanned <= 3);
        released += swept.dead_letter_payloads_released;
    }
    assert_eq!(
        sweep(&s, 6_001, 10_000, 5_000, 3).await,
        crate::backend::Swept::default()
    );
    assert_eq!(held(&s), 0, "payloads released after the redrive window");
    // The suppressed delivery and the event without deliveries settled at 100: due at
    // 10,100; the rest at 11,000.
    let swept = sweep(&s, 10_500, 10_000, 5_000, 100).await;
    assert_eq!(
        (
            swept.deliveries_removed,
            swept.events_removed,
            swept.scanned
        ),
        (1, 2, 2)
    );
    assert!(s.read_now(|tx| get_by_id(tx, 60)).unwrap().is_none());
    assert!(s.read_now(|tx| get_by_id(tx, 61)).unwrap().is_none());
    assert!(s.read_now(|tx| get_by_id(tx, 50)).unwrap().is_some());
    let mut removed = (0, 0);
    loop {
        let swept = sweep(&s, 11_001, 10_000, 5_000, 7).await;
        assert!(swept.scanned <= 7);
        removed.0 += swept.deliveries_removed;
        removed.1 += swept.events_removed;
        if swept.scanned == 0 {
            break;
        }
    }
    assert_eq!(removed, (20, 10));
    assert!(s.read_now(|tx| ledger::stats(tx, "")).unwrap().is_empty());
    let left = s
        .read_now(|tx| ledger::list(tx, &Query::default(), "", 100))
        .unwrap()
        .0;
    assert!(left.is_empty(), "{left:?}");
    let index = s
        .read_now(|tx| Ok(tx.open_table(super::tables::SETTLED)?.iter()?.count()))
        .unwrap();
    assert_eq!(index, 0, "the index empties with the ledger");
}

#[tokio::test]
async fn redrive_and_reports_move_deliveries_in_the_retention_index() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let e = event(70, &["A", "B"], false, 100);
    s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
    let a = lease(&s, "A", 200).await[0].delivery_id;
    complete(&s, a, 1, refused(), 300).await;
    // Redriven before its window ends: no longer due for payload release.
    assert_eq!(redrive_ids(&s, vec![a], 400).await, 1);
    assert_eq!(
        sweep(&s, 10_000, 100_000, 1_000, 10).await,
        crate::backend::Swept::default()
    );
    let b = lease(&s, "B", 500).await[0].delivery_id;
    complete(&s, b, 1, sent("MB"), 500).await;
    // B delivered at 500, then MESH reports it undelivered at 600: a dead letter holding
    // the payload (A still holds it), due for release from 600 on.
    s.writer()
        .write(move |tx| ledger::record_report(tx, b, "14", "not collected", 600))
        .await
        .unwrap();
    let swept = sweep(&s, 1_601, 100_000, 1_000, 10).await;
    assert_eq!((swept.scanned, swept.dead_letter_payloads_released), (1, 1));
    // Its row is removed retention after it was dead-lettered (600), not delivered (500).
    assert_eq!(
        sweep(&s, 100_550, 100_000, 1_000, 10)
            .await
            .deliveries_removed,
        0
    );
    assert_eq!(
        sweep(&s, 100_601, 100_000, 1_000, 10)
            .await
            .deliveries_removed,
        1
    );
}

#[tokio::test]
async fn a_schema_1_store_gets_its_retention_index_built() {
    use super::tables::{SCHEMA, SETTLED};
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path());
        let e = event(80, &["A", "B"], false, 100);
        s.writer().write(move |tx| accept(tx, &e)).await.unwrap();
        let flagged = event(81, &["A"], true, 100);
        s.writer()
            .write(move |tx| accept(tx, &flagged))
            .await
            .unwrap();
        let nobody = event(82, &[], false, 100);
        s.writer()
            .write(move |tx| accept(tx, &nobody))
            .await
            .unwrap();
        let a = lease(&s, "A", 200).await[0].delivery_id;
        complete(&s, a, 1, refused(), 300).await;
        let b = lease(&s, "B", 200).await[0].delivery_id;
        complete(&s, b, 1, sent("M"), 300).await;
        // An event whose only delivery an old sweep removed, leaving the event behind.
        let orphan = event(83, &["C"], false, 100);
        s.writer()
            .write(move |tx| accept(tx, &orphan))
            .await
            .unwrap();
        let c = lease(&s, "C", 200).await[0].delivery_id;
        complete(&s, c, 1, sent("MC"), 300).await;
        // As schema 1 left it: no retention index.
        s.writer()
            .write(move |tx| {
                tx.open_table(super::tables::DELIVERIES)?.remove(c)?;
                tx.delete_table(SETTLED)
                    .map_err(|e| super::StoreError::Table(e.to_string()))?;
                tx.open_table(SCHEMA)?.insert("version", 1)?;
                Ok(())
            })
            .await
            .unwrap();
        s.close();
    }
    let s = store(dir.path());
    let index: Vec<(u8, u64, u64)> = s
        .read_now(|tx| {
            assert_eq!(super::schema::version(tx)?, super::schema::SCHEMA_VERSION);
            let mut keys = Vec::new();
            for item in tx.open_table(SETTLED)?.iter()? {
                keys.push(item?.0.value());
            }
            Ok(keys)
        })
        .unwrap();
    let kinds: Vec<(u8, u64)> = index.iter().map(|(k, t, _)| (*k, *t)).collect();
    assert_eq!(
        kinds,
        vec![
            (ledger::SETTLE_DEAD_HELD, 300),
            (ledger::SETTLE_ROW, 100),
            (ledger::SETTLE_ROW, 300),
            (ledger::SETTLE_EVENT, 100),
            (ledger::SETTLE_EVENT, 100),
        ]
    );
    // And the sweep works from it.
    let swept = sweep(&s, 10_000, 1_000, 1_000, 100).await;
    assert_eq!(swept.dead_letter_payloads_released, 1);
    assert_eq!(
        (swept.deliveries_removed, swept.events_removed),
        (3, 4),
        "all four events are past retention"
    );
}

#[tokio::test]
async fn per_asid_subscription_counts_follow_creates_and_deletes_and_are_rebuilt_on_migration() {
    use super::subscriptions::{delete, insert, owned_by_asid};
    use super::tables::{COUNTERS, SCHEMA};
    use crate::domain::catalogue::Catalogue;
    let dir = tempfile::tempdir().unwrap();
    let owned = |s: &Store, asid: &'static str| {
        let s = s.writer().clone();
        async move { s.write(move |tx| owned_by_asid(tx, asid)).await.unwrap() }
    };
    let mut ids = Vec::new();
    {
        let s = store(dir.path());
        for (nhs, asid) in [
            ("9434765803", "200000000111"),
            ("9434765811", "200000000111"),
            ("9434765838", "200000000222"),
        ] {
            let criteria = format!(
                "/Bundle?type=message&Patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}&MessageHeader.event=vaccinations-1"
            );
            let (id, mut record) =
                crate::bench::stored_subscription(&Catalogue::default(), criteria, "MB1", 1_000)
                    .unwrap();
            record.owner_asid = asid.into();
            s.writer()
                .write(move |tx| Ok(insert(tx, id, &record, 1_000)?.is_ok()))
                .await
                .map(|inserted| assert!(inserted))
                .unwrap();
            ids.push(id);
        }
        assert_eq!(owned(&s, "200000000111").await, 2);
        assert_eq!(owned(&s, "200000000222").await, 1);
        assert_eq!(owned(&s, "200000000333").await, 0);
        let first = ids[0];
        let deleted = s
            .writer()
            .write(move |tx| delete(tx, first, 2_000, |_| true))
            .await
            .unwrap();
        assert!(deleted);
        // A second delete of the same subscription changes nothing.
        let again = s
            .writer()
            .write(move |tx| delete(tx, first, 2_000, |_| true))
            .await
            .unwrap();
        assert!(!again);
        assert_eq!(owned(&s, "200000000111").await, 1);
        // As schema 2 left it: no per-ASID counts.
        s.writer()
            .write(|tx| {
                let mut counters = tx.open_table(COUNTERS)?;
                counters.remove("subscriptions-asid/200000000111")?;
                counters.remove("subscriptions-asid/200000000222")?;
                tx.open_table(SCHEMA)?.insert("version", 2)?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(owned(&s, "200000000111").await, 0);
        s.close();
    }
    let s = store(dir.path());
    assert_eq!(owned(&s, "200000000111").await, 1);
    assert_eq!(owned(&s, "200000000222").await, 1);
    s.close();
}
