//! The schema-version table and migrations. A new database gets every table and the
//! current version; an older one is migrated step by step by explicit functions; a newer
//! one is refused (never silently downgraded).

use redb::{Database, ReadableTable};

use super::StoreError;
use super::tables::*;

/// The schema version this build writes.
///
/// - 1: the first.
/// - 2: the retention index `ledger-by-settled-v1` (built from the ledger on migration).
/// - 3: per-ASID live subscription counts in `counters-v1` (the subscription quota),
///   counted from the subscriptions on migration; `audit-refused-v1`.
pub(crate) const SCHEMA_VERSION: u64 = 4;

const VERSION_KEY: &str = "version";

/// Creates or migrates the schema, then returns the version in force.
pub(crate) fn migrate(db: &Database) -> Result<u64, StoreError> {
    let tx = db.begin_write()?;
    let found = {
        let table = tx.open_table(SCHEMA)?;
        table.get(VERSION_KEY)?.map(|v| v.value())
    };
    match found {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::SchemaTooNew {
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
        Some(v) if v == SCHEMA_VERSION => {}
        Some(mut v) => {
            // One function per step (v → v+1), all in this one transaction.
            while v < SCHEMA_VERSION {
                match v {
                    1 => migrate_1_to_2(&tx)?,
                    2 => migrate_2_to_3(&tx)?,
                    3 => migrate_3_to_4(&tx)?,
                    _ => {
                        return Err(StoreError::Corrupt(format!(
                            "no migration from schema version {v}"
                        )));
                    }
                }
                v += 1;
            }
            tx.open_table(SCHEMA)?.insert(VERSION_KEY, SCHEMA_VERSION)?;
        }
        None => {
            create_tables(&tx)?;
            tx.open_table(SCHEMA)?.insert(VERSION_KEY, SCHEMA_VERSION)?;
        }
    }
    tx.commit()?;
    Ok(SCHEMA_VERSION)
}

/// Schema 1 → 2: the retention index, built from the ledger as it is.
fn migrate_1_to_2(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let (rows, events) = super::ledger::build_settled_index(tx)?;
    tracing::info!(
        settled_deliveries = rows,
        events_without_deliveries = events,
        "schema 1 -> 2: retention index built"
    );
    Ok(())
}

/// Schema 2 → 3: the per-ASID subscription counts, from the subscriptions as they are.
fn migrate_2_to_3(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let owners = super::subscriptions::rebuild_owner_counts(tx)?;
    tx.open_table(AUDIT_REFUSED)?;
    tracing::info!(owners, "schema 2 -> 3: per-ASID subscription counts built");
    Ok(())
}

/// Reads the schema version.
fn migrate_3_to_4(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let records = super::audit::build_action_index(tx)?;
    tracing::info!(records, "schema 3 -> 4: audit index by action built");
    Ok(())
}

pub(crate) fn version(tx: &redb::ReadTransaction) -> Result<u64, StoreError> {
    let table = tx.open_table(SCHEMA)?;
    Ok(table.get(VERSION_KEY)?.map(|v| v.value()).unwrap_or(0))
}

fn create_tables(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(COUNTERS)?;
    tx.open_table(SUBSCRIPTIONS)?;
    tx.open_table(SUBS_BY_NHS)?;
    tx.open_table(SUBS_BY_RULE)?;
    tx.open_table(SUBS_BY_DEDUP)?;
    tx.open_table(SUBS_BY_OWNER)?;
    tx.open_table(SUBS_BY_MAILBOX)?;
    tx.open_table(EVENTS)?;
    tx.open_table(EVENTS_BY_ID)?;
    tx.open_table(PAYLOADS)?;
    tx.open_table(DELIVERIES)?;
    tx.open_table(QUEUE)?;
    tx.open_table(DELIVERIES_BY_STATE)?;
    tx.open_table(DELIVERIES_BY_MAILBOX)?;
    tx.open_table(MAILBOX_COUNTS)?;
    tx.open_table(DELIVERIES_BY_MESH_ID)?;
    tx.open_table(SETTLED)?;
    tx.open_table(SYSTEMS)?;
    tx.open_table(MAILBOXES)?;
    tx.open_table(PATIENTS)?;
    tx.open_table(AUDIT)?;
    tx.open_table(AUDIT_REFUSED)?;
    tx.open_table(AUDIT_BY_ACTION)?;
    tx.open_table(REF_META)?;
    for slots in REF_SLOTS {
        for slot in slots {
            tx.open_table(slot)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase;

    #[test]
    fn new_database_gets_the_current_version_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let db = Database::create(&path).unwrap();
            assert_eq!(migrate(&db).unwrap(), SCHEMA_VERSION);
        }
        let db = Database::create(&path).unwrap();
        assert_eq!(migrate(&db).unwrap(), SCHEMA_VERSION);
        let tx = db.begin_read().unwrap();
        assert_eq!(version(&tx).unwrap(), SCHEMA_VERSION);
        // Every table exists, so readers never meet a missing table.
        tx.open_table(QUEUE).unwrap();
        tx.open_table(REF_SLOTS[2][1]).unwrap();
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(SCHEMA)
            .unwrap()
            .insert(VERSION_KEY, SCHEMA_VERSION + 1)
            .unwrap();
        tx.commit().unwrap();
        assert!(matches!(migrate(&db), Err(StoreError::SchemaTooNew { .. })));
    }
}
