//! The PostgreSQL engine against a real server: the ordering of acceptances against
//! subscription creates on several cores (the race `backend.rs` argues away).

use std::sync::Arc;

use super::PgBackend;
use super::cluster::PgCluster;
use crate::accept::{Recipients, Write};
use crate::backend::keys::{new_id, nhs_key};
use crate::backend::{Backend, Created, NewEvent};
use crate::domain::catalogue::Catalogue;
use crate::matching;

const NHS: &str = "9434765919";

/// A cluster and a fresh database in it, or `None` (skip notice) without PostgreSQL.
async fn database(test: &'static str) -> Option<(PgCluster, String)> {
    let cluster = tokio::task::spawn_blocking(move || PgCluster::start(test))
        .await
        .unwrap()?;
    let url = cluster.create_database("nems").await;
    Some((cluster, url))
}

fn event() -> Write {
    let id = new_id();
    Write {
        event: NewEvent {
            event_id: id,
            event_code: "vaccinations-1".into(),
            message_event_type: "new".into(),
            publisher_asid: "200000000111".into(),
            workflow_id: "NEMS_EVENT".into(),
            payload: bytes::Bytes::from_static(b"<Bundle/>"),
            deliveries: Vec::new(),
            matched_subscriptions: 0,
            accepted_ms: 0,
        },
        recipients: Recipients::Matched {
            subject: Box::new(matching::Event {
                event_code: "vaccinations-1".into(),
                nhs: nhs_key(NHS),
                ..Default::default()
            }),
            updates: Vec::new(),
        },
        audit: Default::default(),
    }
}

/// Two cores on one database: one publishes events about a patient as fast as it can
/// while the other creates subscriptions for that patient, each to a mailbox of its own.
/// Every event must be delivered to exactly the mailboxes whose subscription was created
/// at or before the event's acceptance time: none missed because its create had not
/// committed when the event matched, none matched after its acceptance time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn matching_sees_exactly_the_subscriptions_created_before_the_acceptance_time() {
    let Some((_cluster, url)) = database("pg_matching_race").await else {
        return;
    };
    let publisher = Arc::new(
        PgBackend::open(&url, 8, true, 1024, "core-a")
            .await
            .unwrap(),
    );
    let subscriber = Arc::new(
        PgBackend::open(&url, 8, true, 1024, "core-b")
            .await
            .unwrap(),
    );
    const SUBSCRIPTIONS: usize = 40;
    let creates = tokio::spawn(async move {
        let mut created = Vec::new();
        for i in 0..SUBSCRIPTIONS {
            let criteria = format!(
                "/Bundle?type=message&Patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{NHS}&MessageHeader.event=vaccinations-1"
            );
            let mailbox = format!("MBOX{i:04}");
            let (id, record) =
                crate::bench::stored_subscription(&Catalogue::default(), criteria, &mailbox, 0)
                    .unwrap();
            let outcome = subscriber
                .create_subscription(id, record, u64::MAX, 0, Default::default())
                .await
                .unwrap();
            let Created::Stored(stored) = outcome else {
                panic!("subscription {i} not stored: {outcome:?}");
            };
            created.push((mailbox, stored.created_ms));
        }
        created
    });
    let mut accepted = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let publisher = publisher.clone();
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..60 {
                let written = publisher.accept(event(), false).await.unwrap();
                out.push(written);
            }
            out
        }));
    }
    for w in workers {
        accepted.extend(w.await.unwrap());
    }
    let created = creates.await.unwrap();
    let mut boundary_events = 0;
    for written in &accepted {
        let mut expected: Vec<&str> = created
            .iter()
            .filter(|(_, at)| *at <= written.accepted_ms)
            .map(|(m, _)| m.as_str())
            .collect();
        expected.sort_unstable();
        let mut got: Vec<&str> = written
            .written
            .queued_mailboxes
            .iter()
            .map(String::as_str)
            .collect();
        got.sort_unstable();
        assert_eq!(
            got, expected,
            "event accepted at {} matched other mailboxes than those created by then",
            written.accepted_ms
        );
        if !expected.is_empty() && expected.len() < SUBSCRIPTIONS {
            boundary_events += 1;
        }
    }
    // The run overlapped: some events were accepted while subscriptions were still being
    // created (otherwise the test proved nothing).
    assert!(
        boundary_events > 0,
        "no event was accepted between the first and the last create ({} events)",
        accepted.len()
    );
}
