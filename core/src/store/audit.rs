//! The audit trail: who did what to which resource, when, with what outcome. Never holds
//! clinical content. Keyed by (time ms, random) so that appends need no counter.
//!
//! Refused requests are kept apart (`audit-refused-v1`, aggregated records with a count,
//! their own retention); listings merge both tables in key order.

use nems_proto::v1 as pb;
use prost::Message;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::StoreError;
use super::tables::{AUDIT, AUDIT_BY_ACTION, AUDIT_REFUSED};
use crate::backend::AuditFilter;

/// Appends one record.
pub(crate) fn append(
    tx: &WriteTransaction,
    at_ms: u64,
    record: &pb::AuditRecord,
) -> Result<(), StoreError> {
    insert(tx, AUDIT, 0, at_ms, record)
}

fn insert(
    tx: &WriteTransaction,
    table: AuditTable,
    which: u8,
    at_ms: u64,
    record: &pb::AuditRecord,
) -> Result<(), StoreError> {
    let seq = rand::random::<u64>();
    tx.open_table(table)?
        .insert((at_ms, seq), record.encode_to_vec().as_slice())?;
    tx.open_table(AUDIT_BY_ACTION)?
        .insert((record.action.as_str(), at_ms, seq, which), ())?;
    Ok(())
}

/// Indexes every record by action (the schema 3 to 4 migration); how many.
pub(crate) fn build_action_index(tx: &WriteTransaction) -> Result<usize, StoreError> {
    let mut index = tx.open_table(AUDIT_BY_ACTION)?;
    let mut n = 0;
    for (which, table) in [AUDIT, AUDIT_REFUSED].into_iter().enumerate() {
        let table = tx.open_table(table)?;
        for item in table.iter()? {
            let (k, v) = item?;
            let (ms, seq) = k.value();
            let record = pb::AuditRecord::decode(v.value())?;
            index.insert((record.action.as_str(), ms, seq, which as u8), ())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Appends one (aggregated) refusal record.
pub(crate) fn append_refused(
    tx: &WriteTransaction,
    at_ms: u64,
    record: &pb::AuditRecord,
) -> Result<(), StoreError> {
    insert(tx, AUDIT_REFUSED, 1, at_ms, record)
}

/// Lists one page of both tables merged, oldest first; the token is `ms:seq` of the last
/// record returned.
pub(crate) fn list(
    tx: &ReadTransaction,
    filter: &AuditFilter,
    page_token: &str,
    page_size: usize,
) -> Result<(Vec<pb::AuditRecord>, String), StoreError> {
    list_tables(tx, &[AUDIT, AUDIT_REFUSED], filter, page_token, page_size)
}

type AuditTable = redb::TableDefinition<'static, (u64, u64), &'static [u8]>;

fn list_tables(
    tx: &ReadTransaction,
    tables: &[AuditTable],
    filter: &AuditFilter,
    page_token: &str,
    page_size: usize,
) -> Result<(Vec<pb::AuditRecord>, String), StoreError> {
    let token = match page_token.split_once(':') {
        Some((ms, seq)) => {
            let ms: u64 = ms
                .parse()
                .map_err(|_| StoreError::Corrupt("bad page token".into()))?;
            let seq: u64 = seq
                .parse()
                .map_err(|_| StoreError::Corrupt("bad page token".into()))?;
            Some((ms, seq))
        }
        None => None,
    };
    let until = if filter.until_ms == 0 {
        u64::MAX
    } else {
        filter.until_ms
    };
    let rev = filter.newest_first;
    if !filter.action.is_empty() && tables.len() == 2 {
        return list_by_action(tx, filter, token, until, page_size);
    }
    let opened = tables
        .iter()
        .map(|t| tx.open_table(*t))
        .collect::<Result<Vec<_>, _>>()?;
    type Entry<'a> = Result<
        (
            redb::AccessGuard<'a, (u64, u64)>,
            redb::AccessGuard<'a, &'static [u8]>,
        ),
        redb::StorageError,
    >;
    let mut ranges: Vec<std::iter::Peekable<Box<dyn Iterator<Item = Entry<'_>> + '_>>> =
        Vec::with_capacity(opened.len());
    for table in &opened {
        let range: Box<dyn Iterator<Item = Entry<'_>> + '_> = if rev {
            // Below the token (or `until`), newest first.
            let end = token.unwrap_or((until, 0));
            Box::new(table.range(..end)?.rev())
        } else {
            // After the token (or from `since`), oldest first.
            let start = match token {
                Some((ms, seq)) => match seq.checked_add(1) {
                    Some(next) => (ms, next),
                    None => (ms.saturating_add(1), 0),
                },
                None => (filter.since_ms, 0),
            };
            Box::new(table.range(start..)?)
        };
        ranges.push(range.peekable());
    }
    let mut out = Vec::new();
    loop {
        // The range whose next key comes first in the order asked for (an error is taken
        // first, to be returned).
        let mut best: Option<(usize, (u64, u64))> = None;
        for (i, range) in ranges.iter_mut().enumerate() {
            match range.peek() {
                None => {}
                Some(Err(_)) => {
                    best = Some((i, (0, 0)));
                    break;
                }
                Some(Ok((k, _))) => {
                    let key = k.value();
                    let first = best.is_none_or(|(_, b)| if rev { key > b } else { key < b });
                    if first {
                        best = Some((i, key));
                    }
                }
            }
        }
        let Some((i, _)) = best else { break };
        let Some(item) = ranges[i].next() else { break };
        let (k, v) = item?;
        let (ms, seq) = k.value();
        if (!rev && ms >= until) || (rev && ms < filter.since_ms) {
            break;
        }
        let mut record = pb::AuditRecord::decode(v.value())?;
        // The time is the key's: records are stored without it.
        record.at = Some(super::keys::timestamp(ms));
        if wanted(filter, &record) {
            out.push(record);
            if out.len() >= page_size {
                return Ok((out, format!("{ms}:{seq}")));
            }
        }
    }
    Ok((out, String::new()))
}

/// Whether `record` passes `filter`'s ASID, action and resource filters.
fn wanted(filter: &AuditFilter, record: &pb::AuditRecord) -> bool {
    (filter.asid.is_empty() || record.asid == filter.asid)
        && (filter.action.is_empty() || record.action == filter.action)
        && (filter.resource_id.is_empty() || record.resource_id == filter.resource_id)
}

/// One page of one action's records (both tables), read through `AUDIT_BY_ACTION`.
fn list_by_action(
    tx: &ReadTransaction,
    filter: &AuditFilter,
    token: Option<(u64, u64)>,
    until: u64,
    page_size: usize,
) -> Result<(Vec<pb::AuditRecord>, String), StoreError> {
    use std::ops::Bound::{Excluded, Included};
    let a = filter.action.as_str();
    let index = tx.open_table(AUDIT_BY_ACTION)?;
    let tables = [tx.open_table(AUDIT)?, tx.open_table(AUDIT_REFUSED)?];
    let lower = match (filter.newest_first, token) {
        (false, Some((ms, seq))) => Excluded((a, ms, seq, u8::MAX)),
        _ => Included((a, filter.since_ms, 0, 0)),
    };
    let upper = match (filter.newest_first, token) {
        (true, Some((ms, seq))) => Excluded((a, ms, seq, 0)),
        _ => Excluded((a, until, 0, 0)),
    };
    let range = index.range::<(&str, u64, u64, u8)>((lower, upper))?;
    let keys: Box<dyn Iterator<Item = _>> = if filter.newest_first {
        Box::new(range.rev())
    } else {
        Box::new(range)
    };
    let mut out = Vec::new();
    for item in keys {
        let (k, _) = item?;
        let (_, ms, seq, which) = k.value();
        let Some(v) = tables[usize::from(which.min(1))].get((ms, seq))? else {
            continue;
        };
        let mut record = pb::AuditRecord::decode(v.value())?;
        record.at = Some(super::keys::timestamp(ms));
        if wanted(filter, &record) {
            out.push(record);
            if out.len() >= page_size {
                return Ok((out, format!("{ms}:{seq}")));
            }
        }
    }
    Ok((out, String::new()))
}

/// Deletes records older than `before_ms`, at most `limit` of them; returns how many.
pub(crate) fn prune(
    tx: &WriteTransaction,
    before_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    prune_table(tx, AUDIT, 0, before_ms, limit)
}

fn prune_table(
    tx: &WriteTransaction,
    table: AuditTable,
    which: u8,
    before_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    let mut table = tx.open_table(table)?;
    let mut index = tx.open_table(AUDIT_BY_ACTION)?;
    let mut keys = Vec::new();
    for item in table.range(..(before_ms, 0))? {
        let (k, v) = item?;
        let action = pb::AuditRecord::decode(v.value())?.action;
        keys.push((k.value(), action));
        if keys.len() >= limit {
            break;
        }
    }
    for ((ms, seq), action) in &keys {
        table.remove((*ms, *seq))?;
        index.remove((action.as_str(), *ms, *seq, which))?;
    }
    Ok(keys.len())
}

/// Deletes refusal records older than `before_ms`, at most `limit` of them.
pub(crate) fn prune_refused(
    tx: &WriteTransaction,
    before_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    prune_table(tx, AUDIT_REFUSED, 1, before_ms, limit)
}
