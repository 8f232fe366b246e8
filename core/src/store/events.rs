//! Accepting an event: the event, its payload and its delivery rows are written in the
//! caller's transaction (a transactional outbox), so that a committed event always has
//! all its deliveries and a delivery never lacks its payload.

use nems_proto::v1 as pb;
use prost::Message;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::StoreError;
use super::keys::id_hex;
use super::ledger::{SETTLE_EVENT, SETTLE_ROW, bump_count, index_state};
use super::records::StoredEvent;
use super::tables::*;
use crate::backend::{Accepted, NewEvent};

fn next(
    counters: &mut redb::Table<'_, &'static str, u64>,
    name: &str,
    by: u64,
) -> Result<u64, StoreError> {
    let current = counters.get(name)?.map(|v| v.value()).unwrap_or(1).max(1);
    counters.insert(name, current + by)?;
    Ok(current)
}

/// Writes an accepted event, its payload and its deliveries.
pub(crate) fn accept(tx: &WriteTransaction, e: &NewEvent) -> Result<Accepted, StoreError> {
    let mut counters = tx.open_table(COUNTERS)?;
    let seq = next(&mut counters, "next-event", 1)?;
    let first = next(&mut counters, "next-delivery", e.deliveries.len() as u64)?;
    let accepted = counters
        .get("events-accepted")?
        .map(|v| v.value())
        .unwrap_or(0);
    counters.insert("events-accepted", accepted + 1)?;
    drop(counters);

    let event_hex = id_hex(e.event_id);
    let queued = e.deliveries.iter().filter(|d| !d.suppressed).count() as u32;
    let stored = StoredEvent {
        event_id: event_hex.clone(),
        event_code: e.event_code.clone(),
        message_event_type: e.message_event_type.clone(),
        publisher_asid: e.publisher_asid.clone(),
        accepted_ms: e.accepted_ms,
        payload_bytes: e.payload.len() as u64,
        first_delivery: first,
        deliveries: e.deliveries.len() as u32,
        unsettled: queued,
        matched_subscriptions: e.matched_subscriptions,
    };
    tx.open_table(EVENTS)?
        .insert(seq, stored.encode_to_vec().as_slice())?;
    tx.open_table(EVENTS_BY_ID)?.insert(e.event_id, seq)?;
    if queued > 0 {
        tx.open_table(PAYLOADS)?.insert(seq, &e.payload[..])?;
    }

    let mut deliveries = tx.open_table(DELIVERIES)?;
    let mut queue = tx.open_table(QUEUE)?;
    let mut by_state = tx.open_table(DELIVERIES_BY_STATE)?;
    let mut by_mailbox = tx.open_table(DELIVERIES_BY_MAILBOX)?;
    let mut counts = tx.open_table(MAILBOX_COUNTS)?;
    // The retention index gets the rows settled at acceptance (opened only for those, off
    // the common path).
    let mut settled = if e.deliveries.is_empty() || e.deliveries.iter().any(|d| d.suppressed) {
        Some(tx.open_table(SETTLED)?)
    } else {
        None
    };
    if e.deliveries.is_empty()
        && let Some(settled) = settled.as_mut()
    {
        settled.insert((SETTLE_EVENT, e.accepted_ms, seq), ())?;
    }
    let mut out = Accepted {
        seq,
        queued_mailboxes: Vec::new(),
        delivery_ids: Vec::with_capacity(e.deliveries.len()),
    };
    for (index, d) in e.deliveries.iter().enumerate() {
        let id = first + index as u64;
        let state = if d.suppressed {
            pb::DeliveryState::Suppressed
        } else {
            pb::DeliveryState::Queued
        };
        let record = super::ledger::new_delivery(e, &event_hex, seq, index, d);
        deliveries.insert(id, record.encode_to_vec().as_slice())?;
        by_mailbox.insert((d.mailbox.as_str(), id), ())?;
        index_state(&mut by_state, id, None, state)?;
        bump_count(&mut counts, &d.mailbox, state, 1)?;
        if d.suppressed {
            if let Some(settled) = settled.as_mut() {
                settled.insert((SETTLE_ROW, e.accepted_ms, id), ())?;
            }
        } else {
            queue.insert((d.mailbox.as_str(), e.accepted_ms, id), ())?;
            out.queued_mailboxes.push(d.mailbox.clone());
        }
        out.delivery_ids.push(id);
    }
    Ok(out)
}

/// Finds an event by id.
pub(crate) fn get_by_id(
    tx: &ReadTransaction,
    id: u128,
) -> Result<Option<(u64, StoredEvent)>, StoreError> {
    let Some(seq) = tx.open_table(EVENTS_BY_ID)?.get(id)?.map(|v| v.value()) else {
        return Ok(None);
    };
    let events = tx.open_table(EVENTS)?;
    match events.get(seq)? {
        Some(bytes) => Ok(Some((seq, StoredEvent::decode(bytes.value())?))),
        None => Ok(None),
    }
}

/// Events accepted since the store was created.
pub(crate) fn accepted_count(tx: &ReadTransaction) -> Result<u64, StoreError> {
    Ok(tx
        .open_table(COUNTERS)?
        .get("events-accepted")?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// The ledger view of an event.
pub(crate) fn to_record(e: &StoredEvent, payload_held: bool) -> pb::EventRecord {
    pb::EventRecord {
        event_id: e.event_id.clone(),
        event_code: e.event_code.clone(),
        message_event_type: e.message_event_type.clone(),
        publisher_asid: e.publisher_asid.clone(),
        accepted_at: Some(super::keys::timestamp(e.accepted_ms)),
        payload_bytes: e.payload_bytes,
        payload_held,
        deliveries: e.deliveries,
        matched_subscriptions: e.matched_subscriptions,
    }
}
