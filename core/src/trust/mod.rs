//! Who a gRPC caller is, decided by core from what it can verify (issue 10 §1).
//!
//! Every caller of core gets **roles** from its own transport, never from a request field:
//!
//! - over TLS, the client certificate rustls verified in the handshake against the
//!   listener's `client_ca_file`, mapped to one role by its DNS subjectAltName with the
//!   `[core.clients]` lists (`edge`, `adapter`, `operator`, and `[[core.clients.direct]]`
//!   entries binding an identity to one ASID). A certificate naming identities of more than
//!   one role, or none, gets no role;
//! - over plaintext (development on loopback, or a listener with `allow_plaintext`), core
//!   can verify nothing, so the listener grants fixed roles: the service listener **edge**
//!   and **adapter**, the operator listener **operator**.
//!
//! The gate layer (`gate.rs`) refuses a call to a service the caller's roles do not open
//! (`PERMISSION_DENIED` with `ACCESS_DENIED` in the details, audited): Subscription and
//! Event services take edge and direct callers, DeliveryService adapters, Directory and
//! Operator services operators. `EventService.PublishEvent` then refuses a direct caller
//! (it must publish the Bundle through the edge's `BundleService`, so that the summary
//! matched on is always read from the payload delivered).
//!
//! A `pb::Caller` inside a request is honoured only from an edge (`Trust::caller`), and
//! its forwarded client certificate is verified again here (`SpineCa`, against
//! `core.spine_ca_file`): with that file set (edge mutual TLS on), a request without a
//! certificate is refused. A direct caller acts as its bound ASID and nothing else.

use std::path::Path;
use std::sync::Arc;

use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use serde::{Deserialize, Serialize};

use crate::domain::Rejection;

pub(crate) mod gate;

/// The `[core.clients]` section: the roles of core's TLS clients, each by the DNS names
/// (subjectAltName) their certificates carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientRoles {
    /// FHIR edges: may call SubscriptionService and EventService on behalf of the caller
    /// they name (whose client certificate core verifies itself).
    pub edge: Vec<String>,
    /// Delivery adapters: may call DeliveryService.
    pub adapter: Vec<String>,
    /// Operators: may call DirectoryService and OperatorService (on the operator listener).
    pub operator: Vec<String>,
    /// Internal publishers or subscribers, each bound to one ASID (`[[core.clients.direct]]`).
    pub direct: Vec<DirectClient>,
}

/// A `[[core.clients.direct]]` entry: a certificate identity acting as one ASID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectClient {
    /// The DNS name (subjectAltName) of the client's certificate.
    pub identity: String,
    /// The 12-digit ASID it acts as.
    pub asid: String,
}

impl ClientRoles {
    /// True when no identity is configured for any role.
    pub fn is_empty(&self) -> bool {
        self.edge.is_empty()
            && self.adapter.is_empty()
            && self.operator.is_empty()
            && self.direct.is_empty()
    }

    /// Checks the names and that no identity has two roles; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen: Vec<(&str, &str)> = Vec::new();
        let named = [
            ("core.clients.edge", &self.edge),
            ("core.clients.adapter", &self.adapter),
            ("core.clients.operator", &self.operator),
        ];
        let direct = self
            .direct
            .iter()
            .map(|d| ("core.clients.direct", d.identity.as_str()));
        let all = named
            .iter()
            .flat_map(|(key, names)| names.iter().map(move |n| (*key, n.as_str())))
            .chain(direct);
        for (key, name) in all {
            if !matches!(ServerName::try_from(name), Ok(ServerName::DnsName(_))) {
                return Err(format!("{key}: `{name}` is not a DNS name"));
            }
            let lower = name.to_ascii_lowercase();
            if let Some((other, _)) = seen.iter().find(|(_, n)| n.eq_ignore_ascii_case(&lower)) {
                return Err(format!(
                    "{key}: `{name}` is also listed in {other}; an identity has one role"
                ));
            }
            seen.push((key, name));
        }
        for d in &self.direct {
            if d.asid.len() != 12 || !d.asid.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "core.clients.direct: the asid of `{}` must be 12 digits",
                    d.identity
                ));
            }
        }
        Ok(())
    }
}

/// A role core gives a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A FHIR edge.
    Edge,
    /// A delivery adapter.
    Adapter,
    /// An operator.
    Operator,
    /// An internal service bound to one ASID.
    Direct,
}

/// A set of roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Roles(u8);

impl Roles {
    pub(crate) const NONE: Roles = Roles(0);

    pub(crate) const fn of(roles: &[Role]) -> Roles {
        let mut bits = 0;
        let mut i = 0;
        while i < roles.len() {
            bits |= 1 << roles[i] as u8;
            i += 1;
        }
        Roles(bits)
    }

    pub(crate) fn has(self, role: Role) -> bool {
        self.0 & (1 << role as u8) != 0
    }

    pub(crate) fn meets(self, allowed: Roles) -> bool {
        self.0 & allowed.0 != 0
    }
}

/// The caller of one request as core verified it (a request extension set by the gate).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// Its roles.
    pub(crate) roles: Roles,
    /// The ASID a direct caller is bound to.
    pub(crate) direct_asid: Option<Arc<str>>,
    /// How it was identified, for audit and logs: a certificate DNS name, or `plaintext`.
    pub(crate) name: Arc<str>,
}

impl Peer {
    /// The peer of a request (set by the gate on every service call).
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Option<Peer> {
        request.extensions().get::<Peer>().cloned()
    }
}

/// How the ASID of a request's caller was established.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Proof<'a> {
    /// Named by an edge: its forwarded certificate is checked against the Spine CA when one
    /// is configured (and must then be present); without one, none may be forwarded.
    Forwarded(Option<&'a SpineCa>),
    /// Bound by the caller's own certificate (a direct caller).
    Bound,
}

/// What core trusts: the client roles, and the Spine CA of forwarded certificates.
#[derive(Debug)]
pub(crate) struct Trust {
    clients: ClientRoles,
    spine: Option<SpineCa>,
}

fn denied(text: impl Into<String>) -> Rejection {
    Rejection::new(SpineCode::AccessDenied, text)
}

impl Trust {
    /// Builds the trust from the configuration (reads `core.spine_ca_file`).
    pub(crate) fn new(clients: ClientRoles, spine_ca_file: Option<&Path>) -> Result<Self, String> {
        let spine = match spine_ca_file {
            Some(path) => {
                Some(SpineCa::load(path).map_err(|e| format!("core.spine_ca_file: {e}"))?)
            }
            None => None,
        };
        Ok(Trust { clients, spine })
    }

    /// The roles of a verified TLS client certificate (`der`, the leaf): one role when its
    /// DNS names match identities of exactly one role, else none.
    pub(crate) fn roles_of_certificate(&self, der: &CertificateDer<'_>) -> Peer {
        let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
            return Peer {
                roles: Roles::NONE,
                direct_asid: None,
                name: Arc::from("(unreadable certificate)"),
            };
        };
        let names: Vec<&str> = cert.valid_dns_names().collect();
        fn has<'l>(list: &'l [String], names: &[&str]) -> Option<&'l String> {
            list.iter()
                .find(|id| names.iter().any(|n| n.eq_ignore_ascii_case(id)))
        }
        let mut found: Vec<(Role, &str, Option<&str>)> = Vec::new();
        for (role, list) in [
            (Role::Edge, &self.clients.edge),
            (Role::Adapter, &self.clients.adapter),
            (Role::Operator, &self.clients.operator),
        ] {
            if let Some(id) = has(list, &names) {
                found.push((role, id, None));
            }
        }
        for d in &self.clients.direct {
            if names.iter().any(|n| n.eq_ignore_ascii_case(&d.identity)) {
                found.push((Role::Direct, &d.identity, Some(&d.asid)));
            }
        }
        let shown = names.first().copied().unwrap_or("(no DNS name)");
        match found.as_slice() {
            [(role, id, asid)] => Peer {
                roles: Roles::of(&[*role]),
                direct_asid: asid.map(Arc::from),
                name: Arc::from(*id),
            },
            [] => Peer {
                roles: Roles::NONE,
                direct_asid: None,
                name: Arc::from(shown),
            },
            _ => {
                tracing::warn!(
                    identity = shown,
                    "a client certificate names identities of more than one role; no role given"
                );
                Peer {
                    roles: Roles::NONE,
                    direct_asid: None,
                    name: Arc::from(shown),
                }
            }
        }
    }

    /// The caller a request acts as, and how its ASID is proven: the named caller from an
    /// edge; the bound ASID for a direct caller (a request naming another ASID is refused).
    pub(crate) fn caller(
        &self,
        peer: Option<&Peer>,
        named: Option<pb::Caller>,
    ) -> Result<(pb::Caller, Proof<'_>), CallerError> {
        let Some(peer) = peer else {
            return Err(CallerError::Refused(denied(
                "the caller could not be identified",
            )));
        };
        if peer.roles.has(Role::Edge) {
            let caller = named.ok_or(CallerError::Missing)?;
            return Ok((caller, Proof::Forwarded(self.spine.as_ref())));
        }
        if let (true, Some(asid)) = (peer.roles.has(Role::Direct), &peer.direct_asid) {
            let mut caller = named.unwrap_or_default();
            if !caller.asid.is_empty() && caller.asid != **asid {
                let shown =
                    if caller.asid.len() == 12 && caller.asid.bytes().all(|b| b.is_ascii_digit()) {
                        caller.asid.as_str()
                    } else {
                        "(malformed)"
                    };
                let text = format!(
                    "this client is bound to ASID {asid} by its certificate and may not act as ASID {shown}"
                );
                caller.asid = asid.to_string();
                return Err(CallerError::Impersonation(Box::new(caller), denied(text)));
            }
            caller.asid = asid.to_string();
            caller.client_certificate.clear();
            caller.client_certificate_chain.clear();
            return Ok((caller, Proof::Bound));
        }
        Err(CallerError::Refused(denied(
            "this client's certificate does not grant this service",
        )))
    }
}

/// Why [`Trust::caller`] gave no caller.
#[derive(Debug)]
pub(crate) enum CallerError {
    /// An edge sent no caller (a client programming error).
    Missing,
    /// A direct caller named another ASID: the caller as bound (for the audit), and why.
    Impersonation(Box<pb::Caller>, Rejection),
    /// Not a caller of this service.
    Refused(Rejection),
}

/// The CA (or CAs) the Spine client certificates an edge forwards must chain to.
#[derive(Debug)]
pub(crate) struct SpineCa {
    anchors: Vec<TrustAnchor<'static>>,
}

impl SpineCa {
    /// Reads the CA certificates (PEM) of `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_der(&certs).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The trust anchors of `certs`.
    pub(crate) fn from_der(certs: &[CertificateDer<'_>]) -> Result<Self, String> {
        if certs.is_empty() {
            return Err("no certificates found".into());
        }
        let anchors = certs
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| format!("not a CA certificate: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(SpineCa { anchors })
    }

    /// Verifies a forwarded client certificate `leaf` with its `intermediates` at `now`:
    /// a chain to one of the anchors, every certificate within its validity period, and
    /// the client-authentication usage; then that it names `identity` (DNS subjectAltName).
    pub(crate) fn verify(
        &self,
        leaf: &[u8],
        intermediates: &[Vec<u8>],
        identity: &str,
        now: UnixTime,
    ) -> Result<(), CertificateProblem> {
        let leaf = CertificateDer::from(leaf);
        let cert =
            webpki::EndEntityCert::try_from(&leaf).map_err(|_| CertificateProblem::Invalid)?;
        let chain: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &chain,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                CertificateProblem::OutsideValidity
            }
            _ => CertificateProblem::Untrusted,
        })?;
        let named = ServerName::try_from(identity)
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok());
        if named {
            Ok(())
        } else {
            Err(CertificateProblem::OtherIdentity)
        }
    }
}

/// Why a forwarded certificate was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertificateProblem {
    /// Not a certificate.
    Invalid,
    /// No chain to the Spine CA (or a wrong usage).
    Untrusted,
    /// Expired or not yet valid.
    OutsideValidity,
    /// Valid, but for another identity.
    OtherIdentity,
}

#[cfg(test)]
mod tests;
