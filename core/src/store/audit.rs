//! The audit trail: who did what to which resource, when, with what outcome. Never holds
//! clinical content. Keyed by (time ms, random) so that appends need no counter.
//!
//! Refused requests are kept apart (`audit-refused-v1`, aggregated records with a count,
//! their own retention); listings merge both tables in key order.

use nems_proto::v1 as pb;
use prost::Message;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::StoreError;
use super::tables::{AUDIT, AUDIT_REFUSED};
use crate::backend::AuditFilter;

/// Appends one record.
pub(crate) fn append(
    tx: &WriteTransaction,
    at_ms: u64,
    record: &pb::AuditRecord,
) -> Result<(), StoreError> {
    let mut table = tx.open_table(AUDIT)?;
    table.insert(
        (at_ms, rand::random::<u64>()),
        record.encode_to_vec().as_slice(),
    )?;
    Ok(())
}

/// Appends one (aggregated) refusal record.
pub(crate) fn append_refused(
    tx: &WriteTransaction,
    at_ms: u64,
    record: &pb::AuditRecord,
) -> Result<(), StoreError> {
    let mut table = tx.open_table(AUDIT_REFUSED)?;
    table.insert(
        (at_ms, rand::random::<u64>()),
        record.encode_to_vec().as_slice(),
    )?;
    Ok(())
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
    let start = match page_token.split_once(':') {
        Some((ms, seq)) => {
            let ms: u64 = ms
                .parse()
                .map_err(|_| StoreError::Corrupt("bad page token".into()))?;
            let seq: u64 = seq
                .parse()
                .map_err(|_| StoreError::Corrupt("bad page token".into()))?;
            match seq.checked_add(1) {
                Some(next) => (ms, next),
                None => (ms.saturating_add(1), 0),
            }
        }
        None => (filter.since_ms, 0),
    };
    let until = if filter.until_ms == 0 {
        u64::MAX
    } else {
        filter.until_ms
    };
    let opened = tables
        .iter()
        .map(|t| tx.open_table(*t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ranges = Vec::with_capacity(opened.len());
    for table in &opened {
        ranges.push(table.range(start..)?.peekable());
    }
    let mut out = Vec::new();
    loop {
        // The range whose next key is smallest (an error is taken first, to be returned).
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
                    if best.is_none_or(|(_, b)| key < b) {
                        best = Some((i, key));
                    }
                }
            }
        }
        let Some((i, _)) = best else { break };
        let Some(item) = ranges[i].next() else { break };
        let (k, v) = item?;
        let (ms, seq) = k.value();
        if ms >= until {
            break;
        }
        let mut record = pb::AuditRecord::decode(v.value())?;
        // The time is the key's: records are stored without it.
        record.at = Some(super::keys::timestamp(ms));
        let keep = (filter.asid.is_empty() || record.asid == filter.asid)
            && (filter.action.is_empty() || record.action == filter.action)
            && (filter.resource_id.is_empty() || record.resource_id == filter.resource_id);
        if keep {
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
    prune_table(tx, AUDIT, before_ms, limit)
}

fn prune_table(
    tx: &WriteTransaction,
    table: AuditTable,
    before_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    let mut table = tx.open_table(table)?;
    let mut keys = Vec::new();
    for item in table.range(..(before_ms, 0))? {
        let (k, _) = item?;
        keys.push(k.value());
        if keys.len() >= limit {
            break;
        }
    }
    for key in &keys {
        table.remove(*key)?;
    }
    Ok(keys.len())
}

/// Deletes refusal records older than `before_ms`, at most `limit` of them.
pub(crate) fn prune_refused(
    tx: &WriteTransaction,
    before_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    prune_table(tx, AUDIT_REFUSED, before_ms, limit)
}
