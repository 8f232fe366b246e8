//! Validation of a published event message (nems.md §3, decisions.md §2, §12, §14): the
//! publish interaction, the Bundle shape, the `Event-MessageHeader-1` MessageHeader, the
//! event catalogue, the message event type, `focus`, routing demographics and the date
//! forms. Input is the structure the edge extracted; nothing clinical is read.

use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;
use time::Date;

use super::catalogue::{Catalogue, EVENT_TYPE_SYSTEM, NON_NEMS_EVENT_CODES};
use super::{Rejection, datetime, nhs};

/// The prefix and suffix of a publish `InteractionID`.
pub const INTERACTION_PREFIX: &str = "urn:nhs:names:services:events:";
const INTERACTION_SUFFIX: &str = ".Write";
/// The message event type code system.
pub const MESSAGE_EVENT_TYPE_SYSTEM: &str =
    "https://fhir.nhs.uk/STU3/CodeSystem/MessageEventType-1";
/// The NHS number identifier system in events.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// Event types whose MessageHeader need not carry `meta.lastUpdated` (nems.md §3.3).
const LAST_UPDATED_OPTIONAL: [&str; 2] = ["pds-birth-notification-1", "pds-record-change-1"];

/// Cardinalities of MessageHeader children in `Event-MessageHeader-1` (name, min, max).
const HEADER_CARDINALITIES: [(&str, u32, u32); 13] = [
    ("id", 1, 1),
    ("event", 1, 1),
    ("timestamp", 1, 1),
    ("source", 1, 1),
    ("responsible", 1, 1),
    ("focus", 1, 1),
    ("destination", 0, 1),
    ("sender", 0, 1),
    ("enterer", 0, 1),
    ("receiver", 0, 0),
    ("author", 0, 0),
    ("reason", 0, 0),
    ("response", 0, 0),
];

/// An event message that passed every rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    /// The event type.
    pub event_type: pb::EventType,
    /// `new`, `update` or `delete`.
    pub message_event_type: String,
    /// The routing NHS number; `None` only for a birth notification without the mother's.
    pub nhs_number: Option<String>,
    /// Birth date for age filters: routing `birthDateTime`, else the patient's `birthDate`.
    pub birth_date: Option<Date>,
    /// `MessageHeader.meta.lastUpdated` in epoch ms, when present.
    pub last_updated_ms: Option<u64>,
    /// The Patient resource of the routed patient (matching NHS number), if in the bundle.
    pub subject: Option<pb::PatientSummary>,
    /// For a birth notification: the baby's Patient resource.
    pub baby: Option<pb::PatientSummary>,
    /// Information notices (deprecated or no-longer-supported event type).
    pub notices: Vec<pb::Notice>,
}

fn resource(text: impl Into<String>) -> Rejection {
    Rejection::new(SpineCode::InvalidResource, text)
}

fn value(text: impl Into<String>) -> Rejection {
    Rejection::new(SpineCode::InvalidValue, text)
}

/// Finds the event type a publish `InteractionID` names (decisions.md §12).
pub fn interaction_event<'c>(
    interaction_id: &str,
    catalogue: &'c Catalogue,
) -> Result<&'c pb::EventType, Rejection> {
    let header = |text: String| Rejection::new(SpineCode::MissingOrInvalidHeader, text);
    let name = interaction_id
        .strip_prefix(INTERACTION_PREFIX)
        .and_then(|rest| rest.strip_suffix(INTERACTION_SUFFIX))
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            header(format!(
                "InteractionID must be {INTERACTION_PREFIX}<EventCode>{INTERACTION_SUFFIX}, e.g. {INTERACTION_PREFIX}Vaccinations{INTERACTION_SUFFIX}"
            ))
        })?;
    catalogue
        .by_interaction(name)
        .ok_or_else(|| header("InteractionID does not name a NEMS event type".to_string()))
}

/// Checks an event message published under `interaction` (already resolved).
pub fn validate(
    message: &pb::EventMessage,
    interaction: &pb::EventType,
    catalogue: &Catalogue,
) -> Result<ValidEvent, Rejection> {
    if message.bundle_type != "message" {
        return Err(resource("Bundle.type must be `message`"));
    }
    let first_is_header = message
        .entries
        .first()
        .is_some_and(|e| e.resource_type == "MessageHeader");
    let Some(header) = message.header.as_ref().filter(|_| first_is_header) else {
        return Err(resource(
            "the first entry of the Bundle must be the MessageHeader",
        ));
    };
    check_cardinalities(header)?;
    let event_type = event_coding(header, catalogue)?;
    if event_type.code != interaction.code {
        return Err(Rejection::new(
            SpineCode::MissingOrInvalidHeader,
            format!(
                "InteractionID names {} but MessageHeader.event is {}",
                interaction.code, event_type.code
            ),
        ));
    }
    let notices = lifecycle(event_type)?;
    let message_event_type = message_event_type(header, event_type)?;
    check_focus(header, message, event_type)?;
    let routing = routing(header, event_type, &message_event_type)?;
    let timestamp_ok = datetime::parse_instant(&header.timestamp).is_some();
    if !timestamp_ok {
        return Err(value(
            "MessageHeader.timestamp must be a FHIR instant with a valid time zone offset, e.g. 2024-01-31T09:00:00+00:00",
        ));
    }
    let last_updated_ms = last_updated(header, event_type)?;
    let nhs_number = routing
        .as_ref()
        .and_then(|r| (!r.nhs_number.is_empty()).then(|| r.nhs_number.clone()));
    let subject = nhs_number.as_ref().and_then(|nhs| {
        message
            .patients
            .iter()
            .find(|p| p.nhs_numbers.iter().any(|n| n == nhs))
            .cloned()
    });
    let baby = (event_type.code == "pds-birth-notification-1")
        .then(|| baby_patient(message))
        .flatten();
    let routing_birth = routing
        .as_ref()
        .and_then(|r| datetime::parse_date_time(&r.birth_date_time))
        .map(|d| d.date);
    let patient_birth = subject
        .as_ref()
        .and_then(|p| datetime::parse_date_time(&p.birth_date))
        .map(|d| d.date);
    Ok(ValidEvent {
        event_type: event_type.clone(),
        message_event_type,
        nhs_number,
        birth_date: routing_birth.or(patient_birth),
        last_updated_ms,
        subject,
        baby,
        notices,
    })
}

fn check_cardinalities(header: &pb::MessageHeaderSummary) -> Result<(), Rejection> {
    for (name, min, max) in HEADER_CARDINALITIES {
        let count = header.element_counts.get(name).copied().unwrap_or(0);
        if count < min || count > max {
            let rule = if max == 0 {
                "must not be present".to_string()
            } else if min == max {
                format!("must appear exactly {min} time(s)")
            } else {
                format!("may appear at most {max} time(s)")
            };
            return Err(resource(format!(
                "MessageHeader.{name} {rule} (Event-MessageHeader-1)"
            )));
        }
    }
    if header.id.is_empty() {
        return Err(resource("MessageHeader.id is required"));
    }
    if header.responsible.iter().all(String::is_empty) {
        return Err(resource("MessageHeader.responsible.reference is required"));
    }
    if header.source_endpoint.is_empty() {
        return Err(resource("MessageHeader.source.endpoint is required"));
    }
    Ok(())
}

fn event_coding<'c>(
    header: &pb::MessageHeaderSummary,
    catalogue: &'c Catalogue,
) -> Result<&'c pb::EventType, Rejection> {
    let [event] = header.event.as_slice() else {
        return Err(resource("MessageHeader.event must appear exactly once"));
    };
    if event.system != EVENT_TYPE_SYSTEM {
        return Err(Rejection::new(
            SpineCode::InvalidCodeSystem,
            format!("MessageHeader.event.system must be {EVENT_TYPE_SYSTEM}"),
        ));
    }
    let Some(event_type) = catalogue.get(&event.code) else {
        let why = if NON_NEMS_EVENT_CODES.contains(&event.code.as_str()) {
            "is in EventType-1 but is not an event type NEMS supports"
        } else {
            "is not a code of EventType-1"
        };
        return Err(Rejection::new(
            SpineCode::InvalidCodeValue,
            format!("MessageHeader.event.code {why}"),
        ));
    };
    if event.display.is_empty() {
        return Err(resource("MessageHeader.event.display is required"));
    }
    if event.user_selected_present {
        return Err(resource(
            "MessageHeader.event.userSelected must not be present",
        ));
    }
    Ok(event_type)
}

fn lifecycle(event_type: &pb::EventType) -> Result<Vec<pb::Notice>, Rejection> {
    let notice = |text: String| {
        vec![pb::Notice {
            spine_code: SpineCode::Deprecated.as_str().into(),
            diagnostics: text,
        }]
    };
    match event_type.state() {
        pb::EventTypeState::Withdrawn => Err(Rejection::new(
            SpineCode::Withdrawn,
            format!("the {} event type has been withdrawn", event_type.code),
        )),
        pb::EventTypeState::Deprecated => Ok(notice(Catalogue::notice_text(event_type))),
        pb::EventTypeState::NoLongerSupported => Ok(notice(format!(
            "the {} event type is no longer supported{}",
            event_type.code,
            if event_type.lifecycle_note.is_empty() {
                String::new()
            } else {
                format!(": {}", event_type.lifecycle_note)
            }
        ))),
        _ => Ok(Vec::new()),
    }
}

fn message_event_type(
    header: &pb::MessageHeaderSummary,
    event_type: &pb::EventType,
) -> Result<String, Rejection> {
    if header.message_event_type_extensions != 1 {
        return Err(resource(
            "MessageHeader must carry exactly one Extension-MessageEventType-1",
        ));
    }
    let [coding] = header.message_event_type.as_slice() else {
        return Err(resource(
            "the message event type extension must have exactly one coding",
        ));
    };
    if coding.system != MESSAGE_EVENT_TYPE_SYSTEM {
        return Err(Rejection::new(
            SpineCode::InvalidCodeSystem,
            format!("the message event type system must be {MESSAGE_EVENT_TYPE_SYSTEM}"),
        ));
    }
    let display = match coding.code.as_str() {
        "new" => "New event message",
        "update" => "Update event message",
        "delete" => "Delete event message",
        _ => {
            return Err(Rejection::new(
                SpineCode::InvalidCodeValue,
                "the message event type code must be new, update or delete",
            ));
        }
    };
    if coding.display != display {
        return Err(resource(format!(
            "the message event type display for `{}` must be `{display}`",
            coding.code
        )));
    }
    if !event_type.message_event_types.contains(&coding.code) {
        return Err(Rejection::new(
            SpineCode::InvalidCodeValue,
            format!(
                "{} events allow the message event types {}, not `{}`",
                event_type.code,
                event_type.message_event_types.join(", "),
                coding.code
            ),
        ));
    }
    Ok(coding.code.clone())
}

fn check_focus(
    header: &pb::MessageHeaderSummary,
    message: &pb::EventMessage,
    event_type: &pb::EventType,
) -> Result<(), Rejection> {
    let [focus] = header.focus.as_slice() else {
        return Err(resource("MessageHeader.focus must appear exactly once"));
    };
    let target = message.entries.iter().find(|e| {
        (!e.full_url.is_empty() && e.full_url == *focus)
            || (!e.resource_id.is_empty()
                && *focus == format!("{}/{}", e.resource_type, e.resource_id))
    });
    let Some(target) = target else {
        return Err(Rejection::new(
            SpineCode::ReferenceNotFound,
            "MessageHeader.focus does not resolve to an entry of the Bundle",
        ));
    };
    if target.resource_type != event_type.focus_resource_type {
        return Err(resource(format!(
            "MessageHeader.focus of a {} event must reference a {}, not a {}",
            event_type.code, event_type.focus_resource_type, target.resource_type
        )));
    }
    Ok(())
}

fn routing<'h>(
    header: &'h pb::MessageHeaderSummary,
    event_type: &pb::EventType,
    message_event_type: &str,
) -> Result<Option<&'h pb::RoutingDemographics>, Rejection> {
    let routing = match header.routing.as_slice() {
        [] if event_type.routing_optional => return Ok(None),
        [] => {
            return Err(resource(format!(
                "MessageHeader needs the routing demographics extension for {} events",
                event_type.code
            )));
        }
        [one] => one,
        _ => {
            return Err(resource(
                "MessageHeader may carry one routing demographics extension",
            ));
        }
    };
    match routing.nhs_number_count {
        0 if event_type.routing_optional => {}
        1 => {}
        _ => {
            return Err(resource("routing demographics need exactly one nhsNumber"));
        }
    }
    if routing.nhs_number_count == 1 {
        if routing.nhs_number_system != NHS_NUMBER_SYSTEM {
            return Err(Rejection::new(
                SpineCode::InvalidIdentifierSystem,
                format!("routing demographics nhsNumber system must be {NHS_NUMBER_SYSTEM}"),
            ));
        }
        if !nhs::is_valid(&routing.nhs_number) {
            return Err(Rejection::new(
                SpineCode::InvalidNhsNumber,
                "routing demographics nhsNumber is not a valid NHS number (10 digits with a Modulus 11 check digit)",
            ));
        }
    }
    let details_required = !event_type.routing_optional && message_event_type != "delete";
    if details_required && (!routing.name_present || routing.birth_date_time.is_empty()) {
        return Err(resource(
            "routing demographics need name and birthDateTime (optional only on delete messages)",
        ));
    }
    if !routing.birth_date_time.is_empty()
        && datetime::parse_date_time(&routing.birth_date_time).is_none()
    {
        return Err(value(
            "routing demographics birthDateTime must be a FHIR date or dateTime with a valid time zone offset",
        ));
    }
    Ok(Some(routing))
}

fn last_updated(
    header: &pb::MessageHeaderSummary,
    event_type: &pb::EventType,
) -> Result<Option<u64>, Rejection> {
    if header.last_updated.is_empty() {
        if LAST_UPDATED_OPTIONAL.contains(&event_type.code.as_str()) {
            return Ok(None);
        }
        return Err(resource(format!(
            "MessageHeader.meta.lastUpdated is required for {} events",
            event_type.code
        )));
    }
    datetime::parse_instant(&header.last_updated)
        .map(|t| Some(datetime::to_ms(t)))
        .ok_or_else(|| {
            value("MessageHeader.meta.lastUpdated must be a FHIR instant with a valid time zone offset")
        })
}

/// The baby of a birth notification: the Patient a RelatedPerson points to (mother →
/// baby), else a Patient that is not the Communication's subject.
fn baby_patient(message: &pb::EventMessage) -> Option<pb::PatientSummary> {
    let by_url = |url: &str| message.patients.iter().find(|p| p.full_url == url).cloned();
    let related = message
        .entries
        .iter()
        .filter(|e| e.resource_type == "RelatedPerson")
        .flat_map(|e| e.subject_references.iter())
        .find_map(|r| by_url(r));
    if related.is_some() {
        return related;
    }
    let subjects: Vec<&String> = message
        .entries
        .iter()
        .filter(|e| e.resource_type == "Communication")
        .flat_map(|e| e.subject_references.iter())
        .collect();
    message
        .patients
        .iter()
        .find(|p| !subjects.contains(&&p.full_url))
        .cloned()
}

#[cfg(test)]
mod tests;
