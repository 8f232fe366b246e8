//! Subscriptions and their match indexes on PostgreSQL.
//!
//! # The quota without a hot row
//! The live count of an ASID is the sum of rows sharded by the writing connection's server
//! process (`nems_subscription_shards`), so concurrent creates never wait for each other's
//! commits. A create holds an advisory lock of its owner's ASID until its transaction ends,
//! taken before it reads the count:
//! - **shared**, and it proceeds only when `live + slack <= quota`, `slack` being the
//!   server's `max_connections` times the most creates one transaction holds (creates are
//!   committed in groups, `group.rs`): no more creates than that can hold the lock at once;
//! - otherwise it starts again holding the lock **exclusively** (no other create of that
//!   ASID in flight) and proceeds when `live < quota`.
//!
//! Why no ASID ends above its quota: take the successful create `T` that read the count
//! last. Every other successful create either committed before that read (counted in what
//! `T` read) or held the lock at that instant (read earlier, not yet committed): at most
//! `slack - 1` of them when `T` holds it shared, none when exclusively. Either way the total
//! is at most what `T` allowed.
//!
//! A create then takes an advisory lock on its duplicate-detection key (two identical
//! creates on two cores cannot both find no duplicate; one group holds at most one create
//! per key, as its rows are written at the group's end), and the shared lock that orders
//! creates against acceptances (see `super::ORDER_LOCK`): it is stamped with the time of the
//! write while holding it.
//!
//! A create alone holding its owner's lock exclusively waits for a duplicate key that a
//! group may hold while that group waits for the same owner's lock (a create of the
//! group's for that owner), a cycle PostgreSQL breaks by rolling one side back (SQLSTATE
//! 40P01): a group so rolled back runs its creates alone, and a create alone runs again
//! (`group.rs`), so no caller sees the deadlock.

use super::Db;
use nems_proto::v1 as pb;
use prost::Message;

use super::error::{decode, pg};
use super::{ORDER_LOCK, parse_uuid, uuid_text};
use crate::backend::keys::{id_hex, nhs_key, parse_id};
use crate::backend::{
    Created, ListFilter, StoreError, StoredSubscription, first_cause, match_entry, rule_key,
};

/// What the match index of `sub` holds: its NHS number (explicit) or its rule keys.
enum Keys {
    Nhs(i64),
    Rules(Vec<String>),
}

fn keys(sub: &StoredSubscription) -> Result<Keys, StoreError> {
    let criteria = sub
        .criteria
        .as_ref()
        .ok_or_else(|| StoreError::Corrupt("subscription without criteria".into()))?;
    Ok(match criteria.kind() {
        pb::SubscriptionKind::Explicit => {
            let nhs = nhs_key(&criteria.nhs_number).ok_or_else(|| {
                StoreError::Corrupt("explicit subscription without an NHS number".into())
            })?;
            Keys::Nhs(nhs as i64)
        }
        _ => Keys::Rules(
            criteria
                .event_codes
                .iter()
                .map(|e| rule_key(criteria.rule_type(), &criteria.organisation_code, e))
                .collect(),
        ),
    })
}

/// The dedup key as a uuid text.
fn dedup(sub: &StoredSubscription) -> String {
    uuid_text(sub.dedup_key())
}

/// A live duplicate of `sub` (not deleted, not ended at `now`), by id.
async fn live_duplicate(
    c: &impl Db,
    sub: &StoredSubscription,
    now: u64,
) -> Result<Option<u128>, StoreError> {
    let row = c
        .fetch_opt(
            "SELECT id::text FROM nems_subscriptions
             WHERE dedup_key = ($1::text)::uuid AND deleted_ms = 0
               AND (end_ms = 0 OR end_ms > $2)
             LIMIT 1",
            &[&dedup(sub), &(now as i64)],
        )
        .await
        .map_err(pg)?;
    Ok(row.and_then(|r| parse_uuid(r.get(0))))
}

/// Writes a new subscription and its match index rows (no checks).
async fn write(c: &impl Db, id: u128, sub: &StoredSubscription) -> Result<(), StoreError> {
    let id_text = uuid_text(id);
    let created = (sub.created_ms as i64, sub.end_ms as i64);
    let (dedup_key, record) = (dedup(sub), sub.encode_to_vec());
    let entry = match_entry(sub).encode_to_vec();
    let keys = keys(sub)?;
    let (nhs, rules) = match keys {
        Keys::Nhs(nhs) => (Some(nhs), Vec::new()),
        Keys::Rules(rules) => (None, rules),
    };
    // Sent together: one round trip for the three statements.
    let (stored, indexed, counted) = tokio::join!(
        async {
            c.run(
            "INSERT INTO nems_subscriptions
                 (id, owner_asid, owner_ods, mailbox, created_ms, end_ms, deleted_ms, dedup_key, record)
             VALUES (($1::text)::uuid, $2, $3, $4, $5, $6, 0, ($7::text)::uuid, $8)",
            &[
                &id_text,
                &sub.owner_asid,
                &sub.owner_ods,
                &sub.mailbox,
                &created.0,
                &created.1,
                &dedup_key,
                &record,
            ],
        ).await
        },
        async {
            match nhs {
                Some(nhs) => {
                    c.run(
                        "INSERT INTO nems_match_nhs (nhs_number, id, entry)
                         VALUES ($1, ($2::text)::uuid, $3)",
                        &[&nhs, &id_text, &entry],
                    )
                    .await
                }
                None => {
                    c.run(
                        "INSERT INTO nems_match_rule (rule_key, id, entry)
                         SELECT k, ($2::text)::uuid, $3 FROM unnest($1::text[]) AS k
                         ON CONFLICT DO NOTHING",
                        &[&rules, &id_text, &entry],
                    )
                    .await
                }
            }
        },
        async { count(c, &sub.owner_asid, 1).await }
    );
    first_cause([stored.err().map(pg), indexed.err().map(pg), counted.err()])
}

/// Adds `delta` to the live count of `owner` (this connection's shard).
async fn count(c: &impl Db, owner: &str, delta: i64) -> Result<(), StoreError> {
    c.run(
        "INSERT INTO nems_subscription_shards (owner_asid, shard, live)
         VALUES ($1, pg_backend_pid(), $2)
         ON CONFLICT (owner_asid, shard)
             DO UPDATE SET live = nems_subscription_shards.live + EXCLUDED.live",
        &[&owner, &delta],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// The advisory lock key of a duplicate-detection key.
pub(super) fn dedup_lock_key(sub: &StoredSubscription) -> String {
    format!("nems-dedup/{}", dedup(sub))
}

/// Serialises the creates of one duplicate-detection key across cores.
async fn lock_dedup(c: &impl Db, sub: &StoredSubscription) -> Result<(), StoreError> {
    c.run(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&dedup_lock_key(sub)],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// How a create holds its owner's quota lock (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuotaLock {
    /// Far from the quota: creates of one ASID proceed together.
    Shared,
    /// Near it: one create of the ASID at a time.
    Exclusive,
}

/// The advisory lock key of an ASID's quota.
pub(super) fn quota_key(owner: &str) -> String {
    format!("nems-quota/{owner}")
}

/// Starts a create (see the module documentation for the locks) in `c` and, when it is to
/// be stored, adds its rows and audit row to `staged` (written with its group's, see
/// `group.rs`); `None` when the owner is near its quota and the create must start again
/// with [`QuotaLock::Exclusive`].
#[allow(
    clippy::too_many_arguments,
    reason = "one create's inputs, each used once"
)]
pub(crate) async fn create(
    c: &impl Db,
    staged: &std::sync::Mutex<StagedSubscriptions>,
    id: u128,
    mut sub: StoredSubscription,
    quota: u64,
    slack: u64,
    mode: QuotaLock,
    audit_row: &pb::AuditRecord,
) -> Result<Option<Created>, StoreError> {
    // The locks, the count, the creation time and the duplicate check: one statement
    // (migration 0002). The creation time is read holding the ordering lock, from the
    // database's clock (the one acceptance times come from), rounded up to the ms
    // (acceptance times are rounded down): a create that takes the lock after an
    // acceptance's barrier is stamped strictly after it, even within one ms.
    let begun = c
        .fetch_one(
            CREATE_BEGIN,
            &[
                &quota_key(&sub.owner_asid),
                &(mode == QuotaLock::Exclusive),
                &sub.owner_asid,
                &dedup_lock_key(&sub),
                &ORDER_LOCK,
                &dedup(&sub),
            ],
        )
        .await
        .map_err(pg)?;
    let live = begun.get::<_, i64>(0).max(0) as u64;
    match mode {
        QuotaLock::Shared if live.saturating_add(slack) > quota => return Ok(None),
        QuotaLock::Exclusive if live >= quota => return Ok(Some(Created::OverQuota)),
        _ => {}
    }
    sub.created_ms = begun.get::<_, i64>(1) as u64;
    if let Some(existing) = begun.get::<_, Option<&str>>(2).and_then(parse_uuid) {
        return Ok(Some(Created::Duplicate(existing)));
    }
    {
        let mut staged = staged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        staged.add(id, &sub)?;
        staged.audit.push(sub.created_ms, audit_row);
    }
    Ok(Some(Created::Stored(Box::new(sub))))
}

/// Starts a create (migration 0002).
pub(crate) const CREATE_BEGIN: &str = "SELECT live, created_ms, duplicate
 FROM nems_create_begin($1, $2, $3, $4, $5, ($6::text)::uuid)";

/// The rows of a group of creates, gathered while they run and written at the end in
/// multi-row statements sent in one round trip: the subscriptions, their match index
/// rows, the owners' live counts (this connection's shard) and the audit rows.
#[derive(Debug, Default)]
pub(crate) struct StagedSubscriptions {
    id: Vec<String>,
    owner_asid: Vec<String>,
    owner_ods: Vec<String>,
    mailbox: Vec<String>,
    created_ms: Vec<i64>,
    end_ms: Vec<i64>,
    dedup: Vec<String>,
    record: Vec<Vec<u8>>,
    nhs: (Vec<i64>, Vec<String>, Vec<Vec<u8>>),
    rules: (Vec<String>, Vec<String>, Vec<Vec<u8>>),
    live: std::collections::BTreeMap<String, i64>,
    audit: super::audit::AuditRows,
}

impl StagedSubscriptions {
    /// Adds a new subscription's rows.
    fn add(&mut self, id: u128, sub: &StoredSubscription) -> Result<(), StoreError> {
        let id_text = uuid_text(id);
        let entry = match_entry(sub).encode_to_vec();
        match keys(sub)? {
            Keys::Nhs(nhs) => {
                self.nhs.0.push(nhs);
                self.nhs.1.push(id_text.clone());
                self.nhs.2.push(entry);
            }
            Keys::Rules(rules) => {
                for rule in rules {
                    self.rules.0.push(rule);
                    self.rules.1.push(id_text.clone());
                    self.rules.2.push(entry.clone());
                }
            }
        }
        self.id.push(id_text);
        self.owner_asid.push(sub.owner_asid.clone());
        self.owner_ods.push(sub.owner_ods.clone());
        self.mailbox.push(sub.mailbox.clone());
        self.created_ms.push(sub.created_ms as i64);
        self.end_ms.push(sub.end_ms as i64);
        self.dedup.push(dedup(sub));
        self.record.push(sub.encode_to_vec());
        *self.live.entry(sub.owner_asid.clone()).or_default() += 1;
        Ok(())
    }

    /// Writes every row gathered.
    pub(crate) async fn write(self, c: &impl Db) -> Result<(), StoreError> {
        if self.id.is_empty() {
            return Ok(());
        }
        // The index rows refer to the subscriptions': prepared first, so that the
        // statements go out in order at the first poll of the join below.
        let insert = c
            .prepare_cached(
                "INSERT INTO nems_subscriptions
                     (id, owner_asid, owner_ods, mailbox, created_ms, end_ms, deleted_ms,
                      dedup_key, record)
                 SELECT i::uuid, o, d, m, c, e, 0, k::uuid, r
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],
                             $6::int8[], $7::text[], $8::bytea[]) AS t(i, o, d, m, c, e, k, r)",
            )
            .await
            .map_err(pg)?;
        let index_nhs = c
            .prepare_cached(
                "INSERT INTO nems_match_nhs (nhs_number, id, entry)
                 SELECT n, i::uuid, e FROM unnest($1::int8[], $2::text[], $3::bytea[])
                     AS t(n, i, e)",
            )
            .await
            .map_err(pg)?;
        let index_rules = c
            .prepare_cached(
                "INSERT INTO nems_match_rule (rule_key, id, entry)
                 SELECT k, i::uuid, e FROM unnest($1::text[], $2::text[], $3::bytea[])
                     AS t(k, i, e)
                 ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(pg)?;
        let (owners, deltas): (Vec<String>, Vec<i64>) = self.live.into_iter().unzip();
        let (stored, nhs, rules, counted, audited) = tokio::join!(
            async {
                c.execute(
                    &insert,
                    &[
                        &self.id,
                        &self.owner_asid,
                        &self.owner_ods,
                        &self.mailbox,
                        &self.created_ms,
                        &self.end_ms,
                        &self.dedup,
                        &self.record,
                    ],
                )
                .await
            },
            async {
                if self.nhs.0.is_empty() {
                    return Ok(0);
                }
                c.execute(&index_nhs, &[&self.nhs.0, &self.nhs.1, &self.nhs.2])
                    .await
            },
            async {
                if self.rules.0.is_empty() {
                    return Ok(0);
                }
                c.execute(&index_rules, &[&self.rules.0, &self.rules.1, &self.rules.2])
                    .await
            },
            async {
                c.run(
                    "INSERT INTO nems_subscription_shards (owner_asid, shard, live)
                     SELECT o, pg_backend_pid(), n FROM unnest($1::text[], $2::int8[])
                         AS t(o, n)
                     ON CONFLICT (owner_asid, shard)
                         DO UPDATE SET live = nems_subscription_shards.live + EXCLUDED.live",
                    &[&owners, &deltas],
                )
                .await
            },
            self.audit.write(c)
        );
        first_cause([
            stored.err().map(pg),
            nhs.err().map(pg),
            rules.err().map(pg),
            counted.err().map(pg),
            audited.err(),
        ])
    }
}

/// Inserts many subscriptions (tools and benchmarks; no quota): how many were new.
pub(crate) async fn insert_many(
    c: &impl Db,
    batch: &[(u128, StoredSubscription)],
) -> Result<usize, StoreError> {
    c.run("SELECT pg_advisory_xact_lock_shared($1)", &[&ORDER_LOCK])
        .await
        .map_err(pg)?;
    let mut new = 0;
    for (id, sub) in batch {
        lock_dedup(c, sub).await?;
        if live_duplicate(c, sub, sub.created_ms).await?.is_none() {
            write(c, *id, sub).await?;
            new += 1;
        }
    }
    Ok(new)
}

/// The first string after every string starting with `prefix` (its last character
/// raised by one; rule keys are ASCII).
fn prefix_end(prefix: &str) -> String {
    let mut chars: Vec<char> = prefix.chars().collect();
    match chars.pop() {
        Some(last) => {
            let next = char::from_u32(last as u32 + 1).unwrap_or(char::MAX);
            chars.push(next);
            chars.into_iter().collect()
        }
        None => char::MAX.to_string(),
    }
}

/// A subscription by id (deleted ones included).
pub(crate) async fn get(c: &impl Db, id: u128) -> Result<Option<StoredSubscription>, StoreError> {
    let row = c
        .fetch_opt(
            "SELECT record FROM nems_subscriptions WHERE id = ($1::text)::uuid",
            &[&uuid_text(id)],
        )
        .await
        .map_err(pg)?;
    row.map(|r| StoredSubscription::decode(r.get::<_, &[u8]>(0)).map_err(decode))
        .transpose()
}

/// Deletes a live subscription `allowed` accepts; false when there is none.
pub(crate) async fn delete(
    c: &impl Db,
    id: u128,
    now: u64,
    allowed: &(dyn Fn(&StoredSubscription) -> bool + Send + Sync),
) -> Result<bool, StoreError> {
    let id_text = uuid_text(id);
    let row = c
        .fetch_opt(
            "SELECT record FROM nems_subscriptions WHERE id = ($1::text)::uuid FOR UPDATE",
            &[&id_text],
        )
        .await
        .map_err(pg)?;
    let Some(row) = row else { return Ok(false) };
    let mut sub = StoredSubscription::decode(row.get::<_, &[u8]>(0)).map_err(decode)?;
    if sub.deleted_ms != 0 || !allowed(&sub) {
        return Ok(false);
    }
    sub.deleted_ms = now;
    c.run(
        "UPDATE nems_subscriptions SET deleted_ms = $2, record = $3 WHERE id = ($1::text)::uuid",
        &[&id_text, &(now as i64), &sub.encode_to_vec()],
    )
    .await
    .map_err(pg)?;
    match keys(&sub)? {
        Keys::Nhs(nhs) => c
            .run(
                "DELETE FROM nems_match_nhs WHERE nhs_number = $1 AND id = ($2::text)::uuid",
                &[&nhs, &id_text],
            )
            .await
            .map_err(pg)?,
        Keys::Rules(rules) => c
            .run(
                "DELETE FROM nems_match_rule WHERE rule_key = ANY($1) AND id = ($2::text)::uuid",
                &[&rules, &id_text],
            )
            .await
            .map_err(pg)?,
    };
    count(c, &sub.owner_asid, -1).await?;
    Ok(true)
}

/// Live subscriptions.
pub(crate) async fn live_count(c: &impl Db) -> Result<u64, StoreError> {
    let n: i64 = c
        .fetch_one(
            "SELECT coalesce(sum(live), 0)::bigint FROM nems_subscription_shards",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    Ok(n as u64)
}

/// One page of subscriptions in id order (rule listings: index order) and the next token.
pub(crate) async fn list(
    c: &impl Db,
    filter: &ListFilter,
    token: &str,
    size: usize,
    include_deleted: bool,
) -> Result<(Vec<(u128, StoredSubscription)>, String), StoreError> {
    let after = parse_id(token.rsplit('\t').next().unwrap_or_default());
    let after_text = uuid_text(after.unwrap_or(0));
    let first = after.is_none();
    let limit = size as i64;
    let live = !include_deleted;
    let rows = match filter {
        // Each statement names only its own conditions (no `$n OR …`) and orders by the
        // table's uuid column: a bare `ORDER BY id` binds to the output column `id::text`,
        // which no index holds, so every page sorted the whole table (200 ms at 1M). The
        // plan now walks the index in id order from the token and stops at the page.
        ListFilter::All => {
            let sql = format!(
                "SELECT id::text, record, '' FROM nems_subscriptions
                 WHERE id > ($1::text)::uuid{live_only}
                 ORDER BY nems_subscriptions.id LIMIT {limit}",
                live_only = if live { " AND deleted_ms = 0" } else { "" }
            );
            c.fetch(&sql, &[&after_text]).await
        }
        ListFilter::Owner(key) | ListFilter::Mailbox(key) => {
            let column = if matches!(filter, ListFilter::Owner(_)) {
                "owner_ods"
            } else {
                "mailbox"
            };
            let sql = format!(
                "SELECT id::text, record, '' FROM nems_subscriptions
                 WHERE {column} = $2 AND id > ($1::text)::uuid{live_only}
                 ORDER BY nems_subscriptions.id LIMIT {limit}",
                live_only = if live { " AND deleted_ms = 0" } else { "" }
            );
            c.fetch(&sql, &[&after_text, key]).await
        }
        ListFilter::Nhs(nhs) => {
            c.fetch(
                "SELECT s.id::text, s.record, '' FROM nems_match_nhs m
                 JOIN nems_subscriptions s ON s.id = m.id
                 WHERE m.nhs_number = $5 AND ($1 OR m.id > ($2::text)::uuid)
                   AND (NOT $3 OR s.deleted_ms = 0)
                 ORDER BY m.id LIMIT $4",
                &[&first, &after_text, &live, &limit, &(*nhs as i64)],
            )
            .await
        }
        ListFilter::Rule(prefix) => {
            let from_key = match token.split_once('\t') {
                Some((k, _)) => k.to_string(),
                None => prefix.clone(),
            };
            // The keys with the prefix sort from it to the prefix with its last character
            // raised (byte order: the column is COLLATE "C"), an index range.
            let end = prefix_end(prefix);
            c.fetch(
                "SELECT s.id::text, s.record, m.rule_key FROM nems_match_rule m
                 JOIN nems_subscriptions s ON s.id = m.id
                 WHERE m.rule_key >= $5 AND m.rule_key < $7
                   AND ($1 OR (m.rule_key, m.id) > ($6, ($2::text)::uuid))
                   AND (NOT $3 OR s.deleted_ms = 0)
                 ORDER BY m.rule_key, m.id LIMIT $4",
                &[&first, &after_text, &live, &limit, prefix, &from_key, &end],
            )
            .await
        }
    }
    .map_err(pg)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut last = String::new();
    for row in &rows {
        let id = parse_uuid(row.get(0))
            .ok_or_else(|| StoreError::Corrupt("a subscription id is not a uuid".into()))?;
        let sub = StoredSubscription::decode(row.get::<_, &[u8]>(1)).map_err(decode)?;
        let key: &str = row.get(2);
        last = if matches!(filter, ListFilter::Rule(_)) {
            format!("{key}\t{}", id_hex(id))
        } else {
            id_hex(id)
        };
        out.push((id, sub));
    }
    let next = if out.len() >= size {
        last
    } else {
        String::new()
    };
    Ok((out, next))
}
