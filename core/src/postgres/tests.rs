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
    event_about(NHS)
}

fn event_about(nhs: &str) -> Write {
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
                nhs: nhs_key(nhs),
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
        PgBackend::open(&url, 8, true, 1024, "core-a", None)
            .await
            .unwrap(),
    );
    let subscriber = Arc::new(
        PgBackend::open(&url, 8, true, 1024, "core-b", None)
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

/// A subscription for the test patient to `mailbox`.
fn subscription(mailbox: &str) -> (u128, crate::backend::StoredSubscription) {
    let criteria = format!(
        "/Bundle?type=message&Patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{NHS}&MessageHeader.event=vaccinations-1"
    );
    crate::bench::stored_subscription(&Catalogue::default(), criteria, mailbox, 0).unwrap()
}

/// A create near its owner's quota (alone, holding the quota lock exclusively) caught in a
/// deadlock that PostgreSQL breaks by rolling it back runs again and is stored, rather
/// than failing its caller. The cycle is made by a side transaction: it holds the
/// create's duplicate-key lock, the create takes the quota lock and waits for that one,
/// then the side asks for the quota lock. The side's deadlock check waits a minute, the
/// create's the server's default, so the create's fires first and rolls it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_rolled_back_to_break_a_deadlock_runs_again() {
    let Some((cluster, url)) = database("pg_create_deadlock").await else {
        return;
    };
    let core = Arc::new(
        PgBackend::open(&url, 4, true, 1024, "core-a", None)
            .await
            .unwrap(),
    );
    let (id, record) = subscription("DEADLOCK1");
    let lock = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
    let mut side = cluster.connect("nems").await;
    // The side's own deadlock check waits far longer than the create's, so the server
    // always picks the create to roll back, however loaded the machine is.
    side.batch_execute("SET deadlock_timeout = '60s'")
        .await
        .unwrap();
    let side_tx = side.transaction().await.unwrap();
    side_tx
        .execute(lock, &[&super::subscriptions::dedup_lock_key(&record)])
        .await
        .unwrap();
    let quota = super::subscriptions::quota_key(&record.owner_asid);
    // Near the quota (below the slack): alone, exclusive.
    let create = tokio::spawn({
        let core = core.clone();
        async move {
            core.create_subscription(id, record, 10, 0, Default::default())
                .await
        }
    });
    let observer = cluster.connect("nems").await;
    lock_requested(&observer).await;
    // Closes the cycle; granted once the server has rolled the create back.
    side_tx.execute(lock, &[&quota]).await.unwrap();
    side_tx.commit().await.unwrap();
    let created = create
        .await
        .unwrap()
        .expect("the create runs again and succeeds");
    assert!(matches!(created, Created::Stored(_)), "{created:?}");
    let deadlocks: i64 = observer
        .query_one(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(deadlocks >= 1, "the server broke a deadlock");
}

/// The quota holds under concurrent creates on two cores, across the switch from the
/// shared quota lock (far from the quota) to the exclusive one (near it): the owner ends
/// exactly at its quota, never above, and every create past it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_on_two_cores_stop_exactly_at_the_quota() {
    let Some((_cluster, url)) = database("pg_quota_race").await else {
        return;
    };
    let a = Arc::new(
        PgBackend::open(&url, 16, true, 1024, "core-a", None)
            .await
            .unwrap(),
    );
    let b = Arc::new(
        PgBackend::open(&url, 16, true, 1024, "core-b", None)
            .await
            .unwrap(),
    );
    let slack = a.slack;
    // Stored before: the shared lock serves the first creates, the exclusive one the last.
    let preloaded = 200u64;
    let room = slack + 60;
    let quota = preloaded + room;
    let batch: Vec<_> = (0..preloaded)
        .map(|i| subscription(&format!("PRE{i:05}")))
        .collect();
    assert_eq!(
        a.insert_subscriptions(batch).await.unwrap() as u64,
        preloaded
    );
    let attempts = room + 100;
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let core = if w % 2 == 0 { a.clone() } else { b.clone() };
        workers.push(tokio::spawn(async move {
            let (mut stored, mut refused) = (0u64, 0u64);
            for i in (w..attempts).step_by(8) {
                let (id, record) = subscription(&format!("NEW{i:05}"));
                match core
                    .create_subscription(id, record, quota, 0, Default::default())
                    .await
                    .unwrap()
                {
                    Created::Stored(_) => stored += 1,
                    Created::OverQuota => refused += 1,
                    Created::Duplicate(_) => panic!("create {i} found a duplicate"),
                }
            }
            (stored, refused)
        }));
    }
    let (mut stored, mut refused) = (0, 0);
    for w in workers {
        let (s, r) = w.await.unwrap();
        stored += s;
        refused += r;
    }
    assert_eq!(
        stored, room,
        "creates stored (quota {quota}, {preloaded} before)"
    );
    assert_eq!(refused, attempts - room);
    assert_eq!(a.totals().await.unwrap().subscriptions, quota);
}

/// Events counted on two cores (each connection its own counter row) are all in the
/// total, also after one core is gone and the sweep folded its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_events_are_counted_across_cores_and_folds() {
    let Some((_cluster, url)) = database("pg_counters").await else {
        return;
    };
    let a = Arc::new(
        PgBackend::open(&url, 4, true, 1024, "core-a", None)
            .await
            .unwrap(),
    );
    let b = Arc::new(
        PgBackend::open(&url, 4, true, 1024, "core-b", None)
            .await
            .unwrap(),
    );
    let mut workers = Vec::new();
    for core in [a.clone(), b.clone(), a.clone(), b.clone()] {
        workers.push(tokio::spawn(async move {
            for _ in 0..15 {
                core.accept(event(), false).await.unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(a.totals().await.unwrap().events_accepted, 60);
    if let Some(close) = b.clone().closer() {
        close();
    }
    drop(b);
    // The closed connections leave pg_stat_activity shortly after their pool closed.
    let mut rows = u64::MAX;
    for _ in 0..100 {
        let retention = crate::backend::Retention {
            now: crate::backend::keys::now_ms(),
            ledger_ms: u64::MAX / 4,
            dead_letter_ms: u64::MAX / 4,
            replay_ms: 0,
            batch: 100,
            audit_cutoff_ms: 0,
            refusal_cutoff_ms: 0,
            audit_limit: 100,
        };
        a.sweep(retention).await.unwrap();
        assert_eq!(a.totals().await.unwrap().events_accepted, 60);
        rows = a.counter_rows().await;
        if rows <= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Shard 0 and at most the four connections of core A.
    assert!(rows <= 5, "{rows} counter rows left after folding");
}

/// Imports of one data set on two cores are exclusive: the later one's begin overtakes
/// the earlier one, whose further batches and finish are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_overtaken_by_another_cores_fails_and_the_later_one_wins() {
    let Some((_cluster, url)) = database("pg_import_overtaken").await else {
        return;
    };
    let a = PgBackend::open(&url, 4, true, 1024, "core-a", None)
        .await
        .unwrap();
    let b = PgBackend::open(&url, 4, true, 1024, "core-b", None)
        .await
        .unwrap();
    crate::backend::conformance::an_overtaken_import_fails_and_the_later_one_wins(&a, &b).await;
}

/// Paging newest first and the oldest pending delivery on PostgreSQL (conformance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_page_both_ways_and_the_oldest_pending_is_reported() {
    let Some((_cluster, url)) = database("pg_pages").await else {
        return;
    };
    let a = PgBackend::open(&url, 4, true, 1024, "core-a", None)
        .await
        .unwrap();
    crate::backend::conformance::deliveries_page_both_ways_and_the_oldest_pending_is_reported(&a)
        .await;
}

/// The audit trail by action and newest first on PostgreSQL (conformance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lists_one_action_either_way() {
    let Some((_cluster, url)) = database("pg_audit_order").await else {
        return;
    };
    let a = PgBackend::open(&url, 4, true, 1024, "core-a", None)
        .await
        .unwrap();
    crate::backend::conformance::audit_lists_one_action_either_way(&a).await;
}

/// Replay on PostgreSQL: the conformance test both engines pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_resends_what_the_window_kept() {
    let Some((_cluster, url)) = database("pg_replay").await else {
        return;
    };
    let a = PgBackend::open(&url, 4, true, 1024, "core-a", None)
        .await
        .unwrap();
    crate::backend::conformance::replay_resends_what_the_window_kept(&a).await;
}

/// A CA's certificate (PEM), and the leaf certificate and key it issues from `leaf`.
fn issue(leaf: rcgen::CertificateParams) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// A CA's certificate (PEM) and a server certificate and key it issued for `name`.
fn server_pki(name: &str) -> (String, String, String) {
    let mut leaf = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    issue(leaf)
}

/// TLS to the database: a server that takes TCP connections only with TLS refuses a core
/// without `database_tls`; a core given the wrong CA, or the right CA but a host the
/// certificate does not name, refuses the server; with the right CA and the certificate's
/// name, every connection of the core is encrypted and acceptances commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_the_database_are_encrypted_and_the_server_verified() {
    let Some((cluster, url)) = database("pg_tls").await else {
        return;
    };
    let (ca, cert, key) = server_pki("db.nems.test");
    let (rogue_ca, _, _) = server_pki("db.nems.test");
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, rogue_file) = (dir.path().join("ca.pem"), dir.path().join("rogue.pem"));
    std::fs::write(&ca_file, ca).unwrap();
    std::fs::write(&rogue_file, rogue_ca).unwrap();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.require_tls(&cert, &key);
        cluster
    })
    .await
    .unwrap();
    let tls = |ca_file: &std::path::Path, domain: Option<&str>| nems_runtime::tls::ClientTls {
        ca_file: ca_file.to_path_buf(),
        cert_file: None,
        key_file: None,
        domain: domain.map(str::to_string),
    };
    let open = |settings: Option<nems_runtime::tls::ClientTls>| {
        let url = url.clone();
        async move { PgBackend::open(&url, 4, true, 1024, "core-a", settings.as_ref()).await }
    };
    let refused = open(None)
        .await
        .expect_err("plaintext refused by the server");
    assert!(refused.to_string().contains("pg_hba.conf"), "{refused}");
    for (settings, why) in [
        (
            tls(&rogue_file, Some("db.nems.test")),
            "a CA that did not issue it",
        ),
        (
            tls(&ca_file, None),
            "a host (127.0.0.1) the certificate does not name",
        ),
    ] {
        let e = open(Some(settings)).await.expect_err(why);
        assert!(
            e.to_string().to_lowercase().contains("certificate"),
            "{why}: {e}"
        );
    }
    let core = open(Some(tls(&ca_file, Some("db.nems.test"))))
        .await
        .expect("TLS with the right CA and name");
    for _ in 0..3 {
        core.accept(event(), false).await.unwrap();
    }
    let observer = cluster.connect_socket("nems").await;
    let rows = observer
        .query(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'nems-core'",
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty(), "the core's connections are listed");
    assert!(
        rows.iter().all(|r| r.get::<_, bool>(0)),
        "every connection of the core is encrypted"
    );
    assert_eq!(core.totals().await.unwrap().events_accepted, 3);
}

/// A CA's certificate (PEM) and a client certificate and key it issued with the common
/// name `user` (what PostgreSQL's `cert` authentication compares with the user name).
fn client_pki(user: &str) -> (String, String, String) {
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, user);
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    issue(leaf)
}

/// Certificate authentication to the database (`core.database_tls.cert_file` /
/// `key_file`): a server that admits TCP clients only by a certificate its client CA
/// issued for the user refuses a core that presents none, and one whose certificate
/// another CA issued, and admits the core with its own; its acceptances commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_authenticates_to_the_database_by_its_client_certificate() {
    let Some((cluster, url)) = database("pg_client_cert").await else {
        return;
    };
    let (server_ca, server_cert, server_key) = server_pki("db.nems.test");
    let (client_ca, client_cert, client_key) = client_pki("nems");
    let (_, rogue_cert, rogue_key) = client_pki("nems");
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_file = file("server-ca.pem", &server_ca);
    let (cert_file, key_file) = (
        file("client.pem", &client_cert),
        file("client.key", &client_key),
    );
    let (rogue_cert_file, rogue_key_file) = (
        file("rogue.pem", &rogue_cert),
        file("rogue.key", &rogue_key),
    );
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.require_client_certificates(&server_cert, &server_key, &client_ca);
        cluster
    })
    .await
    .unwrap();
    let tls = |pair: Option<(&std::path::Path, &std::path::Path)>| nems_runtime::tls::ClientTls {
        ca_file: ca_file.clone(),
        cert_file: pair.map(|(c, _)| c.to_path_buf()),
        key_file: pair.map(|(_, k)| k.to_path_buf()),
        domain: Some("db.nems.test".into()),
    };
    let open = |settings: nems_runtime::tls::ClientTls| {
        let url = url.clone();
        async move { PgBackend::open(&url, 4, true, 1024, "core-a", Some(&settings)).await }
    };
    let e = open(tls(None))
        .await
        .expect_err("no client certificate: refused");
    assert!(e.to_string().contains("certificate"), "{e}");
    let e = open(tls(Some((&rogue_cert_file, &rogue_key_file))))
        .await
        .expect_err("a certificate another CA issued: refused");
    // The server ends the handshake with an alert (OpenSSL's choice of which: with both
    // CAs of one name, `decrypt_error` when the signature does not verify).
    let why = e.to_string().to_lowercase();
    assert!(why.contains("alert") || why.contains("certificate"), "{e}");
    let core = open(tls(Some((&cert_file, &key_file))))
        .await
        .expect("the core's own certificate is accepted");
    for _ in 0..2 {
        core.accept(event(), false).await.unwrap();
    }
    assert_eq!(core.totals().await.unwrap().events_accepted, 2);
    let observer = cluster.connect_socket("nems").await;
    let rows = observer
        .query(
            "SELECT s.client_dn FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'nems-core'",
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty(), "the core's connections are listed");
    assert!(
        rows.iter()
            .all(|r| r.get::<_, Option<String>>(0).as_deref() == Some("/CN=nems")),
        "every connection of the core presented its certificate"
    );
}

/// A connection holding the ordering lock (`ORDER_LOCK`) exclusively: committers stop at
/// it while jobs queue behind them.
async fn hold_order_lock(cluster: &PgCluster) -> tokio_postgres::Client {
    let side = cluster.connect("nems").await;
    side.execute("SELECT pg_advisory_lock($1)", &[&super::ORDER_LOCK])
        .await
        .unwrap();
    side
}

/// Returns once some transaction waits for an advisory lock (a committer is held).
async fn lock_requested(side: &tokio_postgres::Client) {
    loop {
        let waiting: i64 = side
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Acceptances waiting together commit in one transaction: with the committer held at the
/// ordering barrier while 41 acceptances queue (two per patient, and one reusing an
/// accepted event's id), every acceptance but the reused id commits, some in a group of
/// several, and the bad one fails alone with its own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acceptances_commit_in_groups_and_a_bad_one_fails_alone() {
    let Some((cluster, url)) = database("pg_group_commit").await else {
        return;
    };
    // A pool of 4: one committer.
    let core = Arc::new(
        PgBackend::open(&url, 4, true, 1024, "core-a", None)
            .await
            .unwrap(),
    );
    let side = hold_order_lock(&cluster).await;
    let first = event_about("9000000000");
    let first_id = first.event.event_id;
    let held = tokio::spawn({
        let core = core.clone();
        async move { core.accept(first, false).await }
    });
    // The committer is at the barrier once a lock request waits.
    lock_requested(&side).await;
    let mut queued = Vec::new();
    for i in 0..40u64 {
        let nhs = format!("{}", 9_000_000_001 + i % 20);
        let core = core.clone();
        queued.push(tokio::spawn(async move {
            core.accept(event_about(&nhs), false).await
        }));
    }
    let mut reused = event_about("9000000000");
    reused.event.event_id = first_id;
    let bad = tokio::spawn({
        let core = core.clone();
        async move { core.accept(reused, false).await }
    });
    while core.write_queue() < 41 {
        tokio::task::yield_now().await;
    }
    side.execute("SELECT pg_advisory_unlock($1)", &[&super::ORDER_LOCK])
        .await
        .unwrap();
    held.await.unwrap().expect("the first acceptance");
    for q in queued {
        q.await.unwrap().expect("each acceptance of the group");
    }
    let refused = bad.await.unwrap().expect_err("an event id accepted before");
    assert!(
        matches!(&refused, crate::backend::StoreError::Storage(t) if t.contains("23505")),
        "{refused:?}"
    );
    assert!(core.largest_group() > 1, "some acceptances shared a commit");
    assert_eq!(core.totals().await.unwrap().events_accepted, 41);
}

/// Identical creates queued together (the committer held at the ordering lock meanwhile)
/// store one subscription: the others find it as their duplicate, although creates are
/// committed in groups whose rows are written at the group's end. Creates of other
/// subscriptions queued beside them are all stored, some sharing a commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_creates_queued_together_store_one_subscription() {
    let Some((cluster, url)) = database("pg_create_groups").await else {
        return;
    };
    // A pool of 4: one committer of creates.
    let core = Arc::new(
        PgBackend::open(&url, 4, true, 1024, "core-a", None)
            .await
            .unwrap(),
    );
    let side = hold_order_lock(&cluster).await;
    let create = |mailbox: String| {
        let core = core.clone();
        tokio::spawn(async move {
            let (id, record) = subscription(&mailbox);
            core.create_subscription(id, record, 1_000_000_000, 0, Default::default())
                .await
        })
    };
    let held = create("HELD0001".into());
    lock_requested(&side).await;
    let same: Vec<_> = (0..10).map(|_| create("SAME0001".into())).collect();
    let others: Vec<_> = (0..20).map(|i| create(format!("OTHR{i:04}"))).collect();
    while core.creates_waiting() < 30 {
        tokio::task::yield_now().await;
    }
    side.execute("SELECT pg_advisory_unlock($1)", &[&super::ORDER_LOCK])
        .await
        .unwrap();
    assert!(matches!(held.await.unwrap().unwrap(), Created::Stored(_)));
    let (mut stored, mut duplicates) = (0, 0);
    for s in same {
        match s.await.unwrap().unwrap() {
            Created::Stored(_) => stored += 1,
            Created::Duplicate(_) => duplicates += 1,
            Created::OverQuota => panic!("far from the quota"),
        }
    }
    assert_eq!(
        (stored, duplicates),
        (1, 9),
        "one stored, the others its duplicates"
    );
    for o in others {
        assert!(matches!(o.await.unwrap().unwrap(), Created::Stored(_)));
    }
    assert!(core.largest_group() > 1, "some creates shared a commit");
    assert_eq!(core.totals().await.unwrap().subscriptions, 22);
}
