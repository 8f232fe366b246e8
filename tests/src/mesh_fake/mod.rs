//! In-process MESH fake: a hyper 1 server on `127.0.0.1:0` with scripted faults per recipient
//! and a log of every request.
//!
//! It implements the parts of the MESH API the adapter uses: handshake, outbox send (single and
//! chunked), tracking by message id and by local id, inbox list (v2 pagination), HEAD/GET,
//! chunk download and acknowledgement, and an outage of the whole service
//! ([`MeshFake::set_unreachable`]). Every request must carry a well-formed, fresh `NHSMESH`
//! token for a registered mailbox (the HMAC is checked, and a reused nonce is refused as real
//! MESH does) and exactly `Accept: application/vnd.mesh.v2+json`.
//!
//! ```no_run
//! # async fn demo() {
//! use nems_e2e::mesh_fake::{Behaviour, MeshFake};
//! let fake = MeshFake::start().await;
//! fake.add_mailbox("NEMSSVC01", "pw");
//! fake.set_behaviour("DEADMB01", Behaviour::Dead);
//! // ... point a MeshClient at fake.base_url() ...
//! let log = fake.wait_for_requests(1, std::time::Duration::from_secs(5)).await;
//! # }
//! ```
//!
//! # Layout
//! - `mod.rs`: [`MeshFake`] (start, scripting, inspection) and the public record types.
//! - `server.rs`: the accept loop, the request router and the outbox/tracking handlers.
//! - `inbox.rs`: inbox list, download and acknowledgement.
//! - `auth.rs`: the `NHSMESH` header checks.
//! - `wire.rs`: response bodies (v2 errors), header and query parsing.

mod auth;
mod inbox;
mod server;
mod wire;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The shared HMAC key the fake expects (the sandbox's usual value).
pub const SHARED_KEY: &str = "TestKey";

/// What the fake does with a message sent to a recipient mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Store it and answer 202 (the default for any recipient).
    Accept,
    /// Answer `status` (with `Retry-After: retry_after` when given) to the next `times` sends,
    /// without storing; accept after that.
    Fail {
        /// How many sends fail.
        times: u32,
        /// The HTTP status, e.g. 429 or 503.
        status: u16,
        /// The `Retry-After` header value, e.g. `"7"` or an HTTP date.
        retry_after: Option<String>,
    },
    /// Store it, then never answer: the connection is held open until the fake stops.
    StoreThenHang,
    /// Store it, then close the connection without an answer.
    StoreThenDrop,
    /// Store nothing and never answer (an unresponsive mailbox route): the connection is
    /// held open until the client gives up or the fake stops.
    Hang,
    /// An unregistered recipient: 417 with MESH error code 12.
    Dead,
    /// Wait this long, then store and answer 202.
    Slow(Duration),
    /// Accept the first POST, but answer `status` to the next `times` chunk uploads (2..n).
    FailChunks {
        /// How many chunk uploads fail.
        times: u32,
        /// The HTTP status.
        status: u16,
    },
}

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body as received (gzip stays gzip).
    pub body: Bytes,
    /// The status answered; `None` while unanswered or when the connection was dropped.
    pub status: Option<u16>,
    /// When the request arrived (its body fully read).
    pub at: std::time::Instant,
}

/// A message held by the fake (sent through the outbox or injected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The MESH message id (32 upper-case hex digits, like the sandbox).
    pub message_id: String,
    /// `DATA` or `REPORT`.
    pub message_type: String,
    /// `uploading`, `accepted` or `acknowledged`.
    pub status: String,
    /// The authenticated sender mailbox (empty for reports).
    pub sender: String,
    /// Every `mex-*` header of the first POST (names lower-cased).
    pub mex_headers: HashMap<String, String>,
    /// `Content-Encoding` of the upload, if any.
    pub content_encoding: Option<String>,
    /// The uploaded parts as received (index 0 = chunk 1); `None` while missing.
    pub chunks: Vec<Option<Bytes>>,
}

/// A REPORT to put into a mailbox's inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeReport {
    /// The failed message's id (`mex-LinkedMsgID`).
    pub linked_message_id: String,
    /// The failed message's local id.
    pub local_id: String,
    /// The workflow id.
    pub workflow_id: String,
    /// `mex-StatusCode`, e.g. `14`.
    pub code: String,
    /// `mex-StatusDescription`.
    pub description: String,
}

/// A running fake; stops when dropped.
#[derive(Debug)]
pub struct MeshFake {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// Shared state behind the server.
#[derive(Debug)]
struct State {
    inner: Mutex<Inner>,
    /// Number of recorded requests, for [`MeshFake::wait_for_requests`].
    recorded: watch::Sender<usize>,
    /// Number of stored messages, for [`MeshFake::wait_for_messages`].
    stored: watch::Sender<usize>,
    shutdown: watch::Receiver<bool>,
}

#[derive(Debug, Default)]
struct Inner {
    passwords: HashMap<String, String>,
    behaviours: HashMap<String, Behaviour>,
    /// Messages in arrival order.
    messages: Vec<StoredMessage>,
    requests: Vec<RecordedRequest>,
    seen_nonces: HashSet<(String, String, String)>,
    page_size: Option<usize>,
    /// Leave request bodies out of the request log (benchmarks: stored messages keep theirs).
    drop_request_bodies: bool,
    /// Drop every request unanswered (see [`MeshFake::set_unreachable`]).
    unreachable: bool,
    /// The deprecated tracking-by-local-id route is gone: 404 for every method
    /// (see [`MeshFake::withdraw_local_id_tracking`]).
    local_id_tracking_withdrawn: bool,
}

// === MeshFake ===

impl MeshFake {
    /// Binds `127.0.0.1:0` and starts serving; returns once the listener is bound.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mesh fake");
        let addr = listener.local_addr().expect("mesh fake address");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let state = Arc::new(State {
            inner: Mutex::new(Inner::default()),
            recorded: watch::channel(0).0,
            stored: watch::channel(0).0,
            shutdown: shutdown_rx,
        });
        let task = tokio::spawn(server::serve(listener, Arc::clone(&state)));
        Self {
            addr,
            state,
            shutdown,
            task: Some(task),
        }
    }

    /// Returns `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns the bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers a mailbox that may authenticate (its token's HMAC is checked).
    pub fn add_mailbox(&self, mailbox: &str, password: &str) {
        self.inner()
            .passwords
            .insert(mailbox.to_ascii_uppercase(), password.to_owned());
    }

    /// Scripts what happens to messages sent to `recipient`.
    pub fn set_behaviour(&self, recipient: &str, behaviour: Behaviour) {
        self.inner()
            .behaviours
            .insert(recipient.to_ascii_uppercase(), behaviour);
    }

    /// While `true`, every request (any mailbox, any path) is recorded and its connection
    /// closed without an answer, as when MESH's front end has lost its back ends: clients see
    /// the connection drop and nothing is stored. `false` answers normally again.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.inner().unreachable = unreachable;
    }

    /// Withdraws (`true`) or restores the deprecated `GET …/outbox/tracking/{local_id}` route:
    /// while withdrawn it answers 404 whatever the method, like a route that no longer exists
    /// (while present, another method gets 405).
    pub fn withdraw_local_id_tracking(&self, withdrawn: bool) {
        self.inner().local_id_tracking_withdrawn = withdrawn;
    }

    /// Sets the tracking status of a stored message, as MESH does when it gives up on one
    /// (`undeliverable`, `error`); returns false when no message has that id.
    pub fn set_message_status(&self, message_id: &str, status: &str) -> bool {
        let mut inner = self.inner();
        match inner
            .messages
            .iter_mut()
            .find(|m| m.message_id == message_id)
        {
            Some(message) => {
                message.status = status.to_owned();
                true
            }
            None => false,
        }
    }

    /// Keeps request bodies out of [`MeshFake::requests`] (stored messages keep their
    /// payloads), so a benchmark's request log stays small.
    pub fn drop_request_bodies(&self) {
        self.inner().drop_request_bodies = true;
    }

    /// Returns how many messages are stored, without copying them.
    pub fn message_count(&self) -> usize {
        self.inner().messages.len()
    }

    /// Sets the default inbox page size (MESH's is 500) to exercise pagination.
    pub fn set_inbox_page_size(&self, size: usize) {
        self.inner().page_size = Some(size);
    }

    /// Puts a REPORT into `mailbox`'s inbox; returns the report's message id.
    pub fn inject_report(&self, mailbox: &str, report: &FakeReport) -> String {
        let message_id = new_message_id();
        let mex_headers = [
            ("mex-to", mailbox.to_ascii_uppercase()),
            ("mex-workflowid", report.workflow_id.clone()),
            ("mex-localid", report.local_id.clone()),
            ("mex-linkedmsgid", report.linked_message_id.clone()),
            ("mex-statuscode", report.code.clone()),
            ("mex-statusdescription", report.description.clone()),
            ("mex-statusevent", "SEND".to_owned()),
            ("mex-statussuccess", "ERROR".to_owned()),
            ("mex-subject", "NDR".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        self.inner().messages.push(StoredMessage {
            message_id: message_id.clone(),
            message_type: "REPORT".to_owned(),
            status: "accepted".to_owned(),
            sender: String::new(),
            mex_headers,
            content_encoding: None,
            chunks: Vec::new(),
        });
        self.bump_stored();
        message_id
    }

    /// Puts a DATA message into `mailbox`'s inbox; returns its message id.
    pub fn inject_data(
        &self,
        mailbox: &str,
        from: &str,
        workflow_id: &str,
        payload: &[u8],
    ) -> String {
        let message_id = new_message_id();
        let mex_headers = [
            ("mex-to", mailbox.to_ascii_uppercase()),
            ("mex-from", from.to_ascii_uppercase()),
            ("mex-workflowid", workflow_id.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        self.inner().messages.push(StoredMessage {
            message_id: message_id.clone(),
            message_type: "DATA".to_owned(),
            status: "accepted".to_owned(),
            sender: from.to_ascii_uppercase(),
            mex_headers,
            content_encoding: None,
            chunks: vec![Some(Bytes::copy_from_slice(payload))],
        });
        self.bump_stored();
        message_id
    }

    /// Returns every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner().requests.clone()
    }

    /// Returns the sends so far (`POST …/outbox`, chunk uploads excluded).
    pub fn sends(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(RecordedRequest::is_send)
            .collect()
    }

    /// Waits until at least `count` requests have arrived; panics after `timeout`.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let mut recorded = self.state.recorded.subscribe();
        let waited = tokio::time::timeout(timeout, recorded.wait_for(|n| *n >= count)).await;
        match waited {
            Ok(Ok(_)) => self.requests(),
            _ => panic!(
                "mesh fake: expected {count} requests within {timeout:?}, got {:#?}",
                self.requests()
                    .iter()
                    .map(|r| format!("{} {} -> {:?}", r.method, r.path, r.status))
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// Waits until at least `count` messages are stored (sent or injected); panics after
    /// `timeout`.
    pub async fn wait_for_messages(&self, count: usize, timeout: Duration) -> Vec<StoredMessage> {
        let mut stored = self.state.stored.subscribe();
        let waited = tokio::time::timeout(timeout, stored.wait_for(|n| *n >= count)).await;
        match waited {
            Ok(Ok(_)) => self.messages(),
            _ => panic!(
                "mesh fake: expected {count} stored messages within {timeout:?}, got {}",
                self.messages().len()
            ),
        }
    }

    /// Returns every stored message (sent or injected), in arrival order.
    pub fn messages(&self) -> Vec<StoredMessage> {
        self.inner().messages.clone()
    }

    /// Returns the stored messages addressed to `mailbox`.
    pub fn messages_to(&self, mailbox: &str) -> Vec<StoredMessage> {
        let mailbox = mailbox.to_ascii_uppercase();
        self.messages()
            .into_iter()
            .filter(|m| m.to() == mailbox)
            .collect()
    }

    /// Returns a stored message by id.
    pub fn message(&self, message_id: &str) -> Option<StoredMessage> {
        self.messages()
            .into_iter()
            .find(|m| m.message_id.eq_ignore_ascii_case(message_id))
    }

    /// Stops the server and waits for its accept loop.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.await.expect("mesh fake accept loop");
        }
    }

    fn bump_stored(&self) {
        let stored = self.inner().messages.len();
        self.state.stored.send_replace(stored);
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().expect("mesh fake state")
    }
}

impl Drop for MeshFake {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// === RecordedRequest ===

impl RecordedRequest {
    /// Returns a header by name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Returns true for a first send (`POST /messageexchange/{mb}/outbox`).
    pub fn is_send(&self) -> bool {
        self.method == "POST"
            && self
                .path
                .split('?')
                .next()
                .is_some_and(|p| p.ends_with("/outbox"))
    }
}

// === StoredMessage ===

impl StoredMessage {
    /// Returns the recipient mailbox.
    pub fn to(&self) -> &str {
        self.mex_header("mex-to").unwrap_or("")
    }

    /// Returns a `mex-*` header of the first POST (case-insensitive).
    pub fn mex_header(&self, name: &str) -> Option<&str> {
        self.mex_headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Returns the payload: all parts joined, each gunzipped when uploaded gzipped.
    pub fn payload(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        for part in self.chunks.iter().flatten() {
            payload.extend(decode_part(self.content_encoding.as_deref(), part));
        }
        payload
    }

    fn total_chunks(&self) -> usize {
        self.chunks.len()
    }
}

fn decode_part(encoding: Option<&str>, part: &[u8]) -> Vec<u8> {
    if encoding.is_some_and(|e| e.eq_ignore_ascii_case("gzip")) {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(part)
            .read_to_end(&mut plain)
            .expect("fake: stored gzip part decodes");
        plain
    } else {
        part.to_vec()
    }
}

fn new_message_id() -> String {
    uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .to_ascii_uppercase()
}
