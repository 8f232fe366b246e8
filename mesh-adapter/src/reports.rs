//! MESH non-delivery reports: polled from the service's own mailbox and forwarded to core.
//!
//! MESH tells a sender about asynchronous failures (for example code `14`: not collected
//! within 5 days) with a `REPORT` message in the sender's inbox, linked to the failed message
//! by `mex-LinkedMsgID`. [`run`] polls the inbox, hands each report to a [`ReportHandler`]
//! (the adapter wires it to core's `ReportUndelivered`) and acknowledges a report only after
//! the handler succeeded, so a report is never lost. `DATA` messages are left alone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use nems_proto::v1 as pb;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::DeliveryError;
use crate::mesh::headers::{
    MEX_LINKED_MSG_ID, MEX_STATUS_CODE, MEX_STATUS_DESCRIPTION, MEX_STATUS_EVENT, MEX_WORKFLOW_ID,
};
use crate::mesh::{InboxMessage, MeshClient};
use crate::metrics::MeshHealth;

/// How often [`run`] repeats the handshake MESH asks for.
const HANDSHAKE_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// One MESH error report about a message we sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshReport {
    /// The report's own message id (acknowledged after handling).
    pub report_id: String,
    /// `mex-LinkedMsgID`: the id of the message that failed.
    pub linked_message_id: Option<String>,
    /// `mex-LocalID` of the failed message.
    pub local_id: Option<String>,
    /// `mex-WorkflowID`.
    pub workflow_id: Option<String>,
    /// `mex-StatusCode`, e.g. `14`.
    pub status_code: Option<String>,
    /// `mex-StatusDescription`.
    pub status_description: Option<String>,
    /// `mex-StatusEvent`, e.g. `SEND` or `TRANSFER`.
    pub status_event: Option<String>,
}

/// Receives reports; the adapter implements it by calling core's `ReportUndelivered`.
///
/// Any `Fn(MeshReport) -> impl Future<Output = Result<(), String>>` closure is a handler.
pub trait ReportHandler: Send + Sync {
    /// Handles one report. `Err` leaves the report in the inbox for the next poll.
    fn report(&self, report: MeshReport) -> impl Future<Output = Result<(), String>> + Send;
}

impl<F, Fut> ReportHandler for F
where
    F: Fn(MeshReport) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), String>> + Send,
{
    fn report(&self, report: MeshReport) -> impl Future<Output = Result<(), String>> + Send {
        self(report)
    }
}

// === MeshReport ===

impl MeshReport {
    /// Reads a report from an inbox message's headers; `None` for anything but a REPORT.
    pub fn from_message(message: &InboxMessage) -> Option<Self> {
        if !message.is_report() {
            return None;
        }
        let header = |name: &str| {
            message
                .header(name)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Some(Self {
            report_id: message.message_id.clone(),
            linked_message_id: header(MEX_LINKED_MSG_ID),
            local_id: header(crate::mesh::headers::MEX_LOCAL_ID),
            workflow_id: header(MEX_WORKFLOW_ID),
            status_code: header(MEX_STATUS_CODE),
            status_description: header(MEX_STATUS_DESCRIPTION),
            status_event: header(MEX_STATUS_EVENT),
        })
    }
}

impl From<MeshReport> for pb::ReportUndeliveredRequest {
    fn from(report: MeshReport) -> Self {
        Self {
            mesh_message_id: report.linked_message_id.unwrap_or_default(),
            local_id: report.local_id.unwrap_or_default(),
            code: report.status_code.unwrap_or_default(),
            description: report.status_description.unwrap_or_default(),
        }
    }
}

/// Lists our inbox once, collects every REPORT and acknowledges it. DATA messages stay.
pub async fn poll_once(client: &MeshClient) -> Result<Vec<MeshReport>, DeliveryError> {
    let collected = std::sync::Mutex::new(Vec::new());
    let collect = |report: MeshReport| {
        if let Ok(mut reports) = collected.lock() {
            reports.push(report);
        }
        std::future::ready(Ok(()))
    };
    forward(client, &collect).await?;
    Ok(collected.into_inner().unwrap_or_default())
}

/// Lists our inbox once and hands each REPORT to `handler`, acknowledging those it accepted.
/// Returns how many reports were handled.
pub async fn forward<H: ReportHandler>(
    client: &MeshClient,
    handler: &H,
) -> Result<usize, DeliveryError> {
    let mut handled = 0;
    for message_id in client.list_inbox().await? {
        let message = match client.message_headers(&message_id).await {
            Ok(message) => message,
            Err(failure) => {
                warn!(message_id = %message_id, code = failure.code(), "mesh inbox message unreadable; skipped");
                continue;
            }
        };
        let Some(report) = MeshReport::from_message(&message) else {
            debug!(message_id = %message_id, "mesh inbox data message left alone");
            continue;
        };
        info!(
            report_id = %report.report_id,
            linked_message_id = report.linked_message_id.as_deref().unwrap_or(""),
            code = report.status_code.as_deref().unwrap_or(""),
            "mesh report received"
        );
        if let Err(reason) = handler.report(report).await {
            warn!(message_id = %message_id, reason = %reason, "mesh report not handled; kept for the next poll");
            continue;
        }
        client.acknowledge(&message_id).await?;
        handled += 1;
    }
    Ok(handled)
}

/// Polls for reports every `interval` until `shutdown` completes, handshaking at start and
/// once a day. Poll failures are logged and retried at the next tick. Every handshake and
/// poll is noted in `health`, so readiness sees a MESH outage even when nothing is being
/// delivered.
pub async fn run<H, S>(
    client: MeshClient,
    interval: Duration,
    handler: H,
    health: Arc<MeshHealth>,
    shutdown: S,
) where
    H: ReportHandler,
    S: Future<Output = ()> + Send,
{
    tokio::pin!(shutdown);
    let mut last_handshake: Option<Instant> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        if last_handshake.is_none_or(|at| at.elapsed() >= HANDSHAKE_INTERVAL) {
            let handshake = client.handshake().await;
            health.note_call(&handshake);
            match handshake {
                Ok(()) => last_handshake = Some(Instant::now()),
                Err(failure) => {
                    warn!(
                        code = failure.code(),
                        reason = failure.reason(),
                        "mesh handshake failed"
                    );
                }
            }
        }
        let poll = tokio::select! {
            () = &mut shutdown => break,
            poll = forward(&client, &handler) => poll,
        };
        health.note_call(&poll);
        match poll {
            Ok(0) => debug!("mesh report poll found nothing"),
            Ok(handled) => info!(handled, "mesh reports forwarded"),
            Err(failure) => {
                warn!(
                    code = failure.code(),
                    reason = failure.reason(),
                    "mesh report poll failed"
                );
            }
        }
    }
    info!("mesh report poller stopped");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn message(kind: &str) -> InboxMessage {
        let headers: BTreeMap<String, String> = [
            ("mex-messagetype", kind),
            ("mex-linkedmsgid", "SENT1"),
            ("mex-localid", "d-7"),
            ("mex-statuscode", "14"),
            (
                "mex-statusdescription",
                "Message not collected by recipient after 5 days",
            ),
            ("mex-statusevent", "SEND"),
            ("mex-workflowid", "WF"),
            ("mex-subject", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        InboxMessage {
            message_id: "REPORT1".into(),
            headers,
        }
    }

    #[test]
    fn reads_reports_and_ignores_data() {
        let report = MeshReport::from_message(&message("REPORT")).unwrap();
        assert_eq!(report.report_id, "REPORT1");
        assert_eq!(report.linked_message_id.as_deref(), Some("SENT1"));
        assert_eq!(report.local_id.as_deref(), Some("d-7"));
        assert_eq!(report.status_code.as_deref(), Some("14"));
        assert_eq!(report.status_event.as_deref(), Some("SEND"));
        assert_eq!(MeshReport::from_message(&message("DATA")), None);
        let request = pb::ReportUndeliveredRequest::from(report);
        assert_eq!(request.mesh_message_id, "SENT1");
        assert_eq!(request.local_id, "d-7");
        assert_eq!(request.code, "14");
    }
}
