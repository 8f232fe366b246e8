//! Tracking sent messages: by message id (`GET …/outbox/tracking?messageID=`) and by our
//! `mex-LocalID` (the deprecated `GET …/outbox/tracking/{local_id}`), which is how an
//! ambiguous send is reconciled.
//!
//! What the sandbox (1.0.137) answers on the local-id endpoint, from its source and tests:
//! 200 with a v1 (camelCase) body whatever `Accept` says, 404 when no message of ours carries
//! the id, 300 when several do.

use std::time::{Duration, Instant};

use http::Method;
use http_body_util::Full;
use serde_json::Value;
use tracing::warn;

use super::client::{MeshClient, encode_component};
use crate::error::DeliveryError;

/// The error code for a local id that matches several sent messages (HTTP 300).
pub const LOCAL_ID_NOT_UNIQUE: &str = "LOCAL_ID_NOT_UNIQUE";

/// The error code of a local-id lookup whose `404` could not be told from the deprecated
/// tracking route being gone: not "no such message", so never a reason to send again.
pub const LOCAL_ID_ROUTE_UNCONFIRMED: &str = "LOCAL_ID_ROUTE_UNCONFIRMED";

/// How long an answer showing that the local-id route exists is trusted.
const ROUTE_CONFIRMED_FOR: Duration = Duration::from_secs(10 * 60);

/// What MESH knows about a message we sent (v1 and v2 tracking bodies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracked {
    /// The MESH message id.
    pub message_id: String,
    /// Our `mex-LocalID`.
    pub local_id: Option<String>,
    /// `uploading` (chunks missing), `accepted`, `acknowledged`, `undeliverable`, `error`, ...
    /// lower-cased.
    pub status: Option<String>,
    /// The recipient mailbox.
    pub recipient: Option<String>,
    /// The workflow id.
    pub workflow_id: Option<String>,
    /// The status code, when MESH reported an error.
    pub status_code: Option<String>,
    /// The status description.
    pub status_description: Option<String>,
}

/// What an earlier copy's tracking status says about sending again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackedState {
    /// MESH accepted it (`accepted`) or the recipient downloaded it (`acknowledged`): it was
    /// sent, do not send again.
    Sent,
    /// A chunked upload never completed (`uploading`): never delivered, send a new copy.
    Incomplete,
    /// MESH gave up on it (`undeliverable`, `error`, `expired`, ...): it will never be
    /// received, send a new copy.
    Failed,
    /// No status in the answer: cannot tell, do not send blindly.
    Unknown,
}

// === Tracked ===

impl Tracked {
    /// Parses a tracking body; `None` without a message id.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let json: Value = serde_json::from_slice(body).ok()?;
        let field = |keys: &[&str]| {
            keys.iter()
                .find_map(|key| json.get(*key).and_then(Value::as_str))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Some(Self {
            message_id: field(&["message_id", "messageId", "dtsId"])?,
            local_id: field(&["local_id", "localId"]),
            status: field(&["status"]).map(|s| s.to_ascii_lowercase()),
            recipient: field(&["recipient"]),
            workflow_id: field(&["workflow_id", "workflowId"]),
            status_code: field(&["status_code", "statusCode"]),
            status_description: field(&["status_description", "statusDescription"]),
        })
    }

    /// Returns true while a chunked upload is incomplete: the message was never delivered.
    pub fn is_incomplete(&self) -> bool {
        self.state() == TrackedState::Incomplete
    }

    /// Classifies the status: only a message MESH accepted or acknowledged counts as sent.
    pub fn state(&self) -> TrackedState {
        match self.status.as_deref() {
            Some("accepted" | "acknowledged") => TrackedState::Sent,
            Some("uploading") => TrackedState::Incomplete,
            Some(_) => TrackedState::Failed,
            None => TrackedState::Unknown,
        }
    }
}

/// What the client knows about the deprecated local-id tracking route: whether it was seen
/// to exist lately, and a local id MESH accepted from us (to ask about when unsure).
#[derive(Debug, Default)]
pub(crate) struct RouteState {
    confirmed_at: Option<Instant>,
    known_local_id: Option<String>,
}

/// What a probe of the local-id route found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Exists,
    Gone,
    Unknown,
}

// === MeshClient: tracking ===

impl MeshClient {
    /// Finds the message we sent with this `mex-LocalID`.
    ///
    /// Returns `Ok(None)` only when MESH has no such message: a `404` counts as that once the
    /// route itself is known to exist (it answered a lookup lately, a lookup of a local id
    /// MESH accepted from us found it, or it answers another method with `405`). A `404` that
    /// may mean the deprecated route is gone is a [`DeliveryError::Transient`] with code
    /// [`LOCAL_ID_ROUTE_UNCONFIRMED`]. Several matches (300) are a
    /// [`DeliveryError::Permanent`] with code [`LOCAL_ID_NOT_UNIQUE`].
    pub async fn track_by_local_id(
        &self,
        local_id: &str,
    ) -> Result<Option<Tracked>, DeliveryError> {
        match self.track_at(&self.local_id_path(local_id), true).await? {
            Some(tracked) => {
                self.note_route(Some(local_id));
                Ok(Some(tracked))
            }
            None => match self.local_id_route(local_id).await {
                Route::Exists => Ok(None),
                Route::Gone | Route::Unknown => Err(DeliveryError::transient(
                    LOCAL_ID_ROUTE_UNCONFIRMED,
                    "tracking by local id answered 404 and the route could not be confirmed \
                     to exist (it may have been withdrawn); not sending again blindly",
                )),
            },
        }
    }

    /// Notes that MESH accepted a message with this local id (the route probe asks for it).
    pub(crate) fn remember_accepted(&self, local_id: &str) {
        if let Ok(mut route) = self.local_id_route_state().lock() {
            route.known_local_id = Some(local_id.to_owned());
        }
    }

    /// Returns the tracking record of a message we sent, or `None` when MESH does not know it.
    pub async fn track(&self, message_id: &str) -> Result<Option<Tracked>, DeliveryError> {
        let path = self.mailbox_path(&format!(
            "/outbox/tracking?messageID={}",
            encode_component(message_id)
        ));
        self.track_at(&path, false).await
    }

    fn local_id_path(&self, local_id: &str) -> String {
        self.mailbox_path(&format!("/outbox/tracking/{}", encode_component(local_id)))
    }

    fn note_route(&self, known: Option<&str>) {
        if let Ok(mut route) = self.local_id_route_state().lock() {
            route.confirmed_at = Some(Instant::now());
            if let Some(known) = known {
                route.known_local_id = Some(known.to_owned());
            }
        }
    }

    /// Decides whether the local-id route exists after it answered `404` for `asked`.
    async fn local_id_route(&self, asked: &str) -> Route {
        let (confirmed, known) = match self.local_id_route_state().lock() {
            Ok(route) => (
                route
                    .confirmed_at
                    .is_some_and(|t| t.elapsed() < ROUTE_CONFIRMED_FOR),
                route.known_local_id.clone(),
            ),
            Err(_) => (false, None),
        };
        if confirmed {
            return Route::Exists;
        }
        // A message MESH accepted from us must be found; if it is not, the route is gone
        // (or MESH deleted it after its 30 days, which the method probe below settles).
        if let Some(known) = known.filter(|k| k != asked) {
            match self.track_at(&self.local_id_path(&known), true).await {
                Ok(Some(_)) | Err(DeliveryError::Permanent { .. }) => {
                    self.note_route(None);
                    return Route::Exists;
                }
                Ok(None) => {}
                Err(_) => return Route::Unknown,
            }
        }
        // A route that exists answers a method it does not serve with 405 (RFC 9110
        // §15.5.6); a withdrawn one answers 404 whatever the method. PUT, because POST to
        // `outbox/{id}/{n}` is MESH's chunk upload; any answer but 405 leaves the route in
        // doubt, the safe side (a later send of a new delivery names a known local id).
        let probe = self
            .request(Method::PUT, &self.local_id_path(asked))
            .body(Full::default());
        let route = match self.execute(probe).await {
            Ok(response) if response.status.as_u16() == 405 => Route::Exists,
            Ok(response) if response.status.as_u16() == 404 => Route::Gone,
            Ok(_) | Err(_) => Route::Unknown,
        };
        match route {
            Route::Exists => self.note_route(None),
            Route::Gone => warn!(
                "mesh answers 404 for tracking by local id, also for a method probe: the \
                 deprecated route looks withdrawn; deliveries needing reconciliation wait"
            ),
            Route::Unknown => {}
        }
        route
    }

    async fn track_at(
        &self,
        path: &str,
        by_local_id: bool,
    ) -> Result<Option<Tracked>, DeliveryError> {
        let request = self.request(Method::GET, path).body(Full::default());
        let response = self.execute(request).await?;
        match response.status.as_u16() {
            404 => return Ok(None),
            300 if by_local_id => {
                self.note_route(None);
                return Err(DeliveryError::permanent(
                    LOCAL_ID_NOT_UNIQUE,
                    "several sent messages carry this local id",
                ));
            }
            _ => {}
        }
        let response = self.check(response)?;
        Tracked::parse(&response.body).map(Some).ok_or_else(|| {
            DeliveryError::transient("INVALID_RESPONSE", "tracking answer without a message id")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_bodies() {
        let v1 = br#"{"dtsId":"ID1","messageId":"ID1","localId":"L1","status":"Accepted","recipient":"X26ABC2","workflowId":"WF","statusCode":null}"#;
        let tracked = Tracked::parse(v1).unwrap();
        assert_eq!(tracked.message_id, "ID1");
        assert_eq!(tracked.local_id.as_deref(), Some("L1"));
        assert_eq!(tracked.status.as_deref(), Some("accepted"));
        assert_eq!(tracked.workflow_id.as_deref(), Some("WF"));
        assert!(!tracked.is_incomplete());
        let v2 =
            br#"{"message_id":"ID2","local_id":"L2","status":"uploading","status_success":true}"#;
        let tracked = Tracked::parse(v2).unwrap();
        assert_eq!(tracked.message_id, "ID2");
        assert!(tracked.is_incomplete());
        assert_eq!(Tracked::parse(br#"{"status":"accepted"}"#), None);
    }

    #[test]
    fn only_accepted_or_acknowledged_counts_as_sent() {
        let with = |status: Option<&str>| Tracked {
            message_id: "M".into(),
            status: status.map(str::to_owned),
            ..Tracked::default()
        };
        assert_eq!(with(Some("accepted")).state(), TrackedState::Sent);
        assert_eq!(with(Some("acknowledged")).state(), TrackedState::Sent);
        assert_eq!(with(Some("uploading")).state(), TrackedState::Incomplete);
        for failed in ["undeliverable", "error", "expired", "rejected"] {
            assert_eq!(with(Some(failed)).state(), TrackedState::Failed, "{failed}");
        }
        assert_eq!(with(None).state(), TrackedState::Unknown);
        // Case as MESH's v1 bodies spell it.
        let v1 = br#"{"messageId":"M","status":"Undeliverable","statusCode":"14"}"#;
        assert_eq!(Tracked::parse(v1).unwrap().state(), TrackedState::Failed);
        assert_eq!(Tracked::parse(b"oops"), None);
    }
}
