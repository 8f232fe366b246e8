//! Subscriptions and their indexes: by NHS number (explicit) and by rule + organisation
//! code + event (generic) for matching, by duplicate key, by owner and by mailbox.

use nems_proto::v1 as pb;
use prost::Message;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::StoreError;
use super::keys::{id_hex, nhs_key, parse_id};
use super::tables::*;
use crate::backend::{ListFilter, StoredSubscription, match_entry, rule_key};

/// Inserts a new subscription unless a live duplicate exists, in which case nothing is
/// written and the duplicate's id is returned as `Ok(Err(id))`.
pub(crate) fn insert(
    tx: &WriteTransaction,
    id: u128,
    sub: &StoredSubscription,
    now_ms: u64,
) -> Result<Result<(), u128>, StoreError> {
    let mut dedup = tx.open_table(SUBS_BY_DEDUP)?;
    let mut subs = tx.open_table(SUBSCRIPTIONS)?;
    let existing = dedup.get(sub.dedup_key())?.map(|v| v.value());
    if let Some(existing) = existing {
        let live = match subs.get(existing)? {
            Some(bytes) => {
                let other = StoredSubscription::decode(bytes.value())?;
                other.deleted_ms == 0 && (other.end_ms == 0 || other.end_ms > now_ms)
            }
            None => false,
        };
        if live {
            return Ok(Err(existing));
        }
    }
    subs.insert(id, sub.encode_to_vec().as_slice())?;
    dedup.insert(sub.dedup_key(), id)?;
    add_match_index(tx, id, sub)?;
    tx.open_table(SUBS_BY_OWNER)?
        .insert((sub.owner_ods.as_str(), id), ())?;
    tx.open_table(SUBS_BY_MAILBOX)?
        .insert((sub.mailbox.as_str(), id), ())?;
    bump(tx, "subscriptions-live", 1)?;
    bump(tx, &owner_counter(&sub.owner_asid), 1)?;
    Ok(Ok(()))
}

/// The `counters-v1` key of the live subscriptions an ASID owns (the quota's count).
fn owner_counter(asid: &str) -> String {
    format!("subscriptions-asid/{asid}")
}

/// Number of live (not deleted) subscriptions created by `asid`, in a write (the quota
/// check, serialised with the insert that follows it).
pub(crate) fn owned_by_asid(tx: &WriteTransaction, asid: &str) -> Result<u64, StoreError> {
    let counters = tx.open_table(COUNTERS)?;
    Ok(counters
        .get(owner_counter(asid).as_str())?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// Rebuilds the per-ASID counts from the subscriptions as they are (schema 2 → 3);
/// returns how many ASIDs own live subscriptions.
pub(crate) fn rebuild_owner_counts(tx: &WriteTransaction) -> Result<usize, StoreError> {
    let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    {
        let subs = tx.open_table(SUBSCRIPTIONS)?;
        for item in subs.iter()? {
            let (_, v) = item?;
            let sub = StoredSubscription::decode(v.value())?;
            if sub.deleted_ms == 0 {
                *counts.entry(sub.owner_asid).or_default() += 1;
            }
        }
    }
    let mut counters = tx.open_table(COUNTERS)?;
    for (asid, n) in &counts {
        counters.insert(owner_counter(asid).as_str(), *n)?;
    }
    Ok(counts.len())
}

fn add_match_index(
    tx: &WriteTransaction,
    id: u128,
    sub: &StoredSubscription,
) -> Result<(), StoreError> {
    let criteria = sub
        .criteria
        .as_ref()
        .ok_or_else(|| StoreError::Corrupt("subscription without criteria".into()))?;
    let entry = match_entry(sub).encode_to_vec();
    match criteria.kind() {
        pb::SubscriptionKind::Explicit => {
            let nhs = nhs_key(&criteria.nhs_number).ok_or_else(|| {
                StoreError::Corrupt("explicit subscription without an NHS number".into())
            })?;
            tx.open_table(SUBS_BY_NHS)?
                .insert((nhs, id), entry.as_slice())?;
        }
        _ => {
            let mut table = tx.open_table(SUBS_BY_RULE)?;
            for event in &criteria.event_codes {
                let key = rule_key(criteria.rule_type(), &criteria.organisation_code, event);
                table.insert((key.as_str(), id), entry.as_slice())?;
            }
        }
    }
    Ok(())
}

fn remove_match_index(
    tx: &WriteTransaction,
    id: u128,
    sub: &StoredSubscription,
) -> Result<(), StoreError> {
    let Some(criteria) = &sub.criteria else {
        return Ok(());
    };
    match criteria.kind() {
        pb::SubscriptionKind::Explicit => {
            if let Some(nhs) = nhs_key(&criteria.nhs_number) {
                tx.open_table(SUBS_BY_NHS)?.remove((nhs, id))?;
            }
        }
        _ => {
            let mut table = tx.open_table(SUBS_BY_RULE)?;
            for event in &criteria.event_codes {
                let key = rule_key(criteria.rule_type(), &criteria.organisation_code, event);
                table.remove((key.as_str(), id))?;
            }
        }
    }
    Ok(())
}

/// Reads a subscription (live or deleted).
pub(crate) fn get(
    tx: &ReadTransaction,
    id: u128,
) -> Result<Option<StoredSubscription>, StoreError> {
    let table = tx.open_table(SUBSCRIPTIONS)?;
    match table.get(id)? {
        Some(bytes) => Ok(Some(StoredSubscription::decode(bytes.value())?)),
        None => Ok(None),
    }
}

/// Deletes a live subscription when `may_delete` accepts it; returns false (writing
/// nothing) when it is unknown, already deleted, or refused.
pub(crate) fn delete(
    tx: &WriteTransaction,
    id: u128,
    now_ms: u64,
    may_delete: impl FnOnce(&StoredSubscription) -> bool,
) -> Result<bool, StoreError> {
    let mut subs = tx.open_table(SUBSCRIPTIONS)?;
    let mut sub = match subs.get(id)? {
        Some(bytes) => StoredSubscription::decode(bytes.value())?,
        None => return Ok(false),
    };
    if sub.deleted_ms != 0 || !may_delete(&sub) {
        return Ok(false);
    }
    sub.deleted_ms = now_ms;
    subs.insert(id, sub.encode_to_vec().as_slice())?;
    drop(subs);
    remove_match_index(tx, id, &sub)?;
    let mut dedup = tx.open_table(SUBS_BY_DEDUP)?;
    let same = dedup.get(sub.dedup_key())?.map(|v| v.value()) == Some(id);
    if same {
        dedup.remove(sub.dedup_key())?;
    }
    bump(tx, "subscriptions-live", -1)?;
    bump(tx, &owner_counter(&sub.owner_asid), -1)?;
    Ok(true)
}

fn bump(tx: &WriteTransaction, name: &str, delta: i64) -> Result<(), StoreError> {
    let mut counters = tx.open_table(COUNTERS)?;
    let current = counters.get(name)?.map(|v| v.value()).unwrap_or(0);
    counters.insert(name, current.saturating_add_signed(delta))?;
    Ok(())
}

/// Number of live subscriptions.
pub(crate) fn live_count(tx: &ReadTransaction) -> Result<u64, StoreError> {
    let counters = tx.open_table(COUNTERS)?;
    Ok(counters
        .get("subscriptions-live")?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// Lists one page of subscriptions in id order (rule listings: index order), returning
/// the page and the next page token.
pub(crate) fn list(
    tx: &ReadTransaction,
    filter: &ListFilter,
    page_token: &str,
    page_size: usize,
    include_deleted: bool,
) -> Result<(Vec<(u128, StoredSubscription)>, String), StoreError> {
    let subs = tx.open_table(SUBSCRIPTIONS)?;
    let mut out = Vec::new();
    let mut last_token = String::new();
    let mut push = |id: u128, token: String| -> Result<bool, StoreError> {
        if let Some(bytes) = subs.get(id)? {
            let sub = StoredSubscription::decode(bytes.value())?;
            if include_deleted || sub.deleted_ms == 0 {
                out.push((id, sub));
                last_token = token;
            }
        }
        Ok(out.len() >= page_size)
    };
    let after = parse_id(page_token.rsplit('\t').next().unwrap_or_default());
    let start = after.map(|a| a.saturating_add(1)).unwrap_or(0);
    let mut full = false;
    match filter {
        ListFilter::All => {
            for item in subs.range(start..)? {
                let (id, _) = item?;
                if push(id.value(), id_hex(id.value()))? {
                    full = true;
                    break;
                }
            }
        }
        ListFilter::Owner(key) | ListFilter::Mailbox(key) => {
            let table = if matches!(filter, ListFilter::Owner(_)) {
                tx.open_table(SUBS_BY_OWNER)?
            } else {
                tx.open_table(SUBS_BY_MAILBOX)?
            };
            for item in table.range((key.as_str(), start)..=(key.as_str(), u128::MAX))? {
                let (k, _) = item?;
                let id = k.value().1;
                if push(id, id_hex(id))? {
                    full = true;
                    break;
                }
            }
        }
        ListFilter::Nhs(nhs) => {
            let table = tx.open_table(SUBS_BY_NHS)?;
            for item in table.range((*nhs, start)..=(*nhs, u128::MAX))? {
                let (k, _) = item?;
                let id = k.value().1;
                if push(id, id_hex(id))? {
                    full = true;
                    break;
                }
            }
        }
        ListFilter::Rule(prefix) => {
            let table = tx.open_table(SUBS_BY_RULE)?;
            let (from_key, from_id) = match page_token.split_once('\t') {
                Some((k, _)) => (k.to_string(), start),
                None => (prefix.clone(), 0),
            };
            for item in table.range((from_key.as_str(), from_id)..)? {
                let (k, _) = item?;
                let (key, id) = k.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                if push(id, format!("{key}\t{}", id_hex(id)))? {
                    full = true;
                    break;
                }
            }
        }
    }
    let next = if full { last_token } else { String::new() };
    Ok((out, next))
}
