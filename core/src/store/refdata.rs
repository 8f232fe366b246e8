//! Reference data sets (postcodes, practices, code map), each in two physical slots: an
//! import clears and fills the inactive slot over many transactions while matching reads
//! the active one, and its final commit switches slots, so matching never sees half a
//! file. One import per data set at a time: the service serialises a core's own, and an
//! import's ticket ([`RefMeta::begin_import`]) makes any earlier one that is still going
//! fail at its next batch or its finish.

use nems_proto::v1 as pb;
use prost::Message;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::tables::{REF_META, REF_SLOTS};
use super::{Snapshot, StoreError};
use crate::backend::{Finished, Guard, RefMeta, SET_NAMES, refusals};

const NO_SLOT: u32 = u32::MAX;

fn read_meta(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    set: usize,
) -> Result<RefMeta, StoreError> {
    match table.get(SET_NAMES[set])? {
        Some(bytes) => Ok(RefMeta::decode(bytes.value())?),
        None => Ok(RefMeta {
            filling_slot: NO_SLOT,
            ..Default::default()
        }),
    }
}

/// The metadata of a data set.
pub(crate) fn meta(tx: &impl Snapshot, set: usize) -> Result<RefMeta, StoreError> {
    read_meta(&tx.table(REF_META)?, set)
}

fn active(
    tx: &impl Snapshot,
    set: usize,
) -> Result<Option<TableDefinition<'static, &'static str, &'static [u8]>>, StoreError> {
    let m = meta(tx, set)?;
    if m.generation == 0 {
        return Ok(None);
    }
    Ok(Some(REF_SLOTS[set][m.active_slot as usize & 1]))
}

/// Starts an import: empties the inactive slot and returns it.
pub(crate) fn begin(tx: &WriteTransaction, set: usize) -> Result<u32, StoreError> {
    let mut metas = tx.open_table(REF_META)?;
    let mut m = read_meta(&metas, set)?;
    let slot = if m.generation == 0 {
        0
    } else {
        1 - (m.active_slot & 1)
    };
    let ticket = m.begin_import(slot);
    metas.insert(SET_NAMES[set], m.encode_to_vec().as_slice())?;
    drop(metas);
    let def = REF_SLOTS[set][slot as usize];
    tx.delete_table(def)?;
    tx.open_table(def)?;
    Ok(ticket)
}

/// Adds rows (key, encoded value) to the slot being filled.
pub(crate) fn insert(
    tx: &WriteTransaction,
    set: usize,
    slot: u32,
    rows: &[(String, Vec<u8>)],
) -> Result<(), StoreError> {
    read_meta(&tx.open_table(REF_META)?, set)?.check_ticket(set, slot)?;
    let mut table = tx.open_table(REF_SLOTS[set][slot as usize & 1])?;
    for (key, value) in rows {
        table.insert(key.as_str(), value.as_slice())?;
    }
    Ok(())
}

/// Counts the keys the filled `slot` would add, remove and change against the set in force.
pub(crate) fn diff(
    tx: &impl Snapshot,
    set: usize,
    slot: u32,
) -> Result<(u64, u64, u64), StoreError> {
    let new = tx.table(REF_SLOTS[set][slot as usize & 1])?;
    let Some(def) = active(tx, set)? else {
        return Ok((new.len()?, 0, 0));
    };
    let old = tx.table(def)?;
    let (mut added, mut removed, mut changed) = (0u64, 0u64, 0u64);
    let mut olds = old.iter()?;
    let mut news = new.iter()?;
    let mut o = olds.next().transpose()?;
    let mut n = news.next().transpose()?;
    loop {
        match (&o, &n) {
            (None, None) => break,
            (Some(_), None) => {
                removed += 1;
                o = olds.next().transpose()?;
            }
            (None, Some(_)) => {
                added += 1;
                n = news.next().transpose()?;
            }
            (Some((ok, ov)), Some((nk, nv))) => match ok.value().cmp(nk.value()) {
                std::cmp::Ordering::Less => {
                    removed += 1;
                    o = olds.next().transpose()?;
                }
                std::cmp::Ordering::Greater => {
                    added += 1;
                    n = news.next().transpose()?;
                }
                std::cmp::Ordering::Equal => {
                    if ov.value() != nv.value() {
                        changed += 1;
                    }
                    o = olds.next().transpose()?;
                    n = news.next().transpose()?;
                }
            },
        }
    }
    Ok((added, removed, changed))
}

/// Finishes an import. When `guard` lets it through, the filled slot becomes active and the
/// old one is emptied; otherwise (a check, or a refusal without `force`) the filled slot is
/// emptied and the set in force stays.
pub(crate) fn finish(
    tx: &WriteTransaction,
    set: usize,
    slot: u32,
    format: &str,
    source: &str,
    guard: &Guard,
) -> Result<Finished, StoreError> {
    let mut metas = tx.open_table(REF_META)?;
    let mut m = read_meta(&metas, set)?;
    m.check_ticket(set, slot)?;
    let rows = tx.open_table(REF_SLOTS[set][slot as usize & 1])?.len()?;
    let previous_rows = if m.generation > 0 { m.rows } else { 0 };
    let refusals = refusals(set, previous_rows, rows, guard);
    if guard.check || (!refusals.is_empty() && !guard.force) {
        m.filling_slot = NO_SLOT;
        metas.insert(SET_NAMES[set], m.encode_to_vec().as_slice())?;
        drop(metas);
        let def = REF_SLOTS[set][slot as usize & 1];
        tx.delete_table(def)?;
        tx.open_table(def)?;
        return Ok(Finished {
            meta: m,
            applied: false,
            rows,
            previous_rows,
            refusals,
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
    m.imported_ms = super::keys::now_ms();
    metas.insert(SET_NAMES[set], m.encode_to_vec().as_slice())?;
    drop(metas);
    if had_data && old & 1 != slot & 1 {
        let def = REF_SLOTS[set][old as usize & 1];
        tx.delete_table(def)?;
        tx.open_table(def)?;
    }
    Ok(Finished {
        meta: m,
        applied: true,
        rows,
        previous_rows,
        refusals,
    })
}

/// Looks a postcode (normalised) up in the active set.
pub(crate) fn postcode(
    tx: &impl Snapshot,
    key: &str,
) -> Result<Option<pb::PostcodeRow>, StoreError> {
    let Some(def) = active(tx, 0)? else {
        return Ok(None);
    };
    let table = tx.table(def)?;
    match table.get(key)? {
        Some(bytes) => {
            let mut row = pb::PostcodeRow::decode(bytes.value())?;
            row.postcode = key.to_string();
            Ok(Some(row))
        }
        None => Ok(None),
    }
}

/// Looks a practice up in the active set.
pub(crate) fn practice(
    tx: &impl Snapshot,
    code: &str,
) -> Result<Option<pb::PracticeRow>, StoreError> {
    let Some(def) = active(tx, 1)? else {
        return Ok(None);
    };
    let table = tx.table(def)?;
    match table.get(code)? {
        Some(bytes) => {
            let mut row = pb::PracticeRow::decode(bytes.value())?;
            row.code = code.to_string();
            Ok(Some(row))
        }
        None => Ok(None),
    }
}

/// The codes the code map declares equivalent to `code` (GSS ↔ ODS).
pub(crate) fn equivalents(tx: &impl Snapshot, code: &str) -> Result<Vec<String>, StoreError> {
    let Some(def) = active(tx, 2)? else {
        return Ok(Vec::new());
    };
    let table = tx.table(def)?;
    match table.get(code)? {
        Some(bytes) => Ok(String::from_utf8_lossy(bytes.value())
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::{Guard, refusals};

    fn guard(received: u64, bad: u64) -> Guard {
        Guard {
            max_shrink_percent: 10.0,
            max_bad_row_percent: 1.0,
            received,
            bad,
            ..Default::default()
        }
    }

    #[test]
    fn the_limits_refuse_past_their_percentage_and_not_at_it() {
        // Shrink: 10 % exactly passes, more is refused; growth and a first import pass.
        assert!(refusals(0, 1000, 900, &guard(900, 0)).is_empty());
        let r = refusals(0, 1000, 899, &guard(899, 0));
        assert_eq!(
            r,
            [
                "the postcodes set would shrink from 1000 to 899 rows (10.1 %), more than the 10 % allowed"
            ]
        );
        assert!(refusals(0, 1000, 5000, &guard(5000, 0)).is_empty());
        assert!(refusals(1, 0, 3, &guard(3, 0)).is_empty());
        // Bad rows: 1 % of the rows read passes, more is refused.
        assert!(refusals(0, 0, 99, &guard(99, 1)).is_empty());
        assert_eq!(
            refusals(1, 0, 98, &guard(98, 2)),
            ["2 of 100 rows read (2.0 %) were malformed, more than the 1 % allowed"]
        );
        // Empty: always refused (no limit makes it pass), with or without a set in force.
        assert_eq!(
            refusals(2, 0, 0, &guard(0, 0)),
            ["the new code-map set is empty"]
        );
        let both = refusals(0, 10, 0, &guard(0, 2));
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(both[0].contains("has 10 rows"), "{both:?}");
    }
}
