//! Matching an accepted event against subscriptions, by index lookups only: explicit
//! subscriptions by the patient's NHS number, generic ones by (rule, organisation code,
//! event) keys derived from the patient's areas. Filters (event, creation time, `end`,
//! age, GP registration) apply to both; matches are grouped into one delivery per mailbox.

use std::collections::BTreeMap;

use nems_proto::v1 as pb;
use time::Date;

use crate::backend::keys::id_hex;
use crate::backend::{MatchEntry, MatchView, StoreError, rule_key};
use crate::domain::datetime;
use crate::domain::patient::EventFacts;

/// MESH's limit on `Mex-PartnerID`.
pub(crate) const PARTNER_ID_MAX: usize = 500;

/// The event and what it says about its patient; [`resolve`] completes it from the
/// demographics store and the reference data.
#[derive(Debug, Clone, Default)]
pub(crate) struct Event {
    /// Event code.
    pub(crate) event_code: String,
    /// Routing NHS number.
    pub(crate) nhs: Option<u64>,
    /// Birth date stated by the event.
    pub(crate) birth_date: Option<Date>,
    /// The event's patient facts.
    pub(crate) facts: EventFacts,
    /// Acceptance time.
    pub(crate) accepted_ms: u64,
    /// What PDS answered for a patient the store did not know (`[core.pds]`): stands in
    /// for the store's record.
    pub(crate) looked_up: Option<pb::PatientRecord>,
}

/// The patient as matching sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Patient {
    /// Home postcodes (normalised) for postcode rules.
    pub(crate) postcodes: Vec<String>,
    /// Registered practice; empty when unregistered.
    pub(crate) practice: String,
    /// Flagged sensitive or invalid: no deliveries.
    pub(crate) flagged: bool,
    /// Birth date for age filters.
    pub(crate) birth_date: Option<Date>,
}

/// Completes the event's patient facts from the store: PDS events' own facts win; for
/// other events the store's record wins and the event's Patient fills in when the store
/// knows nothing (decisions.md §17).
pub(crate) async fn resolve(view: &impl MatchView, event: &Event) -> Result<Patient, StoreError> {
    let record = match event.nhs {
        Some(nhs) => view.patient(nhs).await?.or_else(|| event.looked_up.clone()),
        None => None,
    };
    let facts = &event.facts;
    let event_practice = facts
        .patient
        .as_ref()
        .filter(|p| p.gp_present)
        .map(|p| p.gp_practice_code.to_ascii_uppercase());
    let stored_postcode = record
        .as_ref()
        .map(|r| r.postcode.clone())
        .filter(|p| !p.is_empty());
    let postcodes = if facts.authoritative && !facts.postcodes.is_empty() {
        facts.postcodes.clone()
    } else if let Some(p) = stored_postcode {
        vec![p]
    } else {
        facts.postcodes.clone()
    };
    let practice = match (facts.authoritative, &event_practice, &record) {
        (true, Some(p), _) => p.clone(),
        (_, _, Some(r)) => r.gp_practice.clone(),
        (_, Some(p), None) => p.clone(),
        _ => String::new(),
    };
    let flag = facts.flag.unwrap_or_else(|| {
        record
            .as_ref()
            .map_or(pb::PatientFlag::Unspecified, |r| r.flag())
    });
    let stored_birth = record
        .as_ref()
        .and_then(|r| datetime::parse_date_time(&r.birth_date))
        .map(|d| d.date);
    Ok(Patient {
        postcodes,
        practice,
        flagged: matches!(flag, pb::PatientFlag::Sensitive | pb::PatientFlag::Invalid),
        birth_date: event.birth_date.or(stored_birth),
    })
}

/// A code and the codes the code map declares equivalent (GSS ↔ ODS).
async fn with_equivalents(
    view: &impl MatchView,
    code: &str,
    out: &mut Vec<String>,
) -> Result<(), StoreError> {
    let upper = code.to_ascii_uppercase();
    if upper.is_empty() || out.contains(&upper) {
        return Ok(());
    }
    let others = view.equivalents(&upper).await?;
    out.push(upper);
    for other in others {
        if !out.contains(&other) {
            out.push(other);
        }
    }
    Ok(())
}

/// The generic index keys a patient's areas give for `event_code`: each postcode's
/// sub-ICB location, local authority and country, the practice and its parent sub-ICB,
/// each in every code form known. Lookups only, no scans.
pub(crate) async fn generic_keys(
    view: &impl MatchView,
    patient: &Patient,
    event_code: &str,
) -> Result<Vec<String>, StoreError> {
    let mut sub_icb = Vec::new();
    let mut local_authority = Vec::new();
    let mut country = Vec::new();
    for postcode in &patient.postcodes {
        if let Some(row) = view.postcode(postcode).await? {
            for code in &row.sub_icb {
                with_equivalents(view, code, &mut sub_icb).await?;
            }
            for code in &row.local_authority {
                with_equivalents(view, code, &mut local_authority).await?;
            }
            with_equivalents(view, &row.country, &mut country).await?;
        }
    }
    let mut practice_parent = Vec::new();
    if !patient.practice.is_empty()
        && let Some(row) = view.practice(&patient.practice).await?
    {
        with_equivalents(view, &row.parent_sub_icb, &mut practice_parent).await?;
    }
    let mut keys = Vec::new();
    let mut add = |rule: pb::RuleType, codes: &[String]| {
        for code in codes {
            keys.push(rule_key(rule, code, event_code));
        }
    };
    add(pb::RuleType::ChoPostcodeCcg, &sub_icb);
    add(pb::RuleType::UhvPostcodeLacode, &local_authority);
    add(pb::RuleType::Countrycode, &country);
    add(pb::RuleType::ChoGpCcg, &practice_parent);
    if !patient.practice.is_empty() {
        add(
            pb::RuleType::GpGpGp,
            std::slice::from_ref(&patient.practice),
        );
    }
    Ok(keys)
}

/// Resolves the patient and finds every match: the result and whether the patient is
/// flagged (then every delivery is recorded as suppressed).
pub(crate) async fn match_event(
    view: &impl MatchView,
    event: &Event,
) -> Result<(Vec<MailboxMatch>, bool), StoreError> {
    let patient = resolve(view, event).await?;
    let subject = Subject {
        event_code: event.event_code.clone(),
        nhs: event.nhs,
        birth_date: patient.birth_date,
        registered: !patient.practice.is_empty(),
        generic_keys: generic_keys(view, &patient, &event.event_code).await?,
        accepted_ms: event.accepted_ms,
    };
    Ok((find(view, &subject).await?, patient.flagged))
}

/// What matching knows about the event and its patient.
#[derive(Debug, Clone, Default)]
pub(crate) struct Subject {
    /// Event code.
    pub(crate) event_code: String,
    /// Routing NHS number (explicit matching); `None` skips explicit subscriptions.
    pub(crate) nhs: Option<u64>,
    /// Birth date for age filters.
    pub(crate) birth_date: Option<Date>,
    /// The patient is registered with a GP practice.
    pub(crate) registered: bool,
    /// Generic index keys (`RULE/CODE/EVENT`) the patient's areas give.
    pub(crate) generic_keys: Vec<String>,
    /// Acceptance time: only subscriptions created before it match, and only while their
    /// `end` is after it.
    pub(crate) accepted_ms: u64,
}

/// The subscriptions of one mailbox that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MailboxMatch {
    pub(crate) mailbox: String,
    /// (subscription id, tag) pairs, tag empty when untagged.
    pub(crate) subscriptions: Vec<(String, String)>,
}

impl MailboxMatch {
    /// The `Mex-PartnerID`: `id|tag` of every tagged match joined by `~~~`, cut at whole
    /// entries to MESH's 500-character limit.
    pub(crate) fn partner_id(&self) -> String {
        let mut out = String::new();
        for (id, tag) in self.subscriptions.iter().filter(|(_, tag)| !tag.is_empty()) {
            let entry = format!("{id}|{tag}");
            let extra = if out.is_empty() {
                entry.len()
            } else {
                entry.len() + 3
            };
            if out.len() + extra > PARTNER_ID_MAX {
                tracing::warn!(mailbox = %self.mailbox, "mex-partnerid truncated at 500 characters");
                break;
            }
            if !out.is_empty() {
                out.push_str("~~~");
            }
            out.push_str(&entry);
        }
        out
    }
}

/// Finds every matching subscription, grouped by mailbox (in mailbox order).
pub(crate) async fn find(
    view: &impl MatchView,
    subject: &Subject,
) -> Result<Vec<MailboxMatch>, StoreError> {
    let today = datetime::utc_date(subject.accepted_ms);
    let age = subject
        .birth_date
        .and_then(|birth| datetime::completed_years(birth, today));
    let mut by_mailbox: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut consider = |id: u128, entry: MatchEntry| {
        if passes(&entry, subject, age) {
            let list = by_mailbox.entry(entry.mailbox).or_default();
            let id_text = id_hex(id);
            if !list.iter().any(|(existing, _)| *existing == id_text) {
                list.push((id_text, entry.tag));
            }
        }
    };
    if let Some(nhs) = subject.nhs {
        for (id, entry) in view.explicit(nhs).await? {
            consider(id, entry);
        }
    }
    for key in &subject.generic_keys {
        for (id, entry) in view.generic(key).await? {
            consider(id, entry);
        }
    }
    Ok(by_mailbox
        .into_iter()
        .map(|(mailbox, subscriptions)| MailboxMatch {
            mailbox,
            subscriptions,
        })
        .collect())
}

fn passes(entry: &MatchEntry, subject: &Subject, age: Option<u32>) -> bool {
    if !entry.event_codes.contains(&subject.event_code) {
        return false;
    }
    if entry.created_ms > subject.accepted_ms {
        return false;
    }
    if entry.end_ms != 0 && entry.end_ms <= subject.accepted_ms {
        return false;
    }
    match pb::GpRegistration::try_from(entry.gp_registration) {
        Ok(pb::GpRegistration::RegisteredOnly) if !subject.registered => return false,
        Ok(pb::GpRegistration::UnregisteredOnly) if subject.registered => return false,
        _ => {}
    }
    entry.age.iter().all(|filter| {
        let Some(age) = age else {
            // No birth date known: an age filter does not match (decisions.md §16).
            return false;
        };
        match filter.comparator() {
            pb::AgeComparator::Lt => age < filter.years,
            pb::AgeComparator::Gt => age > filter.years,
            _ => age == filter.years,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn entry(
        events: &[&str],
        ages: &[(pb::AgeComparator, u32)],
        gp: pb::GpRegistration,
    ) -> MatchEntry {
        MatchEntry {
            event_codes: events.iter().map(|e| (*e).to_string()).collect(),
            mailbox: "MB".into(),
            tag: String::new(),
            age: ages
                .iter()
                .map(|(c, y)| pb::AgeFilter {
                    comparator: (*c).into(),
                    years: *y,
                })
                .collect(),
            gp_registration: gp.into(),
            created_ms: 100,
            end_ms: 0,
        }
    }

    fn subject(birth: Option<Date>, registered: bool) -> Subject {
        Subject {
            event_code: "vaccinations-1".into(),
            birth_date: birth,
            registered,
            // 2024-06-15T00:00:00Z
            accepted_ms: 1_718_409_600_000,
            ..Default::default()
        }
    }

    #[test]
    fn filter_table() {
        use pb::AgeComparator::{Eq, Gt, Lt};
        use pb::GpRegistration::{RegisteredOnly, UnregisteredOnly, Unspecified};
        let ten = Some(date!(2014 - 01 - 01));
        let cases = [
            (
                entry(&["vaccinations-1"], &[], Unspecified),
                subject(ten, false),
                true,
            ),
            (
                entry(&["pds-change-of-gp-1"], &[], Unspecified),
                subject(ten, false),
                false,
            ),
            (
                entry(&["vaccinations-1"], &[(Lt, 14)], Unspecified),
                subject(ten, false),
                true,
            ),
            (
                entry(&["vaccinations-1"], &[(Lt, 10)], Unspecified),
                subject(ten, false),
                false,
            ),
            (
                entry(&["vaccinations-1"], &[(Gt, 5), (Lt, 19)], Unspecified),
                subject(ten, false),
                true,
            ),
            (
                entry(&["vaccinations-1"], &[(Gt, 10)], Unspecified),
                subject(ten, false),
                false,
            ),
            (
                entry(&["vaccinations-1"], &[(Eq, 10)], Unspecified),
                subject(ten, false),
                true,
            ),
            (
                entry(&["vaccinations-1"], &[(Lt, 99)], Unspecified),
                subject(None, false),
                false,
            ),
            (
                entry(&["vaccinations-1"], &[], RegisteredOnly),
                subject(ten, false),
                false,
            ),
            (
                entry(&["vaccinations-1"], &[], RegisteredOnly),
                subject(ten, true),
                true,
            ),
            (
                entry(&["vaccinations-1"], &[], UnregisteredOnly),
                subject(ten, true),
                false,
            ),
        ];
        for (i, (e, s, want)) in cases.iter().enumerate() {
            let age = s
                .birth_date
                .and_then(|b| datetime::completed_years(b, datetime::utc_date(s.accepted_ms)));
            assert_eq!(passes(e, s, age), *want, "case {i}");
        }
    }

    #[test]
    fn creation_and_end_times_bound_a_match() {
        let s = subject(None, false);
        let mut e = entry(&["vaccinations-1"], &[], pb::GpRegistration::Unspecified);
        e.created_ms = s.accepted_ms + 1;
        assert!(!passes(&e, &s, None));
        e.created_ms = 1;
        e.end_ms = s.accepted_ms;
        assert!(!passes(&e, &s, None));
        e.end_ms = s.accepted_ms + 1;
        assert!(passes(&e, &s, None));
    }

    #[test]
    fn partner_id_joins_tagged_matches_within_500_chars() {
        let m = MailboxMatch {
            mailbox: "MB".into(),
            subscriptions: vec![
                ("a".into(), "t1".into()),
                ("b".into(), String::new()),
                ("c".into(), "t3".into()),
            ],
        };
        assert_eq!(m.partner_id(), "a|t1~~~c|t3");
        let many = MailboxMatch {
            mailbox: "MB".into(),
            subscriptions: (0..20)
                .map(|i| (format!("{i:032x}"), "x".repeat(20)))
                .collect(),
        };
        let p = many.partner_id();
        assert!(
            p.len() <= PARTNER_ID_MAX && p.split("~~~").all(|e| e.len() == 53),
            "{p}"
        );
    }
}
