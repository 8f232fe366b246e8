//! Reference data imports on PostgreSQL: the redb store's two slots per set (see the
//! schema), the set's metadata row switched by the import's last transaction. Imports of
//! one set on several cores are exclusive by their tickets ([`RefMeta::begin_import`]):
//! the latest begin wins, and each batch checks its ticket under the set's lock (shared by
//! batches, exclusive at begin and finish), so no row of an overtaken import lands in the
//! slot the later one fills.

use super::Db;
use prost::Message;

use super::error::pg;
use super::view::ref_meta;
use crate::backend::keys::now_ms;
use crate::backend::{Finished, Guard, RefMeta, Rows, SET_NAMES, StoreError, refusals};

/// No slot is being filled.
const NO_SLOT: u32 = u32::MAX;

async fn save_meta(c: &impl Db, set: usize, m: &RefMeta) -> Result<(), StoreError> {
    c.run(
        "INSERT INTO nems_ref_meta (set_index, meta) VALUES ($1, $2)
         ON CONFLICT (set_index) DO UPDATE SET meta = EXCLUDED.meta",
        &[&(set as i16), &m.encode_to_vec()],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

async fn clear(c: &impl Db, set: usize, slot: u32) -> Result<(), StoreError> {
    c.run(
        "DELETE FROM nems_ref_rows WHERE set_index = $1 AND slot = $2",
        &[&(set as i16), &((slot & 1) as i16)],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// The advisory lock key of a data set's imports.
fn lock_key(set: usize) -> String {
    format!("nems-refdata/{}", SET_NAMES[set])
}

/// Locks the set's metadata row for this transaction (imports of one set on several
/// cores take turns at each step).
async fn lock(c: &impl Db, set: usize) -> Result<RefMeta, StoreError> {
    c.run(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&lock_key(set)],
    )
    .await
    .map_err(pg)?;
    ref_meta(c, set).await
}

/// Starts an import: empties the slot not in force and returns it.
pub(crate) async fn begin(c: &impl Db, set: usize) -> Result<u32, StoreError> {
    let mut m = lock(c, set).await?;
    let slot = if m.generation == 0 {
        0
    } else {
        1 - (m.active_slot & 1)
    };
    let ticket = m.begin_import(slot);
    save_meta(c, set, &m).await?;
    clear(c, set, slot).await?;
    Ok(ticket)
}

/// Adds rows to the slot being filled (a key given twice keeps its last value), in a
/// transaction of the caller's: it holds the set's lock shared (batches of one import
/// run side by side; a later import's begin waits for them, and they for it) and checks
/// that `slot`, the import's ticket, is still the one in force.
pub(crate) async fn insert(
    c: &impl Db,
    set: usize,
    slot: u32,
    rows: Rows,
) -> Result<(), StoreError> {
    c.run(
        "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))",
        &[&lock_key(set)],
    )
    .await
    .map_err(pg)?;
    ref_meta(c, set).await?.check_ticket(set, slot)?;
    let mut by_key: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for (k, v) in rows {
        by_key.insert(k, v);
    }
    let (keys, values): (Vec<String>, Vec<Vec<u8>>) = by_key.into_iter().unzip();
    c.run(
        "INSERT INTO nems_ref_rows (set_index, slot, key, record)
         SELECT $1, $2, k, v FROM unnest($3::text[], $4::bytea[]) AS t (k, v)
         ON CONFLICT (set_index, slot, key) DO UPDATE SET record = EXCLUDED.record",
        &[&(set as i16), &((slot & 1) as i16), &keys, &values],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Keys the filled slot would add, remove and change against the set in force.
pub(crate) async fn diff(
    c: &impl Db,
    set: usize,
    slot: u32,
) -> Result<(u64, u64, u64), StoreError> {
    let m = ref_meta(c, set).await?;
    let new = (slot & 1) as i16;
    let old: i16 = if m.generation == 0 {
        // Nothing in force: compare with a slot index no row has.
        -1
    } else {
        (m.active_slot & 1) as i16
    };
    let row = c
        .fetch_one(
            "SELECT count(*) FILTER (WHERE o.key IS NULL),
                    count(*) FILTER (WHERE n.key IS NULL),
                    count(*) FILTER (WHERE o.key IS NOT NULL AND n.key IS NOT NULL
                                     AND o.record <> n.record)
             FROM (SELECT key, record FROM nems_ref_rows WHERE set_index = $1 AND slot = $2) n
             FULL JOIN (SELECT key, record FROM nems_ref_rows WHERE set_index = $1 AND slot = $3) o
               ON o.key = n.key",
            &[&(set as i16), &new, &old],
        )
        .await
        .map_err(pg)?;
    let n = |i: usize| row.get::<_, i64>(i) as u64;
    Ok((n(0), n(1), n(2)))
}

/// Finishes an import: switches the set to the filled slot when `guard` lets it through,
/// else empties the filled slot and keeps the set in force.
pub(crate) async fn finish(
    c: &impl Db,
    set: usize,
    slot: u32,
    format: &str,
    source: &str,
    guard: &Guard,
) -> Result<Finished, StoreError> {
    let mut m = lock(c, set).await?;
    m.check_ticket(set, slot)?;
    let rows: i64 = c
        .fetch_one(
            "SELECT count(*) FROM nems_ref_rows WHERE set_index = $1 AND slot = $2",
            &[&(set as i16), &((slot & 1) as i16)],
        )
        .await
        .map_err(pg)?
        .get(0);
    let rows = rows as u64;
    let previous_rows = if m.generation > 0 { m.rows } else { 0 };
    let refused = refusals(set, previous_rows, rows, guard);
    if guard.check || (!refused.is_empty() && !guard.force) {
        m.filling_slot = NO_SLOT;
        save_meta(c, set, &m).await?;
        clear(c, set, slot).await?;
        return Ok(Finished {
            meta: m,
            applied: false,
            rows,
            previous_rows,
            refusals: refused,
        });
    }
    let old = m.active_slot;
    let had_data = m.generation > 0;
    m.generation += 1;
    m.active_slot = slot & 1;
    m.filling_slot = NO_SLOT;
    m.rows = rows;
    m.format = format.to_string();
    m.source = source.to_string();
    m.imported_ms = now_ms();
    save_meta(c, set, &m).await?;
    if had_data && old & 1 != slot & 1 {
        clear(c, set, old).await?;
    }
    Ok(Finished {
        meta: m,
        applied: true,
        rows,
        previous_rows,
        refusals: refused,
    })
}
