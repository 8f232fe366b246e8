//! The delivery ledger on PostgreSQL, with the redb ledger's behaviour (`store/ledger.rs`):
//! each delivery row carries the same prost record (`StoredDelivery`) and the columns its
//! indexes need, all derived from the record when it is saved (`save`), so the state
//! machine below is the redb one statement for statement. Several cores lease from one
//! table: rows are taken with `FOR UPDATE SKIP LOCKED`, and every change locks its row.

use std::collections::HashMap;

use deadpool_postgres::{Client, Transaction};
use nems_proto::v1 as pb;
use prost::Message;

use super::Db;

use super::error::{decode, pg};
use super::uuid_text;
use crate::backend::first_cause;
use crate::backend::keys::{id_hex, timestamp};
use crate::backend::{
    Accepted, Budget, Completed, Lease, Leased, NewEvent, Outcome, Query, Redriven,
    ReplaySelection, Replayed, Retention, Selection, StoreError, Swept,
};
use crate::store::ledger::{
    Resend, SETTLE_DEAD_HELD, SETTLE_DELIVERED_HELD, SETTLE_ROW, check_replay_size, new_delivery,
    next_generation, parse_local_id, replay_wanted, settle_key, to_record,
};
use crate::store::records::{StoredDelivery, StoredEvent};

/// Loads a delivery, locking its row.
async fn load(tx: &Transaction<'_>, id: u64) -> Result<Option<StoredDelivery>, StoreError> {
    let row = tx
        .fetch_opt(
            "SELECT record FROM nems_deliveries WHERE delivery_id = $1 FOR UPDATE",
            &[&(id as i64)],
        )
        .await
        .map_err(pg)?;
    row.map(|r| StoredDelivery::decode(r.get::<_, &[u8]>(0)).map_err(decode))
        .transpose()
}

/// Saves a delivery: its record and every indexed column derived from it (`owner`: the
/// core holding its lease, for an in-flight one).
async fn save(
    tx: &Transaction<'_>,
    id: u64,
    d: &StoredDelivery,
    owner: Option<&str>,
) -> Result<(), StoreError> {
    let queue_at = (d.next_attempt_ms != 0).then_some(d.next_attempt_ms as i64);
    let settle = settle_key(id, d);
    let mesh = (!d.mesh_message_id.is_empty()).then_some(d.mesh_message_id.as_str());
    let owner = owner.filter(|_| d.state() == pb::DeliveryState::InFlight);
    tx.run(
        "UPDATE nems_deliveries SET state = $2, queue_at = $3, lease_owner = $4,
             last_error_code = $5, mesh_message_id = $6, settle_kind = $7, settle_at = $8,
             record = $9
         WHERE delivery_id = $1",
        &[
            &(id as i64),
            &(d.state as i16),
            &queue_at,
            &owner,
            &d.last_error_code,
            &mesh,
            &settle.map(|k| i16::from(k.0)),
            &settle.map(|k| k.1 as i64),
            &d.encode_to_vec(),
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// A state change (the redb ledger's `transition`, on the record only).
fn transition(d: &mut StoredDelivery, state: pb::DeliveryState, queue_at: Option<u64>, now: u64) {
    d.state = state.into();
    d.next_attempt_ms = queue_at.unwrap_or(0);
    d.updated_ms = now;
}

async fn load_event(tx: &Transaction<'_>, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
    let row = tx
        .fetch_opt(
            "SELECT record FROM nems_events WHERE seq = $1 FOR UPDATE",
            &[&(seq as i64)],
        )
        .await
        .map_err(pg)?;
    row.map(|r| StoredEvent::decode(r.get::<_, &[u8]>(0)).map_err(decode))
        .transpose()
}

async fn save_event(tx: &Transaction<'_>, seq: u64, e: &StoredEvent) -> Result<(), StoreError> {
    tx.run(
        "UPDATE nems_events SET record = $2 WHERE seq = $1",
        &[&(seq as i64), &e.encode_to_vec()],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Stops a delivery holding its event's payload; drops the payload when none holds it.
async fn release_payload(tx: &Transaction<'_>, d: &mut StoredDelivery) -> Result<(), StoreError> {
    if !d.holds_payload {
        return Ok(());
    }
    d.holds_payload = false;
    let Some(mut event) = load_event(tx, d.event_seq).await? else {
        return Ok(());
    };
    event.unsettled = event.unsettled.saturating_sub(1);
    save_event(tx, d.event_seq, &event).await?;
    if event.unsettled == 0 {
        tx.run(
            "DELETE FROM nems_payloads WHERE seq = $1",
            &[&(d.event_seq as i64)],
        )
        .await
        .map_err(pg)?;
    }
    Ok(())
}

/// Makes a delivery hold its event's payload again, if the payload still exists.
async fn acquire_payload(tx: &Transaction<'_>, d: &mut StoredDelivery) -> Result<bool, StoreError> {
    if d.holds_payload {
        return Ok(true);
    }
    let held = tx
        .fetch_opt(
            "SELECT 1 FROM nems_payloads WHERE seq = $1",
            &[&(d.event_seq as i64)],
        )
        .await
        .map_err(pg)?
        .is_some();
    if !held {
        return Ok(false);
    }
    let Some(mut event) = load_event(tx, d.event_seq).await? else {
        return Ok(false);
    };
    event.unsettled += 1;
    save_event(tx, d.event_seq, &event).await?;
    d.holds_payload = true;
    Ok(true)
}

/// The rows of a group of acceptances (`group.rs`), gathered while their bodies run and
/// written at the end in four multi-row statements sent in one round trip: the events,
/// the payloads, the delivery rows and the audit rows (column by column, for `unnest`).
#[derive(Debug, Default)]
pub(crate) struct Staged {
    event_seq: Vec<i64>,
    event_uuid: Vec<String>,
    event_ms: Vec<i64>,
    event_empty: Vec<bool>,
    event_record: Vec<Vec<u8>>,
    payload_seq: Vec<i64>,
    payload: Vec<bytes::Bytes>,
    d_seq: Vec<i64>,
    d_idx: Vec<i32>,
    d_mailbox: Vec<String>,
    d_state: Vec<i16>,
    d_queue_at: Vec<Option<i64>>,
    d_event_code: Vec<String>,
    d_error_code: Vec<String>,
    d_settle_kind: Vec<Option<i16>>,
    d_settle_at: Vec<Option<i64>>,
    d_record: Vec<Vec<u8>>,
    audit: super::audit::AuditRows,
}

/// A delivery row written by [`Staged::write`]: its event's sequence number, its index
/// in the event, and its id.
pub(crate) type WrittenDelivery = (u64, usize, u64);

impl Staged {
    /// Adds an accepted event under its sequence number `seq` (allocated when the
    /// acceptance began, which also counted it): the event, its payload (kept while a
    /// delivery is queued) and its delivery rows. The delivery ids are known once written:
    /// the returned record has zeros in their place.
    pub(crate) fn event(&mut self, seq: u64, e: &NewEvent) -> Accepted {
        let event_hex = id_hex(e.event_id);
        let queued = e.deliveries.iter().filter(|d| !d.suppressed).count() as u32;
        let stored = StoredEvent {
            event_id: event_hex.clone(),
            event_code: e.event_code.clone(),
            message_event_type: e.message_event_type.clone(),
            publisher_asid: e.publisher_asid.clone(),
            accepted_ms: e.accepted_ms,
            payload_bytes: e.payload.len() as u64,
            first_delivery: 0,
            deliveries: e.deliveries.len() as u32,
            unsettled: queued,
            matched_subscriptions: e.matched_subscriptions,
        };
        let seq_i = seq as i64;
        self.event_seq.push(seq_i);
        self.event_uuid.push(uuid_text(e.event_id));
        self.event_ms.push(e.accepted_ms as i64);
        self.event_empty.push(e.deliveries.is_empty());
        self.event_record.push(stored.encode_to_vec());
        if queued > 0 {
            self.payload_seq.push(seq_i);
            self.payload.push(e.payload.clone());
        }
        let mut out = Accepted {
            seq,
            queued_mailboxes: Vec::new(),
            delivery_ids: vec![0; e.deliveries.len()],
        };
        for (index, d) in e.deliveries.iter().enumerate() {
            let record = new_delivery(e, &event_hex, seq, index, d);
            // The id is not part of the derived columns (it is the row's own key).
            let settle = settle_key(0, &record);
            self.d_seq.push(seq_i);
            self.d_idx.push(index as i32);
            self.d_mailbox.push(d.mailbox.clone());
            self.d_state.push(record.state as i16);
            self.d_queue_at
                .push((record.next_attempt_ms != 0).then_some(record.next_attempt_ms as i64));
            self.d_event_code.push(e.event_code.clone());
            self.d_error_code.push(record.last_error_code.clone());
            self.d_settle_kind.push(settle.map(|k| i16::from(k.0)));
            self.d_settle_at.push(settle.map(|k| k.1 as i64));
            self.d_record.push(record.encode_to_vec());
            if !d.suppressed {
                out.queued_mailboxes.push(d.mailbox.clone());
            }
        }
        out
    }

    /// Adds an audit row.
    pub(crate) fn audit(&mut self, at_ms: u64, record: &pb::AuditRecord) {
        self.audit.push(at_ms, record);
    }

    /// Writes every row gathered; returns the delivery rows' ids.
    pub(crate) async fn write(
        self,
        tx: &Transaction<'_>,
    ) -> Result<Vec<WrittenDelivery>, StoreError> {
        // The payload and delivery rows refer to the events': the statements are prepared
        // first, so that these three are sent, in order, at the first poll of the join below
        // (after it, tokio's join polls in turns, not in order).
        let insert_events = tx
            .prepare_cached(
                "INSERT INTO nems_events (seq, event_id, accepted_ms, no_deliveries, record)
                 OVERRIDING SYSTEM VALUE
                 SELECT s, u::uuid, a, n, r
                 FROM unnest($1::int8[], $2::text[], $3::int8[], $4::bool[], $5::bytea[])
                     AS t(s, u, a, n, r)",
            )
            .await
            .map_err(pg)?;
        let insert_payloads = tx
            .prepare_cached(
                "INSERT INTO nems_payloads (seq, payload)
                 SELECT * FROM unnest($1::int8[], $2::bytea[])",
            )
            .await
            .map_err(pg)?;
        let insert_deliveries = tx
            .prepare_cached(
                "INSERT INTO nems_deliveries
                     (event_seq, idx, mailbox, state, queue_at, event_code, last_error_code,
                      settle_kind, settle_at, record)
                 SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[], $4::int2[],
                                      $5::int8[], $6::text[], $7::text[], $8::int2[],
                                      $9::int8[], $10::bytea[])
                 RETURNING event_seq, idx, delivery_id",
            )
            .await
            .map_err(pg)?;
        // No row refers to an audit row: its statement may go out after the others.
        let payloads: Vec<&[u8]> = self.payload.iter().map(|p| &p[..]).collect();
        let (events, payload, deliveries, audited) = tokio::join!(
            async {
                if self.event_seq.is_empty() {
                    return Ok(0);
                }
                tx.execute(
                    &insert_events,
                    &[
                        &self.event_seq,
                        &self.event_uuid,
                        &self.event_ms,
                        &self.event_empty,
                        &self.event_record,
                    ],
                )
                .await
            },
            async {
                if payloads.is_empty() {
                    return Ok(0);
                }
                tx.execute(&insert_payloads, &[&self.payload_seq, &payloads])
                    .await
            },
            async {
                if self.d_seq.is_empty() {
                    return Ok(Vec::new());
                }
                tx.query(
                    &insert_deliveries,
                    &[
                        &self.d_seq,
                        &self.d_idx,
                        &self.d_mailbox,
                        &self.d_state,
                        &self.d_queue_at,
                        &self.d_event_code,
                        &self.d_error_code,
                        &self.d_settle_kind,
                        &self.d_settle_at,
                        &self.d_record,
                    ],
                )
                .await
            },
            self.audit.write(tx)
        );
        let deliveries = deliveries.map_err(pg);
        first_cause([
            events.err().map(pg),
            payload.err().map(pg),
            deliveries.as_ref().err().cloned(),
            audited.err(),
        ])?;
        Ok(deliveries?
            .iter()
            .map(|row| {
                let (seq, index, id): (i64, i32, i64) = (row.get(0), row.get(1), row.get(2));
                (seq as u64, index as usize, id as u64)
            })
            .collect())
    }
}

/// Leases up to `max` available deliveries from each picked mailbox until
/// `now + lease_ms`, within `budget` payload bytes, for core `owner`.
pub(crate) async fn lease(
    tx: &Transaction<'_>,
    owner: &str,
    picks: &[(String, u32)],
    now: u64,
    lease_ms: u64,
    budget: Budget,
) -> Result<Leased, StoreError> {
    let until = now + lease_ms;
    let mut out = Vec::with_capacity(picks.len());
    let mut shared: HashMap<u64, bytes::Bytes> = HashMap::new();
    let (mut spent, mut taken, mut out_of_budget) = (0u64, 0usize, false);
    for (mailbox, max) in picks {
        let rows = if out_of_budget {
            Vec::new()
        } else {
            tx.fetch(
                "SELECT delivery_id, record FROM nems_deliveries
                 WHERE mailbox = $1 AND queue_at <= $2
                 ORDER BY queue_at, delivery_id LIMIT $3 FOR UPDATE SKIP LOCKED",
                &[mailbox, &(now as i64), &i64::from(*max)],
            )
            .await
            .map_err(pg)?
        };
        let mut leased = Vec::with_capacity(rows.len());
        for row in rows {
            let id = row.get::<_, i64>(0) as u64;
            let mut d = StoredDelivery::decode(row.get::<_, &[u8]>(1)).map_err(decode)?;
            let payload = match shared.get(&d.event_seq) {
                Some(p) => p.clone(),
                None => {
                    let p: Vec<u8> = tx
                        .fetch_opt(
                            "SELECT payload FROM nems_payloads WHERE seq = $1",
                            &[&(d.event_seq as i64)],
                        )
                        .await
                        .map_err(pg)?
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!("delivery {id} has no payload"))
                        })?
                        .get(0);
                    let p = bytes::Bytes::from(p);
                    shared.insert(d.event_seq, p.clone());
                    p
                }
            };
            let size = payload.len() as u64;
            let first = taken == 0 && budget.take_one;
            if !first && spent.saturating_add(size) > budget.bytes {
                out_of_budget = true;
                break;
            }
            spent += size;
            taken += 1;
            transition(&mut d, pb::DeliveryState::InFlight, Some(until), now);
            d.attempts += 1;
            if d.deferred_since_ms != 0 {
                d.deferred_total_ms = d
                    .deferred_total_ms
                    .saturating_add(now.saturating_sub(d.deferred_since_ms));
                d.deferred_since_ms = 0;
            }
            save(tx, id, &d, Some(owner)).await?;
            leased.push(pb::Delivery {
                delivery_id: id,
                attempt: d.attempts,
                local_id: d.local_id.clone(),
                event_id: d.event_id.clone(),
                event_code: d.event_code.clone(),
                mailbox: d.mailbox.clone(),
                workflow_id: d.workflow_id.clone(),
                partner_id: d.partner_id.clone(),
                payload,
                accepted_at: Some(timestamp(d.accepted_ms)),
                lease_expires_at: Some(timestamp(until)),
                retry_window_start: Some(timestamp(d.retry_window_start_ms())),
                failures: d.failures,
            });
        }
        let next_ready: Option<i64> = tx
            .fetch_one(
                "SELECT min(queue_at) FROM nems_deliveries WHERE mailbox = $1 AND queue_at IS NOT NULL",
                &[mailbox],
            )
            .await
            .map_err(pg)?
            .get(0);
        out.push(Lease {
            mailbox: mailbox.clone(),
            deliveries: leased,
            next_ready: next_ready.map(|t| t as u64),
        });
    }
    Ok(Leased {
        leases: out,
        out_of_budget,
    })
}

/// Gives back `(delivery, attempt)` leases still in flight on that attempt.
pub(crate) async fn give_back(
    tx: &Transaction<'_>,
    held: &[(u64, u32)],
    now: u64,
) -> Result<Vec<(u64, String)>, StoreError> {
    let mut back = Vec::new();
    for &(id, attempt) in held {
        let Some(mut d) = load(tx, id).await? else {
            continue;
        };
        if d.state() != pb::DeliveryState::InFlight || d.attempts != attempt {
            continue;
        }
        transition(&mut d, pb::DeliveryState::Queued, Some(now), now);
        save(tx, id, &d, None).await?;
        back.push((id, d.mailbox.clone()));
    }
    Ok(back)
}

/// Gives back every lease core `owner` holds (its start-up: its streams are gone).
pub(crate) async fn give_back_all(
    tx: &Transaction<'_>,
    owner: &str,
    now: u64,
) -> Result<usize, StoreError> {
    let rows = tx
        .fetch(
            "SELECT delivery_id, record FROM nems_deliveries
             WHERE state = 2 AND lease_owner = $1 FOR UPDATE",
            &[&owner],
        )
        .await
        .map_err(pg)?;
    let mut held = Vec::with_capacity(rows.len());
    for row in rows {
        let d = StoredDelivery::decode(row.get::<_, &[u8]>(1)).map_err(decode)?;
        held.push((row.get::<_, i64>(0) as u64, d.attempts));
    }
    Ok(give_back(tx, &held, now).await?.len())
}

/// Records an attempt's outcome (the redb ledger's rules, see `store/ledger.rs`).
pub(crate) async fn complete(
    tx: &Transaction<'_>,
    id: u64,
    attempt: u32,
    outcome: &Outcome,
    now: u64,
) -> Result<Option<Completed>, StoreError> {
    let Some(mut d) = load(tx, id).await? else {
        return Ok(None);
    };
    let before = d.state();
    let mut done = Completed {
        state: before,
        mailbox: d.mailbox.clone(),
        was_pending: matches!(
            before,
            pb::DeliveryState::Queued | pb::DeliveryState::InFlight
        ),
        requeued_at: None,
    };
    let settled = matches!(
        before,
        pb::DeliveryState::Delivered
            | pb::DeliveryState::DeadLettered
            | pb::DeliveryState::Suppressed
    );
    let stale = attempt != d.attempts || before != pb::DeliveryState::InFlight;
    match outcome {
        _ if settled => return Ok(Some(done)),
        Outcome::Sent {
            mesh_message_id,
            keep_payload,
        } => {
            transition(&mut d, pb::DeliveryState::Delivered, None, now);
            d.mesh_message_id.clone_from(mesh_message_id);
            d.last_error_code.clear();
            d.last_error.clear();
            if !keep_payload {
                release_payload(tx, &mut d).await?;
            }
        }
        Outcome::Retry { .. } | Outcome::Refused { .. } | Outcome::Deferred { .. } if stale => {
            return Ok(Some(done));
        }
        Outcome::Retry {
            code,
            reason,
            retry_after_ms,
        } => {
            let at = now + retry_after_ms;
            transition(&mut d, pb::DeliveryState::Queued, Some(at), now);
            d.last_error_code.clone_from(code);
            d.last_error.clone_from(reason);
            d.failures = d.failures.saturating_add(1);
            done.requeued_at = Some(at);
        }
        Outcome::Deferred {
            code,
            reason,
            retry_after_ms,
        } => {
            let at = now + retry_after_ms;
            transition(&mut d, pb::DeliveryState::Queued, Some(at), now);
            if d.deferred_since_ms == 0 {
                d.deferred_since_ms = now;
            }
            d.last_error_code.clone_from(code);
            d.last_error.clone_from(reason);
            done.requeued_at = Some(at);
        }
        Outcome::Refused { code, reason } => {
            transition(&mut d, pb::DeliveryState::DeadLettered, None, now);
            d.last_error_code.clone_from(code);
            d.last_error.clone_from(reason);
        }
    }
    save(tx, id, &d, None).await?;
    done.state = d.state();
    Ok(Some(done))
}

/// The delivery a MESH report concerns, only if it concerns its current generation (see
/// the redb ledger's `find_reported`).
async fn find_reported(
    tx: &Transaction<'_>,
    mesh_message_id: &str,
    local: &str,
) -> Result<Option<u64>, StoreError> {
    let other_message =
        |d: &StoredDelivery| !d.mesh_message_id.is_empty() && d.mesh_message_id != mesh_message_id;
    if let Some((event_id, index, generation)) = parse_local_id(local) {
        let row = tx
            .fetch_opt(
                "SELECT d.delivery_id, d.record FROM nems_events e
                 JOIN nems_deliveries d ON d.event_seq = e.seq AND d.idx = $2
                 WHERE e.event_id = ($1::text)::uuid",
                &[&uuid_text(event_id), &(index.min(i32::MAX as u64) as i32)],
            )
            .await
            .map_err(pg)?;
        if let Some(row) = row {
            let id = row.get::<_, i64>(0) as u64;
            let d = StoredDelivery::decode(row.get::<_, &[u8]>(1)).map_err(decode)?;
            let this_generation =
                d.redrives == generation && (mesh_message_id.is_empty() || !other_message(&d));
            return Ok(this_generation.then_some(id));
        }
    }
    if mesh_message_id.is_empty() {
        return Ok(None);
    }
    let row = tx
        .fetch_opt(
            "SELECT delivery_id, record FROM nems_deliveries WHERE mesh_message_id = $1",
            &[&mesh_message_id],
        )
        .await
        .map_err(pg)?;
    let Some(row) = row else { return Ok(None) };
    let d = StoredDelivery::decode(row.get::<_, &[u8]>(1)).map_err(decode)?;
    Ok((d.mesh_message_id == mesh_message_id).then_some(row.get::<_, i64>(0) as u64))
}

/// Dead-letters the delivery MESH reported undelivered: its id and whether this report
/// dead-lettered it.
pub(crate) async fn report_undelivered(
    tx: &Transaction<'_>,
    mesh_message_id: &str,
    local: &str,
    code: &str,
    description: &str,
    now: u64,
) -> Result<Option<(u64, bool)>, StoreError> {
    let Some(id) = find_reported(tx, mesh_message_id, local).await? else {
        return Ok(None);
    };
    let Some(mut d) = load(tx, id).await? else {
        return Ok(Some((id, false)));
    };
    if matches!(
        d.state(),
        pb::DeliveryState::Suppressed | pb::DeliveryState::DeadLettered
    ) {
        return Ok(Some((id, false)));
    }
    transition(&mut d, pb::DeliveryState::DeadLettered, None, now);
    d.last_error_code = format!("MESH_{code}");
    d.last_error = description.chars().take(500).collect();
    acquire_payload(tx, &mut d).await?;
    save(tx, id, &d, None).await?;
    Ok(Some((id, true)))
}

/// Queues selected dead letters again, each as a new generation (a new local id).
pub(crate) async fn redrive(
    tx: &Transaction<'_>,
    selection: &Selection,
    now: u64,
) -> Result<Redriven, StoreError> {
    let candidates: Vec<u64> = if selection.ids.is_empty() {
        let limit = if selection.limit == 0 {
            i64::MAX
        } else {
            selection.limit as i64
        };
        tx.fetch(
            "SELECT delivery_id FROM nems_deliveries
             WHERE state = 4 AND ($1 = '' OR mailbox = $1) AND ($2 = '' OR event_code = $2)
               AND ($3 = '' OR last_error_code = $3)
             ORDER BY delivery_id LIMIT $4",
            &[
                &selection.mailbox,
                &selection.event_code,
                &selection.error_code,
                &limit,
            ],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect()
    } else {
        selection.ids.clone()
    };
    let (mut redriven, mut skipped) = (Vec::new(), Vec::new());
    for id in candidates {
        let Some(mut d) = load(tx, id).await? else {
            skipped.push(id);
            continue;
        };
        if d.state() != pb::DeliveryState::DeadLettered || !acquire_payload(tx, &mut d).await? {
            skipped.push(id);
            continue;
        }
        transition(&mut d, pb::DeliveryState::Queued, Some(now), now);
        next_generation(id, &mut d, Resend::Redrive, now)?;
        save(tx, id, &d, None).await?;
        redriven.push((id, d.mailbox.clone()));
    }
    Ok((redriven, skipped))
}

/// The delivered messages `selection` picks that hold their payload, oldest first, locked
/// (`FOR UPDATE` when `lock`), and how many more it picks whose payload is gone (see the
/// redb ledger's `replay`). A delivered message is in the retention index by the time it
/// was delivered, which is after its acceptance: the rows delivered since `since` are
/// the only ones read (that index, or the mailbox's, whichever the planner finds
/// narrower), not the mailbox's history.
async fn replay_candidates(
    tx: &Transaction<'_>,
    selection: &ReplaySelection,
    lock: bool,
) -> Result<(Vec<(u64, StoredDelivery)>, u64), StoreError> {
    let sql = format!(
        "SELECT d.delivery_id, d.record FROM nems_deliveries d
         JOIN nems_events e ON e.seq = d.event_seq
         WHERE d.settle_kind = ANY($5) AND d.settle_at >= $3
           AND d.mailbox = $1 AND d.state = $2 AND e.accepted_ms >= $3
           AND ($4 = '' OR d.event_code = $4)
         ORDER BY d.delivery_id{}",
        if lock { " FOR UPDATE OF d" } else { "" }
    );
    let rows = tx
        .fetch(
            sql.as_str(),
            &[
                &selection.mailbox,
                &(pb::DeliveryState::Delivered as i16),
                &(selection.since_ms as i64),
                &selection.event_code,
                &[i16::from(SETTLE_ROW), i16::from(SETTLE_DELIVERED_HELD)].as_slice(),
            ],
        )
        .await
        .map_err(pg)?;
    let (mut held, mut gone) = (Vec::new(), 0);
    for row in rows {
        let id = row.get::<_, i64>(0) as u64;
        let d = StoredDelivery::decode(row.get::<_, &[u8]>(1)).map_err(decode)?;
        if !replay_wanted(&d, selection) {
            continue;
        }
        if d.holds_payload {
            held.push((id, d));
        } else {
            gone += 1;
        }
    }
    Ok((held, gone))
}

/// What a replay would do, without doing it.
pub(crate) async fn replay_preview(
    tx: &Transaction<'_>,
    selection: &ReplaySelection,
) -> Result<Replayed, StoreError> {
    let (held, gone) = replay_candidates(tx, selection, false).await?;
    Ok(Replayed {
        replayed: held.into_iter().map(|(id, _)| id).collect(),
        without_payload: gone,
    })
}

/// Queues again, each as its next generation, the delivered messages `selection` picks.
pub(crate) async fn replay(
    tx: &Transaction<'_>,
    selection: &ReplaySelection,
    now: u64,
) -> Result<Replayed, StoreError> {
    let (held, gone) = replay_candidates(tx, selection, true).await?;
    check_replay_size(held.len(), selection)?;
    let mut replayed = Vec::with_capacity(held.len());
    for (id, mut d) in held {
        transition(&mut d, pb::DeliveryState::Queued, Some(now), now);
        next_generation(id, &mut d, Resend::Replay, now)?;
        save(tx, id, &d, None).await?;
        replayed.push(id);
    }
    Ok(Replayed {
        replayed,
        without_payload: gone,
    })
}

/// One page of ledger rows in delivery order; the token is the last id returned.
pub(crate) async fn list(
    client: &Client,
    query: &Query,
    token: &str,
    size: usize,
) -> Result<(Vec<pb::DeliveryRecord>, String), StoreError> {
    // Oldest first after the token, or newest first below it.
    let (after, below, order) = match (query.newest_first, token.parse::<i64>()) {
        (false, parsed) => (parsed.unwrap_or(0), i64::MAX, "ASC"),
        (true, Ok(before)) => (0, before, "DESC"),
        (true, Err(_)) => (0, i64::MAX, "DESC"),
    };
    let event = if query.event_id.is_empty() {
        None
    } else {
        match crate::backend::keys::parse_id(&query.event_id) {
            Some(id) => Some(uuid_text(id)),
            None => return Ok((Vec::new(), String::new())),
        }
    };
    let state = query.state.map(|s| s as i16);
    let rows = client
        .fetch(
            &format!(
                "SELECT delivery_id, record FROM nems_deliveries
                 WHERE delivery_id > $1 AND delivery_id < $8
                   AND ($2::text IS NULL OR event_seq = (SELECT seq FROM nems_events WHERE event_id = ($2::text)::uuid))
                   AND ($3 = '' OR mailbox = $3) AND ($4::smallint IS NULL OR state = $4)
                   AND ($5 = '' OR event_code = $5) AND ($6 = '' OR last_error_code = $6)
                 ORDER BY delivery_id {order} LIMIT $7"
            ),
            &[
                &after,
                &event,
                &query.mailbox,
                &state,
                &query.event_code,
                &query.error_code,
                &(size as i64),
                &below,
            ],
        )
        .await
        .map_err(pg)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut last = 0u64;
    for row in &rows {
        let id = row.get::<_, i64>(0) as u64;
        let d = StoredDelivery::decode(row.get::<_, &[u8]>(1)).map_err(decode)?;
        out.push(to_record(id, &d));
        last = id;
    }
    let next = if out.len() >= size && size > 0 {
        last.to_string()
    } else {
        String::new()
    };
    Ok((out, next))
}

/// An event's ledger entry (and whether its payload is held) with its deliveries.
pub(crate) async fn event(
    client: &impl Db,
    id: u128,
) -> Result<Option<(pb::EventRecord, Vec<pb::DeliveryRecord>)>, StoreError> {
    let row = client
        .fetch_opt(
            "SELECT e.seq, e.record, EXISTS (SELECT 1 FROM nems_payloads p WHERE p.seq = e.seq)
             FROM nems_events e WHERE e.event_id = ($1::text)::uuid",
            &[&uuid_text(id)],
        )
        .await
        .map_err(pg)?;
    let Some(row) = row else { return Ok(None) };
    let seq: i64 = row.get(0);
    let e = StoredEvent::decode(row.get::<_, &[u8]>(1)).map_err(decode)?;
    let held: bool = row.get(2);
    let rows = client
        .fetch(
            "SELECT delivery_id, record FROM nems_deliveries WHERE event_seq = $1 ORDER BY idx",
            &[&seq],
        )
        .await
        .map_err(pg)?;
    let mut deliveries = Vec::with_capacity(rows.len());
    for r in &rows {
        let d = StoredDelivery::decode(r.get::<_, &[u8]>(1)).map_err(decode)?;
        deliveries.push(to_record(r.get::<_, i64>(0) as u64, &d));
    }
    Ok(Some((
        crate::store::events::to_record(&e, held),
        deliveries,
    )))
}

/// Per-mailbox counts by state (every mailbox when `mailbox` is empty).
pub(crate) async fn stats(
    client: &Client,
    mailbox: &str,
) -> Result<Vec<pb::MailboxStats>, StoreError> {
    // An index-only scan of (mailbox, state) (migration 0003), of one mailbox's part when
    // one is named.
    let rows = if mailbox.is_empty() {
        client
            .fetch(
                "SELECT mailbox, state, count(*) FROM nems_deliveries
                 GROUP BY mailbox, state ORDER BY mailbox",
                &[],
            )
            .await
    } else {
        client
            .fetch(
                "SELECT mailbox, state, count(*) FROM nems_deliveries
                 WHERE mailbox = $1 GROUP BY mailbox, state ORDER BY mailbox",
                &[&mailbox],
            )
            .await
    }
    .map_err(pg)?;
    let mut out: Vec<pb::MailboxStats> = Vec::new();
    for row in &rows {
        let mb: &str = row.get(0);
        if out.last().is_none_or(|s| s.mailbox != mb) {
            out.push(pb::MailboxStats {
                mailbox: mb.to_string(),
                ..Default::default()
            });
        }
        let Some(entry) = out.last_mut() else {
            continue;
        };
        let n = row.get::<_, i64>(2) as u64;
        match pb::DeliveryState::try_from(i32::from(row.get::<_, i16>(1))) {
            Ok(pb::DeliveryState::Queued) => entry.queued = n,
            Ok(pb::DeliveryState::InFlight) => entry.in_flight = n,
            Ok(pb::DeliveryState::Delivered) => entry.delivered = n,
            Ok(pb::DeliveryState::DeadLettered) => entry.dead_lettered = n,
            Ok(pb::DeliveryState::Suppressed) => entry.suppressed = n,
            _ => {}
        }
    }
    // The oldest pending delivery of each mailbox with one: the first entry of its part of
    // the index of pending deliveries by id (ids grow with acceptance), one probe each.
    let pending: Vec<String> = out
        .iter()
        .filter(|m| m.queued + m.in_flight > 0)
        .map(|m| m.mailbox.clone())
        .collect();
    let oldest = client
        .fetch(
            "SELECT m.mailbox, e.accepted_ms FROM unnest($1::text[]) AS m(mailbox)
             CROSS JOIN LATERAL (
                 SELECT event_seq FROM nems_deliveries d
                 WHERE d.mailbox = m.mailbox AND d.queue_at IS NOT NULL
                 ORDER BY d.delivery_id LIMIT 1) first
             JOIN nems_events e ON e.seq = first.event_seq",
            &[&pending],
        )
        .await
        .map_err(pg)?;
    for row in &oldest {
        let mb: &str = row.get(0);
        if let Some(entry) = out.iter_mut().find(|m| m.mailbox == mb) {
            entry.oldest_pending_accepted_at = Some(timestamp(row.get::<_, i64>(1) as u64));
        }
    }
    Ok(out)
}

/// Each mailbox with a queued or in-flight delivery and its earliest queue time, and the
/// number of deliveries queued or in flight.
pub(crate) async fn queue(client: &impl Db) -> Result<(Vec<(String, u64)>, u64), StoreError> {
    let rows = client
        .fetch(
            "SELECT mailbox, min(queue_at), count(*) FROM nems_deliveries
             WHERE queue_at IS NOT NULL GROUP BY mailbox ORDER BY mailbox",
            &[],
        )
        .await
        .map_err(pg)?;
    let mut pending = 0u64;
    let heads = rows
        .iter()
        .map(|r| {
            pending += r.get::<_, i64>(2) as u64;
            (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)
        })
        .collect();
    Ok((heads, pending))
}

/// Deliveries queued or in flight: a count of the partial index of pending deliveries
/// (migration 0003), without `queue`'s per-mailbox heads.
pub(crate) async fn pending_count(client: &impl Db) -> Result<u64, StoreError> {
    let n: i64 = client
        .fetch_one(
            "SELECT count(*) FROM nems_deliveries WHERE queue_at IS NOT NULL",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    Ok(n as u64)
}

/// Events accepted since the database was created.
pub(crate) async fn accepted_count(client: &impl Db) -> Result<u64, StoreError> {
    let n: i64 = client
        .fetch_one(
            "SELECT coalesce(sum(events), 0)::bigint FROM nems_counters",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    Ok(n as u64)
}

/// One retention pass reading at most `batch` rows (see the redb ledger's `sweep`).
pub(crate) async fn sweep(tx: &Transaction<'_>, r: &Retention) -> Result<Swept, StoreError> {
    let (now, batch) = (r.now, r.batch);
    let mut swept = Swept::default();
    // Dead letters past their redrive window, and delivered messages past the replay
    // window, give up their payload.
    let held = [
        (
            SETTLE_DEAD_HELD,
            pb::DeliveryState::DeadLettered,
            r.dead_letter_ms,
        ),
        (
            SETTLE_DELIVERED_HELD,
            pb::DeliveryState::Delivered,
            r.replay_ms,
        ),
    ];
    for (kind, state, window) in held {
        let cutoff = now.saturating_sub(window) as i64;
        let rest = batch.saturating_sub(swept.scanned) as i64;
        let rows = tx
            .fetch(
                "SELECT delivery_id, record FROM nems_deliveries
                 WHERE settle_kind = $1 AND settle_at < $2
                 ORDER BY settle_at, delivery_id LIMIT $3 FOR UPDATE SKIP LOCKED",
                &[&i16::from(kind), &cutoff, &rest],
            )
            .await
            .map_err(pg)?;
        swept.scanned += rows.len();
        for row in rows {
            let id = row.get::<_, i64>(0) as u64;
            let mut d = StoredDelivery::decode(row.get::<_, &[u8]>(1)).map_err(decode)?;
            if d.state() == state && d.holds_payload {
                release_payload(tx, &mut d).await?;
                if state == pb::DeliveryState::DeadLettered {
                    swept.dead_letter_payloads_released += 1;
                } else {
                    swept.delivered_payloads_released += 1;
                }
            }
            save(tx, id, &d, None).await?;
        }
    }
    let cutoff = now.saturating_sub(r.ledger_ms) as i64;
    let rest = batch.saturating_sub(swept.scanned) as i64;
    let removed = tx
        .fetch(
            "DELETE FROM nems_deliveries WHERE delivery_id IN (
                 SELECT delivery_id FROM nems_deliveries
                 WHERE settle_kind = $1 AND settle_at < $2
                 ORDER BY settle_at, delivery_id LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING event_seq",
            &[&i16::from(SETTLE_ROW), &cutoff, &rest],
        )
        .await
        .map_err(pg)?;
    swept.scanned += removed.len();
    swept.deliveries_removed = removed.len();
    let mut touched: Vec<i64> = removed.iter().map(|r| r.get(0)).collect();
    touched.sort_unstable();
    touched.dedup();
    let rest = batch.saturating_sub(swept.scanned) as i64;
    let events = tx
        .fetch(
            "DELETE FROM nems_events WHERE seq IN (
                 SELECT seq FROM nems_events e WHERE e.seq = ANY($1)
                   AND NOT EXISTS (SELECT 1 FROM nems_deliveries d WHERE d.event_seq = e.seq)
                 UNION ALL
                 (SELECT seq FROM nems_events WHERE no_deliveries AND accepted_ms < $2
                  ORDER BY accepted_ms LIMIT $3))
             RETURNING seq",
            &[&touched, &cutoff, &rest],
        )
        .await
        .map_err(pg)?;
    swept.events_removed = events.len();
    Ok(swept)
}
