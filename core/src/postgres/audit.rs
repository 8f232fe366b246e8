//! The audit trail and the Spine directory on PostgreSQL.

use std::fmt::Write as _;

use super::Db;
use nems_proto::v1 as pb;
use prost::Message;

use super::error::{decode, pg};
use crate::backend::keys::timestamp;
use crate::backend::{AuditFilter, DirectoryChange, StoreError};

/// Audit rows gathered by a group's transaction (`group.rs`), written at its end in one
/// multi-row statement.
#[derive(Debug, Default)]
pub(crate) struct AuditRows {
    at_ms: Vec<i64>,
    asid: Vec<String>,
    action: Vec<String>,
    resource: Vec<String>,
    record: Vec<Vec<u8>>,
}

impl AuditRows {
    /// Adds a row.
    pub(crate) fn push(&mut self, at_ms: u64, record: &pb::AuditRecord) {
        self.at_ms.push(at_ms as i64);
        self.asid.push(record.asid.clone());
        self.action.push(record.action.clone());
        self.resource.push(record.resource_id.clone());
        self.record.push(record.encode_to_vec());
    }

    /// Writes the rows gathered.
    pub(crate) async fn write(&self, c: &impl Db) -> Result<(), StoreError> {
        if self.at_ms.is_empty() {
            return Ok(());
        }
        c.run(
            "INSERT INTO nems_audit (at_ms, asid, action, resource_id, record)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::bytea[])",
            &[
                &self.at_ms,
                &self.asid,
                &self.action,
                &self.resource,
                &self.record,
            ],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }
}

/// Appends audit rows (`refused`: to the aggregated refusals).
pub(crate) async fn append(
    c: &impl Db,
    at_ms: u64,
    records: &[pb::AuditRecord],
    refused: bool,
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let sql = if refused {
        "INSERT INTO nems_audit_refused (at_ms, asid, action, resource_id, record)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bytea[])"
    } else {
        "INSERT INTO nems_audit (at_ms, asid, action, resource_id, record)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bytea[])"
    };
    let asids: Vec<&str> = records.iter().map(|r| r.asid.as_str()).collect();
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    let ids: Vec<&str> = records.iter().map(|r| r.resource_id.as_str()).collect();
    let bodies: Vec<Vec<u8>> = records.iter().map(Message::encode_to_vec).collect();
    c.run(sql, &[&(at_ms as i64), &asids, &actions, &ids, &bodies])
        .await
        .map_err(pg)?;
    Ok(())
}

/// One page of both tables merged, oldest first; the token is `ms:seq` of the last record.
pub(crate) async fn list(
    c: &impl Db,
    filter: &AuditFilter,
    token: &str,
    size: usize,
) -> Result<(Vec<pb::AuditRecord>, String), StoreError> {
    let bad = || StoreError::Corrupt("bad page token".into());
    let token = match token.split_once(':') {
        Some((ms, seq)) => Some((
            ms.parse::<i64>().map_err(|_| bad())?,
            seq.parse::<i64>().map_err(|_| bad())?,
        )),
        None => None,
    };
    let until = if filter.until_ms == 0 {
        i64::MAX
    } else {
        filter.until_ms as i64
    };
    let since = filter.since_ms as i64;
    // Oldest first after the token (or from `since`), or newest first below it (or
    // below `until`). Only the filters given are in the statement, so that the planner
    // can read the index by action (migration 0003) or by time.
    let (ms, seq) = match (filter.newest_first, token) {
        (_, Some(key)) => key,
        (true, None) => (until, 0),
        (false, None) => (since, -1),
    };
    let (bound, limit_key, order) = if filter.newest_first {
        ("(at_ms, seq) < ($1, $2) AND at_ms >= $3", since, "DESC")
    } else {
        ("(at_ms, seq) > ($1, $2) AND at_ms < $3", until, "ASC")
    };
    let size = size as i64;
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&ms, &seq, &limit_key, &size];
    let mut filters = String::new();
    for (column, value) in [
        ("asid", &filter.asid),
        ("action", &filter.action),
        ("resource_id", &filter.resource_id),
    ] {
        if !value.is_empty() {
            params.push(value);
            let _ = write!(filters, " AND {column} = ${}", params.len());
        }
    }
    let select = |table: &str| {
        format!(
            "(SELECT at_ms, seq, record FROM {table} WHERE {bound}{filters}
              ORDER BY at_ms {order}, seq {order} LIMIT $4)"
        )
    };
    let rows = c
        .fetch(
            &format!(
                "SELECT at_ms, seq, record FROM ({} UNION ALL {}) a
                 ORDER BY at_ms {order}, seq {order} LIMIT $4",
                select("nems_audit"),
                select("nems_audit_refused")
            ),
            &params,
        )
        .await
        .map_err(pg)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut last = String::new();
    for row in &rows {
        let (at, seq): (i64, i64) = (row.get(0), row.get(1));
        let mut record = pb::AuditRecord::decode(row.get::<_, &[u8]>(2)).map_err(decode)?;
        record.at = Some(timestamp(at as u64));
        out.push(record);
        last = format!("{at}:{seq}");
    }
    let next = if out.len() as i64 >= size {
        last
    } else {
        String::new()
    };
    Ok((out, next))
}

/// Deletes at most `limit` rows older than `before_ms` from one table; how many.
pub(crate) async fn prune(
    c: &impl Db,
    refused: bool,
    before_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    let sql = if refused {
        "DELETE FROM nems_audit_refused WHERE seq IN (
             SELECT seq FROM nems_audit_refused WHERE at_ms < $1 ORDER BY at_ms, seq LIMIT $2)"
    } else {
        "DELETE FROM nems_audit WHERE seq IN (
             SELECT seq FROM nems_audit WHERE at_ms < $1 ORDER BY at_ms, seq LIMIT $2)"
    };
    let n = c
        .run(sql, &[&(before_ms as i64), &(limit as i64)])
        .await
        .map_err(pg)?;
    Ok(n as usize)
}

/// Every system and mailbox.
pub(crate) async fn directory(
    c: &impl Db,
) -> Result<(Vec<pb::SpineSystem>, Vec<pb::MeshMailbox>), StoreError> {
    let systems = c
        .fetch("SELECT record FROM nems_systems ORDER BY asid", &[])
        .await
        .map_err(pg)?
        .iter()
        .map(|r| pb::SpineSystem::decode(r.get::<_, &[u8]>(0)).map_err(decode))
        .collect::<Result<_, _>>()?;
    let mailboxes = c
        .fetch("SELECT record FROM nems_mailboxes ORDER BY mailbox_id", &[])
        .await
        .map_err(pg)?
        .iter()
        .map(|r| pb::MeshMailbox::decode(r.get::<_, &[u8]>(0)).map_err(decode))
        .collect::<Result<_, _>>()?;
    Ok((systems, mailboxes))
}

/// Applies one directory change; true when it replaced or removed something.
pub(crate) async fn change(c: &impl Db, change: &DirectoryChange) -> Result<bool, StoreError> {
    let n = match change {
        DirectoryChange::PutSystem(s) => {
            // xmax is 0 for a row this statement inserted, not for one it updated.
            let row = c
                .fetch_one(
                    "INSERT INTO nems_systems (asid, record) VALUES ($1, $2)
                     ON CONFLICT (asid) DO UPDATE SET record = EXCLUDED.record
                     RETURNING (xmax <> 0)",
                    &[&s.asid, &s.encode_to_vec()],
                )
                .await
                .map_err(pg)?;
            return Ok(row.get(0));
        }
        DirectoryChange::PutMailbox(m) => {
            let row = c
                .fetch_one(
                    "INSERT INTO nems_mailboxes (mailbox_id, record) VALUES ($1, $2)
                     ON CONFLICT (mailbox_id) DO UPDATE SET record = EXCLUDED.record
                     RETURNING (xmax <> 0)",
                    &[&m.mailbox_id, &m.encode_to_vec()],
                )
                .await
                .map_err(pg)?;
            return Ok(row.get(0));
        }
        DirectoryChange::DeleteSystem(asid) => c
            .run("DELETE FROM nems_systems WHERE asid = $1", &[asid])
            .await
            .map_err(pg)?,
        DirectoryChange::DeleteMailbox(id) => c
            .run("DELETE FROM nems_mailboxes WHERE mailbox_id = $1", &[id])
            .await
            .map_err(pg)?,
    };
    Ok(n > 0)
}
