//! Accepting an event: the one use case behind `EventService.PublishEvent` and
//! `OperatorService.InjectDelivery`. It owns the acceptance transaction's body ([`write`]:
//! matching inside it when the recipients are to be matched, the event, its payload and one
//! delivery row per mailbox, demographics, the audit row), written once for every storage
//! engine, and everything that follows the commit (the pending count, the dispatcher's
//! wake-up, the metrics), so that a caller cannot forget a chore.

use crate::backend::keys::now_ms;
use crate::backend::{self, AcceptTx, NewDelivery, NewEvent, StoreError};
use crate::domain::patient::DemographicUpdate;
use crate::matching::{self, MailboxMatch};
use crate::state::CoreState;
use nems_proto::v1 as pb;

/// Who receives the event.
#[derive(Debug, Clone)]
pub(crate) enum Recipients {
    /// Matched in the acceptance transaction, stamped with the time of the write: matching
    /// sees every subscription and demographics change ordered before this event (even in
    /// the same group commit) and none after it. The demographic updates the event carries
    /// (or PDS gave) are applied in the same transaction.
    Matched {
        /// What matching needs from the event.
        subject: Box<matching::Event>,
        /// Demographics to apply with the event.
        updates: Vec<DemographicUpdate>,
    },
    /// Given by the caller: an operator's injected delivery.
    Given(Vec<NewDelivery>),
}

/// Whether a full write queue sheds the request (publishing answers 503) or waits for room
/// (operator actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenBusy {
    /// Refuse with [`StoreError::Busy`].
    Shed,
    /// Wait for room in the queue.
    Wait,
}

/// One event to accept.
#[derive(Debug)]
pub(crate) struct Acceptance {
    /// The event; its `deliveries` and `matched_subscriptions` are filled from `recipients`,
    /// its `accepted_ms` is the time of the write (never before the time given).
    pub(crate) event: NewEvent,
    /// Its recipients.
    pub(crate) recipients: Recipients,
    /// The audit row written with it.
    pub(crate) audit: pb::AuditRecord,
    /// What a full write queue does.
    pub(crate) when_busy: WhenBusy,
}

/// What the acceptance transaction writes: an [`Acceptance`] as a backend receives it
/// (cloned by an engine that retries it alone after its group's transaction failed).
#[derive(Debug, Clone)]
pub(crate) struct Write {
    /// The event.
    pub(crate) event: NewEvent,
    /// Its recipients.
    pub(crate) recipients: Recipients,
    /// The audit row written with it.
    pub(crate) audit: pb::AuditRecord,
}

impl Write {
    /// The NHS number the event is about, when matched (an engine serialising
    /// acceptances per patient locks it).
    pub(crate) fn patient(&self) -> Option<u64> {
        match &self.recipients {
            Recipients::Matched { subject, .. } => subject.nhs,
            Recipients::Given(_) => None,
        }
    }

    /// The acceptance time on an engine whose writes are ordered by one writer: now, and
    /// never before the time the caller planned.
    pub(crate) fn time(&self) -> u64 {
        now_ms().max(self.event.accepted_ms)
    }
}

/// What was accepted.
#[derive(Debug)]
pub(crate) struct Written {
    /// The write's own record (sequence, queued mailboxes, delivery ids).
    pub(crate) written: backend::Accepted,
    /// The time the event was accepted (Unix ms).
    pub(crate) accepted_ms: u64,
    /// True when the patient's events are suppressed: the deliveries were written as such.
    pub(crate) suppressed: bool,
    /// Subscriptions that matched (0 for given recipients).
    pub(crate) matched_subscriptions: usize,
}

/// The delivery rows of `matches`.
fn deliveries(matches: &[MailboxMatch], suppressed: bool) -> Vec<NewDelivery> {
    matches
        .iter()
        .map(|m| NewDelivery {
            mailbox: m.mailbox.clone(),
            partner_id: m.partner_id(),
            subscription_ids: m.subscriptions.iter().map(|(id, _)| id.clone()).collect(),
            suppressed,
        })
        .collect()
}

/// The acceptance transaction's body, run by the backend inside its transaction: stamps
/// the event with `accepted_ms` (the time of the write, as the engine orders writes: see
/// [`Write::time`] for redb; PostgreSQL reads the database clock), matches it there (or takes the given
/// recipients), writes the event, its deliveries, the demographics it carries and its
/// audit row. Any error leaves the transaction to be rolled back.
pub(crate) async fn write(
    tx: &impl AcceptTx,
    write: Write,
    accepted_ms: u64,
) -> Result<Written, StoreError> {
    let Write {
        mut event,
        recipients,
        audit,
    } = write;
    event.accepted_ms = accepted_ms;
    let (suppressed, matched, updates) = match recipients {
        Recipients::Matched {
            mut subject,
            updates,
        } => {
            subject.accepted_ms = accepted_ms;
            let (matches, suppressed) = matching::match_event(tx, &subject).await?;
            let matched: usize = matches.iter().map(|m| m.subscriptions.len()).sum();
            event.deliveries = deliveries(&matches, suppressed);
            (suppressed, matched, updates)
        }
        Recipients::Given(given) => {
            event.deliveries = given;
            (false, 0, Vec::new())
        }
    };
    event.matched_subscriptions = u32::try_from(matched).unwrap_or(u32::MAX);
    // Independent writes, started together (an engine over a network sends them in one
    // round trip; one in process finishes each at once).
    let (written, demographics, audited) = tokio::join!(
        tx.insert_event(&event),
        async {
            for update in &updates {
                tx.apply_demographics(update).await?;
            }
            Ok::<_, StoreError>(())
        },
        tx.append_audit(accepted_ms, &audit)
    );
    backend::first_cause([
        written.as_ref().err().cloned(),
        demographics.err(),
        audited.err(),
    ])?;
    let written = written?;
    Ok(Written {
        written,
        accepted_ms,
        suppressed,
        matched_subscriptions: matched,
    })
}

/// Accepts `acceptance` durably; returns once its transaction has committed, after the
/// chores that follow a commit. On an error nothing was written.
pub(crate) async fn accept(
    state: &CoreState,
    acceptance: Acceptance,
) -> Result<Written, StoreError> {
    let Acceptance {
        event,
        recipients,
        audit,
        when_busy,
    } = acceptance;
    let event_code = event.event_code.clone();
    let write = Write {
        event,
        recipients,
        audit,
    };
    let accepted = match state.store.accept(write, when_busy == WhenBusy::Shed).await {
        Ok(accepted) => accepted,
        Err(e) => {
            if matches!(e, StoreError::Busy) {
                tracing::warn!("store write queue full; shedding publishes");
                crate::metrics::metrics().publishes_shed.inc();
            }
            return Err(e);
        }
    };
    // After the commit: count what is now pending, wake the dispatcher for each mailbox
    // with a queued delivery, and count the event.
    let queued = &accepted.written.queued_mailboxes;
    state.note_queued(queued.len() as u64);
    for mailbox in queued {
        state.dispatcher.available(mailbox, accepted.accepted_ms);
    }
    let m = crate::metrics::metrics();
    m.events_accepted
        .get_or_create(&crate::metrics::EventLabel { event_code })
        .inc();
    m.mailboxes_per_event.observe(queued.len() as f64);
    Ok(accepted)
}
