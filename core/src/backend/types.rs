//! The values that cross the seam: what the service layer hands a backend and what it
//! gets back. Plain Rust and protobuf types only (no redb or SQL type).

use nems_proto::v1 as pb;
use prost::Message;

use super::records::{MatchEntry, RefMeta, StoredSubscription};
use crate::domain::criteria::rule_name;
use crate::domain::patient::DemographicUpdate;

/// One mailbox's delivery of a new event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewDelivery {
    /// Recipient mailbox.
    pub(crate) mailbox: String,
    /// `Mex-PartnerID`.
    pub(crate) partner_id: String,
    /// Matched subscription ids.
    pub(crate) subscription_ids: Vec<String>,
    /// Patient flagged S or I: recorded, never sent.
    pub(crate) suppressed: bool,
}

/// A new event with its deliveries.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub(crate) event_id: u128,
    pub(crate) event_code: String,
    pub(crate) message_event_type: String,
    pub(crate) publisher_asid: String,
    pub(crate) workflow_id: String,
    pub(crate) payload: bytes::Bytes,
    pub(crate) deliveries: Vec<NewDelivery>,
    pub(crate) matched_subscriptions: u32,
    pub(crate) accepted_ms: u64,
}

/// What accepting wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// Event sequence number.
    pub(crate) seq: u64,
    /// Mailboxes with a queued (not suppressed) delivery, available now.
    pub(crate) queued_mailboxes: Vec<String>,
    /// Ids of the deliveries, in order.
    pub(crate) delivery_ids: Vec<u64>,
}

/// Deliveries leased from one mailbox.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lease {
    pub(crate) mailbox: String,
    pub(crate) deliveries: Vec<pb::Delivery>,
    /// When the mailbox next has something available (queued later, or a lease expiry).
    pub(crate) next_ready: Option<u64>,
}

/// What one lease call handed out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Leased {
    /// One entry per pick, in order.
    pub(crate) leases: Vec<Lease>,
    /// The byte budget stopped the call before a delivery that was available.
    pub(crate) out_of_budget: bool,
}

/// The most payload bytes one lease call may hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Payload bytes the call may add.
    pub(crate) bytes: u64,
    /// Take the first delivery even if it is larger than `bytes` (the stream has nothing
    /// in flight, so a payload larger than the whole budget still gets through).
    pub(crate) take_one: bool,
}

impl Budget {
    /// No byte limit (tests and tools).
    #[cfg(test)]
    pub(crate) const UNLIMITED: Budget = Budget {
        bytes: u64::MAX,
        take_one: true,
    };
}

/// An adapter's report on one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Sent {
        mesh_message_id: String,
        /// Keep the event's payload for replay (`core.replay_retention` is on).
        keep_payload: bool,
    },
    Retry {
        code: String,
        reason: String,
        retry_after_ms: u64,
    },
    Refused {
        code: String,
        reason: String,
    },
    /// The destination as a whole was unavailable: offered again later, no failure counted.
    Deferred {
        code: String,
        reason: String,
        retry_after_ms: u64,
    },
}

/// The effect of a completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Completed {
    pub(crate) state: pb::DeliveryState,
    pub(crate) mailbox: String,
    /// The delivery was queued or in flight before this report.
    pub(crate) was_pending: bool,
    /// When queued again for a retry.
    pub(crate) requeued_at: Option<u64>,
}

/// Which dead letters to redrive.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    pub(crate) ids: Vec<u64>,
    pub(crate) mailbox: String,
    pub(crate) event_code: String,
    pub(crate) error_code: String,
    pub(crate) limit: usize,
}

/// Which delivered messages of one mailbox a replay resends.
#[derive(Debug, Clone)]
pub(crate) struct ReplaySelection {
    /// The mailbox (upper case).
    pub(crate) mailbox: String,
    /// Deliveries of events accepted at or after this (Unix ms).
    pub(crate) since_ms: u64,
    /// Only this event type (empty: every type).
    pub(crate) event_code: String,
    /// Most deliveries one replay queues (0: no limit); more selected refuses the replay.
    pub(crate) limit: usize,
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Deliveries queued again (would be, in a dry run), oldest first.
    pub(crate) replayed: Vec<u64>,
    /// Delivered messages selected whose payload is no longer kept (left alone).
    pub(crate) without_payload: u64,
}

/// What a redrive did: (redriven delivery, mailbox) pairs and skipped ids.
pub(crate) type Redriven = (Vec<(u64, String)>, Vec<u64>);

/// The ledger query.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    pub(crate) event_id: String,
    pub(crate) mailbox: String,
    pub(crate) state: Option<pb::DeliveryState>,
    pub(crate) event_code: String,
    pub(crate) error_code: String,
    /// Newest first; the page token is then the last id returned, and the next page
    /// starts below it.
    pub(crate) newest_first: bool,
}

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    pub(crate) dead_letter_payloads_released: usize,
    /// Payloads of delivered messages released at the end of the replay window.
    pub(crate) delivered_payloads_released: usize,
    pub(crate) deliveries_removed: usize,
    pub(crate) events_removed: usize,
    /// Retention index entries read (at most the pass's limit; at the limit, more may be
    /// due).
    pub(crate) scanned: usize,
}

/// The operator listing filter.
#[derive(Debug, Clone)]
pub(crate) enum ListFilter {
    All,
    Owner(String),
    Mailbox(String),
    Nhs(u64),
    Rule(String),
}

/// How an import is judged against the set in force when it finishes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Guard {
    /// Keep the set in force whatever the verdict (a dry run).
    pub(crate) check: bool,
    /// Switch even when the verdict refuses.
    pub(crate) force: bool,
    /// Most rows lost against the set in force, in percent.
    pub(crate) max_shrink_percent: f64,
    /// Most malformed rows, in percent of the rows read.
    pub(crate) max_bad_row_percent: f64,
    /// Rows the caller sent (before encoding: a code-map pair is one).
    pub(crate) received: u64,
    /// Rows the caller's reader refused as malformed.
    pub(crate) bad: u64,
}

/// What finishing an import did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Finished {
    /// The data set's metadata after the commit (the new set's when applied).
    pub(crate) meta: RefMeta,
    /// Whether the new set is now in force.
    pub(crate) applied: bool,
    /// Rows of the new set (stored, or that would have been).
    pub(crate) rows: u64,
    /// Rows of the set in force before (0 when none was).
    pub(crate) previous_rows: u64,
    /// Why the import is refused (see [`refusals`]); empty when every limit passed.
    pub(crate) refusals: Vec<String>,
}

/// A filter over the audit trail.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditFilter {
    pub(crate) since_ms: u64,
    pub(crate) until_ms: u64,
    pub(crate) asid: String,
    pub(crate) action: String,
    pub(crate) resource_id: String,
    /// Newest first; the page token is then the last key returned, and the next page
    /// starts below it.
    pub(crate) newest_first: bool,
}

/// The names of the reference data sets, by set index.
pub(crate) const SET_NAMES: [&str; 3] = ["postcodes", "practices", "code-map"];

/// Index of a data set in `REF_SLOTS`.
pub(crate) fn set_index(set: pb::ReferenceDataSet) -> Option<usize> {
    match set {
        pb::ReferenceDataSet::Postcodes => Some(0),
        pb::ReferenceDataSet::Practices => Some(1),
        pb::ReferenceDataSet::CodeMap => Some(2),
        pb::ReferenceDataSet::Unspecified => None,
    }
}

/// Why replacing a set of `previous` rows (0: none in force) by one of `rows` is refused,
/// given `received` rows sent and `bad` refused as malformed by the reader. Reasons quote
/// counts only.
pub(crate) fn refusals(set: usize, previous: u64, rows: u64, guard: &Guard) -> Vec<String> {
    let name = SET_NAMES[set];
    let mut out = Vec::new();
    if rows == 0 {
        out.push(if previous > 0 {
            format!("the new {name} set is empty (the set in force has {previous} rows)")
        } else {
            format!("the new {name} set is empty")
        });
    } else if previous > 0 && rows < previous {
        let shrink = (previous - rows) as f64 * 100.0 / previous as f64;
        if shrink > guard.max_shrink_percent {
            out.push(format!(
                "the {name} set would shrink from {previous} to {rows} rows ({shrink:.1} %), more than the {} % allowed",
                guard.max_shrink_percent
            ));
        }
    }
    let read = guard.received + guard.bad;
    if guard.bad > 0 {
        let share = guard.bad as f64 * 100.0 / read as f64;
        if share > guard.max_bad_row_percent {
            out.push(format!(
                "{} of {read} rows read ({share:.1} %) were malformed, more than the {} % allowed",
                guard.bad, guard.max_bad_row_percent
            ));
        }
    }
    out
}

/// The name of data set `set` (`postcodes`, `practices`, `code-map`).
pub(crate) fn set_name(set: usize) -> &'static str {
    SET_NAMES[set]
}

/// Encodes rows of a batch as (key, value) pairs for [`insert`]; the key is not repeated
/// in the value. Code-map rows give both directions.
pub(crate) fn encode_postcodes(rows: Vec<pb::PostcodeRow>) -> Vec<(String, Vec<u8>)> {
    rows.into_iter()
        .map(|mut r| {
            let key = std::mem::take(&mut r.postcode);
            (key, r.encode_to_vec())
        })
        .collect()
}

/// See [`encode_postcodes`].
pub(crate) fn encode_practices(rows: Vec<pb::PracticeRow>) -> Vec<(String, Vec<u8>)> {
    rows.into_iter()
        .map(|mut r| {
            let key = std::mem::take(&mut r.code);
            (key, r.encode_to_vec())
        })
        .collect()
}

/// See [`encode_postcodes`].
pub(crate) fn encode_code_map(rows: Vec<pb::CodeMapRow>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(rows.len() * 2);
    for r in rows {
        out.push((r.gss.clone(), r.ods.clone().into_bytes()));
        out.push((r.ods, r.gss.into_bytes()));
    }
    out
}

/// The generic index key of (rule, organisation code, event code).
pub(crate) fn rule_key(rule: pb::RuleType, code: &str, event: &str) -> String {
    format!(
        "{}/{}/{}",
        rule_name(rule),
        code.to_ascii_uppercase(),
        event
    )
}

/// What matching needs of a subscription.
pub(crate) fn match_entry(sub: &StoredSubscription) -> MatchEntry {
    let criteria = sub.criteria.clone().unwrap_or_default();
    MatchEntry {
        event_codes: criteria.event_codes,
        mailbox: sub.mailbox.clone(),
        tag: criteria.tag,
        age: criteria.age,
        gp_registration: criteria.gp_registration,
        created_ms: sub.created_ms,
        end_ms: sub.end_ms,
    }
}

/// Encoded reference data rows: (key, prost-encoded row).
pub(crate) type Rows = Vec<(String, Vec<u8>)>;

/// The record an update alone gives (for a patient the store does not hold yet).
pub(crate) fn record_of(u: &DemographicUpdate) -> pb::PatientRecord {
    let mut record = pb::PatientRecord::default();
    if let Some((postcode, previous)) = &u.postcode {
        record.postcode.clone_from(postcode);
        record.previous_postcode.clone_from(previous);
    }
    if let Some(gp) = &u.gp_practice {
        record.gp_practice.clone_from(gp);
    }
    if let Some(flag) = u.flag {
        record.flag = flag.into();
    }
    if let Some(death) = &u.date_of_death {
        record.date_of_death.clone_from(death);
    }
    if let Some(birth) = &u.birth_date {
        record.birth_date.clone_from(birth);
    }
    record
}
