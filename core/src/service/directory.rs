//! `DirectoryService`: operators change the Spine directory at run time.

use std::sync::Arc;

use nems_proto::v1 as pb;
use nems_proto::v1::directory_service_server::DirectoryService;
use tonic::{Request, Response, Status};

use super::Fault;
use crate::backend::DirectoryChange;
use crate::directory::{check_mailbox, check_system};
use crate::state::CoreState;

/// The directory service.
#[derive(Debug, Clone)]
pub(crate) struct DirectoryAdmin {
    pub(crate) state: Arc<CoreState>,
}

fn admin_audit(who: String, action: &str, resource_type: &str, id: &str) -> pb::AuditRecord {
    pb::AuditRecord {
        action: action.into(),
        resource_type: resource_type.into(),
        resource_id: id.into(),
        outcome: "ok".into(),
        count: 0,
        user: who,
        ..Default::default()
    }
}

fn normalise_system(mut s: pb::SpineSystem) -> pb::SpineSystem {
    for code in &mut s.ods_codes {
        *code = code.to_ascii_uppercase();
    }
    s
}

#[tonic::async_trait]
impl DirectoryService for DirectoryAdmin {
    async fn put_system(
        &self,
        request: Request<pb::PutSystemRequest>,
    ) -> Result<Response<pb::PutSystemResponse>, Status> {
        let who = super::operator_identity(&request);
        let system = normalise_system(
            request
                .into_inner()
                .system
                .ok_or_else(|| Fault::missing("system"))?,
        );
        check_system(&system).map_err(|e| Fault::invalid(format!("system: {e}")))?;
        let record = admin_audit(who, "directory.put-system", "SpineSystem", &system.asid);
        let replaced = self
            .state
            .change_directory(vec![DirectoryChange::PutSystem(system)], Some(record))
            .await
            .map_err(|e| Fault::store(e, "directory"))?
            .first()
            .copied()
            .unwrap_or(false);
        Ok(Response::new(pb::PutSystemResponse { replaced }))
    }

    async fn get_system(
        &self,
        request: Request<pb::GetSystemRequest>,
    ) -> Result<Response<pb::GetSystemResponse>, Status> {
        let asid = request.into_inner().asid;
        let system = self
            .state
            .directory()
            .system(&asid)
            .cloned()
            .ok_or_else(|| Fault::not_found("no system with that ASID"))?;
        Ok(Response::new(pb::GetSystemResponse {
            system: Some(system),
        }))
    }

    async fn delete_system(
        &self,
        request: Request<pb::DeleteSystemRequest>,
    ) -> Result<Response<pb::DeleteSystemResponse>, Status> {
        let who = super::operator_identity(&request);
        let asid = request.into_inner().asid;
        let record = admin_audit(who, "directory.delete-system", "SpineSystem", &asid);
        let deleted = self
            .state
            .change_directory(vec![DirectoryChange::DeleteSystem(asid)], Some(record))
            .await
            .map_err(|e| Fault::store(e, "directory"))?
            .first()
            .copied()
            .unwrap_or(false);
        Ok(Response::new(pb::DeleteSystemResponse { deleted }))
    }

    async fn list_systems(
        &self,
        _request: Request<pb::ListSystemsRequest>,
    ) -> Result<Response<pb::ListSystemsResponse>, Status> {
        let (mut systems, _) = self
            .state
            .store
            .directory()
            .await
            .map_err(|e| Fault::store(e, "directory"))?;
        systems.sort_by(|a, b| a.asid.cmp(&b.asid));
        Ok(Response::new(pb::ListSystemsResponse { systems }))
    }

    async fn put_mailbox(
        &self,
        request: Request<pb::PutMailboxRequest>,
    ) -> Result<Response<pb::PutMailboxResponse>, Status> {
        let who = super::operator_identity(&request);
        let mut mailbox = request
            .into_inner()
            .mailbox
            .ok_or_else(|| Fault::missing("mailbox"))?;
        mailbox.mailbox_id = mailbox.mailbox_id.to_ascii_uppercase();
        mailbox.ods_code = mailbox.ods_code.to_ascii_uppercase();
        check_mailbox(&mailbox).map_err(|e| Fault::invalid(format!("mailbox: {e}")))?;
        let record = admin_audit(
            who,
            "directory.put-mailbox",
            "MeshMailbox",
            &mailbox.mailbox_id,
        );
        let replaced = self
            .state
            .change_directory(vec![DirectoryChange::PutMailbox(mailbox)], Some(record))
            .await
            .map_err(|e| Fault::store(e, "directory"))?
            .first()
            .copied()
            .unwrap_or(false);
        Ok(Response::new(pb::PutMailboxResponse { replaced }))
    }

    async fn delete_mailbox(
        &self,
        request: Request<pb::DeleteMailboxRequest>,
    ) -> Result<Response<pb::DeleteMailboxResponse>, Status> {
        let who = super::operator_identity(&request);
        let id = request.into_inner().mailbox_id.to_ascii_uppercase();
        let record = admin_audit(who, "directory.delete-mailbox", "MeshMailbox", &id);
        let deleted = self
            .state
            .change_directory(vec![DirectoryChange::DeleteMailbox(id)], Some(record))
            .await
            .map_err(|e| Fault::store(e, "directory"))?
            .first()
            .copied()
            .unwrap_or(false);
        Ok(Response::new(pb::DeleteMailboxResponse { deleted }))
    }

    async fn list_mailboxes(
        &self,
        _request: Request<pb::ListMailboxesRequest>,
    ) -> Result<Response<pb::ListMailboxesResponse>, Status> {
        let (_, mut mailboxes) = self
            .state
            .store
            .directory()
            .await
            .map_err(|e| Fault::store(e, "directory"))?;
        mailboxes.sort_by(|a, b| a.mailbox_id.cmp(&b.mailbox_id));
        Ok(Response::new(pb::ListMailboxesResponse { mailboxes }))
    }
}
