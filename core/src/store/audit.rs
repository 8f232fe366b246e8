//! The audit trail: who did what to which resource, when, with what outcome. Never holds
//! clinical content. Keyed by (time ms, random) so that appends need no counter.

use nems_proto::v1 as pb;
use prost::Message;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::StoreError;
use super::tables::AUDIT;

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

/// A filter over the audit trail.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditFilter {
    pub(crate) since_ms: u64,
    pub(crate) until_ms: u64,
    pub(crate) asid: String,
    pub(crate) action: String,
    pub(crate) resource_id: String,
}

/// Lists one page, oldest first; the token is `ms:seq` of the last record returned.
pub(crate) fn list(
    tx: &ReadTransaction,
    filter: &AuditFilter,
    page_token: &str,
    page_size: usize,
) -> Result<(Vec<pb::AuditRecord>, String), StoreError> {
    let table = tx.open_table(AUDIT)?;
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
    let mut out = Vec::new();
    for item in table.range(start..)? {
        let (k, v) = item?;
        let (ms, seq) = k.value();
        if ms >= until {
            break;
        }
        let mut record = pb::AuditRecord::decode(v.value())?;
        // The time is the key's: records are stored without it.
        record.at = Some(super::ledger::timestamp(ms));
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
    let mut table = tx.open_table(AUDIT)?;
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
