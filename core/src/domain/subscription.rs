//! Validation of a Subscription create request against `EMS-Subscription-1` (nems.md §4.1)
//! and the criteria grammar, producing what the store keeps.

use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;

use super::catalogue::Catalogue;
use super::criteria::{self, rule_name};
use super::{Rejection, datetime};

/// The `EMS-Subscription-1` profile URL.
pub const PROFILE: &str = "https://fhir.nhs.uk/STU3/StructureDefinition/EMS-Subscription-1";

/// The prefix of the contact value; the ODS code follows it.
pub const CONTACT_PREFIX: &str = "https://directory.spineservices.nhs.uk/STU3/Organization/";

/// The longest `Subscription.reason` accepted, in characters.
pub const MAX_REASON_CHARS: usize = 1_000;

/// The longest `Subscription.contact.value` accepted, in characters.
pub const MAX_CONTACT_VALUE_CHARS: usize = 256;

/// Elements of the base resource that an `EMS-Subscription-1` must not carry.
const FORBIDDEN_OTHER_ELEMENTS: [&str; 3] = ["contained", "modifierExtension", "implicitRules"];

/// A subscription that passed every element and criteria rule (permissions are checked
/// separately against the directory).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSubscription {
    /// The parsed criteria.
    pub criteria: pb::Criteria,
    /// ODS code of the first contact.
    pub contact_ods: String,
    /// Recipient mailbox, upper case.
    pub mailbox: String,
    /// `end` in epoch milliseconds, if any.
    pub end_ms: Option<u64>,
    /// Information notices (deprecated event types).
    pub notices: Vec<pb::Notice>,
    /// Workflow ids of the subscribed event types (for category-bag checks).
    pub workflow_ids: Vec<String>,
}

fn resource_error(text: impl Into<String>) -> Rejection {
    Rejection::new(SpineCode::InvalidResource, text)
}

/// Checks a create request's resource.
pub fn validate(
    resource: &pb::SubscriptionResource,
    catalogue: &Catalogue,
    now_ms: u64,
) -> Result<ValidSubscription, Rejection> {
    check_server_assigned(resource)?;
    if let Some(name) = resource
        .other_elements
        .iter()
        .find(|e| FORBIDDEN_OTHER_ELEMENTS.contains(&e.as_str()))
    {
        return Err(resource_error(format!(
            "Subscription.{name} is not allowed in an EMS-Subscription-1"
        )));
    }
    if resource.status != "requested" {
        return Err(resource_error(
            "Subscription.status must be `requested` when creating a subscription",
        ));
    }
    if resource
        .contact
        .iter()
        .any(|c| c.value.chars().count() > MAX_CONTACT_VALUE_CHARS)
    {
        return Err(resource_error(format!(
            "Subscription.contact.value is longer than {MAX_CONTACT_VALUE_CHARS} characters"
        )));
    }
    if resource.reason.chars().count() > MAX_REASON_CHARS {
        return Err(resource_error(format!(
            "Subscription.reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    let contact_ods = contact_ods(resource)?;
    if resource.reason.trim().is_empty() {
        return Err(resource_error("Subscription.reason is required"));
    }
    if !resource.error.is_empty() {
        return Err(resource_error(
            "Subscription.error must not be sent (0..0 in EMS-Subscription-1)",
        ));
    }
    if !resource.tag.is_empty() {
        return Err(resource_error(
            "Subscription.tag must not be sent (0..0 in EMS-Subscription-1); use tag= in the criteria",
        ));
    }
    let mailbox = channel_mailbox(resource)?;
    let end_ms = end(resource, now_ms)?;
    let criteria = criteria::parse(&resource.criteria, catalogue)?;
    let (notices, workflow_ids) = lifecycle(&criteria, catalogue)?;
    Ok(ValidSubscription {
        criteria,
        contact_ods,
        mailbox,
        end_ms,
        notices,
        workflow_ids,
    })
}

/// The part of a create request that is stored: what the client sent, without anything
/// the service assigns or rejects.
pub fn stored_content(request: &pb::SubscriptionResource) -> pb::SubscriptionResource {
    pb::SubscriptionResource {
        contact: request.contact.clone(),
        end: request.end.clone(),
        reason: request.reason.clone(),
        criteria: request.criteria.clone(),
        channel: request.channel.clone(),
        ..Default::default()
    }
}

/// The resource as it is read back: the stored content with the service-assigned `id`
/// and `meta`, and `status` `active` (or `off` once `end` has passed at `now_ms`).
pub fn read_back(
    content: &pb::SubscriptionResource,
    id: &str,
    created_ms: u64,
    ended: bool,
) -> pb::SubscriptionResource {
    pb::SubscriptionResource {
        id: id.to_string(),
        meta: Some(pb::ResourceMeta {
            version_id: "1".into(),
            last_updated: datetime::format_instant_ms(created_ms),
            profile: vec![PROFILE.into()],
        }),
        status: if ended { "off".into() } else { "active".into() },
        ..content.clone()
    }
}

/// The 16-byte hash of [`dedup_key`], the duplicate index key.
pub fn dedup_hash(v: &ValidSubscription) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(dedup_key(v).as_bytes())[..16].to_vec()
}

/// The key under which an identical live subscription is a duplicate (decisions.md §5):
/// explicit by NHS number, event set, mailbox, contact ODS and filters; generic by rule,
/// organisation, event, mailbox, contact ODS and filters.
pub fn dedup_key(v: &ValidSubscription) -> String {
    let c = &v.criteria;
    let mut ages: Vec<String> = c
        .age
        .iter()
        .map(|a| format!("{}{}", a.comparator, a.years))
        .collect();
    ages.sort();
    let filters = format!("{}|{}", ages.join(","), c.gp_registration);
    match c.kind() {
        pb::SubscriptionKind::Explicit => {
            let mut events = c.event_codes.clone();
            events.sort();
            format!(
                "E|{}|{}|{}|{}|{filters}",
                c.nhs_number,
                events.join(","),
                v.mailbox,
                v.contact_ods
            )
        }
        _ => format!(
            "G|{}|{}|{}|{}|{}|{filters}",
            rule_name(c.rule_type()),
            c.organisation_code,
            c.event_codes.join(","),
            v.mailbox,
            v.contact_ods
        ),
    }
}

fn check_server_assigned(resource: &pb::SubscriptionResource) -> Result<(), Rejection> {
    let element = |text: &str| Rejection::new(SpineCode::InvalidElement, text);
    if !resource.id.is_empty() {
        return Err(element(
            "Subscription.id must not be sent: the service assigns the id",
        ));
    }
    if let Some(meta) = &resource.meta {
        if !meta.version_id.is_empty() {
            return Err(element(
                "Subscription.meta.versionId must not be sent: the service assigns it",
            ));
        }
        if !meta.last_updated.is_empty() {
            return Err(element(
                "Subscription.meta.lastUpdated must not be sent: the service assigns it",
            ));
        }
        if !meta.profile.is_empty() && !meta.profile.iter().any(|p| p == PROFILE) {
            return Err(resource_error(format!(
                "Subscription.meta.profile must be {PROFILE}"
            )));
        }
    }
    Ok(())
}

fn contact_ods(resource: &pb::SubscriptionResource) -> Result<String, Rejection> {
    let Some(contact) = resource.contact.first() else {
        return Err(resource_error(
            "Subscription.contact is required: the subscribing organisation as a url",
        ));
    };
    if contact.system != "url" {
        return Err(resource_error("Subscription.contact.system must be `url`"));
    }
    if contact.r#use != "work" {
        return Err(resource_error("Subscription.contact.use must be `work`"));
    }
    let ods = contact
        .value
        .strip_prefix(CONTACT_PREFIX)
        .filter(|ods| !ods.is_empty() && ods.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or_else(|| {
            resource_error(format!(
                "Subscription.contact.value must be {CONTACT_PREFIX}[ODS_CODE]"
            ))
        })?;
    Ok(ods.to_ascii_uppercase())
}

fn channel_mailbox(resource: &pb::SubscriptionResource) -> Result<String, Rejection> {
    let Some(channel) = &resource.channel else {
        return Err(resource_error("Subscription.channel is required"));
    };
    if channel.r#type != "message" {
        return Err(resource_error(
            "Subscription.channel.type must be `message` (delivery by MESH)",
        ));
    }
    let mailbox = channel.endpoint.trim();
    let well_formed = !mailbox.is_empty()
        && mailbox.len() <= 100
        && mailbox
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !well_formed {
        return Err(resource_error(
            "Subscription.channel.endpoint must be a MESH mailbox id",
        ));
    }
    Ok(mailbox.to_ascii_uppercase())
}

fn end(resource: &pb::SubscriptionResource, now_ms: u64) -> Result<Option<u64>, Rejection> {
    if resource.end.is_empty() {
        return Ok(None);
    }
    let instant = datetime::parse_instant(&resource.end).ok_or_else(|| {
        resource_error(
            "Subscription.end must be a FHIR instant with a time zone, e.g. 2030-01-31T00:00:00+00:00",
        )
    })?;
    let end_ms = datetime::to_ms(instant);
    if end_ms <= now_ms {
        return Err(Rejection::new(
            SpineCode::InvalidRequestMessage,
            "Subscription.end is in the past",
        ));
    }
    Ok(Some(end_ms))
}

fn lifecycle(
    criteria: &pb::Criteria,
    catalogue: &Catalogue,
) -> Result<(Vec<pb::Notice>, Vec<String>), Rejection> {
    let mut notices = Vec::new();
    let mut workflows = Vec::new();
    for code in &criteria.event_codes {
        let Some(event_type) = catalogue.get(code) else {
            continue;
        };
        match event_type.state() {
            pb::EventTypeState::NoLongerSupported => {
                return Err(Rejection::new(
                    SpineCode::NoLongerSupported,
                    format!(
                        "the {code} event type is no longer supported: new subscriptions are not accepted"
                    ),
                ));
            }
            pb::EventTypeState::Withdrawn => {
                return Err(Rejection::new(
                    SpineCode::Withdrawn,
                    format!("the {code} event type has been withdrawn"),
                ));
            }
            pb::EventTypeState::Deprecated => notices.push(pb::Notice {
                spine_code: SpineCode::Deprecated.as_str().into(),
                diagnostics: Catalogue::notice_text(event_type),
            }),
            _ => {}
        }
        workflows.push(event_type.workflow_id.clone());
    }
    Ok((notices, workflows))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    pub(crate) fn sample() -> pb::SubscriptionResource {
        pb::SubscriptionResource {
            meta: Some(pb::ResourceMeta {
                profile: vec![PROFILE.into()],
                ..Default::default()
            }),
            status: "requested".into(),
            contact: vec![pb::ContactPoint {
                system: "url".into(),
                value: format!("{CONTACT_PREFIX}RR8"),
                r#use: "work".into(),
            }],
            reason: "Health visiting service responsible for Leeds".into(),
            criteria: "/Bundle?type=message&serviceType=UHV&Patient.identifier=http://fhir.nhs.net/Id/nhs-number|9434765919&MessageHeader.event=pds-change-of-address-1".into(),
            channel: Some(pb::SubscriptionChannel {
                r#type: "message".into(),
                endpoint: "mailbox1234".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn rejected(r: pb::SubscriptionResource) -> (SpineCode, String) {
        let e = validate(&r, &Catalogue::default(), NOW).unwrap_err();
        (e.code, e.diagnostics)
    }

    #[test]
    fn reason_and_contact_values_are_length_capped() {
        let mut r = sample();
        r.reason = "a".repeat(MAX_REASON_CHARS);
        assert!(validate(&r, &Catalogue::default(), NOW).is_ok());
        r.reason = "a".repeat(MAX_REASON_CHARS + 1);
        let (code, text) = rejected(r);
        assert_eq!(code, SpineCode::InvalidResource);
        assert!(
            text.contains("Subscription.reason is longer than 1000"),
            "{text}"
        );
        let mut r = sample();
        r.contact[0].value = format!("{CONTACT_PREFIX}{}", "A".repeat(MAX_CONTACT_VALUE_CHARS));
        let (code, text) = rejected(r);
        assert_eq!(code, SpineCode::InvalidResource);
        assert!(
            text.contains("Subscription.contact.value is longer than 256"),
            "{text}"
        );
    }

    #[test]
    fn spec_example_is_valid() {
        let v = validate(&sample(), &Catalogue::default(), NOW).unwrap();
        assert_eq!(v.contact_ods, "RR8");
        assert_eq!(v.mailbox, "MAILBOX1234");
        assert_eq!(v.workflow_ids, vec!["CHANGEOFADDRESS_1"]);
        assert!(v.notices.is_empty());
        assert!(dedup_key(&v).starts_with("E|9434765919|pds-change-of-address-1|MAILBOX1234|RR8|"));
    }

    #[test]
    fn element_rules_table() {
        type Edit = fn(&mut pb::SubscriptionResource);
        let cases: Vec<(Edit, SpineCode, &str)> = vec![
            (
                |r| r.id = "abc".into(),
                SpineCode::InvalidElement,
                "Subscription.id",
            ),
            (
                |r| r.meta.as_mut().unwrap().version_id = "1".into(),
                SpineCode::InvalidElement,
                "versionId",
            ),
            (
                |r| r.meta.as_mut().unwrap().last_updated = "2020-01-01T00:00:00Z".into(),
                SpineCode::InvalidElement,
                "lastUpdated",
            ),
            (
                |r| r.meta.as_mut().unwrap().profile = vec!["http://other".into()],
                SpineCode::InvalidResource,
                "meta.profile",
            ),
            (
                |r| r.other_elements.push("contained".into()),
                SpineCode::InvalidResource,
                "contained",
            ),
            (
                |r| r.status = "active".into(),
                SpineCode::InvalidResource,
                "requested",
            ),
            (
                |r| r.contact.clear(),
                SpineCode::InvalidResource,
                "contact is required",
            ),
            (
                |r| r.contact[0].system = "email".into(),
                SpineCode::InvalidResource,
                "contact.system",
            ),
            (
                |r| r.contact[0].r#use = "home".into(),
                SpineCode::InvalidResource,
                "contact.use",
            ),
            (
                |r| r.contact[0].value = "RR8".into(),
                SpineCode::InvalidResource,
                "contact.value",
            ),
            (
                |r| r.contact[0].value = CONTACT_PREFIX.into(),
                SpineCode::InvalidResource,
                "contact.value",
            ),
            (
                |r| r.reason = " ".into(),
                SpineCode::InvalidResource,
                "reason",
            ),
            (
                |r| r.error = "x".into(),
                SpineCode::InvalidResource,
                "error",
            ),
            (
                |r| r.tag.push(pb::Coding::default()),
                SpineCode::InvalidResource,
                "Subscription.tag",
            ),
            (
                |r| r.channel = None,
                SpineCode::InvalidResource,
                "channel is required",
            ),
            (
                |r| r.channel.as_mut().unwrap().r#type = "rest-hook".into(),
                SpineCode::InvalidResource,
                "channel.type",
            ),
            (
                |r| r.channel.as_mut().unwrap().endpoint = String::new(),
                SpineCode::InvalidResource,
                "channel.endpoint",
            ),
            (
                |r| r.end = "2020-01-01".into(),
                SpineCode::InvalidResource,
                "instant",
            ),
            (
                |r| r.end = "2001-01-01T00:00:00+00:00".into(),
                SpineCode::InvalidRequestMessage,
                "past",
            ),
            (
                |r| r.criteria = String::new(),
                SpineCode::InvalidResource,
                "criteria is required",
            ),
            (
                |r| r.criteria = "/Bundle?type=message".into(),
                SpineCode::InvalidRequestMessage,
                "needs Patient.identifier",
            ),
        ];
        for (edit, code, needle) in cases {
            let mut r = sample();
            edit(&mut r);
            let (got, text) = rejected(r);
            assert_eq!(got, code, "{text}");
            assert!(text.contains(needle), "`{text}` lacks `{needle}`");
        }
    }

    #[test]
    fn harmless_other_elements_are_ignored_and_future_end_is_kept() {
        let mut r = sample();
        r.other_elements = vec!["text".into(), "extension".into()];
        r.end = "2099-01-01T00:00:00+00:00".into();
        let v = validate(&r, &Catalogue::default(), NOW).unwrap();
        assert!(v.end_ms.is_some());
        let content = stored_content(&r);
        assert!(
            content.other_elements.is_empty()
                && content.meta.is_none()
                && content.status.is_empty()
        );
        let stored = read_back(&content, "0123", NOW, false);
        assert_eq!(stored.status, "active");
        assert_eq!(stored.id, "0123");
        assert_eq!(stored.end, r.end);
        assert_eq!(stored.meta.unwrap().profile, vec![PROFILE.to_string()]);
        assert_eq!(read_back(&content, "0123", NOW, true).status, "off");
        assert_eq!(dedup_hash(&v).len(), 16);
    }

    #[test]
    fn lifecycle_states_notice_or_reject() {
        use crate::domain::catalogue::{EventTypeOverride, LifecycleState};
        let with_state = |state| {
            Catalogue::new(&[EventTypeOverride {
                code: "pds-change-of-address-1".into(),
                state: Some(state),
                lifecycle_note: Some("ends 2027".into()),
                display: None,
                workflow_id: None,
                publish_interaction_code: None,
                pds_only: None,
                message_event_types: None,
                focus_resource_type: None,
                routing_optional: None,
            }])
            .unwrap()
        };
        let v = validate(&sample(), &with_state(LifecycleState::Deprecated), NOW).unwrap();
        assert_eq!(v.notices.len(), 1);
        assert_eq!(v.notices[0].spine_code, "DEPRECATED");
        assert!(v.notices[0].diagnostics.contains("ends 2027"));
        let e = validate(
            &sample(),
            &with_state(LifecycleState::NoLongerSupported),
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.code, SpineCode::NoLongerSupported);
        let e = validate(&sample(), &with_state(LifecycleState::Withdrawn), NOW).unwrap_err();
        assert_eq!(e.code, SpineCode::Withdrawn);
    }
}
