//! Every error row of nems.md §2.6 that the Subscription API can answer, end to end over
//! HTTP, each rendered as a Spine OperationOutcome in XML and in JSON (the format chosen by
//! `Accept`): HTTP status, Spine code, `issue.code`, `severity`, `meta.profile`, an `id`
//! (the request id) and non-empty diagnostics that never contain an NHS number.
//!
//! Rows: `BAD_REQUEST` (search, malformed ids, `_history`, empty body, a read with a body),
//! `MESSAGE_NOT_WELL_FORMED`, `MISSING_OR_INVALID_HEADER` (each header missing, wrong
//! `InteractionID`, bad JWT claims), `INVALID_NHS_NUMBER`, `INVALID_IDENTIFIER_SYSTEM`,
//! `INVALID_REQUEST_MESSAGE` (criteria grammar, unknown mailbox, past `end`),
//! `INVALID_ELEMENT` (client `id`, `meta.versionId`, `meta.lastUpdated`), `ASID_CHECK_FAILED`
//! (unknown ASID, wrong `toASID`), `ACCESS_DENIED` (organisation not linked, category bags,
//! another organisation's mailbox, an unknown contact organisation, answered like one not
//! linked so that ODS codes are not revealed: decisions.md §13), `NO_RECORD_FOUND` (unknown id,
//! another organisation's subscription, after delete), `MSG_RESOURCE_ID_FAIL` (`PUT`),
//! `UNSUPPORTED_MEDIA_TYPE` (`Content-Type`, `Accept`, `_format`), `INVALID_RESOURCE`,
//! `DUPLICATE_REJECTED` (naming the existing id), and the event lifecycle:
//! `NO_LONGER_SUPPORTED` and `WITHDRAWN` refuse, `DEPRECATED` creates with an information
//! OperationOutcome in the `201`.

use http::Method;
use nems_core::domain::catalogue::{EventTypeOverride, LifecycleState};
use nems_e2e::spine::{self, Caller, OTHER, Op, SUBSCRIBER};
use nems_e2e::stack::TestStack;
use nems_proto::spine::SpineCode;

use crate::subscription_api::{
    Api, Fmt, NHS, NOT_NHS, Req, Sub, bearer, body_of, check_outcome, claims, echoed_nhs_number,
    id_of, outcome,
};

/// A well-formed id that names no subscription.
const UNKNOWN_ID: &str = "0123456789abcdef0123456789abcdef";

/// One error row: the request to send for each answer format, and the answer it must get.
pub(crate) struct Case {
    name: String,
    request: Box<dyn Fn(Fmt) -> Req>,
    status: u16,
    spine: &'static str,
    issue: &'static str,
    /// Text the diagnostics must contain.
    needle: String,
    /// The answer's format when it cannot follow `Accept` (an unacceptable `Accept`).
    answer: Option<Fmt>,
}

/// A row.
pub(crate) fn case(
    name: impl Into<String>,
    status: u16,
    spine: &'static str,
    issue: &'static str,
    needle: impl Into<String>,
    request: impl Fn(Fmt) -> Req + 'static,
) -> Case {
    Case {
        name: name.into(),
        request: Box::new(request),
        status,
        spine,
        issue,
        needle: needle.into(),
        answer: None,
    }
}

impl Case {
    fn answered_in(mut self, fmt: Fmt) -> Case {
        self.answer = Some(fmt);
        self
    }
}

/// Sends every row in both formats and fails listing every row that did not hold.
pub(crate) async fn run(api: &Api<'_>, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        for fmt in Fmt::BOTH {
            let r = api.send((c.request)(fmt)).await;
            let answer = c.answer.unwrap_or(fmt);
            match check_outcome(&r, answer, c.status, c.spine, c.issue) {
                Ok(diagnostics) if diagnostics.contains(&c.needle) => {}
                Ok(diagnostics) => failures.push(format!(
                    "{} [{fmt:?}]: diagnostics `{diagnostics}` lack `{}`",
                    c.name, c.needle
                )),
                Err(e) => failures.push(format!("{} [{fmt:?}]: {e}", c.name)),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed:\n{}",
        failures.len(),
        cases.len() * 2,
        failures.join("\n")
    );
}

fn create(sub: Sub) -> impl Fn(Fmt) -> Req {
    move |fmt| Req::create(SUBSCRIBER, fmt, fmt, &sub)
}

fn create_as(caller: Caller, sub: Sub) -> impl Fn(Fmt) -> Req {
    move |fmt| Req::create(caller, fmt, fmt, &sub)
}

fn with_criteria(criteria: &str) -> Sub {
    Sub::new("RR8", "RR8MBX01", criteria)
}

fn valid() -> Sub {
    Sub::explicit(NHS[0], &["vaccinations-1"])
}

// === Rows ===

/// Search, malformed ids, `_history` and `PUT`.
pub(crate) async fn routing(api: &Api<'_>) {
    let read = |path: &'static str| move |fmt| Req::read(SUBSCRIBER, fmt, "x").path(path);
    let cases = vec![
        case(
            "search",
            400,
            "BAD_REQUEST",
            "invalid",
            "Search",
            read("/STU3/Subscription?criteria:contains=9434765919"),
        ),
        case(
            "search without parameters",
            400,
            "BAD_REQUEST",
            "invalid",
            "Search",
            read("/STU3/Subscription"),
        ),
        case(
            "read of a malformed id",
            400,
            "BAD_REQUEST",
            "invalid",
            "32 hexadecimal",
            read("/STU3/Subscription/not-an-id"),
        ),
        case(
            "read of a 32-character id that is not hex",
            400,
            "BAD_REQUEST",
            "invalid",
            "32 hexadecimal",
            read("/STU3/Subscription/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"),
        ),
        case(
            "delete of a hyphenated uuid",
            400,
            "BAD_REQUEST",
            "invalid",
            "32 hexadecimal",
            |fmt| Req::delete(SUBSCRIBER, fmt, "ea0a4851-8720-4b49-b978-bdcf7102388c"),
        ),
        case(
            "versioned read",
            400,
            "BAD_REQUEST",
            "invalid",
            "_history",
            |fmt| {
                Req::read(SUBSCRIBER, fmt, "x")
                    .path(format!("/STU3/Subscription/{UNKNOWN_ID}/_history/1"))
            },
        ),
        case(
            "PUT of a subscription",
            405,
            "MSG_RESOURCE_ID_FAIL",
            "forbidden",
            "delete it and create",
            |fmt| {
                Req::create(SUBSCRIBER, fmt, fmt, &valid())
                    .method(Method::PUT)
                    .path(format!("/STU3/Subscription/{UNKNOWN_ID}"))
            },
        ),
        case(
            "PUT to the collection",
            405,
            "MSG_RESOURCE_ID_FAIL",
            "forbidden",
            "delete it and create",
            |fmt| Req::create(SUBSCRIBER, fmt, fmt, &valid()).method(Method::PUT),
        ),
    ];
    run(api, cases).await;
}

/// Spine headers and JWT claims on create, read and delete; `ASID_CHECK_FAILED` and the
/// organisation-not-linked `ACCESS_DENIED`.
pub(crate) async fn headers(api: &Api<'_>) {
    let ops: [(&str, MakeReq); 3] = [
        ("create", |fmt| Req::create(SUBSCRIBER, fmt, fmt, &valid())),
        ("read", |fmt| Req::read(SUBSCRIBER, fmt, UNKNOWN_ID)),
        ("delete", |fmt| Req::delete(SUBSCRIBER, fmt, UNKNOWN_ID)),
    ];
    let mut cases = Vec::new();
    for (op, base) in ops {
        for header in ["Authorization", "fromASID", "toASID", "InteractionID"] {
            cases.push(case(
                format!("{op} without {header}"),
                400,
                "MISSING_OR_INVALID_HEADER",
                "invalid",
                format!("{header} HTTP Header is missing"),
                move |fmt| base(fmt).without(header),
            ));
        }
        let scope_op = match op {
            "create" => Op::Create,
            "read" => Op::Read,
            _ => Op::Delete,
        };
        let wrong = if op == "read" { Op::Delete } else { Op::Read };
        let wrong_interaction = spine::headers(SUBSCRIBER, wrong)
            .into_iter()
            .find(|(n, _)| *n == "InteractionID")
            .unwrap()
            .1;
        cases.push(case(
            format!("{op} with the InteractionID of another operation"),
            400,
            "MISSING_OR_INVALID_HEADER",
            "invalid",
            "InteractionID must be",
            move |fmt| base(fmt).with("InteractionID", wrong_interaction.clone()),
        ));
        let claim_faults: Vec<(&str, &str, EditClaims)> = vec![
            ("an expired JWT", "expired", |c| {
                let exp = c["exp"].as_u64().unwrap() - 900;
                c["exp"] = exp.into();
                c["iat"] = (exp - 300).into();
            }),
            ("a JWT whose exp - iat is not 300 s", "300", |c| {
                c["iat"] = (c["iat"].as_u64().unwrap() - 60).into();
            }),
            (
                "a JWT without requesting_organisation",
                "requesting_organisation",
                |c| {
                    c.as_object_mut().unwrap().remove("requesting_organisation");
                },
            ),
            (
                "a JWT with an unknown reason_for_request",
                "reason_for_request",
                |c| {
                    c["reason_for_request"] = "curiosity".into();
                },
            ),
            ("a JWT whose sub is not the requesting system", "sub", |c| {
                c["sub"] = "someone-else".into();
            }),
            ("a JWT with the publish scope", "scope", |c| {
                c["scope"] = "patient/Bundle.write".into();
            }),
        ];
        for (what, needle, fault) in claim_faults {
            let mut c = claims(SUBSCRIBER, op_scope(scope_op));
            fault(&mut c);
            let token = bearer(&c);
            cases.push(case(
                format!("{op} with {what}"),
                400,
                "MISSING_OR_INVALID_HEADER",
                "invalid",
                needle,
                move |fmt| base(fmt).with("Authorization", token.clone()),
            ));
        }
        cases.push(case(
            format!("{op} with a signed JWT"),
            400,
            "MISSING_OR_INVALID_HEADER",
            "invalid",
            "unsigned",
            move |fmt| {
                let token = bearer(&claims(SUBSCRIBER, op_scope(scope_op)));
                base(fmt).with("Authorization", format!("{token}c2lnbmF0dXJl"))
            },
        ));
        cases.push(case(
            format!("{op} with Basic authorization"),
            400,
            "MISSING_OR_INVALID_HEADER",
            "invalid",
            "Bearer",
            move |fmt| base(fmt).with("Authorization", "Basic dXNlcjpwYXNz"),
        ));
        cases.push(case(
            format!("{op} with a malformed fromASID"),
            400,
            "MISSING_OR_INVALID_HEADER",
            "invalid",
            "fromASID",
            move |fmt| base(fmt).with("fromASID", "12345"),
        ));
        cases.push(case(
            format!("{op} with a fromASID other than the JWT's requesting_system"),
            400,
            "MISSING_OR_INVALID_HEADER",
            "invalid",
            "requesting_system",
            move |fmt| base(fmt).with("fromASID", OTHER.asid),
        ));
        cases.push(case(
            format!("{op} to another service's toASID"),
            403,
            "ASID_CHECK_FAILED",
            "forbidden",
            "toASID",
            move |fmt| base(fmt).with("toASID", "200000000999"),
        ));
        let unknown = Caller {
            asid: "200000000999",
            ods: "RR8",
        };
        cases.push(case(
            format!("{op} from an unknown ASID"),
            403,
            "ASID_CHECK_FAILED",
            "forbidden",
            "not registered",
            move |fmt| as_caller(base(fmt), unknown, scope_op),
        ));
        let unlinked = Caller {
            asid: SUBSCRIBER.asid,
            ods: "ABC",
        };
        cases.push(case(
            format!("{op} for an organisation not linked to the ASID"),
            403,
            "ACCESS_DENIED",
            "forbidden",
            "not linked",
            move |fmt| as_caller(base(fmt), unlinked, scope_op),
        ));
    }
    // Create and delete need the write scope; a read token does not do.
    for (op, base) in [ops[0], ops[2]] {
        let token = bearer(&claims(SUBSCRIBER, "patient/Subscription.read"));
        cases.push(case(
            format!("{op} with only the read scope"),
            400,
            "MISSING_OR_INVALID_HEADER",
            "invalid",
            "scope",
            move |fmt| base(fmt).with("Authorization", token.clone()),
        ));
    }
    run(api, cases).await;
}

/// Builds a request answered in the given format.
type MakeReq = fn(Fmt) -> Req;
/// Breaks a JWT's claims.
type EditClaims = fn(&mut serde_json::Value);

fn op_scope(op: Op) -> &'static str {
    match op {
        Op::Read => "patient/Subscription.read",
        _ => "patient/Subscription.write",
    }
}

/// `req` with the Spine headers of `caller`.
fn as_caller(req: Req, caller: Caller, op: Op) -> Req {
    spine::headers(caller, op)
        .into_iter()
        .fold(req, |req, (name, value)| req.with(name, value))
}

/// `Content-Type`, `Accept` and `_format` the API does not speak.
pub(crate) async fn media_types(api: &Api<'_>) {
    let mut cases = Vec::new();
    for ct in [
        "text/plain",
        "application/json",
        "application/xml",
        "application/fhir+xml;charset=iso-8859-1",
        "application/fhir+json;version=9",
    ] {
        cases.push(case(
            format!("create with Content-Type {ct}"),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "invalid",
            "Content-Type",
            move |fmt| Req::create(SUBSCRIBER, fmt, fmt, &valid()).with("Content-Type", ct),
        ));
    }
    cases.push(
        case(
            "create with Accept text/html",
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "invalid",
            "Accept",
            |fmt| Req::create(SUBSCRIBER, fmt, fmt, &valid()).with("Accept", "text/html"),
        )
        .answered_in(Fmt::Xml),
    );
    cases.push(
        case(
            "read with Accept text/html",
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "invalid",
            "Accept",
            |fmt| Req::read(SUBSCRIBER, fmt, UNKNOWN_ID).with("Accept", "text/html"),
        )
        .answered_in(Fmt::Xml),
    );
    cases.push(
        case(
            "delete with Accept image/png",
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "invalid",
            "Accept",
            |fmt| Req::delete(SUBSCRIBER, fmt, UNKNOWN_ID).with("Accept", "image/png"),
        )
        .answered_in(Fmt::Xml),
    );
    cases.push(
        case(
            "read with _format=yaml",
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "invalid",
            "_format",
            |fmt| {
                Req::read(SUBSCRIBER, fmt, UNKNOWN_ID)
                    .path(format!("/STU3/Subscription/{UNKNOWN_ID}?_format=yaml"))
            },
        )
        .answered_in(Fmt::Xml),
    );
    run(api, cases).await;
}

/// Bodies that are not well-formed, not a Subscription, or carry what the client may not
/// send.
pub(crate) async fn bodies(api: &Api<'_>) {
    let raw = |body_fmt: Fmt, body: &'static str| {
        move |fmt| Req::create(SUBSCRIBER, body_fmt, fmt, &valid()).body(body)
    };
    let edit = |f: fn(&mut Sub)| {
        let mut sub = valid();
        f(&mut sub);
        create(sub)
    };
    let cases = vec![
        case(
            "broken XML",
            400,
            "MESSAGE_NOT_WELL_FORMED",
            "structure",
            "",
            raw(
                Fmt::Xml,
                r#"<Subscription xmlns="http://hl7.org/fhir"><status value="requested">"#,
            ),
        ),
        case(
            "XML with mismatched tags",
            400,
            "MESSAGE_NOT_WELL_FORMED",
            "structure",
            "",
            raw(
                Fmt::Xml,
                r#"<Subscription xmlns="http://hl7.org/fhir"><status value="requested"/></Bundle>"#,
            ),
        ),
        case(
            "broken JSON",
            400,
            "MESSAGE_NOT_WELL_FORMED",
            "structure",
            "",
            raw(Fmt::Json, r#"{"resourceType": "Subscription", "status": "#),
        ),
        case(
            "text that is not JSON",
            400,
            "MESSAGE_NOT_WELL_FORMED",
            "structure",
            "",
            raw(Fmt::Json, "status=requested"),
        ),
        case(
            "an empty body",
            400,
            "BAD_REQUEST",
            "invalid",
            "required",
            move |fmt| Req::create(SUBSCRIBER, fmt, fmt, &valid()).body(""),
        ),
        case(
            "a read with a body",
            400,
            "BAD_REQUEST",
            "invalid",
            "body",
            move |fmt| Req::read(SUBSCRIBER, fmt, UNKNOWN_ID).body(valid().render(fmt)),
        ),
        case(
            "a Patient in XML",
            422,
            "INVALID_RESOURCE",
            "invalid",
            "",
            raw(
                Fmt::Xml,
                r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>"#,
            ),
        ),
        case(
            "a Patient in JSON",
            422,
            "INVALID_RESOURCE",
            "invalid",
            "Subscription",
            raw(Fmt::Json, r#"{"resourceType": "Patient", "active": true}"#),
        ),
        case(
            "status active",
            422,
            "INVALID_RESOURCE",
            "invalid",
            "requested",
            edit(|s| s.status = "active".into()),
        ),
        case(
            "an element STU3 Subscription does not have",
            422,
            "INVALID_RESOURCE",
            "invalid",
            "unknown element",
            edit(|s| s.unknown_element = true),
        ),
        case(
            "channel type rest-hook",
            422,
            "INVALID_RESOURCE",
            "invalid",
            "channel.type",
            edit(|s| s.channel_type = "rest-hook".into()),
        ),
        case(
            "a blank reason",
            422,
            "INVALID_RESOURCE",
            "invalid",
            "reason",
            edit(|s| s.reason = " ".into()),
        ),
        case(
            "an end that is a date, not an instant",
            422,
            "INVALID_RESOURCE",
            "invalid",
            "instant",
            edit(|s| s.end = Some("2099-01-01".into())),
        ),
        case(
            "a client-assigned id",
            400,
            "INVALID_ELEMENT",
            "value",
            "Subscription.id",
            edit(|s| s.id = Some("ea0a485187204b49b978bdcf7102388c".into())),
        ),
        case(
            "a client-assigned meta.versionId",
            400,
            "INVALID_ELEMENT",
            "value",
            "meta.versionId",
            edit(|s| s.version_id = Some("1".into())),
        ),
        case(
            "a client-assigned meta.lastUpdated",
            400,
            "INVALID_ELEMENT",
            "value",
            "meta.lastUpdated",
            edit(|s| s.last_updated = Some("2024-01-01T00:00:00+00:00".into())),
        ),
    ];
    run(api, cases).await;
}

/// The criteria grammar and the other business rules of a create.
pub(crate) async fn criteria(api: &Api<'_>) {
    let nhs = NHS[0];
    let id = format!("Patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}");
    let rows: Vec<(&str, &'static str, &str, String)> = vec![
        (
            "an NHS number with a wrong check digit",
            "INVALID_NHS_NUMBER",
            "NHS number",
            spine::explicit(NOT_NHS[0], &["vaccinations-1"], ""),
        ),
        (
            "a nine-digit NHS number",
            "INVALID_NHS_NUMBER",
            "NHS number",
            spine::explicit(NOT_NHS[1], &["vaccinations-1"], ""),
        ),
        (
            "an unknown NHS-number system",
            "INVALID_IDENTIFIER_SYSTEM",
            "system",
            format!(
                "/Bundle?type=message&Patient.identifier=https://example.org/Id/patient|{nhs}&MessageHeader.event=vaccinations-1"
            ),
        ),
        (
            "no MessageHeader.event",
            "INVALID_REQUEST_MESSAGE",
            "MessageHeader.event",
            format!("/Bundle?type=message&{id}"),
        ),
        (
            "an event code outside EventType-1",
            "INVALID_REQUEST_MESSAGE",
            "EventType-1",
            spine::explicit(nhs, &["made-up-event-1"], ""),
        ),
        (
            "the same event twice",
            "INVALID_REQUEST_MESSAGE",
            "more than once",
            spine::explicit(nhs, &["vaccinations-1", "vaccinations-1"], ""),
        ),
        (
            "criteria on another resource",
            "INVALID_REQUEST_MESSAGE",
            "/Bundle?type=message",
            format!("/Patient?type=message&{id}&MessageHeader.event=vaccinations-1"),
        ),
        (
            "a Bundle type other than message",
            "INVALID_REQUEST_MESSAGE",
            "/Bundle?type=message",
            format!("/Bundle?type=document&{id}&MessageHeader.event=vaccinations-1"),
        ),
        (
            "neither Patient.identifier nor subscriptionRuleType",
            "INVALID_REQUEST_MESSAGE",
            "Patient.identifier",
            "/Bundle?type=message&MessageHeader.event=vaccinations-1".into(),
        ),
        (
            "both Patient.identifier and subscriptionRuleType",
            "INVALID_REQUEST_MESSAGE",
            "both",
            spine::explicit(nhs, &["vaccinations-1"], "&subscriptionRuleType=GP_GP_GP"),
        ),
        (
            "Organization.identifier in an explicit subscription",
            "INVALID_REQUEST_MESSAGE",
            "only allowed in generic",
            spine::explicit(nhs, &["vaccinations-1"], "&Organization.identifier=A12345"),
        ),
        (
            "a generic rule without Organization.identifier",
            "INVALID_REQUEST_MESSAGE",
            "Organization.identifier is required",
            "/Bundle?type=message&subscriptionRuleType=CHO_POSTCODE_CCG&MessageHeader.event=pds-change-of-address-1".into(),
        ),
        (
            "a generic rule with two events",
            "INVALID_REQUEST_MESSAGE",
            "exactly one",
            spine::generic(
                "CHO_POSTCODE_CCG",
                "X2458",
                "pds-change-of-address-1",
                "&MessageHeader.event=pds-change-of-gp-1",
            ),
        ),
        (
            "an unknown rule",
            "INVALID_REQUEST_MESSAGE",
            "subscriptionRuleType",
            spine::generic("NOPE_RULE", "X2458", "pds-change-of-address-1", ""),
        ),
        (
            "COUNTRYCODE with a code that is not a country",
            "INVALID_REQUEST_MESSAGE",
            "country code",
            spine::generic("COUNTRYCODE", "X2458", "pds-change-of-address-1", ""),
        ),
        (
            "GPRegistration with GP_GP_GP",
            "INVALID_REQUEST_MESSAGE",
            "GPRegistration",
            spine::generic(
                "GP_GP_GP",
                "A12345",
                "pds-change-of-address-1",
                "&GPRegistration=RegisteredOnly",
            ),
        ),
        (
            "an unknown GPRegistration",
            "INVALID_REQUEST_MESSAGE",
            "GPRegistration",
            spine::explicit(nhs, &["vaccinations-1"], "&GPRegistration=Sometimes"),
        ),
        (
            "an age that is not a number",
            "INVALID_REQUEST_MESSAGE",
            "Patient.age",
            spine::explicit(nhs, &["vaccinations-1"], "&Patient.age=old"),
        ),
        (
            "an age range that matches no age",
            "INVALID_REQUEST_MESSAGE",
            "matches no age",
            spine::explicit(nhs, &["vaccinations-1"], "&Patient.age=gt10&Patient.age=lt11"),
        ),
        (
            "three ages",
            "INVALID_REQUEST_MESSAGE",
            "at most twice",
            spine::explicit(
                nhs,
                &["vaccinations-1"],
                "&Patient.age=gt1&Patient.age=lt90&Patient.age=5",
            ),
        ),
        (
            "a tag with a character outside the tag alphabet",
            "INVALID_REQUEST_MESSAGE",
            "tag",
            spine::explicit(nhs, &["vaccinations-1"], "&tag=site!1"),
        ),
        (
            "an unknown serviceType",
            "INVALID_REQUEST_MESSAGE",
            "serviceType",
            spine::explicit(nhs, &["vaccinations-1"], "&serviceType=XYZ"),
        ),
        (
            "an unknown parameter",
            "INVALID_REQUEST_MESSAGE",
            "not supported",
            spine::explicit(nhs, &["vaccinations-1"], "&colour=red"),
        ),
        (
            "a doubled &",
            "INVALID_REQUEST_MESSAGE",
            "empty component",
            spine::explicit(nhs, &["vaccinations-1"], "&&tag=a"),
        ),
        (
            "a trailing &",
            "INVALID_REQUEST_MESSAGE",
            "empty component",
            spine::explicit(nhs, &["vaccinations-1"], "&"),
        ),
        (
            "white space",
            "INVALID_REQUEST_MESSAGE",
            "white space",
            spine::explicit(nhs, &["vaccinations-1"], "&tag= a"),
        ),
    ];
    let mut cases: Vec<Case> = rows
        .into_iter()
        .map(|(name, code, needle, criteria)| {
            let issue = "value";
            case(
                name,
                400,
                code,
                issue,
                needle,
                create(with_criteria(&criteria)),
            )
        })
        .collect();
    let mut unknown_mailbox = valid();
    unknown_mailbox.mailbox = "NOMBX99".into();
    cases.push(case(
        "an unknown mailbox",
        400,
        "INVALID_REQUEST_MESSAGE",
        "value",
        "not a registered MESH mailbox",
        create(unknown_mailbox),
    ));
    let mut past = valid();
    past.end = Some("2001-01-01T00:00:00+00:00".into());
    cases.push(case(
        "an end in the past",
        400,
        "INVALID_REQUEST_MESSAGE",
        "value",
        "past",
        create(past),
    ));
    run(api, cases).await;
}

/// The directory's permissions: category bags, linked organisations and mailboxes.
pub(crate) async fn permissions(api: &Api<'_>) {
    let vaccinations = spine::explicit(NHS[0], &["vaccinations-1"], "");
    let cases = vec![
        case(
            "a generic subscription without NEMS_SUBS_TYPE:GENERIC",
            403,
            "ACCESS_DENIED",
            "forbidden",
            "NEMS_SUBS_TYPE:GENERIC",
            create_as(
                OTHER,
                Sub::new(
                    "ABC",
                    "ABCMBX01",
                    &spine::generic("CHO_POSTCODE_CCG", "X2458", "vaccinations-1", ""),
                ),
            ),
        ),
        case(
            "an event type without its NEMS_EVENT_ID bag",
            403,
            "ACCESS_DENIED",
            "forbidden",
            "NEMS_EVENT_ID:CHANGEOFADDRESS_1",
            create_as(
                OTHER,
                Sub::new(
                    "ABC",
                    "ABCMBX01",
                    &spine::explicit(NHS[0], &["vaccinations-1", "pds-change-of-address-1"], ""),
                ),
            ),
        ),
        case(
            "a mailbox of another organisation",
            403,
            "ACCESS_DENIED",
            "forbidden",
            "belongs to",
            create(Sub::new("RR8", "ABCMBX01", &vaccinations)),
        ),
        case(
            "a contact organisation not linked to the ASID",
            403,
            "ACCESS_DENIED",
            "forbidden",
            "not linked",
            create(Sub::new("ABC", "ABCMBX01", &vaccinations)),
        ),
        case(
            "another organisation's contact and mailbox",
            403,
            "ACCESS_DENIED",
            "forbidden",
            "not linked",
            create_as(OTHER, Sub::new("RR8", "RR8MBX01", &vaccinations)),
        ),
        // decisions.md §13: a contact ODS not linked to the ASID is 403 ACCESS_DENIED; an
        // unknown one is not linked either, and the same answer does not reveal which ODS
        // codes the directory holds.
        case(
            "an unknown contact organisation",
            403,
            "ACCESS_DENIED",
            "forbidden",
            "the contact organisation Z99999 is not linked to ASID 200000000111",
            create(Sub::new("Z99999", "RR8MBX01", &vaccinations)),
        ),
    ];
    run(api, cases).await;
}

/// Unknown ids, another organisation's subscription (read and delete), and a deleted one.
pub(crate) async fn not_found(api: &Api<'_>) {
    let mine = api
        .create_ok(
            SUBSCRIBER,
            Fmt::Xml,
            &Sub::explicit(NHS[0], &["vaccinations-1"]),
        )
        .await;
    let gone = api
        .create_ok(
            SUBSCRIBER,
            Fmt::Json,
            &Sub::explicit(NHS[1], &["vaccinations-1"]),
        )
        .await;
    let r = api.send(Req::delete(SUBSCRIBER, Fmt::Json, &gone)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // ABC may read and delete its own subscriptions: its refusals are about ownership.
    let theirs = api
        .create_ok(
            OTHER,
            Fmt::Json,
            &Sub::new(
                "ABC",
                "ABCMBX01",
                &spine::explicit(NHS[0], &["vaccinations-1"], ""),
            ),
        )
        .await;
    api.read_ok(OTHER, Fmt::Xml, &theirs).await;

    let text = |id: &str| format!("No record found for supplied Subscription identifier - {id}");
    let cases = vec![
        case(
            "read of an unknown id",
            404,
            "NO_RECORD_FOUND",
            "not-found",
            text(UNKNOWN_ID),
            |fmt| Req::read(SUBSCRIBER, fmt, UNKNOWN_ID),
        ),
        case(
            "delete of an unknown id",
            404,
            "NO_RECORD_FOUND",
            "not-found",
            text(UNKNOWN_ID),
            |fmt| Req::delete(SUBSCRIBER, fmt, UNKNOWN_ID),
        ),
        case(
            "read of another organisation's subscription",
            404,
            "NO_RECORD_FOUND",
            "not-found",
            text(&mine),
            {
                let mine = mine.clone();
                move |fmt| Req::read(OTHER, fmt, &mine)
            },
        ),
        case(
            "delete of another organisation's subscription",
            404,
            "NO_RECORD_FOUND",
            "not-found",
            text(&mine),
            {
                let mine = mine.clone();
                move |fmt| Req::delete(OTHER, fmt, &mine)
            },
        ),
        case(
            "RR8 reading ABC's subscription",
            404,
            "NO_RECORD_FOUND",
            "not-found",
            text(&theirs),
            {
                let theirs = theirs.clone();
                move |fmt| Req::read(SUBSCRIBER, fmt, &theirs)
            },
        ),
        case(
            "read after delete",
            404,
            "NO_RECORD_FOUND",
            "not-found",
            text(&gone),
            {
                let gone = gone.clone();
                move |fmt| Req::read(SUBSCRIBER, fmt, &gone)
            },
        ),
        case(
            "delete after delete",
            404,
            "NO_RECORD_FOUND",
            "not-found",
            text(&gone),
            {
                let gone = gone.clone();
                move |fmt| Req::delete(SUBSCRIBER, fmt, &gone)
            },
        ),
    ];
    run(api, cases).await;
    // The refused delete left RR8's subscription in place.
    let v = api.read_ok(SUBSCRIBER, Fmt::Json, &mine).await;
    assert_eq!(v["status"], "active");
}

/// A second identical live subscription is refused naming the first; what differs in the
/// key, or a deleted first, is not a duplicate.
pub(crate) async fn duplicates(api: &Api<'_>) {
    let events = ["vaccinations-1", "pds-change-of-address-1"];
    let explicit = Sub::explicit(NHS[2], &events);
    let first = api.create_ok(SUBSCRIBER, Fmt::Xml, &explicit).await;
    let generic = Sub::new(
        "RR8",
        "RR8MBX01",
        &spine::generic("CHO_POSTCODE_CCG", "X2458", "pds-change-of-address-1", ""),
    );
    let first_generic = api.create_ok(SUBSCRIBER, Fmt::Json, &generic).await;

    let reordered = Sub::explicit(NHS[2], &["pds-change-of-address-1", "vaccinations-1"]);
    let old_system = with_criteria(&format!(
        "/Bundle?type=message&Patient.identifier=http://fhir.nhs.net/Id/nhs-number|{}&MessageHeader.event=vaccinations-1&MessageHeader.event=pds-change-of-address-1",
        NHS[2]
    ));
    let lower_case_org = Sub::new(
        "RR8",
        "rr8mbx01",
        &spine::generic("CHO_POSTCODE_CCG", "x2458", "pds-change-of-address-1", ""),
    );
    let cases = vec![
        case(
            "the same explicit subscription",
            422,
            "DUPLICATE_REJECTED",
            "duplicate",
            first.clone(),
            create(explicit.clone()),
        ),
        case(
            "the same events in another order",
            422,
            "DUPLICATE_REJECTED",
            "duplicate",
            first.clone(),
            create(reordered),
        ),
        case(
            "the same NHS number under the old-style system",
            422,
            "DUPLICATE_REJECTED",
            "duplicate",
            first.clone(),
            create(old_system),
        ),
        case(
            "the same generic subscription",
            422,
            "DUPLICATE_REJECTED",
            "duplicate",
            first_generic.clone(),
            create(generic.clone()),
        ),
        case(
            "the same generic subscription in lower case",
            422,
            "DUPLICATE_REJECTED",
            "duplicate",
            first_generic.clone(),
            create(lower_case_org),
        ),
    ];
    run(api, cases).await;

    // Not duplicates: another mailbox, another filter, another event set.
    let mut other_mailbox = explicit.clone();
    other_mailbox.mailbox = "RR8MBX02".into();
    let filtered = Sub::explicit(NHS[2], &events);
    let filtered = with_criteria(&format!("{}&Patient.age=lt19", filtered.criteria));
    let fewer = Sub::explicit(NHS[2], &["vaccinations-1"]);
    for sub in [other_mailbox, filtered, fewer] {
        api.create_ok(SUBSCRIBER, Fmt::Json, &sub).await;
    }
    // Once the first is deleted, the same subscription can be created again.
    let r = api.send(Req::delete(SUBSCRIBER, Fmt::Xml, &first)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let again = api.create_ok(SUBSCRIBER, Fmt::Xml, &explicit).await;
    assert_ne!(again, first);
}

/// A stack whose catalogue deprecates newborn hearing and professional contacts, no longer
/// supports NIPE outcomes and has withdrawn blood spot outcomes.
pub(crate) async fn lifecycle_stack() -> TestStack {
    let set = |code: &str, state, note: Option<&str>| EventTypeOverride {
        code: code.into(),
        display: None,
        workflow_id: None,
        publish_interaction_code: None,
        pds_only: None,
        state: Some(state),
        lifecycle_note: note.map(str::to_string),
        message_event_types: None,
        focus_resource_type: None,
        routing_optional: None,
    };
    let overrides = vec![
        set(
            "newborn-hearing-1",
            LifecycleState::Deprecated,
            Some("withdrawal on 22/06/2030, see https://example.org/nems/newborn-hearing"),
        ),
        set(
            "professional-contacts-1",
            LifecycleState::Deprecated,
            Some("withdrawal on 01/01/2031"),
        ),
        set("nipe-outcome-1", LifecycleState::NoLongerSupported, None),
        set("blood-spot-test-outcome-1", LifecycleState::Withdrawn, None),
    ];
    TestStack::builder()
        .core(move |c| c.event_types = overrides)
        .start()
        .await
}

/// `NO_LONGER_SUPPORTED` and `WITHDRAWN` refuse the create; `DEPRECATED` creates and says so.
pub(crate) async fn lifecycle(api: &Api<'_>) {
    let cases = vec![
        case(
            "a no-longer-supported event type",
            400,
            "NO_LONGER_SUPPORTED",
            "not-supported",
            "nipe-outcome-1",
            create(Sub::explicit(NHS[3], &["nipe-outcome-1"])),
        ),
        case(
            "a no-longer-supported event type beside a supported one",
            400,
            "NO_LONGER_SUPPORTED",
            "not-supported",
            "nipe-outcome-1",
            create(Sub::explicit(NHS[3], &["vaccinations-1", "nipe-outcome-1"])),
        ),
        case(
            "a withdrawn event type",
            400,
            "WITHDRAWN",
            "not-supported",
            "blood-spot-test-outcome-1",
            create(Sub::explicit(NHS[3], &["blood-spot-test-outcome-1"])),
        ),
        case(
            "a withdrawn generic event type",
            400,
            "WITHDRAWN",
            "not-supported",
            "blood-spot-test-outcome-1",
            create(with_criteria(&spine::generic(
                "GP_GP_GP",
                "A12345",
                "blood-spot-test-outcome-1",
                "",
            ))),
        ),
    ];
    run(api, cases).await;

    let base = api.stack.base_url();
    for (n, fmt) in Fmt::BOTH.into_iter().enumerate() {
        for (events, notes) in [
            (&["newborn-hearing-1"][..], &["22/06/2030"][..]),
            (
                &[
                    "newborn-hearing-1",
                    "vaccinations-1",
                    "professional-contacts-1",
                ][..],
                &["22/06/2030", "01/01/2031"][..],
            ),
        ] {
            let sub = Sub::explicit(NHS[4 + n], events);
            let r = api.send(Req::create(SUBSCRIBER, fmt, fmt, &sub)).await;
            let context = format!("{events:?} in {fmt:?}: {}", r.text());
            assert_eq!(r.status, 201, "{context}");
            let id = id_of(&r, &base);
            assert_eq!(r.header("etag"), Some(r#"W/"1""#), "{context}");
            assert!(r.header("last-modified").is_some(), "{context}");
            assert!(echoed_nhs_number(&r).is_none(), "{context}");
            let v = body_of(&r, fmt);
            assert_eq!(v["resourceType"], "OperationOutcome", "{context}");
            assert_eq!(v["id"].as_str(), r.header("x-request-id"), "{context}");
            assert_eq!(
                v["meta"]["profile"],
                crate::subscription_api::SPINE_OO_PROFILE,
                "{context}"
            );
            let issues = match &v["issue"] {
                serde_json::Value::Array(items) => items.clone(),
                one => vec![one.clone()],
            };
            assert_eq!(
                issues.len(),
                notes.len(),
                "one issue per deprecated event: {context}"
            );
            for (issue, note) in issues.iter().zip(notes.iter()) {
                assert_eq!(issue["severity"], "information", "{context}");
                assert_eq!(issue["code"], "informational", "{context}");
                let coding = &issue["details"]["coding"];
                assert_eq!(coding["system"], nems_proto::spine::CODE_SYSTEM);
                assert_eq!(coding["code"], "DEPRECATED", "{context}");
                assert_eq!(coding["display"], SpineCode::Deprecated.display());
                let diagnostics = issue["diagnostics"].as_str().unwrap_or_default();
                assert!(diagnostics.contains(note), "{diagnostics} lacks {note}");
            }
            let first = issues[0]["diagnostics"].as_str().unwrap_or_default();
            assert!(first.contains("newborn-hearing-1"), "{first}");
            // Created all the same.
            let stored = api.read_ok(SUBSCRIBER, fmt.other(), &id).await;
            assert_eq!(stored["status"], "active");
            assert_eq!(stored["criteria"], sub.criteria.as_str());
            let r = api.send(Req::delete(SUBSCRIBER, fmt, &id)).await;
            assert_eq!(r.status, 200);
        }
    }
}

macro_rules! on_default_stack {
    ($($test:ident => $scenario:ident;)*) => {$(
        #[tokio::test]
        async fn $test() {
            let stack = TestStack::start().await;
            $scenario(&Api::new(&stack)).await;
            stack.shutdown().await;
        }
    )*};
}

on_default_stack! {
    search_malformed_ids_history_and_put_are_refused => routing;
    missing_or_invalid_headers_jwt_claims_and_asid_checks => headers;
    unsupported_media_types => media_types;
    malformed_and_invalid_bodies => bodies;
    criteria_grammar_identifiers_mailbox_and_end => criteria;
    permissions_come_from_the_directory => permissions;
    unknown_foreign_and_deleted_ids_are_not_found => not_found;
    duplicates_are_rejected_naming_the_existing_id => duplicates;
}

#[tokio::test]
async fn lifecycle_states_refuse_or_warn() {
    let stack = lifecycle_stack().await;
    lifecycle(&Api::new(&stack)).await;
    stack.shutdown().await;
}

/// A client's `X-Request-ID` becomes the OperationOutcome `id` only when it is a FHIR id
/// (`[A-Za-z0-9\-\.]{1,64}`); otherwise the edge uses a UUID of its own. Either way the
/// `X-Request-ID` answered and the `id` are the same, on the router's answers (a read of an
/// unknown id) and on those of the server's layers (a `413` over `Content-Length`).
#[tokio::test]
async fn client_request_ids_are_used_only_when_they_are_fhir_ids() {
    let stack = TestStack::builder()
        .edge(|c| c.max_body_bytes = 1024)
        .start()
        .await;
    let api = Api::new(&stack);
    let answers = async |id: &str| {
        let read = Req::read(SUBSCRIBER, Fmt::Xml, UNKNOWN_ID).with("X-Request-ID", id);
        let read = api.send(read).await;
        outcome(&read, Fmt::Xml, 404, "NO_RECORD_FOUND", "not-found");
        let mut create = Req::create(SUBSCRIBER, Fmt::Xml, Fmt::Xml, &valid());
        create.body = " ".repeat(2048);
        let create = api.send(create.with("X-Request-ID", id)).await;
        outcome(&create, Fmt::Xml, 413, "INVALID_REQUEST_MESSAGE", "value");
        [read, create]
    };
    for r in answers("Client-req.42").await {
        assert_eq!(r.header("x-request-id"), Some("Client-req.42"));
    }
    for invalid in ["has space", "under_score", "<id/>", "a/b", &"a".repeat(65)] {
        for r in answers(invalid).await {
            // `outcome` has checked that the `id` is the header's value.
            let echoed = r.header("x-request-id").unwrap_or_default();
            assert!(
                uuid::Uuid::parse_str(echoed).is_ok(),
                "`{invalid}` answered with X-Request-ID `{echoed}`"
            );
        }
    }
    stack.shutdown().await;
}
