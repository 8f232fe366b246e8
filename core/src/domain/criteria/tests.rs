//! Table-driven tests of the criteria grammar: every accepted shape, and every broken
//! rule with the Spine code it must give.

use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;

use super::parse;
use crate::domain::catalogue::Catalogue;

const NHS: &str = "9434765919";

fn ok(criteria: &str) -> pb::Criteria {
    parse(criteria, &Catalogue::default()).unwrap_or_else(|e| panic!("{criteria} rejected: {e}"))
}

fn err(criteria: &str) -> (SpineCode, String) {
    match parse(criteria, &Catalogue::default()) {
        Ok(c) => panic!("{criteria} accepted: {c:?}"),
        Err(r) => (r.code, r.diagnostics),
    }
}

#[test]
fn accepted_explicit_shapes() {
    for (criteria, events, ages) in [
        (
            format!(
                "/Bundle?type=message&serviceType=GP&Patient.identifier=http://fhir.nhs.net/Id/nhs-number|{NHS}&MessageHeader.event=pds-change-of-address-1"
            ),
            vec!["pds-change-of-address-1"],
            0,
        ),
        (
            format!(
                "/Bundle?type=message&Patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{NHS}&MessageHeader.event=vaccinations-1&MessageHeader.event=pds-death-notification-1"
            ),
            vec!["vaccinations-1", "pds-death-notification-1"],
            0,
        ),
        // Bare NHS number, components in another order, a range of ages, a tag.
        (
            format!(
                "/Bundle?type=message&MessageHeader.event=vaccinations-1&Patient.age=gt5&Patient.age=lt19&Patient.identifier={NHS}&tag=site-1|a,b_c"
            ),
            vec!["vaccinations-1"],
            2,
        ),
        // Without the leading slash; percent-encoded system separator.
        (
            format!(
                "Bundle?type=message&Patient.identifier=http://fhir.nhs.net/Id/nhs-number%7C{NHS}&MessageHeader.event=nipe-outcome-1&Patient.age=3&GPRegistration=RegisteredOnly"
            ),
            vec!["nipe-outcome-1"],
            1,
        ),
    ] {
        let c = ok(&criteria);
        assert_eq!(c.kind(), pb::SubscriptionKind::Explicit, "{criteria}");
        assert_eq!(c.nhs_number, NHS);
        assert_eq!(c.event_codes, events);
        assert_eq!(c.age.len(), ages);
        assert_eq!(c.rule_type(), pb::RuleType::Unspecified);
    }
}

#[test]
fn accepted_generic_shapes() {
    for (criteria, rule, code) in [
        (
            "/Bundle?type=message&subscriptionRuleType=CHO_POSTCODE_CCG&Organization.identifier=X2458&MessageHeader.event=pds-change-of-address-1&tag=site123",
            pb::RuleType::ChoPostcodeCcg,
            "X2458",
        ),
        (
            "/Bundle?type=message&serviceType=CHO&MessageHeader.event=pds-birth-notification-1&Patient.age=lt1&subscriptionRuleType=UHV_POSTCODE_LACODE&Organization.identifier=e09000033",
            pb::RuleType::UhvPostcodeLacode,
            "E09000033",
        ),
        (
            "/Bundle?type=message&MessageHeader.event=pds-change-of-gp-1&subscriptionRuleType=GP_GP_GP&Organization.identifier=B86056",
            pb::RuleType::GpGpGp,
            "B86056",
        ),
        (
            "/Bundle?type=message&MessageHeader.event=pds-death-notification-1&subscriptionRuleType=CHO_GP_CCG&Organization.identifier=15F",
            pb::RuleType::ChoGpCcg,
            "15F",
        ),
        (
            "/Bundle?type=message&MessageHeader.event=vaccinations-1&subscriptionRuleType=HSS&Organization.identifier=E92000001&GPRegistration=UnregisteredOnly",
            pb::RuleType::Countrycode,
            "E92000001",
        ),
    ] {
        let c = ok(criteria);
        assert_eq!(c.kind(), pb::SubscriptionKind::Generic, "{criteria}");
        assert_eq!(c.rule_type(), rule, "{criteria}");
        assert_eq!(c.organisation_code, code);
        assert_eq!(c.event_codes.len(), 1);
        assert!(c.nhs_number.is_empty());
    }
}

#[test]
fn rejected_criteria_give_their_spine_code() {
    let explicit = format!("Patient.identifier={NHS}&MessageHeader.event=vaccinations-1");
    let cases: Vec<(String, SpineCode, &str)> = vec![
        ("".into(), SpineCode::InvalidResource, "required"),
        (format!("/Patient?type=message&{explicit}"), SpineCode::InvalidRequestMessage, "start with"),
        (format!("/Bundle?type=document&{explicit}"), SpineCode::InvalidRequestMessage, "start with"),
        (format!("/Bundle?{explicit}&type=message"), SpineCode::InvalidRequestMessage, "start with"),
        (format!("/Bundle?type=message&&{explicit}"), SpineCode::InvalidRequestMessage, "empty component"),
        (format!("/Bundle?type=message&{explicit}&"), SpineCode::InvalidRequestMessage, "empty component"),
        (format!("/Bundle?type=message&{explicit}&tag"), SpineCode::InvalidRequestMessage, "no `=`"),
        (format!("/Bundle?type=message&{explicit}&tag="), SpineCode::InvalidRequestMessage, "empty value"),
        (format!("/Bundle?type=message&{explicit}&colour=red"), SpineCode::InvalidRequestMessage, "`colour` is not supported"),
        (format!("/Bundle?type=message&{explicit}&type=message"), SpineCode::InvalidRequestMessage, "once, first"),
        (format!("/Bundle?type=message&{explicit} "), SpineCode::InvalidRequestMessage, "white space"),
        (format!("/Bundle?type=message&{explicit}&serviceType=XX"), SpineCode::InvalidRequestMessage, "serviceType"),
        (format!("/Bundle?type=message&{explicit}&serviceType=GP&serviceType=CHO"), SpineCode::InvalidRequestMessage, "only once"),
        ("/Bundle?type=message&MessageHeader.event=vaccinations-1".into(), SpineCode::InvalidRequestMessage, "needs Patient.identifier"),
        (format!("/Bundle?type=message&Patient.identifier={NHS}"), SpineCode::InvalidRequestMessage, "needs MessageHeader.event"),
        ("/Bundle?type=message&Patient.identifier=9434765918&MessageHeader.event=vaccinations-1".into(), SpineCode::InvalidNhsNumber, "Modulus 11"),
        ("/Bundle?type=message&Patient.identifier=12345&MessageHeader.event=vaccinations-1".into(), SpineCode::InvalidNhsNumber, "NHS number"),
        (format!("/Bundle?type=message&Patient.identifier=urn:other|{NHS}&MessageHeader.event=vaccinations-1"), SpineCode::InvalidIdentifierSystem, "system"),
        (format!("/Bundle?type=message&Patient.identifier={NHS}&Patient.identifier={NHS}&MessageHeader.event=vaccinations-1"), SpineCode::InvalidRequestMessage, "only once"),
        (format!("/Bundle?type=message&Patient.identifier={NHS}&MessageHeader.event=referral-1"), SpineCode::InvalidRequestMessage, "not an event type NEMS supports"),
        (format!("/Bundle?type=message&Patient.identifier={NHS}&MessageHeader.event=made-up-1"), SpineCode::InvalidRequestMessage, "EventType-1"),
        (format!("/Bundle?type=message&{explicit}&MessageHeader.event=vaccinations-1"), SpineCode::InvalidRequestMessage, "more than once"),
        (format!("/Bundle?type=message&{explicit}&Patient.age=old"), SpineCode::InvalidRequestMessage, "whole number"),
        (format!("/Bundle?type=message&{explicit}&Patient.age=lt-1"), SpineCode::InvalidRequestMessage, "whole number"),
        (format!("/Bundle?type=message&{explicit}&Patient.age=gt151"), SpineCode::InvalidRequestMessage, "0-150"),
        (format!("/Bundle?type=message&{explicit}&Patient.age=gt1&Patient.age=lt9&Patient.age=3"), SpineCode::InvalidRequestMessage, "at most twice"),
        (format!("/Bundle?type=message&{explicit}&Patient.age=lt5&Patient.age=lt9"), SpineCode::InvalidRequestMessage, "range"),
        (format!("/Bundle?type=message&{explicit}&Patient.age=gt5&Patient.age=lt6"), SpineCode::InvalidRequestMessage, "matches no age"),
        (format!("/Bundle?type=message&{explicit}&GPRegistration=Sometimes"), SpineCode::InvalidRequestMessage, "GPRegistration"),
        (format!("/Bundle?type=message&{explicit}&tag=has space"), SpineCode::InvalidRequestMessage, "white space"),
        (format!("/Bundle?type=message&{explicit}&tag=semi;colon"), SpineCode::InvalidRequestMessage, "tag must be"),
        (format!("/Bundle?type=message&{explicit}&tag={}", "a".repeat(101)), SpineCode::InvalidRequestMessage, "100 characters"),
        (format!("/Bundle?type=message&{explicit}&Organization.identifier=15F"), SpineCode::InvalidRequestMessage, "only allowed in generic"),
        (format!("/Bundle?type=message&{explicit}&subscriptionRuleType=GP_GP_GP"), SpineCode::InvalidRequestMessage, "both"),
        (format!("/Bundle?type=message&{explicit}&tag=%ZZ"), SpineCode::InvalidRequestMessage, "percent"),
        ("/Bundle?type=message&subscriptionRuleType=GP_GP_GP&MessageHeader.event=vaccinations-1".into(), SpineCode::InvalidRequestMessage, "Organization.identifier is required"),
        ("/Bundle?type=message&subscriptionRuleType=NOPE&Organization.identifier=15F&MessageHeader.event=vaccinations-1".into(), SpineCode::InvalidRequestMessage, "subscriptionRuleType"),
        ("/Bundle?type=message&subscriptionRuleType=GP_GP_GP&Organization.identifier=B86056&MessageHeader.event=vaccinations-1&MessageHeader.event=pds-change-of-gp-1".into(), SpineCode::InvalidRequestMessage, "exactly one"),
        ("/Bundle?type=message&subscriptionRuleType=COUNTRYCODE&Organization.identifier=E38000225&MessageHeader.event=vaccinations-1".into(), SpineCode::InvalidRequestMessage, "not a country code"),
        ("/Bundle?type=message&subscriptionRuleType=GP_GP_GP&Organization.identifier=B8-056&MessageHeader.event=vaccinations-1".into(), SpineCode::InvalidRequestMessage, "ODS or GSS"),
        ("/Bundle?type=message&subscriptionRuleType=GP_GP_GP&Organization.identifier=B86056&MessageHeader.event=vaccinations-1&GPRegistration=RegisteredOnly".into(), SpineCode::InvalidRequestMessage, "cannot be combined"),
        ("/Bundle?type=message&subscriptionRuleType=CHO_GP_CCG&Organization.identifier=15F&MessageHeader.event=vaccinations-1&GPRegistration=UnregisteredOnly".into(), SpineCode::InvalidRequestMessage, "cannot be combined"),
        (format!("/Bundle?type=message&subscriptionRuleType=GP_GP_GP&Organization.identifier=B86056&MessageHeader.event=vaccinations-1&Patient.identifier={NHS}"), SpineCode::InvalidRequestMessage, "both"),
    ];
    for (criteria, code, needle) in cases {
        let (got, text) = err(&criteria);
        assert_eq!(got, code, "{criteria}: {text}");
        assert!(
            text.contains(needle),
            "{criteria}: `{text}` lacks `{needle}`"
        );
        assert!(
            !text.contains(NHS),
            "diagnostics echo the NHS number: {text}"
        );
    }
}

#[test]
fn diagnostics_never_echo_numbers_given_as_names_or_codes() {
    let explicit = format!("Patient.identifier={NHS}&MessageHeader.event=vaccinations-1");
    // Each row is rejected for the number it carries where a name or code belongs; the
    // needle shows that it is that rule (not an earlier one) that answered.
    for (criteria, needle) in [
        (
            format!("/Bundle?type=message&Patient.identifier={NHS}&MessageHeader.event={NHS}"),
            "EventType-1",
        ),
        (
            format!("/Bundle?type=message&{explicit}&{NHS}=x"),
            "is not supported",
        ),
        (
            format!("/Bundle?type=message&{explicit}&{NHS}="),
            "empty value",
        ),
        (
            format!("/Bundle?type=message&{explicit}&{NHS}=%ZZ"),
            "percent-encoding",
        ),
        (
            format!("/Bundle?type=message&{explicit}&serviceType={NHS}"),
            "serviceType",
        ),
        (
            format!(
                "/Bundle?type=message&subscriptionRuleType={NHS}&Organization.identifier=15F&MessageHeader.event=vaccinations-1"
            ),
            "subscriptionRuleType",
        ),
    ] {
        let (code, text) = err(&criteria);
        assert_eq!(code, SpineCode::InvalidRequestMessage, "{criteria}: {text}");
        assert!(
            text.contains(needle),
            "{criteria}: `{text}` lacks `{needle}`"
        );
        assert!(!text.contains(NHS), "diagnostics echo the number: {text}");
        assert!(text.contains("(value not shown)"), "{text}");
    }
}
