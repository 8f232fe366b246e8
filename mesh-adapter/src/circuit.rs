//! The circuit breaker of the MESH endpoint.
//!
//! A failure of the endpoint as a whole (connection refused, 5xx, timeouts; see
//! [`crate::metrics::means_unreachable`]) is not a failure of each message. When an attempt
//! fails that way and nothing has answered since it started, the circuit confirms with a probe
//! (the MESH handshake): if the probe fails, the circuit **opens**. While it is open the pump
//! takes no deliveries (it closes its stream, so core gives the leases back at once) and
//! reports the attempts that were under way as *deferred*, which costs them neither a failure
//! nor retry time; a background task probes on a capped backoff, and the first answer
//! **closes** the circuit, after which the pump reopens its stream and core hands the backlog
//! out at once, in mailbox readiness order within the in-flight limits.
//!
//! A failure while something else answered after the attempt started (another mailbox's send
//! went through, or a probe succeeded) is a per-message failure: it keeps its own backoff, so
//! one dead mailbox never stops the others. A successful probe is trusted for
//! [`CircuitSettings::probe_valid`], which keeps the handshakes MESH asks to be rare from
//! following each retry of one failing mailbox.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// A probe of the endpoint: `true` when it answered.
pub type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// How the circuit probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitSettings {
    /// Delay before the first probe after opening; doubles after each failed probe.
    pub probe_initial: Duration,
    /// Longest delay between probes while open.
    pub probe_max: Duration,
    /// How long a successful probe counts as the endpoint answering.
    pub probe_valid: Duration,
}

impl Default for CircuitSettings {
    /// Returns 250 ms initial, 5 s cap, 30 s validity.
    fn default() -> Self {
        Self {
            probe_initial: Duration::from_millis(250),
            probe_max: Duration::from_secs(5),
            probe_valid: Duration::from_secs(30),
        }
    }
}

/// What an endpoint-class failure turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The endpoint answers: the failure belongs to this message (retry with backoff).
    Message,
    /// The endpoint is down (the circuit is open): defer the delivery.
    Endpoint,
}

#[derive(Debug, Default)]
struct State {
    /// When the circuit opened; `None` while closed.
    open_since: Option<Instant>,
    /// The last answer from the endpoint (a send, a refusal, a probe).
    last_answer: Option<Instant>,
    /// The last successful probe.
    last_probe_ok: Option<Instant>,
    /// Times the circuit opened: a probe loop ends when the circuit it was started for
    /// closed, even if the circuit has opened again since (which starts a loop of its own).
    opened: u64,
}

/// The circuit of one MESH endpoint, shared by the pump's delivery tasks.
pub struct Circuit {
    state: Mutex<State>,
    /// `true` while open; the pump watches it.
    open: watch::Sender<bool>,
    /// Serialises confirmations, so concurrent failures share one probe.
    confirming: tokio::sync::Mutex<()>,
    probe: Probe,
    settings: CircuitSettings,
}

impl std::fmt::Debug for Circuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Circuit")
            .field("open", &*self.open.borrow())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

// === Circuit ===

impl Circuit {
    /// Returns a closed circuit that probes with `probe`.
    pub fn new(probe: Probe, settings: CircuitSettings) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            open: watch::channel(false).0,
            confirming: tokio::sync::Mutex::new(()),
            probe,
            settings,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// True while the circuit is open.
    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// How long the circuit has been open, if it is.
    pub fn open_for(&self) -> Option<Duration> {
        self.with(|s| s.open_since.map(|t| t.elapsed()))
    }

    /// A receiver of the open (`true`) / closed (`false`) state.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.open.subscribe()
    }

    /// Notes an answer from the endpoint (a send accepted, refused or throttled); closes the
    /// circuit if it was open.
    pub fn note_answer(&self) {
        let now = Instant::now();
        let was_open = self.with(|s| {
            s.last_answer = Some(now);
            s.open_since.take().is_some()
        });
        if was_open {
            self.close_now();
        }
    }

    /// Classifies an endpoint-class failure of an attempt that started at `started`.
    pub async fn endpoint_failed(self: &Arc<Self>, started: Instant) -> Verdict {
        if let Some(verdict) = self.known(started) {
            return verdict;
        }
        let _one_probe = self.confirming.lock().await;
        if let Some(verdict) = self.known(started) {
            return verdict;
        }
        let answered = (self.probe)().await;
        crate::metrics::record_probe(answered);
        if answered {
            let now = Instant::now();
            self.with(|s| {
                s.last_answer = Some(now);
                s.last_probe_ok = Some(now);
            });
            Verdict::Message
        } else {
            self.trip();
            Verdict::Endpoint
        }
    }

    /// The verdict when it is already known without a probe.
    fn known(&self, started: Instant) -> Option<Verdict> {
        let valid = self.settings.probe_valid;
        self.with(|s| {
            if s.open_since.is_some() {
                Some(Verdict::Endpoint)
            } else if s.last_answer.is_some_and(|t| t > started)
                || s.last_probe_ok.is_some_and(|t| t.elapsed() < valid)
            {
                Some(Verdict::Message)
            } else {
                None
            }
        })
    }

    /// Opens the circuit and starts probing it.
    fn trip(self: &Arc<Self>) {
        let opened = self.with(|s| {
            if s.open_since.is_some() {
                return None;
            }
            s.open_since = Some(Instant::now());
            s.opened += 1;
            Some(s.opened)
        });
        let Some(generation) = opened else {
            return;
        };
        tracing::warn!("mesh endpoint unavailable: circuit open, deliveries held until it answers");
        crate::metrics::set_circuit(true);
        self.open.send_replace(true);
        let circuit = Arc::clone(self);
        tokio::spawn(async move { circuit.probe_until_closed(generation).await });
    }

    fn close_now(&self) {
        let open_for = self.with(|s| {
            s.last_probe_ok = s.last_answer;
            s.open_since.take()
        });
        if self.open.send_replace(false) {
            tracing::info!(
                open_ms = open_for.map_or(0, |t| t.elapsed().as_millis() as u64),
                "mesh endpoint answers again: circuit closed, releasing the backlog"
            );
            crate::metrics::set_circuit(false);
        }
    }

    /// True while the circuit is open since its `generation`-th opening.
    fn open_since_opening(&self, generation: u64) -> bool {
        self.with(|s| s.open_since.is_some() && s.opened == generation)
    }

    async fn probe_until_closed(self: Arc<Self>, generation: u64) {
        let mut delay = self.settings.probe_initial;
        while self.open_since_opening(generation) {
            tokio::time::sleep(delay).await;
            if !self.open_since_opening(generation) {
                break;
            }
            let answered = (self.probe)().await;
            crate::metrics::record_probe(answered);
            if answered {
                self.note_answer();
                break;
            }
            delay = (delay * 2).min(self.settings.probe_max);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;

    struct Endpoint {
        up: AtomicBool,
        probes: AtomicU32,
    }

    fn circuit(settings: CircuitSettings) -> (Arc<Circuit>, Arc<Endpoint>) {
        let endpoint = Arc::new(Endpoint {
            up: AtomicBool::new(false),
            probes: AtomicU32::new(0),
        });
        let e = endpoint.clone();
        let probe: Probe = Arc::new(move || {
            let e = e.clone();
            Box::pin(async move {
                e.probes.fetch_add(1, Ordering::SeqCst);
                e.up.load(Ordering::SeqCst)
            })
        });
        (Circuit::new(probe, settings), endpoint)
    }

    fn fast() -> CircuitSettings {
        CircuitSettings {
            probe_initial: Duration::from_millis(1),
            probe_max: Duration::from_millis(4),
            probe_valid: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn a_failed_probe_opens_and_a_later_answer_closes() {
        let (circuit, endpoint) = circuit(fast());
        let mut open = circuit.watch();
        let started = Instant::now();
        assert_eq!(circuit.endpoint_failed(started).await, Verdict::Endpoint);
        assert!(circuit.is_open());
        assert!(circuit.open_for().is_some());
        // Further failures while open need no probe of their own.
        let probes = endpoint.probes.load(Ordering::SeqCst);
        assert_eq!(circuit.endpoint_failed(started).await, Verdict::Endpoint);
        assert!(endpoint.probes.load(Ordering::SeqCst) <= probes + 1);
        // The endpoint comes back: the background probe closes the circuit.
        endpoint.up.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(5), open.wait_for(|o| !*o))
            .await
            .expect("closed by a probe")
            .unwrap();
        assert!(!circuit.is_open());
        assert_eq!(circuit.open_for(), None);
    }

    #[tokio::test]
    async fn an_answer_after_the_attempt_started_makes_it_a_message_failure() {
        let (circuit, endpoint) = circuit(fast());
        let started = Instant::now();
        circuit.note_answer();
        assert_eq!(circuit.endpoint_failed(started).await, Verdict::Message);
        assert_eq!(endpoint.probes.load(Ordering::SeqCst), 0, "no probe needed");
        assert!(!circuit.is_open());
    }

    #[tokio::test]
    async fn a_successful_probe_is_trusted_for_a_while() {
        let (circuit, endpoint) = circuit(fast());
        endpoint.up.store(true, Ordering::SeqCst);
        assert_eq!(
            circuit.endpoint_failed(Instant::now()).await,
            Verdict::Message
        );
        assert_eq!(endpoint.probes.load(Ordering::SeqCst), 1);
        // A later failure (one dead mailbox retrying) does not handshake again.
        assert_eq!(
            circuit.endpoint_failed(Instant::now()).await,
            Verdict::Message
        );
        assert_eq!(endpoint.probes.load(Ordering::SeqCst), 1);
        // Past the validity it probes again.
        let (circuit, endpoint) = circuit_with_validity(Duration::ZERO);
        endpoint.up.store(true, Ordering::SeqCst);
        circuit.endpoint_failed(Instant::now()).await;
        circuit.endpoint_failed(Instant::now()).await;
        assert_eq!(endpoint.probes.load(Ordering::SeqCst), 2);
    }

    fn circuit_with_validity(valid: Duration) -> (Arc<Circuit>, Arc<Endpoint>) {
        circuit(CircuitSettings {
            probe_valid: valid,
            ..fast()
        })
    }

    #[tokio::test]
    async fn concurrent_failures_share_one_probe() {
        let (circuit, endpoint) = circuit(CircuitSettings {
            probe_initial: Duration::from_secs(3600),
            ..fast()
        });
        let started = Instant::now();
        let verdicts = futures_join(
            (0..16)
                .map(|_| {
                    let c = circuit.clone();
                    tokio::spawn(async move { c.endpoint_failed(started).await })
                })
                .collect(),
        )
        .await;
        assert!(verdicts.iter().all(|v| *v == Verdict::Endpoint));
        assert_eq!(endpoint.probes.load(Ordering::SeqCst), 1);
    }

    async fn futures_join(tasks: Vec<tokio::task::JoinHandle<Verdict>>) -> Vec<Verdict> {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn an_answer_while_open_closes_at_once() {
        let (circuit, _endpoint) = circuit(CircuitSettings {
            probe_initial: Duration::from_secs(3600),
            ..fast()
        });
        circuit.endpoint_failed(Instant::now()).await;
        assert!(circuit.is_open());
        circuit.note_answer();
        assert!(!circuit.is_open());
    }
}
