//! The dispatcher: in-memory scheduling of the work queue across delivery streams.
//!
//! The durable truth is the `QUEUE` table; the dispatcher only remembers, per mailbox,
//! when it next has something available and how many of its deliveries are in flight, so
//! that streams lease from mailboxes that are ready and under their limit, in order of
//! readiness. A failing mailbox (retries in backoff, or at its in-flight limit) is skipped
//! and never holds up the others. Commits that add work wake waiting streams.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct MailboxState {
    /// When the mailbox next has an available delivery, if known to have one.
    next_ready: Option<u64>,
    /// Deliveries of the mailbox in flight (or reserved for a lease in progress).
    in_flight: u32,
    /// A lease of this mailbox is in progress (its `next_ready` is unknown until it ends).
    leasing: bool,
}

#[derive(Debug)]
struct LeaseSlot {
    stream: u64,
    mailbox: String,
    expires: u64,
}

#[derive(Debug, Default)]
struct Sched {
    mailboxes: HashMap<String, MailboxState>,
    /// Candidate (ready-at, mailbox) pairs; stale entries are skipped when popped.
    ready: BinaryHeap<Reverse<(u64, String)>>,
    /// Delivery → lease handed out by this process.
    leases: HashMap<u64, LeaseSlot>,
    /// Stream → deliveries in flight on it.
    streams: HashMap<u64, u32>,
    next_stream: u64,
}

/// A picked mailbox and how many deliveries to lease from it.
pub(crate) type Pick = (String, u32);

/// The dispatcher.
#[derive(Debug, Default)]
pub(crate) struct Dispatcher {
    sched: Mutex<Sched>,
    notify: Notify,
}

impl Dispatcher {
    fn with<T>(&self, f: impl FnOnce(&mut Sched) -> T) -> T {
        let mut guard = match self.sched.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// The notifier streams wait on.
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }

    /// Records that `mailbox` has work available at `at` (after an accept, a retry, a
    /// redrive, or at start-up) and wakes the streams.
    pub(crate) fn available(&self, mailbox: &str, at: u64) {
        self.with(|s| {
            let state = s.mailboxes.entry(mailbox.to_string()).or_default();
            if state.leasing {
                // The lease in progress reports the mailbox's next time when it ends; make
                // sure this earlier time is not lost.
                state.next_ready = Some(state.next_ready.map_or(at, |t| t.min(at)));
                return;
            }
            if state.next_ready.is_none_or(|t| at < t) {
                state.next_ready = Some(at);
                s.ready.push(Reverse((at, mailbox.to_string())));
            }
        });
        self.notify.notify_waiters();
    }

    /// Registers a new stream and returns its id.
    pub(crate) fn open_stream(&self) -> u64 {
        self.with(|s| {
            s.next_stream += 1;
            let id = s.next_stream;
            s.streams.insert(id, 0);
            id
        })
    }

    /// Chooses mailboxes for `stream` to lease from now: ready ones under the per-mailbox
    /// limit, earliest first, up to the stream's free capacity. The counts are reserved
    /// until [`Dispatcher::leased`]. Also returns when to look again if nothing is ready.
    pub(crate) fn pick(
        &self,
        stream: u64,
        stream_limit: u32,
        mailbox_limit: u32,
        now: u64,
    ) -> (Vec<Pick>, Option<u64>) {
        self.with(|s| {
            expire_leases(s, now);
            let in_flight = s.streams.get(&stream).copied().unwrap_or(0);
            let mut capacity = stream_limit.saturating_sub(in_flight);
            let mut picks = Vec::new();
            while capacity > 0 {
                let Some(Reverse((at, mailbox))) = s.ready.peek().cloned() else {
                    break;
                };
                let Some(state) = s.mailboxes.get_mut(&mailbox) else {
                    s.ready.pop();
                    continue;
                };
                if state.leasing || state.next_ready != Some(at) {
                    s.ready.pop();
                    continue;
                }
                if at > now {
                    break;
                }
                s.ready.pop();
                let room = mailbox_limit.saturating_sub(state.in_flight);
                if room == 0 {
                    // Full: it becomes a candidate again when one of its leases ends.
                    continue;
                }
                let n = room.min(capacity);
                state.in_flight += n;
                state.leasing = true;
                state.next_ready = None;
                capacity -= n;
                picks.push((mailbox, n));
            }
            if let Some(count) = s.streams.get_mut(&stream) {
                *count += picks.iter().map(|(_, n)| *n).sum::<u32>();
            }
            let wake = s.ready.peek().map(|Reverse((at, _))| *at);
            (picks, wake)
        })
    }

    /// Records the result of leasing the picks: the deliveries leased per mailbox (until
    /// `expires`) and when each mailbox next has something available. Unused reservations
    /// are returned.
    pub(crate) fn leased(
        &self,
        stream: u64,
        expires: u64,
        results: &[(String, u32, Vec<u64>, Option<u64>)],
    ) {
        self.with(|s| {
            for (mailbox, reserved, ids, next_ready) in results {
                let unused = reserved.saturating_sub(ids.len() as u32);
                if let Some(count) = s.streams.get_mut(&stream) {
                    *count = count.saturating_sub(unused);
                }
                for id in ids {
                    let slot = LeaseSlot {
                        stream,
                        mailbox: mailbox.clone(),
                        expires,
                    };
                    // A re-leased delivery (expired lease) frees its old slot.
                    if let Some(old) = s.leases.insert(*id, slot) {
                        release_slot(s, old.stream, &old.mailbox);
                    }
                }
                let state = s.mailboxes.entry(mailbox.clone()).or_default();
                state.in_flight = state.in_flight.saturating_sub(unused);
                state.leasing = false;
                let earliest = match (state.next_ready, *next_ready) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                state.next_ready = earliest;
                if let Some(at) = earliest {
                    s.ready.push(Reverse((at, mailbox.clone())));
                }
            }
        });
    }

    /// Releases the lease of a completed delivery and wakes the streams.
    pub(crate) fn released(&self, delivery: u64) {
        self.with(|s| {
            if let Some(old) = s.leases.remove(&delivery) {
                release_slot(s, old.stream, &old.mailbox);
            }
        });
        self.notify.notify_waiters();
    }

    /// Forgets a closed stream: its deliveries stay leased in the store and come back when
    /// their leases expire, but they no longer count against this process's limits.
    pub(crate) fn close_stream(&self, stream: u64) {
        self.with(|s| {
            s.streams.remove(&stream);
            let mine: Vec<u64> = s
                .leases
                .iter()
                .filter(|(_, slot)| slot.stream == stream)
                .map(|(id, _)| *id)
                .collect();
            for id in mine {
                if let Some(old) = s.leases.remove(&id) {
                    release_slot(s, old.stream, &old.mailbox);
                }
            }
        });
        self.notify.notify_waiters();
    }

    /// Deliveries in flight per this process, in total.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> u64 {
        self.with(|s| s.leases.len() as u64)
    }
}

/// Frees the slots of leases that expired: their deliveries are available again in the
/// store (their queue time is the expiry), so they must not count against the limits.
fn expire_leases(s: &mut Sched, now: u64) {
    let expired: Vec<u64> = s
        .leases
        .iter()
        .filter(|(_, slot)| slot.expires <= now)
        .map(|(id, _)| *id)
        .collect();
    for id in expired {
        if let Some(old) = s.leases.remove(&id) {
            release_slot(s, old.stream, &old.mailbox);
        }
    }
}

fn release_slot(s: &mut Sched, stream: u64, mailbox: &str) {
    if let Some(count) = s.streams.get_mut(&stream) {
        *count = count.saturating_sub(1);
    }
    if let Some(state) = s.mailboxes.get_mut(mailbox) {
        state.in_flight = state.in_flight.saturating_sub(1);
        if let Some(at) = state.next_ready
            && !state.leasing
        {
            s.ready.push(Reverse((at, mailbox.to_string())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_ready_mailboxes_within_limits_and_skips_full_ones() {
        let d = Dispatcher::default();
        let stream = d.open_stream();
        d.available("A", 10);
        d.available("B", 20);
        d.available("C", 500);
        let (picks, wake) = d.pick(stream, 100, 2, 100);
        assert_eq!(picks, vec![("A".to_string(), 2), ("B".to_string(), 2)]);
        assert_eq!(wake, Some(500));
        // A leased two and still has more at 30; B leased one and is empty.
        d.leased(
            stream,
            10_000,
            &[
                ("A".into(), 2, vec![1, 2], Some(30)),
                ("B".into(), 2, vec![3], None),
            ],
        );
        // A is at its limit of 2: nothing to pick until a lease ends.
        let (picks, _) = d.pick(stream, 100, 2, 100);
        assert!(picks.is_empty(), "{picks:?}");
        d.released(1);
        let (picks, _) = d.pick(stream, 100, 2, 100);
        assert_eq!(picks, vec![("A".to_string(), 1)]);
    }

    #[test]
    fn stream_capacity_bounds_the_picks() {
        let d = Dispatcher::default();
        let stream = d.open_stream();
        for m in ["A", "B", "C"] {
            d.available(m, 0);
        }
        let (picks, _) = d.pick(stream, 3, 2, 1);
        assert_eq!(picks.iter().map(|(_, n)| n).sum::<u32>(), 3);
        d.leased(
            stream,
            10_000,
            &[
                ("A".into(), 2, vec![1, 2], None),
                ("B".into(), 1, vec![3], None),
            ],
        );
        let (picks, _) = d.pick(stream, 3, 2, 1);
        assert!(picks.is_empty());
        d.close_stream(stream);
        let other = d.open_stream();
        let (picks, _) = d.pick(other, 3, 2, 1);
        assert_eq!(picks, vec![("C".to_string(), 2)]);
    }

    #[test]
    fn expired_leases_free_their_mailbox() {
        let d = Dispatcher::default();
        let stream = d.open_stream();
        d.available("A", 0);
        let (picks, _) = d.pick(stream, 10, 1, 1);
        assert_eq!(picks.len(), 1);
        // Leased until 100; the delivery comes back in the store at 100.
        d.leased(stream, 100, &[("A".into(), 1, vec![7], Some(100))]);
        let (picks, wake) = d.pick(stream, 10, 1, 50);
        assert!(picks.is_empty());
        assert_eq!(wake, Some(100));
        // After expiry the slot is free again although no completion arrived.
        let (picks, _) = d.pick(stream, 10, 1, 100);
        assert_eq!(picks, vec![("A".to_string(), 1)]);
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn future_work_is_not_picked_early() {
        let d = Dispatcher::default();
        let stream = d.open_stream();
        d.available("A", 1_000);
        let (picks, wake) = d.pick(stream, 10, 10, 999);
        assert!(picks.is_empty());
        assert_eq!(wake, Some(1_000));
        // An earlier retry time replaces the later one.
        d.available("A", 500);
        let (picks, _) = d.pick(stream, 10, 10, 600);
        assert_eq!(picks.len(), 1);
    }
}
