//! The MESH sink: sends each delivery to MESH with the MESH client.
//!
//! `POST /outbox` is not idempotent, so the sink never resends blindly:
//! - on a repeated attempt (`attempt > 1`) it first asks MESH whether an earlier attempt already
//!   created the message (tracking by `mex-LocalID`, which is the stable delivery local id);
//! - when a send ends ambiguously (timeout or dropped connection after the request was
//!   written) it reconciles the same way, and asks for a retry only when MESH has no copy.
//!
//! Headers follow `shared/spec/decisions.md` §21; subject and file name carry no patient data.

use nems_proto::v1 as pb;
use tracing::{info, warn};

use super::{Sink, SinkOutcome};
use crate::error::DeliveryError;
use crate::mesh::{LOCAL_ID_NOT_UNIQUE, MeshClient, OutboundMessage, TrackedState};
use crate::metrics::TRACKING_PREFIX;

/// `mex-Content-Type` of every NEMS delivery.
pub const CONTENT_TYPE: &str = "application/fhir+xml";

/// The `SinkOutcome::Retry` code after an ambiguous send that tracking could not confirm.
pub const AMBIGUOUS: &str = "AMBIGUOUS";

/// Delivers to MESH through one [`MeshClient`] (our own mailbox is the sender).
#[derive(Debug, Clone)]
pub struct MeshSink {
    client: MeshClient,
}

/// What tracking said about an earlier attempt.
enum Reconciled {
    /// MESH holds the message: it was sent.
    Found(String),
    /// MESH holds no (complete) copy: safe to send.
    Absent,
    /// We could not find out: report this outcome instead of sending.
    Unknown(SinkOutcome),
}

// === MeshSink ===

impl MeshSink {
    /// Returns a sink sending through `client`.
    pub fn new(client: MeshClient) -> Self {
        Self { client }
    }

    /// Returns the client.
    pub fn client(&self) -> &MeshClient {
        &self.client
    }

    async fn send(&self, delivery: &pb::Delivery) -> SinkOutcome {
        if delivery.attempt > 1 {
            match self.reconcile(delivery).await {
                Reconciled::Found(message_id) => {
                    info!(
                        delivery_id = delivery.delivery_id,
                        attempt = delivery.attempt,
                        mailbox = %delivery.mailbox,
                        message_id = %message_id,
                        "mesh already holds an earlier attempt; not resending"
                    );
                    return SinkOutcome::Sent { message_id };
                }
                Reconciled::Absent => {}
                Reconciled::Unknown(outcome) => return outcome,
            }
        }
        let failure = match self.client.send(&outbound(delivery)).await {
            Ok(message_id) => {
                self.client.remember_accepted(&delivery.local_id);
                info!(
                    delivery_id = delivery.delivery_id,
                    attempt = delivery.attempt,
                    mailbox = %delivery.mailbox,
                    message_id = %message_id,
                    "mesh send accepted"
                );
                return SinkOutcome::Sent { message_id };
            }
            Err(failure) => failure,
        };
        warn!(
            delivery_id = delivery.delivery_id,
            attempt = delivery.attempt,
            mailbox = %delivery.mailbox,
            code = failure.code(),
            reason = failure.reason(),
            "mesh send failed"
        );
        match failure {
            DeliveryError::Transient {
                code,
                reason,
                retry_after,
            } => SinkOutcome::Retry {
                code,
                reason,
                retry_after,
            },
            DeliveryError::Permanent { code, reason } => SinkOutcome::Refused { code, reason },
            DeliveryError::Ambiguous { code, reason } => match self.reconcile(delivery).await {
                Reconciled::Found(message_id) => {
                    info!(
                        delivery_id = delivery.delivery_id,
                        message_id = %message_id,
                        "ambiguous mesh send reconciled: message exists"
                    );
                    SinkOutcome::Sent { message_id }
                }
                Reconciled::Absent | Reconciled::Unknown(_) => SinkOutcome::Retry {
                    code: AMBIGUOUS.to_owned(),
                    reason: format!("{code}: {reason}; no copy found in mesh tracking yet"),
                    retry_after: None,
                },
            },
        }
    }

    /// Asks MESH whether a message with this delivery's local id exists. Only a copy MESH
    /// accepted or acknowledged counts as sent: one it reported undeliverable, errored or
    /// expired will never be received, so a new copy goes (its report dead-letters only the
    /// copy it names).
    async fn reconcile(&self, delivery: &pb::Delivery) -> Reconciled {
        match self.client.track_by_local_id(&delivery.local_id).await {
            Ok(Some(tracked)) => match tracked.state() {
                TrackedState::Sent => Reconciled::Found(tracked.message_id),
                TrackedState::Incomplete => {
                    warn!(
                        delivery_id = delivery.delivery_id,
                        message_id = %tracked.message_id,
                        "earlier chunked upload is incomplete; sending a new copy"
                    );
                    Reconciled::Absent
                }
                TrackedState::Failed => {
                    warn!(
                        delivery_id = delivery.delivery_id,
                        message_id = %tracked.message_id,
                        status = tracked.status.as_deref().unwrap_or(""),
                        status_code = tracked.status_code.as_deref().unwrap_or(""),
                        "mesh gave up on the earlier copy; sending a new copy"
                    );
                    Reconciled::Absent
                }
                TrackedState::Unknown => {
                    warn!(
                        delivery_id = delivery.delivery_id,
                        message_id = %tracked.message_id,
                        "mesh tracking gave no status for the earlier copy; not sending blindly"
                    );
                    Reconciled::Unknown(SinkOutcome::Retry {
                        code: format!("{TRACKING_PREFIX}NO_STATUS"),
                        reason: "tracking answer without a status".to_owned(),
                        retry_after: None,
                    })
                }
            },
            Ok(None) => Reconciled::Absent,
            Err(DeliveryError::Permanent { code, reason }) if code == LOCAL_ID_NOT_UNIQUE => {
                warn!(
                    delivery_id = delivery.delivery_id,
                    mailbox = %delivery.mailbox,
                    "several mesh messages carry this local id; not sending another"
                );
                Reconciled::Unknown(SinkOutcome::Refused { code, reason })
            }
            Err(failure) => {
                warn!(
                    delivery_id = delivery.delivery_id,
                    code = failure.code(),
                    reason = failure.reason(),
                    "mesh tracking failed; not sending blindly"
                );
                Reconciled::Unknown(SinkOutcome::Retry {
                    code: format!("{TRACKING_PREFIX}{}", failure.code()),
                    reason: failure.reason().to_owned(),
                    retry_after: failure.retry_after(),
                })
            }
        }
    }
}

impl Sink for MeshSink {
    fn deliver(
        &self,
        delivery: &pb::Delivery,
    ) -> impl std::future::Future<Output = SinkOutcome> + Send {
        self.send(delivery)
    }
}

/// Builds the MESH message for a delivery (`shared/spec/decisions.md` §21).
pub fn outbound(delivery: &pb::Delivery) -> OutboundMessage {
    OutboundMessage {
        to: delivery.mailbox.clone(),
        workflow_id: delivery.workflow_id.clone(),
        local_id: delivery.local_id.clone(),
        partner_id: Some(delivery.partner_id.clone()).filter(|p| !p.is_empty()),
        subject: Some(format!("NEMS {}", delivery.event_code)),
        file_name: Some(format!("{}.xml", delivery.local_id)),
        content_type: Some(CONTENT_TYPE.to_owned()),
        payload: delivery.payload.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_headers_follow_the_decisions() {
        let delivery = pb::Delivery {
            delivery_id: 7,
            attempt: 1,
            local_id: "d-7".into(),
            event_id: "evt".into(),
            event_code: "pds-change-of-address-1".into(),
            mailbox: "X26ABC2".into(),
            workflow_id: "NEMS_WF".into(),
            partner_id: String::new(),
            payload: b"<Bundle/>".to_vec().into(),
            ..Default::default()
        };
        let message = outbound(&delivery);
        assert_eq!(message.to, "X26ABC2");
        assert_eq!(message.workflow_id, "NEMS_WF");
        assert_eq!(message.local_id, "d-7");
        assert_eq!(message.partner_id, None);
        assert_eq!(
            message.subject.as_deref(),
            Some("NEMS pds-change-of-address-1")
        );
        assert_eq!(message.file_name.as_deref(), Some("d-7.xml"));
        assert_eq!(
            message.content_type.as_deref(),
            Some("application/fhir+xml")
        );
        assert_eq!(&message.payload[..], b"<Bundle/>");
        let tagged = pb::Delivery {
            partner_id: "sub-1|tag~~~sub-2".into(),
            ..delivery
        };
        assert_eq!(
            outbound(&tagged).partner_id.as_deref(),
            Some("sub-1|tag~~~sub-2")
        );
    }
}
