//! `SubscriptionService`: create, read and delete with every NEMS rule applied here, so
//! the HTTP edge and gRPC clients get the same answers.

use std::sync::Arc;

use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;
use nems_proto::v1::subscription_service_server::SubscriptionService;
use tonic::{Request, Response, Status};

use super::Fault;
use crate::backend::keys::{id_hex, new_id, now_ms, parse_id};
use crate::backend::{Created, StoredSubscription};
use crate::directory::Directory;
use crate::domain::Rejection;
use crate::domain::subscription::{self as rules, ValidSubscription};
use crate::state::{CoreState, audit_record};
use crate::trust::{CallerError, Peer, Proof};

/// The subscription service.
#[derive(Debug, Clone)]
pub(crate) struct Subscriptions {
    pub(crate) state: Arc<CoreState>,
}

fn not_found(id: &str) -> Status {
    let shown = if parse_id(id).is_some() {
        id
    } else {
        "(malformed id)"
    };
    Fault::not_found(format!(
        "No record found for supplied Subscription identifier - {shown}"
    ))
    .into()
}

/// The resource as read back now: `status` `off` once `end` has passed.
pub(crate) fn current_resource(
    id: u128,
    sub: &StoredSubscription,
    now: u64,
) -> pb::SubscriptionResource {
    let content = sub.resource.clone().unwrap_or_default();
    let ended = sub.end_ms != 0 && sub.end_ms <= now;
    rules::read_back(&content, &id_hex(id), sub.created_ms, ended)
}

impl Subscriptions {
    fn refuse(&self, caller: &pb::Caller, action: &str, id: &str, r: Rejection) -> Status {
        self.state.audit_detached(audit_record(
            caller,
            action,
            "Subscription",
            id,
            r.code.as_str(),
        ));
        Fault::from(r).into()
    }

    /// The caller the request acts as (see [`crate::trust`]): refused and audited when the
    /// peer may not name it.
    fn identify(
        &self,
        peer: Option<Peer>,
        named: Option<pb::Caller>,
        action: &str,
        id: &str,
    ) -> Result<(pb::Caller, Proof<'_>), Status> {
        self.state
            .trust
            .caller(peer.as_ref(), named)
            .map_err(|e| match e {
                CallerError::Missing => Fault::missing("caller").into(),
                CallerError::Impersonation(caller, r) => self.refuse(&caller, action, id, r),
                CallerError::Refused(r) => self.refuse(&pb::Caller::default(), action, id, r),
            })
    }

    /// The calling system (refused and audited when unknown) and the subscription id
    /// (`404` when it is not one of ours), for read and delete.
    fn caller_and_id(
        &self,
        caller: &pb::Caller,
        proof: Proof<'_>,
        action: &str,
        id: &str,
    ) -> Result<(pb::SpineSystem, u128), Status> {
        let system = self
            .state
            .directory()
            .caller(caller, proof)
            .cloned()
            .map_err(|r| self.refuse(caller, action, id, r))?;
        let parsed = parse_id(id).ok_or_else(|| not_found(id))?;
        Ok((system, parsed))
    }

    async fn create(
        &self,
        caller: pb::Caller,
        proof: Proof<'_>,
        resource: pb::SubscriptionResource,
    ) -> Result<pb::CreateSubscriptionResponse, Status> {
        let directory = self.state.directory();
        let now = now_ms();
        let checked = directory
            .caller(&caller, proof)
            .cloned()
            .and_then(|system| {
                let valid = rules::validate(&resource, &self.state.catalogue, now)?;
                directory.authorise_subscription(&system, &valid)?;
                Ok((system, valid))
            });
        let (system, valid) = match checked {
            Ok(ok) => ok,
            Err(r) => return Err(self.refuse(&caller, "create", "", r)),
        };
        let id = new_id();
        let id_text = id_hex(id);
        let record = stored_record(&resource, &valid, &system, now);
        let audit_ok = audit_record(&caller, "create", "Subscription", &id_text, "ok");
        let quota = self.state.config.subscription_quota_per_asid;
        let outcome = self
            .state
            .store
            .create_subscription(id, record, quota, now, audit_ok)
            .await
            .map_err(|e| Fault::store(e, &caller.request_id))?;
        let record = match outcome {
            Created::Stored(record) => *record,
            Created::Duplicate(existing) => {
                let r = Rejection::new(
                    SpineCode::DuplicateRejected,
                    format!(
                        "an identical subscription already exists with id {}",
                        id_hex(existing)
                    ),
                );
                return Err(self.refuse(&caller, "create", "", r));
            }
            Created::OverQuota => {
                let r = Rejection::new(
                    SpineCode::AccessDenied,
                    format!(
                        "this ASID already has {quota} subscriptions, its quota; delete those it \
                         no longer needs, or ask the service operator to raise \
                         core.subscription_quota_per_asid"
                    ),
                );
                return Err(self.refuse(&caller, "create", "", r));
            }
        };
        let stored_resource = current_resource(id, &record, record.created_ms);
        tracing::info!(
            subscription = %id_text,
            kind = ?valid.criteria.kind(),
            events = valid.criteria.event_codes.len(),
            "subscription created"
        );
        Ok(pb::CreateSubscriptionResponse {
            id: id_text,
            subscription: Some(stored_resource),
            notices: valid.notices,
        })
    }
}

fn stored_record(
    request: &pb::SubscriptionResource,
    valid: &ValidSubscription,
    system: &pb::SpineSystem,
    now: u64,
) -> StoredSubscription {
    StoredSubscription {
        resource: Some(rules::stored_content(request)),
        criteria: Some(valid.criteria.clone()),
        owner_asid: system.asid.clone(),
        owner_ods: valid.contact_ods.clone(),
        mailbox: valid.mailbox.clone(),
        created_ms: now,
        end_ms: valid.end_ms.unwrap_or(0),
        deleted_ms: 0,
        dedup_hash: rules::dedup_hash(valid),
    }
}

#[tonic::async_trait]
impl SubscriptionService for Subscriptions {
    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::CreateSubscriptionResponse>, Status> {
        let peer = Peer::of(&request);
        let req = request.into_inner();
        let (caller, proof) = self.identify(peer, req.caller, "create", "")?;
        let resource = req
            .subscription
            .ok_or_else(|| Fault::missing("subscription"))?;
        self.create(caller, proof, resource)
            .await
            .map(Response::new)
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::GetSubscriptionResponse>, Status> {
        let peer = Peer::of(&request);
        let req = request.into_inner();
        let (caller, proof) = self.identify(peer, req.caller, "read", &req.id)?;
        let (system, id) = self.caller_and_id(&caller, proof, "read", &req.id)?;
        let found = self
            .state
            .store
            .subscription(id)
            .await
            .map_err(|e| Fault::store(e, &caller.request_id))?;
        let sub = found.filter(|s| s.deleted_ms == 0 && Directory::owns(&system, &s.owner_ods));
        let Some(sub) = sub else {
            self.state.audit_detached(audit_record(
                &caller,
                "read",
                "Subscription",
                &req.id,
                SpineCode::NoRecordFound.as_str(),
            ));
            return Err(not_found(&req.id));
        };
        self.state
            .audit_detached(audit_record(&caller, "read", "Subscription", &req.id, "ok"));
        Ok(Response::new(pb::GetSubscriptionResponse {
            subscription: Some(current_resource(id, &sub, now_ms())),
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let peer = Peer::of(&request);
        let req = request.into_inner();
        let (caller, proof) = self.identify(peer, req.caller, "delete", &req.id)?;
        let (system, id) = self.caller_and_id(&caller, proof, "delete", &req.id)?;
        let now = now_ms();
        let audit_ok = audit_record(&caller, "delete", "Subscription", &req.id, "ok");
        let deleted = self
            .state
            .store
            .delete_subscription(
                id,
                now,
                Box::new(move |s| Directory::owns(&system, &s.owner_ods)),
                audit_ok,
            )
            .await
            .map_err(|e| Fault::store(e, &caller.request_id))?;
        if !deleted {
            self.state.audit_detached(audit_record(
                &caller,
                "delete",
                "Subscription",
                &req.id,
                SpineCode::NoRecordFound.as_str(),
            ));
            return Err(not_found(&req.id));
        }
        tracing::info!(subscription = %req.id, "subscription deleted");
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }
}
