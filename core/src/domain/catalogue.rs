//! The event catalogue: the ten NEMS event types built in (nems.md §6), overridable and
//! extendable by configuration (for example to deprecate or withdraw an event type).

use std::collections::BTreeMap;

use nems_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// The `MessageHeader.event` code system.
pub const EVENT_TYPE_SYSTEM: &str = "https://fhir.nhs.uk/STU3/CodeSystem/EventType-1";

/// Codes of `EventType-1` that exist but are not NEMS events (nems.md §6), so that their
/// rejection can say so precisely.
pub const NON_NEMS_EVENT_CODES: &[&str] = &[
    "additional-demographics-1",
    "admission-details-1",
    "allergies-and-adverse-reactions-1",
    "assessment-scales-1",
    "birth-details-1",
    "blood-spot-sample-taken-1",
    "clinical-risk-factors-1",
    "problem-list-1",
    "discharge-details-1",
    "early-years-progress-1",
    "emergency-care-attendance-1",
    "examination-findings-1",
    "family-history-1",
    "feeding-status-1",
    "individual-requirements-1",
    "information-and-advice-given-1",
    "observations-1",
    "medication-statement-1",
    "developmental-skills-1",
    "parent-guardian-or-personal-comment-1",
    "personal-contacts-1",
    "plan-and-requested-actions-1",
    "professional-summary-1",
    "referral-1",
    "safety-alerts-1",
    "social-context-household-1",
    "social-context-1",
    "educational-history-1",
    "legal-information-1",
    "blood-spot-card-received-1",
    "medication-administration-1",
    "investigation-results-1",
    "national-population-failsafe-alert-1",
    "national-population-failsafe-alert-nullify-1",
    "failsafe-message-gp-1",
    "failsafe-message-hvs-1",
    "failsafe-message-bloodspot-outcome-1",
    "failsafe-message-nipe-newborn-1",
    "failsafe-message-newborn-hearing-1",
    "failsafe-message-response-gp-1",
    "failsafe-message-response-hvs-1",
    "failsafe-message-response-bloodspot-outcome-1",
    "failsafe-message-response-nipe-newborn-1",
    "failsafe-message-response-newborn-hearing-1",
];

struct Builtin {
    code: &'static str,
    display: &'static str,
    workflow: &'static str,
    interaction: &'static str,
    pds_only: bool,
    types: &'static [&'static str],
    focus: &'static str,
    routing_optional: bool,
}

const NEW_DELETE: &[&str] = &["new", "delete"];
const NEW_ONLY: &[&str] = &["new"];
const ALL_TYPES: &[&str] = &["new", "update", "delete"];

const BUILTIN: &[Builtin] = &[
    Builtin {
        code: "blood-spot-test-outcome-1",
        display: "Blood Spot Test Outcome",
        workflow: "BLOODSPOTTESTOUTCOME_1",
        interaction: "Bloodspottestoutcome",
        pds_only: false,
        types: NEW_DELETE,
        focus: "Encounter",
        routing_optional: false,
    },
    Builtin {
        code: "newborn-hearing-1",
        display: "Newborn Hearing",
        workflow: "NEWBORNHEARING_1",
        interaction: "Newbornhearing",
        pds_only: false,
        types: NEW_DELETE,
        focus: "Encounter",
        routing_optional: false,
    },
    Builtin {
        code: "nipe-outcome-1",
        display: "NIPE outcome",
        workflow: "NIPEOUTCOME_1",
        interaction: "Nipeoutcome",
        pds_only: false,
        types: NEW_DELETE,
        focus: "Encounter",
        routing_optional: false,
    },
    Builtin {
        code: "pds-birth-notification-1",
        display: "PDS Birth Notification",
        workflow: "BIRTHNOTIFICATION_1",
        interaction: "Pdsbirthnotification",
        pds_only: true,
        types: NEW_ONLY,
        focus: "Communication",
        routing_optional: true,
    },
    Builtin {
        code: "pds-change-of-address-1",
        display: "PDS Change of Address",
        workflow: "CHANGEOFADDRESS_1",
        interaction: "Pdschangeofaddress",
        pds_only: true,
        types: NEW_ONLY,
        focus: "Communication",
        routing_optional: false,
    },
    Builtin {
        code: "pds-change-of-gp-1",
        display: "PDS Change of GP",
        workflow: "CHANGEOFGP_1",
        interaction: "Pdschangeofgp",
        pds_only: true,
        types: NEW_ONLY,
        focus: "Communication",
        routing_optional: false,
    },
    Builtin {
        code: "pds-death-notification-1",
        display: "PDS Death Notification",
        workflow: "DEATHNOTIFICATION_1",
        interaction: "Pdsdeathnotification",
        pds_only: true,
        types: NEW_ONLY,
        focus: "Communication",
        routing_optional: false,
    },
    Builtin {
        code: "pds-record-change-1",
        display: "PDS Record Change",
        workflow: "PDSRECORDCHANGE_1",
        interaction: "Pdsrecordchange",
        pds_only: true,
        types: NEW_ONLY,
        focus: "Patient",
        routing_optional: false,
    },
    Builtin {
        code: "professional-contacts-1",
        display: "Professional Contacts",
        workflow: "PROFESSIONALCONTACTS_1",
        interaction: "Professionalcontacts",
        pds_only: false,
        types: ALL_TYPES,
        focus: "EpisodeOfCare",
        routing_optional: false,
    },
    Builtin {
        code: "vaccinations-1",
        display: "Vaccinations",
        workflow: "VACCINATIONS_1",
        interaction: "Vaccinations",
        pds_only: false,
        types: ALL_TYPES,
        focus: "Immunization",
        routing_optional: false,
    },
];

/// Lifecycle state as written in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LifecycleState {
    /// Supported.
    Active,
    /// Deprecated: allowed with a notice.
    Deprecated,
    /// No longer supported: publishing allowed with a notice; new subscriptions rejected.
    NoLongerSupported,
    /// Withdrawn: publishing and new subscriptions rejected.
    Withdrawn,
}

impl From<LifecycleState> for pb::EventTypeState {
    fn from(s: LifecycleState) -> Self {
        match s {
            LifecycleState::Active => pb::EventTypeState::Active,
            LifecycleState::Deprecated => pb::EventTypeState::Deprecated,
            LifecycleState::NoLongerSupported => pb::EventTypeState::NoLongerSupported,
            LifecycleState::Withdrawn => pb::EventTypeState::Withdrawn,
        }
    }
}

/// One `[[core.event_types]]` entry: overrides fields of a built-in event type (matched
/// by `code`), or adds a new one (then `display`, `workflow_id` and `focus_resource_type`
/// are required).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventTypeOverride {
    /// Event code, for example `newborn-hearing-1`.
    pub code: String,
    /// Display text.
    pub display: Option<String>,
    /// MESH workflow id.
    pub workflow_id: Option<String>,
    /// Publish interaction code (the `X` in `urn:nhs:names:services:events:X.Write`).
    pub publish_interaction_code: Option<String>,
    /// Only PDS publishers may publish it.
    pub pds_only: Option<bool>,
    /// Lifecycle state.
    pub state: Option<LifecycleState>,
    /// Text of deprecation notices (dates, where to read more).
    pub lifecycle_note: Option<String>,
    /// Allowed `messageEventType` codes.
    pub message_event_types: Option<Vec<String>>,
    /// Resource type `focus` must reference.
    pub focus_resource_type: Option<String>,
    /// Routing demographics may be absent.
    pub routing_optional: Option<bool>,
}

/// The catalogue in force.
#[derive(Debug, Clone)]
pub struct Catalogue {
    by_code: BTreeMap<String, pb::EventType>,
}

impl Catalogue {
    /// The built-in catalogue with `overrides` applied.
    pub fn new(overrides: &[EventTypeOverride]) -> Result<Self, String> {
        let mut by_code: BTreeMap<String, pb::EventType> = BUILTIN
            .iter()
            .map(|b| {
                let event_type = pb::EventType {
                    code: b.code.into(),
                    display: b.display.into(),
                    workflow_id: b.workflow.into(),
                    publish_interaction_code: b.interaction.into(),
                    pds_only: b.pds_only,
                    state: pb::EventTypeState::Active.into(),
                    lifecycle_note: String::new(),
                    message_event_types: b.types.iter().map(|t| (*t).to_string()).collect(),
                    focus_resource_type: b.focus.into(),
                    routing_optional: b.routing_optional,
                };
                (b.code.to_string(), event_type)
            })
            .collect();
        for o in overrides {
            let entry = match by_code.get_mut(&o.code) {
                Some(existing) => existing,
                None => {
                    let (Some(display), Some(workflow), Some(focus)) =
                        (&o.display, &o.workflow_id, &o.focus_resource_type)
                    else {
                        return Err(format!(
                            "event type `{}` is not built in: give display, workflow_id and focus_resource_type",
                            o.code
                        ));
                    };
                    by_code.insert(
                        o.code.clone(),
                        pb::EventType {
                            code: o.code.clone(),
                            display: display.clone(),
                            workflow_id: workflow.clone(),
                            focus_resource_type: focus.clone(),
                            state: pb::EventTypeState::Active.into(),
                            message_event_types: ALL_TYPES
                                .iter()
                                .map(|t| (*t).to_string())
                                .collect(),
                            ..Default::default()
                        },
                    );
                    by_code
                        .get_mut(&o.code)
                        .ok_or_else(|| "event type insert failed".to_string())?
                }
            };
            apply_override(entry, o)?;
        }
        Ok(Catalogue { by_code })
    }

    /// Looks an event type up by code.
    pub fn get(&self, code: &str) -> Option<&pb::EventType> {
        self.by_code.get(code)
    }

    /// Finds the event type a publish interaction names (capitalised code or event code,
    /// compared case-insensitively).
    pub fn by_interaction(&self, interaction: &str) -> Option<&pb::EventType> {
        self.by_code.values().find(|t| {
            t.code.eq_ignore_ascii_case(interaction)
                || (!t.publish_interaction_code.is_empty()
                    && t.publish_interaction_code.eq_ignore_ascii_case(interaction))
        })
    }

    /// Every event type, in code order.
    pub fn all(&self) -> impl Iterator<Item = &pb::EventType> {
        self.by_code.values()
    }

    /// Builds the deprecation notice text of an event type.
    pub fn notice_text(event_type: &pb::EventType) -> String {
        let base = format!(
            "the {} ({}) event type is deprecated",
            event_type.display, event_type.code
        );
        if event_type.lifecycle_note.is_empty() {
            base
        } else {
            format!("{base}: {}", event_type.lifecycle_note)
        }
    }
}

impl Default for Catalogue {
    fn default() -> Self {
        // The built-in table has no override to fail on.
        Catalogue::new(&[]).unwrap_or(Catalogue {
            by_code: BTreeMap::new(),
        })
    }
}

fn apply_override(t: &mut pb::EventType, o: &EventTypeOverride) -> Result<(), String> {
    if let Some(v) = &o.display {
        t.display.clone_from(v);
    }
    if let Some(v) = &o.workflow_id {
        t.workflow_id.clone_from(v);
    }
    if let Some(v) = &o.publish_interaction_code {
        t.publish_interaction_code.clone_from(v);
    }
    if let Some(v) = o.pds_only {
        t.pds_only = v;
    }
    if let Some(v) = o.state {
        t.state = pb::EventTypeState::from(v).into();
    }
    if let Some(v) = &o.lifecycle_note {
        t.lifecycle_note.clone_from(v);
    }
    if let Some(v) = &o.message_event_types {
        if let Some(bad) = v.iter().find(|c| !ALL_TYPES.contains(&c.as_str())) {
            return Err(format!(
                "event type `{}`: message_event_types has `{bad}` (allowed: new, update, delete)",
                o.code
            ));
        }
        t.message_event_types.clone_from(v);
    }
    if let Some(v) = &o.focus_resource_type {
        t.focus_resource_type.clone_from(v);
    }
    if let Some(v) = o.routing_optional {
        t.routing_optional = v;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_the_ten_nems_events() {
        let c = Catalogue::default();
        assert_eq!(c.all().count(), 10);
        let v = c.get("vaccinations-1").unwrap();
        assert_eq!(v.workflow_id, "VACCINATIONS_1");
        assert_eq!(
            c.by_interaction("Vaccinations").unwrap().code,
            "vaccinations-1"
        );
        assert_eq!(
            c.by_interaction("vaccinations-1").unwrap().code,
            "vaccinations-1"
        );
        assert_eq!(
            c.get("pds-record-change-1").unwrap().workflow_id,
            "PDSRECORDCHANGE_1"
        );
        assert!(c.get("pds-birth-notification-1").unwrap().routing_optional);
        assert!(c.by_interaction("Nothing").is_none());
    }

    #[test]
    fn overrides_change_state_and_add_types() {
        let c = Catalogue::new(&[
            EventTypeOverride {
                code: "newborn-hearing-1".into(),
                state: Some(LifecycleState::Deprecated),
                lifecycle_note: Some("ends 22/06/2027".into()),
                display: None,
                workflow_id: None,
                publish_interaction_code: None,
                pds_only: None,
                message_event_types: None,
                focus_resource_type: None,
                routing_optional: None,
            },
            EventTypeOverride {
                code: "new-thing-1".into(),
                display: Some("New thing".into()),
                workflow_id: Some("NEWTHING_1".into()),
                focus_resource_type: Some("Observation".into()),
                state: None,
                lifecycle_note: None,
                publish_interaction_code: None,
                pds_only: None,
                message_event_types: None,
                routing_optional: None,
            },
        ])
        .unwrap();
        let nh = c.get("newborn-hearing-1").unwrap();
        assert_eq!(nh.state(), pb::EventTypeState::Deprecated);
        assert!(Catalogue::notice_text(nh).contains("22/06/2027"));
        assert_eq!(c.get("new-thing-1").unwrap().workflow_id, "NEWTHING_1");
    }

    #[test]
    fn incomplete_new_type_is_refused() {
        let err = Catalogue::new(&[EventTypeOverride {
            code: "x-1".into(),
            display: None,
            workflow_id: None,
            publish_interaction_code: None,
            pds_only: None,
            state: None,
            lifecycle_note: None,
            message_event_types: None,
            focus_resource_type: None,
            routing_optional: None,
        }])
        .unwrap_err();
        assert!(err.contains("x-1"));
    }
}
