//! Tracking sent messages: by message id (`GET …/outbox/tracking?messageID=`) and by our
//! `mex-LocalID` (the deprecated `GET …/outbox/tracking/{local_id}`), which is how an
//! ambiguous send is reconciled.
//!
//! What the sandbox (1.0.137) answers on the local-id endpoint, from its source and tests:
//! 200 with a v1 (camelCase) body whatever `Accept` says, 404 when no message of ours carries
//! the id, 300 when several do.

use http::Method;
use http_body_util::Full;
use serde_json::Value;

use super::client::{MeshClient, encode_component};
use crate::error::DeliveryError;

/// The error code for a local id that matches several sent messages (HTTP 300).
pub const LOCAL_ID_NOT_UNIQUE: &str = "LOCAL_ID_NOT_UNIQUE";

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
        self.status.as_deref() == Some("uploading")
    }
}

// === MeshClient: tracking ===

impl MeshClient {
    /// Finds the message we sent with this `mex-LocalID`.
    ///
    /// Returns `Ok(None)` when there is none (404). Several matches (300) are a
    /// [`DeliveryError::Permanent`] with code [`LOCAL_ID_NOT_UNIQUE`].
    pub async fn track_by_local_id(
        &self,
        local_id: &str,
    ) -> Result<Option<Tracked>, DeliveryError> {
        let path = self.mailbox_path(&format!("/outbox/tracking/{}", encode_component(local_id)));
        self.track_at(&path, true).await
    }

    /// Returns the tracking record of a message we sent, or `None` when MESH does not know it.
    pub async fn track(&self, message_id: &str) -> Result<Option<Tracked>, DeliveryError> {
        let path = self.mailbox_path(&format!(
            "/outbox/tracking?messageID={}",
            encode_component(message_id)
        ));
        self.track_at(&path, false).await
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
        assert_eq!(Tracked::parse(b"oops"), None);
    }
}
