//! The Spine directory as core sees it: registered systems (ASID → ODS codes, category bags,
//! publish message sets, PDS publisher flag) and MESH mailboxes (mailbox → owning ODS code),
//! with every permission check NEMS makes (decisions.md §13–14).
//!
//! The directory is stored in redb and held in memory as an immutable snapshot that is
//! swapped after each change. At start-up the directory file (TOML, below) is applied:
//! every entry it names is created or replaced; entries added at run time over gRPC that the
//! file does not name are kept.
//!
//! ```toml
//! [[system]]
//! asid = "200000000111"                  # 12-digit ASID
//! description = "Leeds child health"      # optional
//! ods_codes = ["RR8"]                     # ODS codes linked to the ASID
//! category_bags = ["NEMS_SUBS_TYPE:EXPLICIT", "NEMS_EVENT_ID:VACCINATIONS_1"]
//! publish_message_sets = ["Vaccinations"] # publish interaction codes (optional)
//! pds_publisher = false                   # only PDS may publish pds-* events (optional)
//! certificate_identity = "nems-client.rr8.nhs.uk"  # mTLS client identity (optional)
//!
//! [[mailbox]]
//! id = "RR8MBX01"
//! ods_code = "RR8"
//! description = "Leeds CHO inbox"        # optional
//! ```

use std::collections::HashMap;
use std::path::Path;

use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;
use serde::Deserialize;

use crate::domain::Rejection;
use crate::domain::subscription::ValidSubscription;
use crate::trust::{CertificateProblem, Proof, SpineCa};

/// Category bag granting explicit subscriptions.
pub const BAG_EXPLICIT: &str = "NEMS_SUBS_TYPE:EXPLICIT";
/// Category bag granting generic subscriptions.
pub const BAG_GENERIC: &str = "NEMS_SUBS_TYPE:GENERIC";
/// Prefix of the per-event category bags (`NEMS_EVENT_ID:<WorkflowID>`).
pub const BAG_EVENT_PREFIX: &str = "NEMS_EVENT_ID:";

/// The directory file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryFile {
    /// Registered systems.
    #[serde(default)]
    pub system: Vec<SystemEntry>,
    /// Registered mailboxes.
    #[serde(default)]
    pub mailbox: Vec<MailboxEntry>,
}

/// A `[[system]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemEntry {
    /// 12-digit ASID.
    pub asid: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Linked ODS codes.
    #[serde(default)]
    pub ods_codes: Vec<String>,
    /// Category bag values.
    #[serde(default)]
    pub category_bags: Vec<String>,
    /// Publish interaction codes.
    #[serde(default)]
    pub publish_message_sets: Vec<String>,
    /// Spine/PDS publisher.
    #[serde(default)]
    pub pds_publisher: bool,
    /// Expected TLS client identity.
    #[serde(default)]
    pub certificate_identity: String,
}

/// A `[[mailbox]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxEntry {
    /// Mailbox id.
    pub id: String,
    /// Owning ODS code.
    pub ods_code: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

impl DirectoryFile {
    /// Reads and checks a directory file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read directory file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("directory file {}: {e}", path.display()))
    }

    /// Parses and checks directory TOML.
    pub fn parse(text: &str) -> Result<Self, String> {
        // Never `e.to_string()`: toml's Display quotes the source line.
        let file: DirectoryFile = toml::from_str(text)
            .map_err(|e| nems_runtime::config::describe_toml_error(text, &e))?;
        for s in &file.system {
            check_system(&s.to_pb()).map_err(|e| format!("system {}: {e}", s.asid))?;
        }
        for m in &file.mailbox {
            check_mailbox(&m.to_pb()).map_err(|e| format!("mailbox {}: {e}", m.id))?;
        }
        Ok(file)
    }
}

impl SystemEntry {
    /// The protobuf form.
    pub fn to_pb(&self) -> pb::SpineSystem {
        pb::SpineSystem {
            asid: self.asid.clone(),
            ods_codes: self
                .ods_codes
                .iter()
                .map(|c| c.to_ascii_uppercase())
                .collect(),
            category_bags: self.category_bags.clone(),
            publish_message_sets: self.publish_message_sets.clone(),
            pds_publisher: self.pds_publisher,
            certificate_identity: self.certificate_identity.clone(),
            description: self.description.clone(),
        }
    }
}

impl MailboxEntry {
    /// The protobuf form.
    pub fn to_pb(&self) -> pb::MeshMailbox {
        pb::MeshMailbox {
            mailbox_id: self.id.to_ascii_uppercase(),
            ods_code: self.ods_code.to_ascii_uppercase(),
            description: self.description.clone(),
        }
    }
}

/// Checks a system entry's shape.
pub fn check_system(s: &pb::SpineSystem) -> Result<(), String> {
    if !is_asid(&s.asid) {
        return Err("asid must be 12 digits".into());
    }
    if let Some(bad) = s.ods_codes.iter().find(|c| !is_code(c)) {
        return Err(format!("ods code `{bad}` is not an ODS code"));
    }
    if let Some(bad) = s.category_bags.iter().find(|b| !b.contains(':')) {
        return Err(format!("category bag `{bad}` must be NAME:VALUE"));
    }
    Ok(())
}

/// Checks a mailbox entry's shape.
pub fn check_mailbox(m: &pb::MeshMailbox) -> Result<(), String> {
    let ok_id = !m.mailbox_id.is_empty()
        && m.mailbox_id.len() <= 100
        && m.mailbox_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok_id {
        return Err("mailbox id must be letters, digits, - or _".into());
    }
    if !is_code(&m.ods_code) {
        return Err("ods_code must be an ODS code".into());
    }
    Ok(())
}

fn is_asid(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_code(s: &str) -> bool {
    !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// An immutable snapshot of the directory.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    systems: HashMap<String, pb::SpineSystem>,
    mailboxes: HashMap<String, pb::MeshMailbox>,
}

fn denied(text: impl Into<String>) -> Rejection {
    Rejection::new(SpineCode::AccessDenied, text)
}

impl Directory {
    /// Builds a snapshot.
    pub fn new(systems: Vec<pb::SpineSystem>, mailboxes: Vec<pb::MeshMailbox>) -> Self {
        Directory {
            systems: systems.into_iter().map(|s| (s.asid.clone(), s)).collect(),
            mailboxes: mailboxes
                .into_iter()
                .map(|m| (m.mailbox_id.clone(), m))
                .collect(),
        }
    }

    /// Number of systems and mailboxes.
    pub fn len(&self) -> (usize, usize) {
        (self.systems.len(), self.mailboxes.len())
    }

    /// Looks a system up by ASID.
    pub fn system(&self, asid: &str) -> Option<&pb::SpineSystem> {
        self.systems.get(asid)
    }

    /// Looks a mailbox up (case-insensitive).
    pub fn mailbox(&self, id: &str) -> Option<&pb::MeshMailbox> {
        self.mailboxes.get(&id.to_ascii_uppercase())
    }

    /// Checks the caller: a registered ASID, its certificate as `proof` requires, and the
    /// JWT organisation linked to it (a direct caller may name none).
    pub(crate) fn caller(
        &self,
        caller: &pb::Caller,
        proof: Proof<'_>,
    ) -> Result<&pb::SpineSystem, Rejection> {
        let system = self.systems.get(&caller.asid).ok_or_else(|| {
            Rejection::new(
                SpineCode::AsidCheckFailed,
                format!(
                    "the calling ASID {} is not registered with this service",
                    shown_asid(&caller.asid)
                ),
            )
        })?;
        if let Proof::Forwarded(spine) = proof {
            check_certificate(system, caller, spine)?;
        }
        let ods = caller.ods_code.to_ascii_uppercase();
        let bound_without_ods = matches!(proof, Proof::Bound) && ods.is_empty();
        if !bound_without_ods && !system.ods_codes.contains(&ods) {
            return Err(denied(format!(
                "the requesting organisation {} is not linked to ASID {}",
                shown_code(&ods),
                system.asid
            )));
        }
        Ok(system)
    }

    /// Checks that `system` may create `subscription` (decisions.md §13).
    pub fn authorise_subscription(
        &self,
        system: &pb::SpineSystem,
        subscription: &ValidSubscription,
    ) -> Result<(), Rejection> {
        let (bag, kind) = match subscription.criteria.kind() {
            pb::SubscriptionKind::Explicit => (BAG_EXPLICIT, "explicit"),
            _ => (BAG_GENERIC, "generic"),
        };
        if !system.category_bags.iter().any(|b| b == bag) {
            return Err(denied(format!(
                "ASID {} may not create {kind} subscriptions (category bag {bag} missing)",
                system.asid
            )));
        }
        for workflow in &subscription.workflow_ids {
            let needed = format!("{BAG_EVENT_PREFIX}{workflow}");
            if !system.category_bags.contains(&needed) {
                return Err(denied(format!(
                    "ASID {} may not subscribe to {workflow} events (category bag {needed} missing)",
                    system.asid
                )));
            }
        }
        // An ODS code the directory does not know is answered like any other code not linked
        // to the ASID (decisions.md §13), so that answers do not reveal which codes exist.
        let contact = &subscription.contact_ods;
        if !system.ods_codes.contains(contact) {
            return Err(denied(format!(
                "the contact organisation {} is not linked to ASID {}",
                shown_code(contact),
                system.asid
            )));
        }
        let Some(mailbox) = self.mailbox(&subscription.mailbox) else {
            return Err(Rejection::new(
                SpineCode::InvalidRequestMessage,
                format!(
                    "channel.endpoint {} is not a registered MESH mailbox",
                    shown_code(&subscription.mailbox)
                ),
            ));
        };
        if mailbox.ods_code != *contact {
            return Err(denied(format!(
                "mailbox {} belongs to organisation {}, not to the contact organisation {}",
                mailbox.mailbox_id,
                mailbox.ods_code,
                shown_code(contact)
            )));
        }
        Ok(())
    }

    /// Checks that `system` may publish events of `event_type` (decisions.md §14).
    pub fn authorise_publish(
        &self,
        system: &pb::SpineSystem,
        event_type: &pb::EventType,
    ) -> Result<(), Rejection> {
        if event_type.pds_only {
            if system.pds_publisher {
                return Ok(());
            }
            return Err(Rejection::new(
                SpineCode::AsidCheckFailed,
                format!(
                    "{} events are published only by the PDS publisher; ASID {} is not one",
                    event_type.code, system.asid
                ),
            ));
        }
        // Being the PDS publisher grants pds-* events only; other events need their
        // message set like any other ASID.
        let allowed = system.publish_message_sets.iter().any(|m| {
            m.eq_ignore_ascii_case(&event_type.publish_interaction_code)
                || m.eq_ignore_ascii_case(&event_type.code)
        });
        if allowed {
            Ok(())
        } else {
            Err(Rejection::new(
                SpineCode::AsidCheckFailed,
                format!(
                    "ASID {} is not registered to publish {} events (message set {})",
                    system.asid, event_type.code, event_type.publish_interaction_code
                ),
            ))
        }
    }

    /// True when the system owns a subscription whose contact organisation is `owner_ods`.
    pub fn owns(system: &pb::SpineSystem, owner_ods: &str) -> bool {
        system.ods_codes.iter().any(|c| c == owner_ods)
    }
}

/// The client certificate an edge forwarded (mutual TLS at the edge), verified here:
/// with the Spine CA configured one is required, chains to that CA, is within its validity
/// period now and names the identity the directory registers for the ASID (a DNS name in
/// its subjectAltName). Without the Spine CA none may be forwarded, as core could not
/// verify it.
fn check_certificate(
    system: &pb::SpineSystem,
    caller: &pb::Caller,
    spine: Option<&SpineCa>,
) -> Result<(), Rejection> {
    let der = caller.client_certificate.as_slice();
    let Some(spine) = spine else {
        if der.is_empty() {
            return Ok(());
        }
        return Err(denied(
            "a client certificate was forwarded but core has no Spine CA to verify it (core.spine_ca_file)",
        ));
    };
    if der.is_empty() {
        return Err(denied(format!(
            "mutual TLS is required: no client certificate was forwarded for ASID {}",
            system.asid
        )));
    }
    if system.certificate_identity.is_empty() {
        return Err(denied(format!(
            "ASID {} has no certificate identity registered for mutual TLS",
            system.asid
        )));
    }
    let now = rustls_pki_types::UnixTime::now();
    match spine.verify(
        der,
        &caller.client_certificate_chain,
        &system.certificate_identity,
        now,
    ) {
        Ok(()) => Ok(()),
        Err(CertificateProblem::OtherIdentity) => Err(denied(format!(
            "the TLS client certificate does not belong to ASID {}",
            system.asid
        ))),
        Err(CertificateProblem::OutsideValidity) => Err(denied(format!(
            "the TLS client certificate forwarded for ASID {} is expired or not yet valid",
            system.asid
        ))),
        Err(CertificateProblem::Untrusted | CertificateProblem::Invalid) => Err(denied(format!(
            "the TLS client certificate forwarded for ASID {} does not chain to the Spine CA",
            system.asid
        ))),
    }
}

fn shown_asid(asid: &str) -> &str {
    if is_asid(asid) { asid } else { "(malformed)" }
}

fn shown_code(code: &str) -> &str {
    if is_code(code) && code.bytes().any(|b| b.is_ascii_alphabetic()) {
        code
    } else {
        "(value not shown)"
    }
}

#[cfg(test)]
mod tests;
