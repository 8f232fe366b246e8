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

use crate::backend::Budget;

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
    /// The attempt leased (to give it back only if it is still that attempt).
    attempt: u32,
    /// Its payload size.
    bytes: u64,
}

#[derive(Debug, Default)]
struct StreamState {
    /// Deliveries in flight on the stream (or reserved for a lease in progress).
    count: u32,
    /// Payload bytes in flight on the stream.
    bytes: u64,
    /// Leases of the stream ended so far (tells a budget check from a later release).
    releases: u64,
    /// Its byte budget stopped its last lease: nothing is picked for it until one of its
    /// leases ends.
    blocked: bool,
}

/// A delivery handed out: (delivery id, attempt, payload bytes).
pub(crate) type Held = (u64, u32, u64);

/// The result of leasing one pick: (mailbox, reserved, deliveries leased, the mailbox's
/// next queue time).
pub(crate) type PickResult = (String, u32, Vec<Held>, Option<u64>);

#[derive(Debug, Default)]
struct Sched {
    mailboxes: HashMap<String, MailboxState>,
    /// Candidate (ready-at, mailbox) pairs; stale entries are skipped when popped.
    ready: BinaryHeap<Reverse<(u64, String)>>,
    /// Delivery → lease handed out by this process.
    leases: HashMap<u64, LeaseSlot>,
    /// Open streams.
    streams: HashMap<u64, StreamState>,
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

    /// Registers a new stream and returns its id, or `None` when `max_streams` are open.
    pub(crate) fn open_stream(&self, max_streams: usize) -> Option<u64> {
        self.with(|s| {
            if s.streams.len() >= max_streams {
                return None;
            }
            s.next_stream += 1;
            let id = s.next_stream;
            s.streams.insert(id, StreamState::default());
            Some(id)
        })
    }

    /// The payload bytes `stream` may lease now under a cap of `max_bytes` in flight, and
    /// a mark to pass to [`Dispatcher::out_of_budget`].
    pub(crate) fn byte_budget(&self, stream: u64, max_bytes: u64) -> (Budget, u64) {
        self.with(|s| {
            let state = s.streams.get(&stream);
            let in_flight = state.map_or(0, |st| st.bytes);
            let budget = Budget {
                bytes: max_bytes.saturating_sub(in_flight),
                take_one: in_flight == 0,
            };
            (budget, state.map_or(0, |st| st.releases))
        })
    }

    /// Records that the byte budget (taken at `mark`) stopped a lease of `stream`: it is
    /// picked for again once one of its leases ends (at once if one ended meanwhile).
    pub(crate) fn out_of_budget(&self, stream: u64, mark: u64) {
        self.with(|s| {
            if let Some(state) = s.streams.get_mut(&stream)
                && state.releases == mark
                && state.bytes > 0
            {
                state.blocked = true;
            }
        });
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
            let (in_flight, blocked) = s
                .streams
                .get(&stream)
                .map_or((0, false), |st| (st.count, st.blocked));
            let mut capacity = if blocked {
                0
            } else {
                stream_limit.saturating_sub(in_flight)
            };
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
            if let Some(st) = s.streams.get_mut(&stream) {
                st.count += picks.iter().map(|(_, n)| *n).sum::<u32>();
            }
            let wake = s.ready.peek().map(|Reverse((at, _))| *at);
            (picks, wake)
        })
    }

    /// Records the result of leasing the picks: the deliveries leased per mailbox (until
    /// `expires`) and when each mailbox next has something available. Unused reservations
    /// are returned.
    pub(crate) fn leased(&self, stream: u64, expires: u64, results: &[PickResult]) {
        self.with(|s| {
            for (mailbox, reserved, held, next_ready) in results {
                let unused = reserved.saturating_sub(held.len() as u32);
                if let Some(st) = s.streams.get_mut(&stream) {
                    st.count = st.count.saturating_sub(unused);
                    st.bytes += held.iter().map(|(_, _, b)| *b).sum::<u64>();
                }
                for &(id, attempt, bytes) in held {
                    let slot = LeaseSlot {
                        stream,
                        mailbox: mailbox.clone(),
                        expires,
                        attempt,
                        bytes,
                    };
                    // A re-leased delivery (expired lease) frees its old slot.
                    if let Some(old) = s.leases.insert(id, slot) {
                        release_slot(s, &old);
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
                release_slot(s, &old);
            }
        });
        self.notify.notify_waiters();
    }

    /// Forgets a closed stream and returns the (delivery, attempt) pairs still leased on it,
    /// for the caller to give back in the store ([`crate::store::ledger::give_back`]); they
    /// no longer count against this process's limits.
    pub(crate) fn close_stream(&self, stream: u64) -> Vec<(u64, u32)> {
        let held = self.with(|s| {
            s.streams.remove(&stream);
            let mine: Vec<u64> = s
                .leases
                .iter()
                .filter(|(_, slot)| slot.stream == stream)
                .map(|(id, _)| *id)
                .collect();
            let mut held = Vec::with_capacity(mine.len());
            for id in mine {
                if let Some(old) = s.leases.remove(&id) {
                    held.push((id, old.attempt));
                    release_slot(s, &old);
                }
            }
            held.sort_unstable();
            held
        });
        self.notify.notify_waiters();
        held
    }

    /// Open delivery streams.
    #[cfg(test)]
    pub(crate) fn streams(&self) -> usize {
        self.with(|s| s.streams.len())
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
            release_slot(s, &old);
        }
    }
}

fn release_slot(s: &mut Sched, slot: &LeaseSlot) {
    let mailbox = slot.mailbox.as_str();
    if let Some(st) = s.streams.get_mut(&slot.stream) {
        st.count = st.count.saturating_sub(1);
        st.bytes = st.bytes.saturating_sub(slot.bytes);
        st.releases += 1;
        st.blocked = false;
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

    /// Deliveries `ids` at attempt 1, 10 bytes each.
    fn held(ids: &[u64]) -> Vec<Held> {
        ids.iter().map(|id| (*id, 1, 10)).collect()
    }

    #[test]
    fn picks_ready_mailboxes_within_limits_and_skips_full_ones() {
        let d = Dispatcher::default();
        let stream = d.open_stream(8).unwrap();
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
                ("A".into(), 2, held(&[1, 2]), Some(30)),
                ("B".into(), 2, held(&[3]), None),
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
        let stream = d.open_stream(8).unwrap();
        for m in ["A", "B", "C"] {
            d.available(m, 0);
        }
        let (picks, _) = d.pick(stream, 3, 2, 1);
        assert_eq!(picks.iter().map(|(_, n)| n).sum::<u32>(), 3);
        d.leased(
            stream,
            10_000,
            &[
                ("A".into(), 2, held(&[1, 2]), None),
                ("B".into(), 1, held(&[3]), None),
            ],
        );
        let (picks, _) = d.pick(stream, 3, 2, 1);
        assert!(picks.is_empty());
        d.close_stream(stream);
        let other = d.open_stream(8).unwrap();
        let (picks, _) = d.pick(other, 3, 2, 1);
        assert_eq!(picks, vec![("C".to_string(), 2)]);
    }

    #[test]
    fn expired_leases_free_their_mailbox() {
        let d = Dispatcher::default();
        let stream = d.open_stream(8).unwrap();
        d.available("A", 0);
        let (picks, _) = d.pick(stream, 10, 1, 1);
        assert_eq!(picks.len(), 1);
        // Leased until 100; the delivery comes back in the store at 100.
        d.leased(stream, 100, &[("A".into(), 1, held(&[7]), Some(100))]);
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
        let stream = d.open_stream(8).unwrap();
        d.available("A", 1_000);
        let (picks, wake) = d.pick(stream, 10, 10, 999);
        assert!(picks.is_empty());
        assert_eq!(wake, Some(1_000));
        // An earlier retry time replaces the later one.
        d.available("A", 500);
        let (picks, _) = d.pick(stream, 10, 10, 600);
        assert_eq!(picks.len(), 1);
    }

    #[test]
    fn streams_are_capped() {
        let d = Dispatcher::default();
        let one = d.open_stream(2).unwrap();
        let _two = d.open_stream(2).unwrap();
        assert_eq!(d.open_stream(2), None);
        assert!(d.close_stream(one).is_empty());
        assert!(d.open_stream(2).is_some());
        assert_eq!(d.streams(), 2);
    }

    #[test]
    fn a_closed_stream_hands_back_its_leases() {
        let d = Dispatcher::default();
        let stream = d.open_stream(8).unwrap();
        let other = d.open_stream(8).unwrap();
        d.available("A", 0);
        d.available("B", 0);
        let (picks, _) = d.pick(stream, 20, 10, 1);
        assert_eq!(picks.len(), 2);
        d.leased(
            stream,
            10_000,
            &[
                ("A".into(), 10, vec![(1, 3, 10), (2, 1, 10)], None),
                ("B".into(), 10, vec![(3, 2, 10)], None),
            ],
        );
        d.released(2);
        d.available("A", 5);
        let (picks, _) = d.pick(other, 10, 10, 6);
        d.leased(other, 10_000, &[("A".into(), picks[0].1, held(&[4]), None)]);
        assert_eq!(d.close_stream(stream), vec![(1, 3), (3, 2)]);
        assert_eq!(d.in_flight(), 1, "the other stream's lease stays");
        assert_eq!(d.close_stream(other), vec![(4, 1)]);
    }

    #[test]
    fn the_byte_budget_blocks_a_stream_until_a_lease_ends() {
        let d = Dispatcher::default();
        let stream = d.open_stream(8).unwrap();
        let (budget, _) = d.byte_budget(stream, 100);
        assert_eq!(
            budget,
            Budget {
                bytes: 100,
                take_one: true
            }
        );
        d.available("A", 0);
        let (picks, _) = d.pick(stream, 10, 10, 1);
        d.leased(
            stream,
            10_000,
            &[(
                "A".into(),
                picks[0].1,
                vec![(1, 1, 60), (2, 1, 30)],
                Some(0),
            )],
        );
        let (budget, mark) = d.byte_budget(stream, 100);
        assert_eq!(
            budget,
            Budget {
                bytes: 10,
                take_one: false
            }
        );
        // The next lease found nothing that fits: no picks until a lease ends.
        let (picks, _) = d.pick(stream, 10, 10, 1);
        d.leased(
            stream,
            10_000,
            &[("A".into(), picks[0].1, Vec::new(), Some(0))],
        );
        d.out_of_budget(stream, mark);
        assert!(d.pick(stream, 10, 10, 1).0.is_empty());
        d.released(1);
        let (budget, _) = d.byte_budget(stream, 100);
        assert_eq!(budget.bytes, 70);
        assert_eq!(d.pick(stream, 10, 10, 1).0.len(), 1);
        // A release between the budget check and the lease's end does not block it.
        let (_, mark) = d.byte_budget(stream, 100);
        d.released(2);
        d.out_of_budget(stream, mark);
        d.leased(stream, 10_000, &[("A".into(), 8, Vec::new(), Some(0))]);
        assert_eq!(d.pick(stream, 10, 10, 1).0.len(), 1);
    }
}
