//! The delivery ledger and work queue: leasing deliveries to adapters, recording outcomes,
//! dead letters and redrive, MESH non-delivery reports, operator queries and retention.
//!
//! States: queued → in flight → delivered | dead-lettered (| suppressed at acceptance).
//! A queued or in-flight delivery has exactly one `QUEUE` key, (mailbox, available-at,
//! id); for an in-flight one the time is its lease expiry, so an expired lease makes it
//! available again without any timer. A delivery "holds" its event's payload while it may
//! still be sent; the payload is removed when no delivery of the event holds it.

use nems_proto::v1 as pb;
use prost::Message;
use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};

use super::StoreError;
use super::keys::{parse_id, timestamp};
use super::records::{StoredDelivery, StoredEvent};
use super::tables::*;
use crate::backend::{
    Budget, Completed, Lease, Leased, Outcome, Query, Redriven, ReplaySelection, Replayed,
    Selection, Swept,
};

/// Moves a delivery between state index entries.
pub(crate) fn index_state(
    by_state: &mut Table<'_, (u8, u64), ()>,
    id: u64,
    old: Option<pb::DeliveryState>,
    new: pb::DeliveryState,
) -> Result<(), StoreError> {
    if let Some(old) = old {
        by_state.remove((old as u8, id))?;
    }
    by_state.insert((new as u8, id), ())?;
    Ok(())
}

/// Adjusts a per-mailbox state count.
pub(crate) fn bump_count(
    counts: &mut Table<'_, (&'static str, u8), u64>,
    mailbox: &str,
    state: pb::DeliveryState,
    delta: i64,
) -> Result<(), StoreError> {
    let key = (mailbox, state as u8);
    let current = counts.get(key)?.map(|v| v.value()).unwrap_or(0);
    let updated = current.saturating_add_signed(delta);
    if updated == 0 {
        counts.remove(key)?;
    } else {
        counts.insert(key, updated)?;
    }
    Ok(())
}

/// The tables a state change touches, opened once.
struct Ledger<'t> {
    deliveries: Table<'t, u64, &'static [u8]>,
    queue: Table<'t, (&'static str, u64, u64), ()>,
    by_state: Table<'t, (u8, u64), ()>,
    counts: Table<'t, (&'static str, u8), u64>,
}

impl<'t> Ledger<'t> {
    fn open(tx: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Ledger {
            deliveries: tx.open_table(DELIVERIES)?,
            queue: tx.open_table(QUEUE)?,
            by_state: tx.open_table(DELIVERIES_BY_STATE)?,
            counts: tx.open_table(MAILBOX_COUNTS)?,
        })
    }

    fn load(&self, id: u64) -> Result<Option<StoredDelivery>, StoreError> {
        match self.deliveries.get(id)? {
            Some(bytes) => Ok(Some(StoredDelivery::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    fn save(&mut self, id: u64, d: &StoredDelivery) -> Result<(), StoreError> {
        self.deliveries.insert(id, d.encode_to_vec().as_slice())?;
        Ok(())
    }

    /// Changes state (indexes and counts) and the queue key (`Some(t)`: available at `t`).
    fn transition(
        &mut self,
        id: u64,
        d: &mut StoredDelivery,
        state: pb::DeliveryState,
        queue_at: Option<u64>,
        now: u64,
    ) -> Result<(), StoreError> {
        let old = d.state();
        if d.next_attempt_ms != 0 {
            self.queue
                .remove((d.mailbox.as_str(), d.next_attempt_ms, id))?;
        }
        if let Some(at) = queue_at {
            self.queue.insert((d.mailbox.as_str(), at, id), ())?;
        }
        if old != state {
            index_state(&mut self.by_state, id, Some(old), state)?;
            bump_count(&mut self.counts, &d.mailbox, old, -1)?;
            bump_count(&mut self.counts, &d.mailbox, state, 1)?;
        }
        d.state = state.into();
        d.next_attempt_ms = queue_at.unwrap_or(0);
        d.updated_ms = now;
        Ok(())
    }
}

/// Retention index kind: a dead letter holding its payload (for payload release).
pub(crate) const SETTLE_DEAD_HELD: u8 = 0;
/// Retention index kind: a settled delivery without a payload (for row removal).
pub(crate) const SETTLE_ROW: u8 = 1;
/// Retention index kind: an event that never had a delivery (keyed by its sequence).
pub(crate) const SETTLE_EVENT: u8 = 2;
/// Retention index kind: a delivered message holding its payload for replay (while
/// `core.replay_retention` keeps it).
pub(crate) const SETTLE_DELIVERED_HELD: u8 = 3;

/// A retention index key: (kind, settle time, id).
pub(crate) type SettleKey = (u8, u64, u64);

/// The retention index entry a delivery should have in its current state: none while it
/// may still be sent; settled deliveries are keyed by the time they settled (`updated_ms`,
/// which no later change of a settled delivery moves without reindexing it).
pub(crate) fn settle_key(id: u64, d: &StoredDelivery) -> Option<SettleKey> {
    match d.state() {
        pb::DeliveryState::DeadLettered if d.holds_payload => {
            Some((SETTLE_DEAD_HELD, d.updated_ms, id))
        }
        pb::DeliveryState::Delivered if d.holds_payload => {
            Some((SETTLE_DELIVERED_HELD, d.updated_ms, id))
        }
        pb::DeliveryState::Delivered
        | pb::DeliveryState::DeadLettered
        | pb::DeliveryState::Suppressed => Some((SETTLE_ROW, d.updated_ms, id)),
        _ => None,
    }
}

/// Moves a delivery's retention index entry from `before` to what its state needs now.
fn reindex_settled(
    tx: &WriteTransaction,
    id: u64,
    before: Option<SettleKey>,
    d: &StoredDelivery,
) -> Result<(), StoreError> {
    let after = settle_key(id, d);
    if before == after {
        return Ok(());
    }
    let mut settled = tx.open_table(SETTLED)?;
    if let Some(key) = before {
        settled.remove(key)?;
    }
    if let Some(key) = after {
        settled.insert(key, ())?;
    }
    Ok(())
}

/// Stops a delivery holding its event's payload; drops the payload when none holds it.
fn release_payload(tx: &WriteTransaction, d: &mut StoredDelivery) -> Result<(), StoreError> {
    if !d.holds_payload {
        return Ok(());
    }
    d.holds_payload = false;
    let mut events = tx.open_table(EVENTS)?;
    let Some(mut event) = events
        .get(d.event_seq)?
        .map(|b| StoredEvent::decode(b.value()))
        .transpose()?
    else {
        return Ok(());
    };
    event.unsettled = event.unsettled.saturating_sub(1);
    events.insert(d.event_seq, event.encode_to_vec().as_slice())?;
    if event.unsettled == 0 {
        tx.open_table(PAYLOADS)?.remove(d.event_seq)?;
    }
    Ok(())
}

/// Makes a delivery hold its event's payload again, if the payload still exists.
fn acquire_payload(tx: &WriteTransaction, d: &mut StoredDelivery) -> Result<bool, StoreError> {
    if d.holds_payload {
        return Ok(true);
    }
    if tx.open_table(PAYLOADS)?.get(d.event_seq)?.is_none() {
        return Ok(false);
    }
    let mut events = tx.open_table(EVENTS)?;
    let Some(mut event) = events
        .get(d.event_seq)?
        .map(|b| StoredEvent::decode(b.value()))
        .transpose()?
    else {
        return Ok(false);
    };
    event.unsettled += 1;
    events.insert(d.event_seq, event.encode_to_vec().as_slice())?;
    d.holds_payload = true;
    Ok(true)
}

/// Leases up to `max` available deliveries from each picked mailbox until `now + lease_ms`,
/// within `budget` payload bytes. Deliveries of one event share one payload buffer.
pub(crate) fn lease(
    tx: &WriteTransaction,
    picks: &[(String, u32)],
    now: u64,
    lease_ms: u64,
    budget: Budget,
) -> Result<Leased, StoreError> {
    let mut ledger = Ledger::open(tx)?;
    let payloads = tx.open_table(PAYLOADS)?;
    let until = now + lease_ms;
    let mut out = Vec::with_capacity(picks.len());
    let mut shared: std::collections::HashMap<u64, bytes::Bytes> = Default::default();
    let mut spent = 0u64;
    let mut taken = 0usize;
    let mut out_of_budget = false;
    for (mailbox, max) in picks {
        let mb = mailbox.as_str();
        let mut keys = Vec::new();
        if !out_of_budget {
            for item in ledger.queue.range((mb, 0, 0)..=(mb, now, u64::MAX))? {
                let (k, _) = item?;
                keys.push(k.value().2);
                if keys.len() >= *max as usize {
                    break;
                }
            }
        }
        let mut leased = Vec::with_capacity(keys.len());
        for id in keys {
            let Some(mut d) = ledger.load(id)? else {
                return Err(StoreError::Corrupt(format!(
                    "queue names unknown delivery {id}"
                )));
            };
            let payload = match shared.get(&d.event_seq) {
                Some(p) => p.clone(),
                None => {
                    let p = payloads
                        .get(d.event_seq)?
                        .map(|p| bytes::Bytes::copy_from_slice(p.value()))
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!("delivery {id} has no payload"))
                        })?;
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
            ledger.transition(id, &mut d, pb::DeliveryState::InFlight, Some(until), now)?;
            d.attempts += 1;
            if d.deferred_since_ms != 0 {
                d.deferred_total_ms = d
                    .deferred_total_ms
                    .saturating_add(now.saturating_sub(d.deferred_since_ms));
                d.deferred_since_ms = 0;
            }
            ledger.save(id, &d)?;
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
        let next_ready = ledger
            .queue
            .range((mb, 0, 0)..=(mb, u64::MAX, u64::MAX))?
            .next()
            .transpose()?
            .map(|(k, _)| k.value().1);
        out.push(Lease {
            mailbox: mailbox.clone(),
            deliveries: leased,
            next_ready,
        });
    }
    Ok(Leased {
        leases: out,
        out_of_budget,
    })
}

/// Gives leases back at once: each `(delivery, attempt)` still in flight on that attempt is
/// queued again, available now, with its attempt count kept (the next hand-out is a later
/// attempt, so the MESH sink reconciles through tracking before it sends again). A
/// delivery a report has settled or requeued meanwhile, or that was leased again, is left
/// alone. Returns the (delivery, mailbox) pairs given back.
pub(crate) fn give_back(
    tx: &WriteTransaction,
    leases: &[(u64, u32)],
    now: u64,
) -> Result<Vec<(u64, String)>, StoreError> {
    let mut ledger = Ledger::open(tx)?;
    let mut back = Vec::new();
    for &(id, attempt) in leases {
        let Some(mut d) = ledger.load(id)? else {
            continue;
        };
        if d.state() != pb::DeliveryState::InFlight || d.attempts != attempt {
            continue;
        }
        ledger.transition(id, &mut d, pb::DeliveryState::Queued, Some(now), now)?;
        ledger.save(id, &d)?;
        back.push((id, d.mailbox.clone()));
    }
    Ok(back)
}

/// Gives back every lease in the store (core start-up): no delivery stream from before a
/// restart can still be open, so no adapter can still report on those attempts except with
/// `Sent`, which settles a queued delivery too. Returns how many were given back.
///
/// redb has exactly one core per store, so "every lease" is "every lease of this core". A
/// store shared by several cores (the PostgreSQL backend) must scope this to the leases of
/// the restarting core instance (leases recorded with the instance that handed them out),
/// or leave other cores' leases to their own stream ends and expiries.
pub(crate) fn give_back_all(tx: &WriteTransaction, now: u64) -> Result<usize, StoreError> {
    let in_flight = pb::DeliveryState::InFlight as u8;
    let held: Vec<(u64, u32)> = {
        let by_state = tx.open_table(DELIVERIES_BY_STATE)?;
        let deliveries = tx.open_table(DELIVERIES)?;
        let mut held = Vec::new();
        for item in by_state.range((in_flight, 0)..=(in_flight, u64::MAX))? {
            let id = item?.0.value().1;
            if let Some(bytes) = deliveries.get(id)? {
                held.push((id, StoredDelivery::decode(bytes.value())?.attempts));
            }
        }
        held
    };
    Ok(give_back(tx, &held, now)?.len())
}

/// Records an attempt's outcome. Settled deliveries keep their state. `Sent` settles the
/// delivery from any attempt (MESH has the message, whichever lease sent it). A retry,
/// deferral or refusal counts only for the current attempt of an in-flight delivery: one
/// for an older attempt, or for a delivery no longer in flight (requeued by an earlier
/// report, or its lease given back when its stream ended or core restarted), is stale and
/// ignored, since core has already taken that attempt back and will hand the delivery out
/// again (the next attempt reconciles through MESH tracking and meets the same refusal if
/// it is permanent).
pub(crate) fn complete(
    tx: &WriteTransaction,
    id: u64,
    attempt: u32,
    outcome: &Outcome,
    now: u64,
) -> Result<Option<Completed>, StoreError> {
    let mut ledger = Ledger::open(tx)?;
    let Some(mut d) = ledger.load(id)? else {
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
    let indexed = settle_key(id, &d);
    match outcome {
        _ if settled => return Ok(Some(done)),
        Outcome::Sent {
            mesh_message_id,
            keep_payload,
        } => {
            ledger.transition(id, &mut d, pb::DeliveryState::Delivered, None, now)?;
            d.mesh_message_id.clone_from(mesh_message_id);
            d.last_error_code.clear();
            d.last_error.clear();
            if !mesh_message_id.is_empty() {
                tx.open_table(DELIVERIES_BY_MESH_ID)?
                    .insert(mesh_message_id.as_str(), id)?;
            }
            if !keep_payload {
                drop(ledger);
                release_payload(tx, &mut d)?;
                ledger = Ledger::open(tx)?;
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
            ledger.transition(id, &mut d, pb::DeliveryState::Queued, Some(at), now)?;
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
            // Not the message's fault: its failure count stays, and the time until it is
            // leased again is added to its retry window's start (see `lease`).
            let at = now + retry_after_ms;
            ledger.transition(id, &mut d, pb::DeliveryState::Queued, Some(at), now)?;
            if d.deferred_since_ms == 0 {
                d.deferred_since_ms = now;
            }
            d.last_error_code.clone_from(code);
            d.last_error.clone_from(reason);
            done.requeued_at = Some(at);
        }
        Outcome::Refused { code, reason } => {
            ledger.transition(id, &mut d, pb::DeliveryState::DeadLettered, None, now)?;
            d.last_error_code.clone_from(code);
            d.last_error.clone_from(reason);
        }
    }
    ledger.save(id, &d)?;
    reindex_settled(tx, id, indexed, &d)?;
    done.state = d.state();
    Ok(Some(done))
}

/// The parts of a `Mex-LocalID`: (event id, delivery index within the event,
/// generation). `<event hex>-<index>` is generation 0 (also every id minted before
/// redrive generations existed); `<event hex>-<index>-r<k>` (a redrive made it) and
/// `<event hex>-<index>-p<k>` (a replay did) are generation `k`.
pub(crate) fn parse_local_id(local_id: &str) -> Option<(u128, u64, u32)> {
    let mut parts = local_id.splitn(3, '-');
    let event = parse_id(parts.next()?)?;
    let index = parts.next()?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index = index.parse().ok()?;
    let generation = match parts.next() {
        None => 0,
        Some(g) => {
            let k = g.strip_prefix('r').or_else(|| g.strip_prefix('p'))?;
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            k.parse().ok()?
        }
    };
    Some((event, index, generation))
}

/// The local id of generation `redrives` of the delivery at `index` of event `event_hex`
/// (made by a redrive).
pub(crate) fn local_id(event_hex: &str, index: u64, redrives: u32) -> String {
    if redrives == 0 {
        format!("{event_hex}-{index}")
    } else {
        format!("{event_hex}-{index}-r{redrives}")
    }
}

/// What makes a delivery's next generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    /// An operator queues a dead letter again.
    Redrive,
    /// An operator resends a delivered message (`core.replay_retention`).
    Replay,
}

/// Makes `d` its next generation, to be queued at `now` (both engines; the caller moves
/// its state and indexes): a new `Mex-LocalID` naming the original (`-r<k>` or `-p<k>`),
/// so that MESH tracking and reports tell the resend from the message before it; no MESH
/// message id yet; its retry window and backoff start again, so that an old message gets
/// more than one try, the first one soon.
pub(crate) fn next_generation(
    id: u64,
    d: &mut StoredDelivery,
    how: Resend,
    now: u64,
) -> Result<(), StoreError> {
    let Some((_, index, _)) = parse_local_id(&d.local_id) else {
        return Err(StoreError::Corrupt(format!(
            "delivery {id} has a malformed local id"
        )));
    };
    d.redriven_ms = now;
    d.failures = 0;
    d.deferred_total_ms = 0;
    d.deferred_since_ms = 0;
    d.redrives = d.redrives.saturating_add(1);
    d.local_id = match how {
        Resend::Redrive => local_id(&d.event_id, index, d.redrives),
        Resend::Replay => {
            d.replays = d.replays.saturating_add(1);
            format!("{}-{index}-p{}", d.event_id, d.redrives)
        }
    };
    d.mesh_message_id.clear();
    Ok(())
}

/// Whether a delivered message may be replayed by `selection` (mailbox matched by the
/// caller's index): accepted at or after its `since`, of its event type if it names one.
pub(crate) fn replay_wanted(d: &StoredDelivery, selection: &ReplaySelection) -> bool {
    d.state() == pb::DeliveryState::Delivered
        && d.accepted_ms >= selection.since_ms
        && (selection.event_code.is_empty() || d.event_code == selection.event_code)
}

/// The ledger record of a new delivery (both engines).
pub(crate) fn new_delivery(
    e: &crate::backend::NewEvent,
    event_hex: &str,
    seq: u64,
    index: usize,
    d: &crate::backend::NewDelivery,
) -> StoredDelivery {
    let state = if d.suppressed {
        pb::DeliveryState::Suppressed
    } else {
        pb::DeliveryState::Queued
    };
    StoredDelivery {
        event_seq: seq,
        event_id: event_hex.to_string(),
        local_id: local_id(event_hex, index as u64, 0),
        event_code: e.event_code.clone(),
        mailbox: d.mailbox.clone(),
        workflow_id: e.workflow_id.clone(),
        partner_id: d.partner_id.clone(),
        state: state.into(),
        attempts: 0,
        accepted_ms: e.accepted_ms,
        updated_ms: e.accepted_ms,
        next_attempt_ms: if d.suppressed { 0 } else { e.accepted_ms },
        mesh_message_id: String::new(),
        last_error_code: if d.suppressed {
            "PATIENT_FLAGGED".into()
        } else {
            String::new()
        },
        last_error: if d.suppressed {
            "patient is flagged sensitive or invalid in PDS: not sent".into()
        } else {
            String::new()
        },
        subscription_ids: d.subscription_ids.clone(),
        holds_payload: !d.suppressed,
        redriven_ms: 0,
        failures: 0,
        redrives: 0,
        deferred_since_ms: 0,
        deferred_total_ms: 0,
        replays: 0,
    }
}

/// Finds the delivery a MESH report concerns, by local id or MESH message id, only if the
/// report concerns its current generation: a report naming the local id of an earlier
/// generation (before a redrive), or a MESH message id other than the one the delivery
/// last recorded, is about a message the delivery has already been resent past and finds
/// nothing. A local id that names no stored delivery falls back to the MESH message id.
pub(crate) fn find_reported(
    tx: &WriteTransaction,
    mesh_message_id: &str,
    local_id: &str,
) -> Result<Option<u64>, StoreError> {
    let deliveries = tx.open_table(DELIVERIES)?;
    let current = |id: u64| -> Result<Option<StoredDelivery>, StoreError> {
        deliveries
            .get(id)?
            .map(|b| StoredDelivery::decode(b.value()))
            .transpose()
            .map_err(StoreError::from)
    };
    let other_message =
        |d: &StoredDelivery| !d.mesh_message_id.is_empty() && d.mesh_message_id != mesh_message_id;
    if let Some((event_id, index, generation)) = parse_local_id(local_id)
        && let Some(seq) = tx
            .open_table(EVENTS_BY_ID)?
            .get(event_id)?
            .map(|v| v.value())
        && let Some(bytes) = tx.open_table(EVENTS)?.get(seq)?
    {
        let event = StoredEvent::decode(bytes.value())?;
        if index < u64::from(event.deliveries)
            && let Some(d) = current(event.first_delivery + index)?
        {
            let this_generation =
                d.redrives == generation && (mesh_message_id.is_empty() || !other_message(&d));
            return Ok(this_generation.then_some(event.first_delivery + index));
        }
    }
    if mesh_message_id.is_empty() {
        return Ok(None);
    }
    let Some(id) = tx
        .open_table(DELIVERIES_BY_MESH_ID)?
        .get(mesh_message_id)?
        .map(|v| v.value())
    else {
        return Ok(None);
    };
    Ok(current(id)?
        .filter(|d| d.mesh_message_id == mesh_message_id)
        .map(|_| id))
}

/// Dead-letters a delivery that MESH reported undelivered (e.g. not collected in time);
/// true when this call dead-lettered it (false: unknown, or already dead or suppressed).
pub(crate) fn record_report(
    tx: &WriteTransaction,
    id: u64,
    code: &str,
    description: &str,
    now: u64,
) -> Result<bool, StoreError> {
    let mut ledger = Ledger::open(tx)?;
    let Some(mut d) = ledger.load(id)? else {
        return Ok(false);
    };
    if matches!(
        d.state(),
        pb::DeliveryState::Suppressed | pb::DeliveryState::DeadLettered
    ) {
        return Ok(false);
    }
    let indexed = settle_key(id, &d);
    ledger.transition(id, &mut d, pb::DeliveryState::DeadLettered, None, now)?;
    d.last_error_code = format!("MESH_{code}");
    d.last_error = description.chars().take(500).collect();
    drop(ledger);
    acquire_payload(tx, &mut d)?;
    Ledger::open(tx)?.save(id, &d)?;
    reindex_settled(tx, id, indexed, &d)?;
    Ok(true)
}

/// Queues selected dead letters again.
pub(crate) fn redrive(
    tx: &WriteTransaction,
    selection: &Selection,
    now: u64,
) -> Result<Redriven, StoreError> {
    let candidates = if selection.ids.is_empty() {
        let by_state = tx.open_table(DELIVERIES_BY_STATE)?;
        let deliveries = tx.open_table(DELIVERIES)?;
        let dead = pb::DeliveryState::DeadLettered as u8;
        let mut ids = Vec::new();
        for item in by_state.range((dead, 0)..=(dead, u64::MAX))? {
            let (k, _) = item?;
            let id = k.value().1;
            let Some(bytes) = deliveries.get(id)? else {
                continue;
            };
            let d = StoredDelivery::decode(bytes.value())?;
            let keep = (selection.mailbox.is_empty() || d.mailbox == selection.mailbox)
                && (selection.event_code.is_empty() || d.event_code == selection.event_code)
                && (selection.error_code.is_empty() || d.last_error_code == selection.error_code);
            if keep {
                ids.push(id);
                if selection.limit != 0 && ids.len() >= selection.limit {
                    break;
                }
            }
        }
        ids
    } else {
        selection.ids.clone()
    };
    let mut redriven = Vec::new();
    let mut skipped = Vec::new();
    for id in candidates {
        let ledger = Ledger::open(tx)?;
        let Some(mut d) = ledger.load(id)? else {
            skipped.push(id);
            continue;
        };
        drop(ledger);
        let indexed = settle_key(id, &d);
        if d.state() != pb::DeliveryState::DeadLettered || !acquire_payload(tx, &mut d)? {
            skipped.push(id);
            continue;
        }
        requeue(tx, id, &mut d, indexed, Resend::Redrive, now)?;
        redriven.push((id, d.mailbox.clone()));
    }
    Ok((redriven, skipped))
}

/// Queues a settled delivery holding its payload as its next generation (a redrive or a
/// replay).
fn requeue(
    tx: &WriteTransaction,
    id: u64,
    d: &mut StoredDelivery,
    indexed: Option<SettleKey>,
    how: Resend,
    now: u64,
) -> Result<(), StoreError> {
    if !d.mesh_message_id.is_empty() {
        tx.open_table(DELIVERIES_BY_MESH_ID)?
            .remove(d.mesh_message_id.as_str())?;
    }
    let mut ledger = Ledger::open(tx)?;
    ledger.transition(id, d, pb::DeliveryState::Queued, Some(now), now)?;
    next_generation(id, d, how, now)?;
    ledger.save(id, d)?;
    drop(ledger);
    reindex_settled(tx, id, indexed, d)
}

/// Most of a mailbox's index the replay scan reads past the first delivery accepted
/// before its `since`: delivery ids follow the writer's order, and acceptance times read
/// by one writer in turn only go back when the clock does (by less than this).
const REPLAY_CLOCK_SLACK_MS: u64 = 60_000;

/// The delivered messages of `selection`'s mailbox it would replay, oldest first, and how
/// many more it selects whose payload is gone (delivered before replay kept payloads, or
/// past the window). Reads the mailbox's index backwards from its newest delivery and
/// stops past its `since`, so a replay costs what it selects, not the mailbox's history.
fn replay_candidates(
    deliveries: &impl ReadableTable<u64, &'static [u8]>,
    by_mailbox: &impl ReadableTable<(&'static str, u64), ()>,
    selection: &ReplaySelection,
) -> Result<(Vec<(u64, StoredDelivery)>, u64), StoreError> {
    let mailbox = selection.mailbox.as_str();
    let floor = selection.since_ms.saturating_sub(REPLAY_CLOCK_SLACK_MS);
    let (mut held, mut gone) = (Vec::new(), 0);
    for item in by_mailbox.range((mailbox, 0)..=(mailbox, u64::MAX))?.rev() {
        let id = item?.0.value().1;
        let Some(bytes) = deliveries.get(id)? else {
            continue;
        };
        let d = StoredDelivery::decode(bytes.value())?;
        if d.accepted_ms < floor {
            break;
        }
        if !replay_wanted(&d, selection) {
            continue;
        }
        if d.holds_payload {
            held.push((id, d));
        } else {
            gone += 1;
        }
    }
    held.reverse();
    Ok((held, gone))
}

/// What a replay would do, without doing it (`--dry-run`).
pub(crate) fn replay_preview(
    tx: &ReadTransaction,
    selection: &ReplaySelection,
) -> Result<Replayed, StoreError> {
    let (held, gone) = replay_candidates(
        &tx.open_table(DELIVERIES)?,
        &tx.open_table(DELIVERIES_BY_MAILBOX)?,
        selection,
    )?;
    Ok(Replayed {
        replayed: held.into_iter().map(|(id, _)| id).collect(),
        without_payload: gone,
    })
}

/// Queues again, each as its next generation, the delivered messages `selection` picks
/// (at most `selection.limit`, else nothing and `TooMany`).
pub(crate) fn replay(
    tx: &WriteTransaction,
    selection: &ReplaySelection,
    now: u64,
) -> Result<Replayed, StoreError> {
    let (held, gone) = {
        let deliveries = tx.open_table(DELIVERIES)?;
        let by_mailbox = tx.open_table(DELIVERIES_BY_MAILBOX)?;
        replay_candidates(&deliveries, &by_mailbox, selection)?
    };
    check_replay_size(held.len(), selection)?;
    let mut replayed = Vec::with_capacity(held.len());
    for (id, mut d) in held {
        let indexed = settle_key(id, &d);
        requeue(tx, id, &mut d, indexed, Resend::Replay, now)?;
        replayed.push(id);
    }
    Ok(Replayed {
        replayed,
        without_payload: gone,
    })
}

/// Refuses a replay of more than its limit (both engines).
pub(crate) fn check_replay_size(n: usize, selection: &ReplaySelection) -> Result<(), StoreError> {
    if selection.limit != 0 && n > selection.limit {
        return Err(StoreError::Refused(format!(
            "the replay selects {n} deliveries, more than its limit of {}: narrow it with a later \
             since or an event type, or raise the limit",
            selection.limit
        )));
    }
    Ok(())
}

/// Lists one page of ledger rows in delivery order (or newest first); the token is the last
/// id returned.
///
/// The candidate ids come lazily from the narrowest index the query allows (the event's id
/// range, the mailbox index, the state index, or the ledger itself), and the scan stops at
/// the row that fills the page, so a page costs `page_size` matches plus the rows the other
/// filters skip, not the whole index.
pub(crate) fn list(
    tx: &ReadTransaction,
    query: &Query,
    page_token: &str,
    page_size: usize,
) -> Result<(Vec<pb::DeliveryRecord>, String), StoreError> {
    let deliveries = tx.open_table(DELIVERIES)?;
    let after: u64 = page_token.parse().unwrap_or(0);
    // The ids the page may hold: oldest first from just after the token, or newest first
    // from just below it.
    let (low, high) = match (query.newest_first, page_token.is_empty()) {
        (false, true) => (0, u64::MAX),
        (false, false) => (after.saturating_add(1), u64::MAX),
        (true, true) => (0, u64::MAX),
        (true, false) if after == 0 => return Ok((Vec::new(), String::new())),
        (true, false) => (0, after - 1),
    };
    let rev = query.newest_first;
    // With a mailbox and a state, the per-mailbox counts say how many rows can match:
    // none (answer at once), and which index holds fewer candidates (the state index when
    // the state is rare, as dead letters are, else the mailbox's); on a first page the
    // scan also stops once it has found them all.
    let mut expected = None;
    let mut use_state_index = query.mailbox.is_empty();
    if let (false, Some(state)) = (query.mailbox.is_empty(), query.state) {
        let counts = tx.open_table(MAILBOX_COUNTS)?;
        let mb = query.mailbox.as_str();
        let matching = counts.get((mb, state as u8))?.map_or(0, |v| v.value());
        if matching == 0 {
            return Ok((Vec::new(), String::new()));
        }
        let mut of_mailbox = 0u64;
        for item in counts.range((mb, 0u8)..=(mb, u8::MAX))? {
            of_mailbox += item?.1.value();
        }
        let mut of_state = 0u64;
        for item in counts.iter()? {
            let (k, v) = item?;
            if k.value().1 == state as u8 {
                of_state += v.value();
            }
        }
        use_state_index = of_state < of_mailbox;
        if page_token.is_empty() {
            expected = Some(matching);
        }
    }
    let by_mailbox;
    let by_state;
    let ids: Box<dyn Iterator<Item = Result<u64, StoreError>>> = if !query.event_id.is_empty() {
        let Some(event_id) = parse_id(&query.event_id) else {
            return Ok((Vec::new(), String::new()));
        };
        let range = match super::events::get_by_id(tx, event_id)? {
            Some((_, e)) => e.first_delivery..e.first_delivery + u64::from(e.deliveries),
            None => 0..0,
        };
        let range = range.start.max(low)..range.end.min(high.saturating_add(1));
        ordered(range.map(Ok), rev)
    } else if !query.mailbox.is_empty() && !use_state_index {
        let mb = query.mailbox.as_str();
        by_mailbox = tx.open_table(DELIVERIES_BY_MAILBOX)?;
        let range = by_mailbox.range((mb, low)..=(mb, high))?;
        ordered(
            range.map(|r| r.map(|(k, _)| k.value().1).map_err(StoreError::from)),
            rev,
        )
    } else if let Some(state) = query.state {
        by_state = tx.open_table(DELIVERIES_BY_STATE)?;
        let range = by_state.range((state as u8, low)..=(state as u8, high))?;
        ordered(
            range.map(|r| r.map(|(k, _)| k.value().1).map_err(StoreError::from)),
            rev,
        )
    } else {
        let range = deliveries.range(low..=high)?;
        ordered(
            range.map(|r| r.map(|(k, _)| k.value()).map_err(StoreError::from)),
            rev,
        )
    };
    let mut out = Vec::new();
    let mut found = 0u64;
    for id in ids {
        let id = id?;
        let Some(bytes) = deliveries.get(id)? else {
            continue;
        };
        let d = StoredDelivery::decode(bytes.value())?;
        let in_place = (query.mailbox.is_empty() || d.mailbox == query.mailbox)
            && query.state.is_none_or(|s| d.state() == s);
        if in_place {
            found += 1;
        }
        let keep = in_place
            && (query.event_code.is_empty() || d.event_code == query.event_code)
            && (query.error_code.is_empty() || d.last_error_code == query.error_code);
        if keep {
            out.push(to_record(id, &d));
            if out.len() >= page_size {
                return Ok((out, id.to_string()));
            }
        }
        if expected.is_some_and(|n| found >= n) {
            break;
        }
    }
    Ok((out, String::new()))
}

/// `ids` in their order, or reversed.
fn ordered<'a>(
    ids: impl DoubleEndedIterator<Item = Result<u64, StoreError>> + 'a,
    rev: bool,
) -> Box<dyn Iterator<Item = Result<u64, StoreError>> + 'a> {
    if rev {
        Box::new(ids.rev())
    } else {
        Box::new(ids)
    }
}

/// Per-mailbox counts by state.
pub(crate) fn stats(
    tx: &ReadTransaction,
    mailbox: &str,
) -> Result<Vec<pb::MailboxStats>, StoreError> {
    let counts = tx.open_table(MAILBOX_COUNTS)?;
    let mut out: Vec<pb::MailboxStats> = Vec::new();
    let iter = if mailbox.is_empty() {
        counts.iter()?
    } else {
        counts.range((mailbox, 0u8)..=(mailbox, u8::MAX))?
    };
    for item in iter {
        let (k, v) = item?;
        let (mb, state) = k.value();
        if out.last().is_none_or(|s| s.mailbox != mb) {
            out.push(pb::MailboxStats {
                mailbox: mb.to_string(),
                ..Default::default()
            });
        }
        let Some(entry) = out.last_mut() else {
            continue;
        };
        let n = v.value();
        match pb::DeliveryState::try_from(i32::from(state)) {
            Ok(pb::DeliveryState::Queued) => entry.queued = n,
            Ok(pb::DeliveryState::InFlight) => entry.in_flight = n,
            Ok(pb::DeliveryState::Delivered) => entry.delivered = n,
            Ok(pb::DeliveryState::DeadLettered) => entry.dead_lettered = n,
            Ok(pb::DeliveryState::Suppressed) => entry.suppressed = n,
            _ => {}
        }
    }
    // The oldest pending delivery of each mailbox that has one: the lowest id among its
    // queue keys (ids grow with acceptance), so the scan is bounded by the backlog.
    let queue = tx.open_table(QUEUE)?;
    let deliveries = tx.open_table(DELIVERIES)?;
    for entry in out.iter_mut().filter(|m| m.queued + m.in_flight > 0) {
        let mb = entry.mailbox.as_str();
        let mut oldest: Option<u64> = None;
        for item in queue.range((mb, 0u64, 0u64)..=(mb, u64::MAX, u64::MAX))? {
            let id = item?.0.value().2;
            oldest = Some(oldest.map_or(id, |o| o.min(id)));
        }
        if let Some(id) = oldest
            && let Some(bytes) = deliveries.get(id)?
        {
            let d = StoredDelivery::decode(bytes.value())?;
            entry.oldest_pending_accepted_at = Some(timestamp(d.accepted_ms));
        }
    }
    Ok(out)
}

/// The earliest queue time of every mailbox with queued or in-flight deliveries, found
/// with one seek per mailbox (for rebuilding the dispatcher at start-up).
pub(crate) fn queue_heads(tx: &ReadTransaction) -> Result<Vec<(String, u64)>, StoreError> {
    let queue = tx.open_table(QUEUE)?;
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let next = match &cursor {
            None => queue.first()?,
            Some(mb) => queue
                .range((mb.as_str(), u64::MAX, u64::MAX)..)?
                .find(|r| r.as_ref().map_or(true, |(k, _)| k.value().0 != mb.as_str()))
                .transpose()?,
        };
        let Some((k, _)) = next else { break };
        let (mb, at, _) = k.value();
        out.push((mb.to_string(), at));
        cursor = Some(mb.to_string());
    }
    Ok(out)
}

/// Number of deliveries queued or in flight.
pub(crate) fn pending(tx: &ReadTransaction) -> Result<u64, StoreError> {
    let by_state = tx.open_table(DELIVERIES_BY_STATE)?;
    let mut n = 0;
    for state in [pb::DeliveryState::Queued, pb::DeliveryState::InFlight] {
        n += by_state
            .range((state as u8, 0)..=(state as u8, u64::MAX))?
            .count() as u64;
    }
    Ok(n)
}

/// One retention pass, reading at most `scan_limit` entries of the retention index (only
/// entries already past their cut-off, oldest first): releases the payloads of dead
/// letters dead-lettered more than `dead_letter_retention_ms` ago and of messages
/// delivered more than `replay_retention_ms` ago, then removes ledger rows
/// settled more than `retention_ms` ago (an event goes with its last delivery; an event
/// that never had one, `retention_ms` after its acceptance). Nothing else is read, so a
/// pass costs the same with 100 dead letters in their redrive window as with millions.
pub(crate) fn sweep(
    tx: &WriteTransaction,
    now: u64,
    retention_ms: u64,
    dead_letter_retention_ms: u64,
    replay_retention_ms: u64,
    scan_limit: usize,
) -> Result<Swept, StoreError> {
    let mut swept = Swept::default();
    let due = |kind: u8, cutoff: u64, limit: usize| -> Result<Vec<SettleKey>, StoreError> {
        let settled = tx.open_table(SETTLED)?;
        let mut keys = Vec::new();
        if limit == 0 {
            return Ok(keys);
        }
        for item in settled.range((kind, 0, 0)..(kind, cutoff, 0))? {
            keys.push(item?.0.value());
            if keys.len() >= limit {
                break;
            }
        }
        Ok(keys)
    };

    // Dead letters past their redrive window, and delivered messages past the replay
    // window, give up their payload; their rows stay for `retention_ms` after they settled.
    let held = [
        (
            SETTLE_DEAD_HELD,
            pb::DeliveryState::DeadLettered,
            dead_letter_retention_ms,
        ),
        (
            SETTLE_DELIVERED_HELD,
            pb::DeliveryState::Delivered,
            replay_retention_ms,
        ),
    ];
    for (kind, state, window) in held {
        let keys = due(kind, now.saturating_sub(window), scan_limit - swept.scanned)?;
        swept.scanned += keys.len();
        for key in keys {
            let id = key.2;
            tx.open_table(SETTLED)?.remove(key)?;
            let Some(mut d) = Ledger::open(tx)?.load(id)? else {
                continue;
            };
            if d.state() == state && d.holds_payload {
                release_payload(tx, &mut d)?;
                Ledger::open(tx)?.save(id, &d)?;
                if state == pb::DeliveryState::DeadLettered {
                    swept.dead_letter_payloads_released += 1;
                } else {
                    swept.delivered_payloads_released += 1;
                }
            }
            reindex_settled(tx, id, None, &d)?;
        }
    }

    let cutoff = now.saturating_sub(retention_ms);
    let keys = due(SETTLE_ROW, cutoff, scan_limit - swept.scanned)?;
    swept.scanned += keys.len();
    let mut events_touched = Vec::new();
    {
        let mut ledger = Ledger::open(tx)?;
        let mut settled = tx.open_table(SETTLED)?;
        let mut by_mailbox = tx.open_table(DELIVERIES_BY_MAILBOX)?;
        let mut by_mesh = tx.open_table(DELIVERIES_BY_MESH_ID)?;
        for key in keys {
            let id = key.2;
            settled.remove(key)?;
            let Some(d) = ledger.load(id)? else {
                continue;
            };
            if settle_key(id, &d) != Some(key) {
                // Not what the entry says (an index entry left behind): index it afresh.
                if let Some(fresh) = settle_key(id, &d) {
                    settled.insert(fresh, ())?;
                }
                continue;
            }
            ledger.deliveries.remove(id)?;
            ledger.by_state.remove((d.state() as u8, id))?;
            bump_count(&mut ledger.counts, &d.mailbox, d.state(), -1)?;
            by_mailbox.remove((d.mailbox.as_str(), id))?;
            if !d.mesh_message_id.is_empty() {
                by_mesh.remove(d.mesh_message_id.as_str())?;
            }
            swept.deliveries_removed += 1;
            events_touched.push(d.event_seq);
        }
    }
    events_touched.sort_unstable();
    events_touched.dedup();

    let keys = due(SETTLE_EVENT, cutoff, scan_limit - swept.scanned)?;
    swept.scanned += keys.len();
    let mut events = tx.open_table(EVENTS)?;
    let deliveries = tx.open_table(DELIVERIES)?;
    let mut settled = tx.open_table(SETTLED)?;
    let mut remove_events = Vec::new();
    for seq in events_touched {
        let Some(e) = events
            .get(seq)?
            .map(|b| StoredEvent::decode(b.value()))
            .transpose()?
        else {
            continue;
        };
        let first = e.first_delivery;
        let left = deliveries
            .range(first..first + u64::from(e.deliveries))?
            .next()
            .is_some();
        if !left {
            remove_events.push((seq, e.event_id));
        }
    }
    for key in keys {
        settled.remove(key)?;
        if let Some(e) = events
            .get(key.2)?
            .map(|b| StoredEvent::decode(b.value()))
            .transpose()?
        {
            remove_events.push((key.2, e.event_id));
        }
    }
    let mut by_id = tx.open_table(EVENTS_BY_ID)?;
    let mut payloads = tx.open_table(PAYLOADS)?;
    for (seq, event_id) in &remove_events {
        events.remove(*seq)?;
        payloads.remove(*seq)?;
        if let Some(id) = parse_id(event_id) {
            by_id.remove(id)?;
        }
    }
    swept.events_removed = remove_events.len();
    Ok(swept)
}

/// Builds the retention index of a store written before it existed (schema 1 → 2): every
/// settled delivery by the time it settled (its last change), every event without
/// deliveries (none matched, or an earlier sweep removed them all) by its acceptance.
pub(crate) fn build_settled_index(tx: &WriteTransaction) -> Result<(u64, u64), StoreError> {
    let mut settled = tx.open_table(SETTLED)?;
    let deliveries = tx.open_table(DELIVERIES)?;
    let mut rows = 0;
    for item in deliveries.iter()? {
        let (k, v) = item?;
        let id = k.value();
        if let Some(key) = settle_key(id, &StoredDelivery::decode(v.value())?) {
            settled.insert(key, ())?;
            rows += 1;
        }
    }
    let mut events = 0;
    for item in tx.open_table(EVENTS)?.iter()? {
        let (k, v) = item?;
        let e = StoredEvent::decode(v.value())?;
        let first = e.first_delivery;
        let none_left = deliveries
            .range(first..first + u64::from(e.deliveries))?
            .next()
            .is_none();
        if none_left {
            settled.insert((SETTLE_EVENT, e.accepted_ms, k.value()), ())?;
            events += 1;
        }
    }
    Ok((rows, events))
}

/// The ledger row view of a delivery.
pub(crate) fn to_record(id: u64, d: &StoredDelivery) -> pb::DeliveryRecord {
    pb::DeliveryRecord {
        delivery_id: id,
        local_id: d.local_id.clone(),
        event_id: d.event_id.clone(),
        event_code: d.event_code.clone(),
        mailbox: d.mailbox.clone(),
        workflow_id: d.workflow_id.clone(),
        partner_id: d.partner_id.clone(),
        state: d.state,
        attempts: d.attempts,
        accepted_at: Some(timestamp(d.accepted_ms)),
        updated_at: Some(timestamp(d.updated_ms)),
        next_attempt_at: (d.next_attempt_ms != 0).then(|| timestamp(d.next_attempt_ms)),
        mesh_message_id: d.mesh_message_id.clone(),
        last_error_code: d.last_error_code.clone(),
        last_error: d.last_error.clone(),
        subscription_ids: d.subscription_ids.clone(),
        replays: d.replays,
    }
}
