//! The PostgreSQL schema on a real, throwaway PostgreSQL cluster (issue 13): core's
//! migrator applies it once when several cores start together on a new database, leaves an
//! up-to-date one alone, refuses a database from a newer nems or with an edited migration,
//! and the schema itself keeps one delivery per event and mailbox.

use nems_core::postgres::{MIGRATIONS, Migration, SchemaError, migrate, migrate_with};
use nems_e2e::postgres::PgCluster;

async fn cluster(test: &'static str) -> Option<PgCluster> {
    tokio::task::spawn_blocking(move || PgCluster::start(test))
        .await
        .expect("start the cluster")
}

#[tokio::test]
async fn cores_starting_together_migrate_a_new_database_once() {
    let Some(pg) = cluster("cores_starting_together_migrate_a_new_database_once").await else {
        return;
    };
    pg.create_database("nems").await;
    let mut a = pg.connect("nems").await;
    let mut b = pg.connect("nems").await;
    let (first, second) = tokio::join!(migrate(&mut a), migrate(&mut b));
    let (first, second) = (first.unwrap(), second.unwrap());
    let latest = MIGRATIONS.last().unwrap().version;
    assert_eq!((first.version, second.version), (latest, latest));
    let mut applied = [first.applied, second.applied];
    applied.sort();
    assert_eq!(applied, [vec![], (1..=latest).collect::<Vec<_>>()]);
    let tables: Vec<String> = a
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "nems_audit",
            "nems_audit_refused",
            "nems_counters",
            "nems_deliveries",
            "nems_events",
            "nems_mailboxes",
            "nems_match_nhs",
            "nems_match_rule",
            "nems_patients",
            "nems_payloads",
            "nems_ref_meta",
            "nems_ref_rows",
            "nems_schema_migrations",
            "nems_subscription_shards",
            "nems_subscriptions",
            "nems_systems",
        ]
    );
    // Started again: nothing to do.
    let again = migrate(&mut a).await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
}

#[tokio::test]
async fn a_database_from_a_newer_nems_or_with_an_edited_migration_is_refused() {
    let Some(pg) =
        cluster("a_database_from_a_newer_nems_or_with_an_edited_migration_is_refused").await
    else {
        return;
    };
    let mut client = pg.connect("postgres").await;
    migrate(&mut client).await.unwrap();
    // Every migration this binary knows, the first one edited.
    let mut edited = MIGRATIONS.to_vec();
    edited[0] = Migration {
        sql: "SELECT 1",
        ..MIGRATIONS[0]
    };
    match migrate_with(&mut client, &edited).await {
        Err(SchemaError::Changed { version: 1, .. }) => {}
        other => panic!("an edited migration: {other:?}"),
    }
    client
        .execute(
            "INSERT INTO nems_schema_migrations (version, name, checksum) VALUES (99, 'future', 'x')",
            &[],
        )
        .await
        .unwrap();
    let refused = migrate(&mut client).await.unwrap_err();
    let latest = MIGRATIONS.last().unwrap().version;
    assert!(
        matches!(refused, SchemaError::TooNew { database: 99, binary } if binary == latest),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("version 99"), "{refused}");
}

#[tokio::test]
async fn the_schema_keeps_one_delivery_per_event_and_mailbox() {
    let Some(pg) = cluster("the_schema_keeps_one_delivery_per_event_and_mailbox").await else {
        return;
    };
    let mut client = pg.connect("postgres").await;
    migrate(&mut client).await.unwrap();
    let seq: i64 = client
        .query_one(
            "INSERT INTO nems_events (event_id, accepted_ms, no_deliveries, record)
             VALUES (gen_random_uuid(), 1, false, '')
             RETURNING seq",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let insert = "INSERT INTO nems_deliveries (event_seq, idx, mailbox, state, event_code, last_error_code, record)
                  VALUES ($1, $2, 'RR8MBX01', 1, 'vaccinations-1', '', '')";
    client.execute(insert, &[&seq, &0i32]).await.unwrap();
    let second = client.execute(insert, &[&seq, &1i32]).await.unwrap_err();
    assert_eq!(
        second.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
        "{second}"
    );
}
