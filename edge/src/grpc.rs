//! `BundleService` on `edge.grpc_listen`: gRPC publishing for internal services that sends
//! the FHIR message Bundle itself. The edge reads it with the same extractor as
//! `POST /STU3/Events/1/$process-message` and forwards the summary with the exact bytes,
//! so the summary core routes on always describes the payload it delivers (core takes
//! `EventService.PublishEvent` from edges only).
//!
//! The caller is treated as on the HTTP API: the ASID it names is checked by core against
//! the directory, and under the edge's mutual TLS (`edge.tls.client_ca_file`, the Spine CA)
//! the connection's certificate is forwarded for core to verify as that ASID's. The rate
//! limit is charged to the certificate, else the peer address.

use std::sync::Arc;

use nems_proto::spine::{self, SpineCode};
use nems_proto::v1 as pb;
use nems_proto::v1::bundle_service_server::BundleService;
use tonic::{Request, Response, Status};

use crate::handlers::AppState;
use crate::handlers::publish::{Refused, forward};
use crate::ratelimit::RateLimiter;

/// The service.
#[derive(Debug, Clone)]
pub struct Bundles {
    /// The edge's shared state.
    pub state: Arc<AppState>,
}

fn refused(code: SpineCode, text: &str) -> Status {
    spine::status(code, text)
}

fn is_asid(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

#[tonic::async_trait]
impl BundleService for Bundles {
    async fn publish_bundle(
        &self,
        request: Request<pb::PublishBundleRequest>,
    ) -> Result<Response<pb::PublishBundleResponse>, Status> {
        let chain: Vec<Vec<u8>> = request
            .peer_certs()
            .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default();
        let peer = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        let mut caller = req.caller.ok_or_else(|| {
            refused(
                SpineCode::MissingOrInvalidHeader,
                "caller is required (the publishing system's ASID and ODS code)",
            )
        })?;
        if !is_asid(&caller.asid) {
            return Err(refused(
                SpineCode::MissingOrInvalidHeader,
                "caller.asid must be the publishing system's 12-digit ASID",
            ));
        }
        if caller.ods_code.is_empty() || caller.ods_code.len() > 16 {
            return Err(refused(
                SpineCode::MissingOrInvalidHeader,
                "caller.ods_code must be the publishing organisation's ODS code",
            ));
        }
        if req.interaction_id.is_empty() {
            return Err(refused(
                SpineCode::MissingOrInvalidHeader,
                "interaction_id is required, for example urn:nhs:names:services:events:Vaccinations.Write",
            ));
        }
        // Whatever the client put in the certificate fields, the connection's own is sent.
        let (leaf, intermediates) = match chain.split_first() {
            Some((leaf, rest)) => (leaf.clone(), rest.to_vec()),
            None => (Vec::new(), Vec::new()),
        };
        let key = if leaf.is_empty() {
            RateLimiter::address_key(
                peer.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            )
        } else {
            self.state.limiter.certificate_key(&leaf)
        };
        if let Err(wait) = self.state.limiter.check(key) {
            crate::metrics::metrics().rate_limited.inc();
            return Err(spine::unavailable(
                "too many requests from this client; slow down and retry after the given delay",
                wait.max(std::time::Duration::from_secs(1)),
            ));
        }
        caller.client_certificate = leaf;
        caller.client_certificate_chain = intermediates;
        caller.request_id = uuid::Uuid::new_v4().to_string();
        let request_id = caller.request_id.clone();
        match forward(&self.state, caller, req.interaction_id, req.bundle).await {
            Ok(accepted) => {
                tracing::info!(%request_id, event = %accepted.event_id, mailboxes = accepted.mailboxes, "event published over gRPC");
                Ok(Response::new(pb::PublishBundleResponse {
                    event_id: accepted.event_id,
                    mailboxes: accepted.mailboxes,
                    notices: accepted.notices,
                }))
            }
            Err(Refused::Edge(e)) => Err(refused(e.code, &e.diagnostics)),
            // Core's refusals carry their Spine code and pass as they are, as do overload
            // answers (with their retry delay); any other failure is not described.
            Err(Refused::Core(status))
                if spine::code_of(&status).is_some()
                    || status.code() == tonic::Code::Unavailable =>
            {
                Err(status)
            }
            Err(Refused::Core(status)) => {
                tracing::warn!(%request_id, code = ?status.code(), "core failed a gRPC publish");
                Err(refused(
                    SpineCode::InternalServerError,
                    &format!("the event could not be published; request id {request_id}"),
                ))
            }
        }
    }
}
