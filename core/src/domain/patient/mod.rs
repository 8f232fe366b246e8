//! What an accepted event says about its patient, for matching generic rules and for
//! keeping the demographics store current (decisions.md §16–18).
//!
//! PDS events are PDS's own facts, so their content is newer than the store: change of
//! address gives the new and old home postcodes, change of GP the registered practice,
//! death notifications the date of death, record changes the S/I flags, and a birth
//! notification the baby's details. Other events (from other publishers) carry the
//! publisher's copy of the patient, used only when the store knows nothing.

use nems_proto::v1 as pb;

use super::datetime;
use super::event::ValidEvent;
use crate::refdata::normalise_postcode;

/// A demographics change for one patient from one source at one time; `None` leaves a
/// fact alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DemographicUpdate {
    /// NHS number key.
    pub nhs: u64,
    /// When the facts were true (ordering: an older update never overwrites newer data).
    pub at_ms: u64,
    /// (home postcode, previous postcode), normalised.
    pub postcode: Option<(String, String)>,
    /// Registered practice (empty: not registered).
    pub gp_practice: Option<String>,
    /// S/I flag (unspecified: cleared).
    pub flag: Option<pb::PatientFlag>,
    /// Date of death `YYYY-MM-DD` (empty: cleared).
    pub date_of_death: Option<String>,
    /// Date of birth `YYYY-MM-DD`.
    pub birth_date: Option<String>,
}

/// The patient facts matching uses, before the store is consulted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFacts {
    /// The Patient resource the rules read (the routed patient, or the baby of a birth
    /// notification without the mother's NHS number).
    pub patient: Option<pb::PatientSummary>,
    /// True for PDS events: their Patient content wins over the store.
    pub authoritative: bool,
    /// Home postcodes to test postcode rules against (normalised); for a change of
    /// address both the new and the old.
    pub postcodes: Vec<String>,
    /// S/I flag stated by the event itself: set for every record change (unspecified when
    /// its Patient has no S/I label), `None` for other events.
    pub flag: Option<pb::PatientFlag>,
}

/// The normalised home postcodes of a Patient (and the previous ones with `include_old`).
/// An address without `use` is the home address when no address says `home`: the
/// published birth notification example gives the baby's address so.
fn home_postcodes(patient: &pb::PatientSummary, include_old: bool) -> Vec<String> {
    let has_home = patient.addresses.iter().any(|a| a.r#use == "home");
    let mut out: Vec<String> = Vec::new();
    for address in &patient.addresses {
        let wanted = address.r#use == "home"
            || (!has_home && address.r#use.is_empty())
            || (include_old && address.r#use == "old");
        if let Some(pc) = wanted
            .then(|| normalise_postcode(&address.postal_code))
            .flatten()
            && !out.contains(&pc)
        {
            out.push(pc);
        }
    }
    out
}

fn previous_postcode(patient: &pb::PatientSummary) -> String {
    patient
        .addresses
        .iter()
        .filter(|a| a.r#use == "old")
        .find_map(|a| normalise_postcode(&a.postal_code))
        .unwrap_or_default()
}

/// The S/I flag stated by a Patient's security labels, if any is meaningful.
pub fn flag_of(patient: &pb::PatientSummary) -> Option<pb::PatientFlag> {
    let codes: Vec<String> = patient
        .security_codes
        .iter()
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if codes
        .iter()
        .any(|c| c == "REDACTED" || c == "I" || c == "INVALID")
    {
        Some(pb::PatientFlag::Invalid)
    } else if codes
        .iter()
        .any(|c| c == "R" || c == "S" || c == "RESTRICTED")
    {
        Some(pb::PatientFlag::Sensitive)
    } else if codes.iter().any(|c| c == "U" || c == "N") {
        Some(pb::PatientFlag::Unspecified)
    } else {
        None
    }
}

/// The S/I flag a record change states: PDS sends the whole record, so a Patient without a
/// meaningful security label says the patient has no flag (the earlier one is cleared).
fn record_change_flag(patient: &pb::PatientSummary) -> pb::PatientFlag {
    flag_of(patient).unwrap_or(pb::PatientFlag::Unspecified)
}

/// The facts of an event for matching.
pub fn facts(event: &ValidEvent) -> EventFacts {
    let code = event.event_type.code.as_str();
    let authoritative = event.event_type.pds_only;
    let patient = if event.nhs_number.is_none() {
        event.baby.clone()
    } else {
        event.subject.clone()
    };
    let postcodes = patient
        .as_ref()
        .map(|p| home_postcodes(p, code == "pds-change-of-address-1"))
        .unwrap_or_default();
    // The same flag the demographics update records (see `updates`), so that the record
    // change that clears a flag is itself matched without the flag it clears.
    let flag = (code == "pds-record-change-1")
        .then(|| patient.as_ref().map(record_change_flag))
        .flatten();
    EventFacts {
        patient,
        authoritative,
        postcodes,
        flag,
    }
}

/// The demographics updates an accepted PDS event makes (none for other events).
pub fn updates(event: &ValidEvent, accepted_ms: u64) -> Vec<DemographicUpdate> {
    if !event.event_type.pds_only {
        return Vec::new();
    }
    let at = |p: &pb::PatientSummary| {
        event
            .last_updated_ms
            .or_else(|| datetime::parse_instant(&p.last_updated).map(datetime::to_ms))
            .unwrap_or(accepted_ms)
    };
    let key = |nhs: &str| crate::store::keys::nhs_key(nhs);
    let mut out = Vec::new();
    let code = event.event_type.code.as_str();
    if let (Some(nhs), Some(p)) = (event.nhs_number.as_deref().and_then(key), &event.subject) {
        let mut u = DemographicUpdate {
            nhs,
            at_ms: at(p),
            ..Default::default()
        };
        match code {
            "pds-change-of-address-1" => {
                if let Some(home) = home_postcodes(p, false).into_iter().next() {
                    u.postcode = Some((home, previous_postcode(p)));
                }
            }
            "pds-change-of-gp-1" => u.gp_practice = Some(p.gp_practice_code.to_ascii_uppercase()),
            "pds-death-notification-1" => {
                u.date_of_death = Some(match p.death_notification_status.as_str() {
                    "U" => String::new(),
                    _ => p
                        .deceased_date_time
                        .get(..10)
                        .unwrap_or_default()
                        .to_string(),
                });
            }
            "pds-record-change-1" => {
                u.flag = Some(record_change_flag(p));
                if !p.birth_date.is_empty() {
                    u.birth_date = Some(p.birth_date.clone());
                }
            }
            _ => {}
        }
        if u != (DemographicUpdate {
            nhs,
            at_ms: u.at_ms,
            ..Default::default()
        }) {
            out.push(u);
        }
    }
    if code == "pds-birth-notification-1"
        && let Some(baby) = &event.baby
        && let Some(nhs) = baby
            .nhs_numbers
            .iter()
            .find_map(|n| key(n).filter(|_| super::nhs::is_valid(n)))
    {
        let home = home_postcodes(baby, false).into_iter().next();
        out.push(DemographicUpdate {
            nhs,
            at_ms: at(baby),
            postcode: home.map(|h| (h, String::new())),
            gp_practice: baby
                .gp_present
                .then(|| baby.gp_practice_code.to_ascii_uppercase()),
            birth_date: (!baby.birth_date.is_empty()).then(|| baby.birth_date.clone()),
            ..Default::default()
        });
    }
    out
}

#[cfg(test)]
mod tests;
