//! `EventService`: validate, match and durably accept an event. The answer is sent only
//! after the event, its payload and its delivery rows are committed in one transaction.

use std::sync::Arc;
use std::time::Duration;

use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;
use nems_proto::v1::event_service_server::EventService;
use tonic::{Request, Response, Status};

use super::Fault;
use crate::accept;
use crate::backend::NewEvent;
use crate::backend::keys::{id_hex, new_id, nhs_key, now_ms};
use crate::domain::Rejection;
use crate::domain::event::{self as rules, ValidEvent};
use crate::domain::patient::{self, DemographicUpdate};
use crate::matching;
use crate::pds::Lookup;
use crate::state::{CoreState, audit_record};
use crate::trust::{CallerError, Peer, Proof};

/// The event service.
#[derive(Debug, Clone)]
pub(crate) struct Events {
    pub(crate) state: Arc<CoreState>,
}

impl Events {
    fn refuse(&self, caller: &pb::Caller, r: Rejection) -> Status {
        self.state.audit_detached(audit_record(
            caller,
            "publish",
            "Bundle",
            "",
            r.code.as_str(),
        ));
        tracing::info!(code = %r.code, "publish refused");
        Fault::from(r).into()
    }

    fn check(
        &self,
        caller: &pb::Caller,
        proof: Proof<'_>,
        req: &pb::PublishEventRequest,
    ) -> Result<(pb::SpineSystem, ValidEvent), Rejection> {
        let directory = self.state.directory();
        let system = directory.caller(caller, proof)?.clone();
        let catalogue = &self.state.catalogue;
        let interaction = rules::interaction_event(&req.interaction_id, catalogue)?;
        directory.authorise_publish(&system, interaction)?;
        let message = req
            .message
            .as_ref()
            .ok_or_else(|| Rejection::new(SpineCode::BadRequest, "message is required"))?;
        let valid = rules::validate(message, interaction, catalogue)?;
        Ok((system, valid))
    }

    /// For a patient the demographics store does not know, asks PDS (when `[core.pds]` is
    /// set; PDS's own events carry their facts). Any failure only logs and counts: the
    /// event's own Patient then stands in (decisions.md §17).
    async fn look_up(
        &self,
        valid: &ValidEvent,
        event: &matching::Event,
    ) -> Result<Option<DemographicUpdate>, Status> {
        let (Some(pds), Some(nhs_text), Some(nhs)) =
            (&self.state.pds, valid.nhs_number.as_deref(), event.nhs)
        else {
            return Ok(None);
        };
        if event.facts.authoritative {
            return Ok(None);
        }
        let known = self
            .state
            .store
            .patient(nhs)
            .await
            .map_err(|e| Fault::store(e, "pds-lookup"))?
            .is_some();
        if known {
            return Ok(None);
        }
        let (outcome, update) = match pds.lookup(nhs_text, event.accepted_ms).await {
            Ok(Lookup::Found(update)) => ("found", Some(update)),
            Ok(Lookup::Unknown) => ("unknown", None),
            Err(e) => {
                tracing::warn!(error = %e, "PDS lookup failed; using the event's own patient");
                ("error", None)
            }
        };
        crate::metrics::metrics()
            .pds_lookups
            .get_or_create(&crate::metrics::OutcomeLabel { outcome })
            .inc();
        Ok(update)
    }

    /// Publish answers 503 rather than growing the backlog without bound.
    fn check_backpressure(&self) -> Result<(), Status> {
        let pending = self.state.pending_deliveries();
        if pending >= self.state.config.max_pending_deliveries {
            tracing::warn!(
                pending,
                "delivery backlog above its bound; shedding publishes"
            );
            crate::metrics::metrics().publishes_shed.inc();
            return Err(Fault::Overloaded {
                message: "the delivery backlog is full; retry later",
                retry_after: Duration::from_secs(5),
            }
            .into());
        }
        Ok(())
    }
}

/// What matching needs from a valid event.
fn matching_event(valid: &ValidEvent, accepted_ms: u64) -> matching::Event {
    matching::Event {
        event_code: valid.event_type.code.clone(),
        nhs: valid.nhs_number.as_deref().and_then(nhs_key),
        birth_date: valid.birth_date,
        facts: patient::facts(valid),
        accepted_ms,
        looked_up: None,
    }
}

#[tonic::async_trait]
impl EventService for Events {
    async fn publish_event(
        &self,
        request: Request<pb::PublishEventRequest>,
    ) -> Result<Response<pb::PublishEventResponse>, Status> {
        let received = std::time::Instant::now();
        let peer = Peer::of(&request);
        let mut req = request.into_inner();
        // The caller as core establishes it (see `crate::trust`), never as a field says.
        let (caller, proof) = self
            .state
            .trust
            .caller(peer.as_ref(), req.caller.take())
            .map_err(|e| match e {
                CallerError::Missing => Fault::missing("caller").into(),
                CallerError::Impersonation(caller, r) => self.refuse(&caller, r),
                CallerError::Refused(r) => self.refuse(&pb::Caller::default(), r),
            })?;
        // The summary is matched on and the payload delivered: only the edge, which reads
        // the one from the other, may send both. An internal service publishes the bundle
        // itself through the edge's BundleService.
        if matches!(proof, Proof::Bound) {
            return Err(self.refuse(
                &caller,
                Rejection::new(
                    SpineCode::AccessDenied,
                    "EventService.PublishEvent takes event summaries from an edge only; publish the Bundle through the edge's nems.core.v1.BundleService.PublishBundle",
                ),
            ));
        }
        let (system, valid) = self
            .check(&caller, proof, &req)
            .map_err(|r| self.refuse(&caller, r))?;
        if req.payload.is_empty() {
            return Err(self.refuse(
                &caller,
                Rejection::new(SpineCode::BadRequest, "payload is required"),
            ));
        }
        self.check_backpressure()?;

        let planned_ms = now_ms();
        let mut subject = matching_event(&valid, planned_ms);
        let looked_up = self.look_up(&valid, &subject).await?;
        subject.looked_up = looked_up.as_ref().map(crate::backend::record_of);
        let mut demographic_updates = patient::updates(&valid, planned_ms);
        demographic_updates.extend(looked_up);
        let event_id = new_id();
        let event_hex = id_hex(event_id);
        let event = NewEvent {
            event_id,
            event_code: valid.event_type.code.clone(),
            message_event_type: valid.message_event_type.clone(),
            publisher_asid: system.asid.clone(),
            workflow_id: valid.event_type.workflow_id.clone(),
            payload: std::mem::take(&mut req.payload),
            deliveries: Vec::new(),
            matched_subscriptions: 0,
            accepted_ms: planned_ms,
        };
        let acceptance = accept::Acceptance {
            event,
            recipients: accept::Recipients::Matched {
                subject: Box::new(subject),
                updates: demographic_updates,
            },
            audit: audit_record(&caller, "publish", "Bundle", &event_hex, "ok"),
            when_busy: accept::WhenBusy::Shed,
        };
        let accepted = accept::accept(&self.state, acceptance)
            .await
            .map_err(|e| Fault::store(e, &caller.request_id))?;
        crate::metrics::metrics()
            .publish_seconds
            .observe(received.elapsed().as_secs_f64());
        let accept::Written {
            written,
            suppressed,
            matched_subscriptions,
            ..
        } = accepted;
        tracing::info!(
            event = %event_hex,
            event_code = %valid.event_type.code,
            suppressed,
            mailboxes = written.queued_mailboxes.len(),
            subscriptions = matched_subscriptions,
            "event accepted"
        );
        Ok(Response::new(pb::PublishEventResponse {
            event_id: event_hex,
            mailboxes: written.queued_mailboxes.len() as u32,
            notices: valid.notices,
        }))
    }
}
