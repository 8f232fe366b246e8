//! The NEMS subscription criteria grammar (nems.md §4.2, decisions.md §15).
//!
//! `/Bundle?type=message` followed by `&name=value` components, parsed in any order after
//! `type`. Explicit subscriptions have `Patient.identifier` and one or more
//! `MessageHeader.event`; generic ones have `subscriptionRuleType`, `Organization.identifier`
//! and exactly one `MessageHeader.event`. Both may have `serviceType`, up to two
//! `Patient.age`, `GPRegistration` and `tag`. Values may be percent-encoded.

use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;

use super::catalogue::{Catalogue, NON_NEMS_EVENT_CODES};
use super::{Rejection, nhs};

/// NHS-number systems accepted in `Patient.identifier` (decisions.md §15).
pub const NHS_NUMBER_SYSTEMS: [&str; 2] = [
    "http://fhir.nhs.net/Id/nhs-number",
    "https://fhir.nhs.uk/Id/nhs-number",
];

/// Country codes accepted with `COUNTRYCODE`.
pub const COUNTRY_CODES: [&str; 6] = [
    "E92000001",
    "W92000004",
    "S92000003",
    "N92000002",
    "L93000001",
    "M83000003",
];

const SERVICE_TYPES: [&str; 4] = ["GP", "CHO", "UHV", "EPCHR"];
const MAX_CRITERIA_LEN: usize = 4096;

fn invalid(text: impl Into<String>) -> Rejection {
    Rejection::new(SpineCode::InvalidRequestMessage, text)
}

/// Returns the criteria text of a rule type (`CHO_POSTCODE_CCG`, ...).
pub fn rule_name(rule: pb::RuleType) -> &'static str {
    match rule {
        pb::RuleType::ChoPostcodeCcg => "CHO_POSTCODE_CCG",
        pb::RuleType::ChoGpCcg => "CHO_GP_CCG",
        pb::RuleType::GpGpGp => "GP_GP_GP",
        pb::RuleType::UhvPostcodeLacode => "UHV_POSTCODE_LACODE",
        pb::RuleType::Countrycode => "COUNTRYCODE",
        pb::RuleType::Unspecified => "",
    }
}

/// Parses a rule type name, accepting `HSS` as an alias of `COUNTRYCODE`.
pub fn parse_rule(name: &str) -> Option<pb::RuleType> {
    Some(match name {
        "CHO_POSTCODE_CCG" => pb::RuleType::ChoPostcodeCcg,
        "CHO_GP_CCG" => pb::RuleType::ChoGpCcg,
        "GP_GP_GP" => pb::RuleType::GpGpGp,
        "UHV_POSTCODE_LACODE" => pb::RuleType::UhvPostcodeLacode,
        "COUNTRYCODE" | "HSS" => pb::RuleType::Countrycode,
        _ => return None,
    })
}

#[derive(Default)]
struct Components {
    service_type: Option<String>,
    identifier: Option<String>,
    events: Vec<String>,
    ages: Vec<String>,
    gp_registration: Option<String>,
    rule: Option<String>,
    organisation: Option<String>,
    tag: Option<String>,
}

/// Parses and validates a criteria string against the catalogue. Event lifecycle states
/// (deprecated, withdrawn) are judged by the caller; unknown codes are rejected here.
pub fn parse(criteria: &str, catalogue: &Catalogue) -> Result<pb::Criteria, Rejection> {
    let components = split(criteria)?;
    let kind = match (&components.identifier, &components.rule) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "criteria has both Patient.identifier (explicit) and subscriptionRuleType (generic); use one",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "criteria needs Patient.identifier (an explicit subscription) or subscriptionRuleType (a generic subscription)",
            ));
        }
        (Some(_), None) => pb::SubscriptionKind::Explicit,
        (None, Some(_)) => pb::SubscriptionKind::Generic,
    };
    let mut out = pb::Criteria {
        kind: kind.into(),
        service_type: components.service_type.clone().unwrap_or_default(),
        tag: components.tag.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(service_type) = &components.service_type
        && !SERVICE_TYPES.contains(&service_type.as_str())
    {
        return Err(invalid(format!(
            "serviceType must be one of GP, CHO, UHV, EPCHR (got `{}`)",
            truncate(service_type, 20)
        )));
    }
    out.event_codes = events(&components.events, kind, catalogue)?;
    out.age = ages(&components.ages)?;
    out.gp_registration = gp_registration(components.gp_registration.as_deref())?.into();
    if let Some(tag) = &components.tag {
        check_tag(tag)?;
    }
    match kind {
        pb::SubscriptionKind::Explicit => {
            if components.organisation.is_some() {
                return Err(invalid(
                    "Organization.identifier is only allowed in generic subscriptions",
                ));
            }
            let identifier = components.identifier.as_deref().unwrap_or_default();
            out.nhs_number = nhs_identifier(identifier)?;
        }
        _ => {
            let rule_text = components.rule.as_deref().unwrap_or_default();
            let rule = parse_rule(rule_text).ok_or_else(|| {
                invalid(format!(
                    "subscriptionRuleType `{}` is not one of CHO_POSTCODE_CCG, CHO_GP_CCG, GP_GP_GP, UHV_POSTCODE_LACODE, COUNTRYCODE",
                    truncate(rule_text, 40)
                ))
            })?;
            let Some(organisation) = components.organisation.as_deref() else {
                return Err(invalid(format!(
                    "Organization.identifier is required with subscriptionRuleType {}",
                    rule_name(rule)
                )));
            };
            out.organisation_code = organisation_code(rule, organisation)?;
            out.rule_type = rule.into();
            let gp = out.gp_registration();
            if gp != pb::GpRegistration::Unspecified
                && matches!(rule, pb::RuleType::ChoGpCcg | pb::RuleType::GpGpGp)
            {
                return Err(invalid(format!(
                    "GPRegistration cannot be combined with {}: that rule already requires a registered GP",
                    rule_name(rule)
                )));
            }
        }
    }
    Ok(out)
}

fn split(criteria: &str) -> Result<Components, Rejection> {
    if criteria.is_empty() {
        return Err(Rejection::new(
            SpineCode::InvalidResource,
            "Subscription.criteria is required",
        ));
    }
    if criteria.len() > MAX_CRITERIA_LEN {
        return Err(invalid(format!(
            "criteria is longer than {MAX_CRITERIA_LEN} characters"
        )));
    }
    if criteria.chars().any(char::is_whitespace) {
        return Err(invalid("criteria must not contain white space"));
    }
    let query = criteria
        .strip_prefix("/Bundle?")
        .or_else(|| criteria.strip_prefix("Bundle?"))
        .ok_or_else(|| invalid("criteria must start with /Bundle?type=message"))?;
    if query.starts_with('&') || query.ends_with('&') || query.contains("&&") {
        return Err(invalid(
            "criteria has an empty component (a leading, trailing or doubled &)",
        ));
    }
    let mut components = Components::default();
    for (index, component) in query.split('&').enumerate() {
        let (name, raw_value) = component.split_once('=').ok_or_else(|| {
            invalid(format!(
                "criteria component {} has no `=`: use name=value",
                index + 1
            ))
        })?;
        let value = percent_decode(raw_value).ok_or_else(|| {
            invalid(format!(
                "criteria parameter `{}` has a malformed percent-encoding",
                truncate(name, 60)
            ))
        })?;
        if value.is_empty() {
            return Err(invalid(format!(
                "criteria parameter `{}` has an empty value",
                truncate(name, 60)
            )));
        }
        if index == 0 {
            if name != "type" || value != "message" {
                return Err(invalid("criteria must start with /Bundle?type=message"));
            }
            continue;
        }
        let slot = match name {
            "type" => return Err(invalid("type must appear once, first")),
            "serviceType" => &mut components.service_type,
            "Patient.identifier" => &mut components.identifier,
            "GPRegistration" => &mut components.gp_registration,
            "subscriptionRuleType" => &mut components.rule,
            "Organization.identifier" => &mut components.organisation,
            "tag" => &mut components.tag,
            "MessageHeader.event" => {
                components.events.push(value);
                continue;
            }
            "Patient.age" => {
                components.ages.push(value);
                continue;
            }
            other => {
                return Err(invalid(format!(
                    "criteria parameter `{}` is not supported (allowed: serviceType, Patient.identifier, MessageHeader.event, Patient.age, GPRegistration, subscriptionRuleType, Organization.identifier, tag)",
                    truncate(other, 60)
                )));
            }
        };
        if slot.is_some() {
            return Err(invalid(format!("{name} may appear only once")));
        }
        *slot = Some(value);
    }
    Ok(components)
}

fn events(
    codes: &[String],
    kind: pb::SubscriptionKind,
    catalogue: &Catalogue,
) -> Result<Vec<String>, Rejection> {
    if codes.is_empty() {
        return Err(invalid("criteria needs MessageHeader.event"));
    }
    if kind == pb::SubscriptionKind::Generic && codes.len() != 1 {
        return Err(invalid(
            "a generic subscription has exactly one MessageHeader.event; create one subscription per event type",
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(codes.len());
    for code in codes {
        if catalogue.get(code).is_none() {
            let why = if NON_NEMS_EVENT_CODES.contains(&code.as_str()) {
                "is in EventType-1 but is not an event type NEMS supports"
            } else {
                "is not a code of https://fhir.nhs.uk/STU3/CodeSystem/EventType-1"
            };
            return Err(invalid(format!(
                "MessageHeader.event `{}` {why}",
                truncate(code, 60)
            )));
        }
        if out.contains(code) {
            return Err(invalid(format!(
                "MessageHeader.event `{code}` appears more than once"
            )));
        }
        out.push(code.clone());
    }
    Ok(out)
}

fn ages(values: &[String]) -> Result<Vec<pb::AgeFilter>, Rejection> {
    if values.len() > 2 {
        return Err(invalid("Patient.age may appear at most twice"));
    }
    let mut out = Vec::with_capacity(values.len());
    for value in values {
        let (comparator, digits) = if let Some(rest) = value.strip_prefix("lt") {
            (pb::AgeComparator::Lt, rest)
        } else if let Some(rest) = value.strip_prefix("gt") {
            (pb::AgeComparator::Gt, rest)
        } else {
            (pb::AgeComparator::Eq, value.as_str())
        };
        let years = digits
            .parse::<u32>()
            .ok()
            .filter(|y| digits.bytes().all(|b| b.is_ascii_digit()) && *y <= 150)
            .ok_or_else(|| {
                invalid(format!(
                    "Patient.age `{}` must be a whole number of years (0-150), optionally prefixed lt or gt",
                    truncate(value, 20)
                ))
            })?;
        out.push(pb::AgeFilter {
            comparator: comparator.into(),
            years,
        });
    }
    if let [a, b] = out.as_slice() {
        let (gt, lt) = match (a.comparator(), b.comparator()) {
            (pb::AgeComparator::Gt, pb::AgeComparator::Lt) => (a.years, b.years),
            (pb::AgeComparator::Lt, pb::AgeComparator::Gt) => (b.years, a.years),
            _ => {
                return Err(invalid(
                    "two Patient.age values must form a range: one gtN and one ltM",
                ));
            }
        };
        if gt + 1 >= lt {
            return Err(invalid(format!(
                "Patient.age range gt{gt} and lt{lt} matches no age"
            )));
        }
    }
    Ok(out)
}

fn gp_registration(value: Option<&str>) -> Result<pb::GpRegistration, Rejection> {
    match value {
        None => Ok(pb::GpRegistration::Unspecified),
        Some("RegisteredOnly") => Ok(pb::GpRegistration::RegisteredOnly),
        Some("UnregisteredOnly") => Ok(pb::GpRegistration::UnregisteredOnly),
        Some(other) => Err(invalid(format!(
            "GPRegistration must be RegisteredOnly or UnregisteredOnly (got `{}`)",
            truncate(other, 40)
        ))),
    }
}

fn check_tag(tag: &str) -> Result<(), Rejection> {
    let ok = tag.len() <= 100
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b',' | b'|' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "tag must be at most 100 characters of letters, digits, -, _, | and ,",
        ))
    }
}

fn nhs_identifier(value: &str) -> Result<String, Rejection> {
    let number = match value.rsplit_once('|') {
        Some((system, number)) => {
            if !NHS_NUMBER_SYSTEMS.contains(&system) {
                return Err(Rejection::new(
                    SpineCode::InvalidIdentifierSystem,
                    "Patient.identifier system must be http://fhir.nhs.net/Id/nhs-number or https://fhir.nhs.uk/Id/nhs-number",
                ));
            }
            number
        }
        None => value,
    };
    if !nhs::is_valid(number) {
        return Err(Rejection::new(
            SpineCode::InvalidNhsNumber,
            "Patient.identifier is not a valid NHS number (10 digits with a Modulus 11 check digit)",
        ));
    }
    Ok(number.to_string())
}

fn organisation_code(rule: pb::RuleType, value: &str) -> Result<String, Rejection> {
    let code = value.to_ascii_uppercase();
    let well_formed =
        (3..=9).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric());
    if !well_formed {
        return Err(invalid(format!(
            "Organization.identifier `{}` is not an ODS or GSS code",
            truncate(value, 20)
        )));
    }
    if rule == pb::RuleType::Countrycode && !COUNTRY_CODES.contains(&code.as_str()) {
        return Err(invalid(format!(
            "Organization.identifier `{}` is not a country code: use one of {}",
            truncate(&code, 20),
            COUNTRY_CODES.join(", ")
        )));
    }
    Ok(code)
}

/// Decodes `%XX` escapes (and nothing else); `None` on a malformed escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Returns `s` for quoting in a diagnostics text when it looks like a code or a name
/// (letters, digits, `.`, `_`, `-`, with at least one letter, at most `max` long), and a
/// placeholder otherwise, so that client text such as an NHS number is never echoed.
fn truncate(s: &str, max: usize) -> &str {
    let token_like = !s.is_empty()
        && s.len() <= max
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if token_like { s } else { "(value not shown)" }
}

#[cfg(test)]
mod tests;
