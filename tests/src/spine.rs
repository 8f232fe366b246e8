//! Spine request helpers: callers from the test directory, JWTs, the NEMS headers, and
//! Subscription resources.

use std::time::{SystemTime, UNIX_EPOCH};

use nems_proto::v1 as pb;
use serde_json::json;

/// A calling system from [`crate::stack::TEST_DIRECTORY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// ASID.
    pub asid: &'static str,
    /// ODS code.
    pub ods: &'static str,
}

/// Subscriber and publisher of vaccinations and professional contacts (RR8).
pub const SUBSCRIBER: Caller = Caller {
    asid: "200000000111",
    ods: "RR8",
};
/// Screening publisher.
pub const SCREENING: Caller = Caller {
    asid: "200000000222",
    ods: "Y01234",
};
/// The PDS publisher.
pub const PDS: Caller = Caller {
    asid: "200000000333",
    ods: "X26",
};
/// Another organisation (ABC).
pub const OTHER: Caller = Caller {
    asid: "200000000444",
    ods: "ABC",
};

/// The service ASID the edge expects in `toASID`.
pub const SERVICE_ASID: &str = "200000000306";

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Create a subscription.
    Create,
    /// Read one.
    Read,
    /// Delete one.
    Delete,
    /// Publish with this interaction code (e.g. `Vaccinations`).
    Publish(&'static str),
}

impl Op {
    fn scope(self) -> &'static str {
        match self {
            Op::Create | Op::Delete => "patient/Subscription.write",
            Op::Read => "patient/Subscription.read",
            Op::Publish(_) => "patient/Bundle.write",
        }
    }

    fn interaction(self) -> String {
        match self {
            Op::Create => "urn:nhs:names:services:clinicals-sync:SubscriptionsApiPost".into(),
            Op::Read => "urn:nhs:names:services:clinicals-sync:SubscriptionsApiGet".into(),
            Op::Delete => "urn:nhs:names:services:clinicals-sync:SubscriptionsApiDelete".into(),
            Op::Publish(code) => format!("urn:nhs:names:services:events:{code}.Write"),
        }
    }
}

/// A valid unsigned JWT for `caller` with `scope`.
pub fn jwt(caller: Caller, scope: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    nems_edge::jwt::encode(&json!({
        "iss": "https://nems-tests.example",
        "sub": format!("https://fhir.nhs.uk/Id/accredited-system|{}", caller.asid),
        "aud": "https://nems.example/STU3",
        "exp": now + 300,
        "iat": now,
        "reason_for_request": "directcare",
        "scope": scope,
        "requesting_system": format!("https://fhir.nhs.uk/Id/accredited-system|{}", caller.asid),
        "requesting_organisation": format!("https://fhir.nhs.uk/Id/ods-organization-code|{}", caller.ods),
    }))
}

/// The NEMS headers for `caller` doing `op` (no media-type headers).
pub fn headers(caller: Caller, op: Op) -> Vec<(&'static str, String)> {
    vec![
        (
            "Authorization",
            format!("Bearer {}", jwt(caller, op.scope())),
        ),
        ("fromASID", caller.asid.to_string()),
        ("toASID", SERVICE_ASID.to_string()),
        ("InteractionID", op.interaction()),
    ]
}

/// [`headers`] plus `Content-Type` (and `Accept` when given).
pub fn with_media(
    caller: Caller,
    op: Op,
    content_type: &str,
    accept: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut h = headers(caller, op);
    h.push(("Content-Type", content_type.to_string()));
    if let Some(a) = accept {
        h.push(("Accept", a.to_string()));
    }
    h
}

/// The caller as core's gRPC API takes it.
pub fn pb_caller(caller: Caller) -> pb::Caller {
    pb::Caller {
        asid: caller.asid.into(),
        ods_code: caller.ods.into(),
        user: String::new(),
        request_id: "test".into(),
        client_certificate: Vec::new(),
        client_certificate_chain: Vec::new(),
    }
}

/// An `EMS-Subscription-1` resource in XML for `criteria` (raw, `&` not yet escaped).
pub fn subscription_xml(contact_ods: &str, mailbox: &str, criteria: &str) -> String {
    format!(
        r#"<Subscription xmlns="http://hl7.org/fhir"><meta><profile value="https://fhir.nhs.uk/STU3/StructureDefinition/EMS-Subscription-1"/></meta><status value="requested"/><contact><system value="url"/><value value="https://directory.spineservices.nhs.uk/STU3/Organization/{contact_ods}"/><use value="work"/></contact><reason value="Direct care"/><criteria value="{}"/><channel><type value="message"/><endpoint value="{mailbox}"/></channel></Subscription>"#,
        criteria.replace('&', "&amp;")
    )
}

/// The same resource in JSON.
pub fn subscription_json(contact_ods: &str, mailbox: &str, criteria: &str) -> String {
    json!({
        "resourceType": "Subscription",
        "meta": {"profile": ["https://fhir.nhs.uk/STU3/StructureDefinition/EMS-Subscription-1"]},
        "status": "requested",
        "contact": [{"system": "url", "value": format!("https://directory.spineservices.nhs.uk/STU3/Organization/{contact_ods}"), "use": "work"}],
        "reason": "Direct care",
        "criteria": criteria,
        "channel": {"type": "message", "endpoint": mailbox},
    })
    .to_string()
}

/// The resource as core's gRPC API takes it.
pub fn subscription_pb(
    contact_ods: &str,
    mailbox: &str,
    criteria: &str,
) -> pb::SubscriptionResource {
    pb::SubscriptionResource {
        meta: Some(pb::ResourceMeta {
            profile: vec!["https://fhir.nhs.uk/STU3/StructureDefinition/EMS-Subscription-1".into()],
            ..Default::default()
        }),
        status: "requested".into(),
        contact: vec![pb::ContactPoint {
            system: "url".into(),
            value: format!(
                "https://directory.spineservices.nhs.uk/STU3/Organization/{contact_ods}"
            ),
            r#use: "work".into(),
        }],
        reason: "Direct care".into(),
        criteria: criteria.into(),
        channel: Some(pb::SubscriptionChannel {
            r#type: "message".into(),
            endpoint: mailbox.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Explicit criteria for one NHS number and event codes, plus extra components.
pub fn explicit(nhs: &str, events: &[&str], extra: &str) -> String {
    let mut c =
        format!("/Bundle?type=message&Patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}");
    for e in events {
        c.push_str("&MessageHeader.event=");
        c.push_str(e);
    }
    c.push_str(extra);
    c
}

/// Generic criteria.
pub fn generic(rule: &str, code: &str, event: &str, extra: &str) -> String {
    format!(
        "/Bundle?type=message&subscriptionRuleType={rule}&Organization.identifier={code}&MessageHeader.event={event}{extra}"
    )
}
