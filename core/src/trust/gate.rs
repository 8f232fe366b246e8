//! The gate in front of each listener's services: gives every call its [`Peer`] (from the
//! TLS client certificate, or the listener's plaintext roles) and refuses a call to a
//! service the peer's roles do not open, before the request body is decoded.
//!
//! Refusals are audited through core's bounded audit queue ([`crate::audit`]): never a
//! task per refusal, aggregated, and dropped (counted in `nems_audit_dropped_total`) when
//! the queue is full.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use nems_proto::service_names;
use nems_proto::spine::{self, SpineCode};
use nems_proto::v1 as pb;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::{Peer, Role, Roles, Trust};
use crate::audit::AuditSink;

/// Which listener a gate guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// The service API (subscriptions, events, deliveries).
    Service,
    /// The operator API (directory, operator).
    Operator,
}

impl Listener {
    /// The roles every caller of this listener gets when it is plaintext: core can verify
    /// nothing, so loopback (or `allow_plaintext`) stands in for a certificate.
    pub(crate) fn plaintext_roles(self) -> Roles {
        match self {
            Listener::Service => Roles::of(&[Role::Edge, Role::Adapter]),
            Listener::Operator => Roles::of(&[Role::Operator]),
        }
    }
}

/// The roles that open a gRPC path (`/package.Service/Method`) of a service `listener`
/// serves; `None` for the paths every caller may use (health, reflection) and for services
/// the listener does not serve (answered `UNIMPLEMENTED` by the router).
fn allowed(listener: Listener, path: &str) -> Option<Roles> {
    let service = path.strip_prefix('/')?.split('/').next()?;
    match (listener, service) {
        (Listener::Service, service_names::SUBSCRIPTION | service_names::EVENT) => {
            Some(Roles::of(&[Role::Edge, Role::Direct]))
        }
        (Listener::Service, service_names::DELIVERY) => Some(Roles::of(&[Role::Adapter])),
        (Listener::Operator, service_names::DIRECTORY | service_names::OPERATOR) => {
            Some(Roles::of(&[Role::Operator]))
        }
        _ => None,
    }
}

/// The gate of one listener.
#[derive(Debug)]
pub(crate) struct Gate {
    listener: Listener,
    /// The peer every caller is on a plaintext listener (`None` with TLS).
    plaintext: Option<Peer>,
    trust: Arc<Trust>,
    audit: AuditSink,
}

impl Gate {
    /// A gate for `listener`; `tls` tells whether it verifies client certificates.
    pub(crate) fn new(listener: Listener, tls: bool, trust: Arc<Trust>, audit: AuditSink) -> Self {
        Gate {
            listener,
            plaintext: (!tls).then(|| Peer {
                roles: listener.plaintext_roles(),
                direct_asid: None,
                name: Arc::from("plaintext"),
            }),
            trust,
            audit,
        }
    }

    /// The peer of a connection from its connect info (in the request's extensions).
    fn peer(&self, extensions: &http::Extensions) -> Peer {
        if let Some(peer) = &self.plaintext {
            return peer.clone();
        }
        let leaf = extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().cloned());
        match leaf {
            Some(cert) => self.trust.roles_of_certificate(&cert),
            None => Peer {
                roles: Roles::NONE,
                direct_asid: None,
                name: Arc::from("(no certificate)"),
            },
        }
    }

    /// The peer of a call to `path`, or the refusal to answer with.
    fn admit(&self, path: &str, extensions: &http::Extensions) -> Result<Peer, tonic::Status> {
        let peer = self.peer(extensions);
        let Some(allowed) = allowed(self.listener, path) else {
            return Ok(peer);
        };
        if peer.roles.meets(allowed) {
            return Ok(peer);
        }
        self.refused(path, &peer);
        Err(spine::status(
            SpineCode::AccessDenied,
            "this client's certificate does not grant this service",
        ))
    }

    fn refused(&self, path: &str, peer: &Peer) {
        let listener = match self.listener {
            Listener::Service => "service",
            Listener::Operator => "operator",
        };
        tracing::info!(listener, path, peer = %peer.name, "gRPC call refused: role");
        crate::metrics::metrics().calls_refused.inc();
        let record = pb::AuditRecord {
            at: None,
            request_id: String::new(),
            asid: peer.direct_asid.as_deref().unwrap_or_default().to_string(),
            ods_code: String::new(),
            user: peer.name.to_string(),
            action: "rpc".into(),
            resource_type: "gRPC".into(),
            resource_id: path.chars().take(200).collect(),
            outcome: SpineCode::AccessDenied.as_str().into(),
            count: 0,
        };
        self.audit.record(record);
    }
}

// === GateLayer ===

/// The tower layer putting a [`Gate`] in front of a listener's routes.
#[derive(Debug, Clone)]
pub(crate) struct GateLayer {
    gate: Arc<Gate>,
}

impl GateLayer {
    pub(crate) fn new(gate: Gate) -> Self {
        GateLayer {
            gate: Arc::new(gate),
        }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GateService {
            inner,
            gate: self.gate.clone(),
        }
    }
}

/// The service of [`GateLayer`].
#[derive(Debug, Clone)]
pub(crate) struct GateService<S> {
    inner: S,
    gate: Arc<Gate>,
}

/// The metrics label of a request path: `Service/Method` of nems, health and reflection,
/// else `other` (a bounded label set, whatever paths clients send).
fn method_label(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "nems.core.v1.SubscriptionService/CreateSubscription",
        "nems.core.v1.SubscriptionService/GetSubscription",
        "nems.core.v1.SubscriptionService/DeleteSubscription",
        "nems.core.v1.EventService/PublishEvent",
        "nems.core.v1.DeliveryService/StreamDeliveries",
        "nems.core.v1.DeliveryService/CompleteDelivery",
        "nems.core.v1.DeliveryService/ReportUndelivered",
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    let path = path.strip_prefix('/').unwrap_or(path);
    if let Some(known) = KNOWN.iter().find(|k| **k == path) {
        return known;
    }
    if path.starts_with("nems.core.v1.OperatorService/") {
        return "nems.core.v1.OperatorService";
    }
    if path.starts_with("nems.core.v1.DirectoryService/") {
        return "nems.core.v1.DirectoryService";
    }
    "other"
}

/// Counts one answered call by its method and the gRPC status of its response headers.
fn observe(method: &'static str, response: &http::Response<Body>, started: std::time::Instant) {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
    let metrics = crate::metrics::metrics();
    metrics
        .grpc_requests
        .get_or_create(&crate::metrics::GrpcLabel {
            method: method.to_string(),
            code: format!("{code:?}"),
        })
        .inc();
    metrics
        .grpc_seconds
        .get_or_create(&crate::metrics::MethodLabel {
            method: method.to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for GateService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let started = std::time::Instant::now();
        let method = method_label(request.uri().path());
        match self.gate.admit(request.uri().path(), request.extensions()) {
            Ok(peer) => {
                request.extensions_mut().insert(peer);
                let call = self.inner.call(request);
                Box::pin(async move {
                    let response = call.await?;
                    observe(method, &response, started);
                    Ok(response)
                })
            }
            Err(status) => {
                let response = status.into_http::<Body>();
                observe(method, &response, started);
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_listener_checks_the_services_it_serves() {
        let edge_or_direct = Some(Roles::of(&[Role::Edge, Role::Direct]));
        let adapter = Some(Roles::of(&[Role::Adapter]));
        let operator = Some(Roles::of(&[Role::Operator]));
        for (listener, path, roles) in [
            (
                Listener::Service,
                "/nems.core.v1.SubscriptionService/CreateSubscription",
                edge_or_direct,
            ),
            (
                Listener::Service,
                "/nems.core.v1.EventService/PublishEvent",
                edge_or_direct,
            ),
            (
                Listener::Service,
                "/nems.core.v1.DeliveryService/CompleteDelivery",
                adapter,
            ),
            (
                Listener::Operator,
                "/nems.core.v1.OperatorService/ListAudit",
                operator,
            ),
            (
                Listener::Operator,
                "/nems.core.v1.DirectoryService/PutSystem",
                operator,
            ),
            // Health and reflection are open; services a listener does not serve are left
            // to its router (UNIMPLEMENTED).
            (Listener::Service, "/grpc.health.v1.Health/Check", None),
            (Listener::Operator, "/grpc.health.v1.Health/Check", None),
            (
                Listener::Service,
                "/nems.core.v1.OperatorService/GetStatus",
                None,
            ),
            (
                Listener::Operator,
                "/nems.core.v1.DeliveryService/StreamDeliveries",
                None,
            ),
            (Listener::Service, "no-slash", None),
        ] {
            assert_eq!(allowed(listener, path), roles, "{listener:?} {path}");
        }
    }
}
