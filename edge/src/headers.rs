//! The Spine request headers (nems.md §2.2): `InteractionID`, `fromASID`, `toASID` and the
//! `Authorization` JWT. Produces the [`pb::Caller`] core checks against the directory.

use http::HeaderMap;
use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;

use crate::error::EdgeError;
use crate::jwt::{self, Operation};

/// `InteractionID` of a subscription create.
pub const CREATE_INTERACTION: &str = "urn:nhs:names:services:clinicals-sync:SubscriptionsApiPost";
/// `InteractionID` of a subscription read.
pub const READ_INTERACTION: &str = "urn:nhs:names:services:clinicals-sync:SubscriptionsApiGet";
/// `InteractionID` of a subscription delete.
pub const DELETE_INTERACTION: &str = "urn:nhs:names:services:clinicals-sync:SubscriptionsApiDelete";
/// Prefix of publish `InteractionID`s (core checks the event it names).
pub const PUBLISH_PREFIX: &str = "urn:nhs:names:services:events:";

/// The checked headers of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Who is calling.
    pub caller: pb::Caller,
    /// The `InteractionID` header.
    pub interaction_id: String,
}

fn header_error(text: impl Into<String>) -> EdgeError {
    EdgeError::new(SpineCode::MissingOrInvalidHeader, text)
}

fn get<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, EdgeError> {
    let value = headers
        .get(name)
        .ok_or_else(|| header_error(format!("{name} HTTP Header is missing")))?;
    value
        .to_str()
        .map(str::trim)
        .map_err(|_| header_error(format!("{name} HTTP Header is not valid text")))
}

fn is_asid(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Settings for header checks.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// This service's ASID.
    pub service_asid: &'a str,
    /// Now, in epoch seconds.
    pub now: i64,
    /// Tolerated clock skew, seconds.
    pub skew: i64,
}

/// Checks the headers of an `op` request.
pub fn check(
    headers: &HeaderMap,
    op: Operation,
    policy: Policy<'_>,
    request_id: &str,
) -> Result<Checked, EdgeError> {
    let interaction = get(headers, "InteractionID")?;
    let from = get(headers, "fromASID")?;
    let to = get(headers, "toASID")?;
    let authorization = get(headers, "Authorization")?;
    let expected = match op {
        Operation::Create => Some(CREATE_INTERACTION),
        Operation::Read => Some(READ_INTERACTION),
        Operation::Delete => Some(DELETE_INTERACTION),
        Operation::Publish => None,
    };
    match expected {
        Some(expected) if interaction != expected => {
            return Err(header_error(format!(
                "InteractionID must be {expected} for this request"
            )));
        }
        None if !interaction.starts_with(PUBLISH_PREFIX) => {
            return Err(header_error(format!(
                "InteractionID must be {PUBLISH_PREFIX}<EventCode>.Write when publishing"
            )));
        }
        _ => {}
    }
    if !is_asid(from) {
        return Err(header_error("fromASID HTTP Header must be a 12-digit ASID"));
    }
    if !is_asid(to) {
        return Err(header_error("toASID HTTP Header must be a 12-digit ASID"));
    }
    if to != policy.service_asid {
        return Err(EdgeError::new(
            SpineCode::AsidCheckFailed,
            format!("toASID {to} is not the ASID of this service"),
        ));
    }
    let claims = jwt::check(authorization, op, policy.now, policy.skew).map_err(header_error)?;
    if claims.asid != from {
        return Err(header_error(
            "JWT claim `requesting_system` must name the ASID in fromASID",
        ));
    }
    Ok(Checked {
        caller: pb::Caller {
            asid: claims.asid,
            ods_code: claims.ods_code,
            user: claims.user.unwrap_or_default(),
            request_id: request_id.to_string(),
            client_certificate: Vec::new(),
            client_certificate_chain: Vec::new(),
        },
        interaction_id: interaction.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_100;

    fn token() -> String {
        format!(
            "Bearer {}",
            jwt::encode(&json!({
                "iss": "x", "aud": "y",
                "sub": "https://fhir.nhs.uk/Id/accredited-system|200000000111",
                "exp": 1_700_000_300, "iat": 1_700_000_000,
                "reason_for_request": "directcare",
                "scope": "patient/Subscription.read",
                "requesting_system": "https://fhir.nhs.uk/Id/accredited-system|200000000111",
                "requesting_organisation": "https://fhir.nhs.uk/Id/ods-organization-code|RR8",
            }))
        )
    }

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("interactionid", HeaderValue::from_static(READ_INTERACTION));
        h.insert("fromasid", HeaderValue::from_static("200000000111"));
        h.insert("toasid", HeaderValue::from_static("200000000306"));
        h.insert("authorization", HeaderValue::from_str(&token()).unwrap());
        h
    }

    fn policy() -> Policy<'static> {
        Policy {
            service_asid: "200000000306",
            now: NOW,
            skew: 60,
        }
    }

    #[test]
    fn valid_headers_give_the_caller() {
        let c = check(&headers(), Operation::Read, policy(), "req-1").unwrap();
        assert_eq!(c.caller.asid, "200000000111");
        assert_eq!(c.caller.ods_code, "RR8");
        assert_eq!(c.caller.request_id, "req-1");
    }

    #[test]
    fn header_rules() {
        let cases: Vec<(&str, Option<&str>, SpineCode, &str)> = vec![
            (
                "fromasid",
                None,
                SpineCode::MissingOrInvalidHeader,
                "fromASID HTTP Header is missing",
            ),
            (
                "toasid",
                None,
                SpineCode::MissingOrInvalidHeader,
                "toASID HTTP Header is missing",
            ),
            (
                "authorization",
                None,
                SpineCode::MissingOrInvalidHeader,
                "Authorization HTTP Header is missing",
            ),
            (
                "interactionid",
                None,
                SpineCode::MissingOrInvalidHeader,
                "InteractionID HTTP Header is missing",
            ),
            (
                "interactionid",
                Some(CREATE_INTERACTION),
                SpineCode::MissingOrInvalidHeader,
                "InteractionID must be",
            ),
            (
                "fromasid",
                Some("12345"),
                SpineCode::MissingOrInvalidHeader,
                "fromASID",
            ),
            (
                "fromasid",
                Some("200000000999"),
                SpineCode::MissingOrInvalidHeader,
                "requesting_system",
            ),
            (
                "toasid",
                Some("abc"),
                SpineCode::MissingOrInvalidHeader,
                "toASID",
            ),
            (
                "toasid",
                Some("200000000999"),
                SpineCode::AsidCheckFailed,
                "not the ASID of this service",
            ),
            (
                "authorization",
                Some("Bearer x.y."),
                SpineCode::MissingOrInvalidHeader,
                "JWT header",
            ),
        ];
        for (name, value, code, needle) in cases {
            let mut h = headers();
            match value {
                Some(v) => {
                    h.insert(name, HeaderValue::from_str(v).unwrap());
                }
                None => {
                    h.remove(name);
                }
            }
            let e = check(&h, Operation::Read, policy(), "r").unwrap_err();
            assert_eq!(e.code, code, "{name}: {}", e.diagnostics);
            assert!(
                e.diagnostics.contains(needle),
                "{name}: `{}` lacks `{needle}`",
                e.diagnostics
            );
        }
    }

    #[test]
    fn publish_needs_an_events_interaction() {
        let mut h = headers();
        h.insert("interactionid", HeaderValue::from_static(READ_INTERACTION));
        let e = check(&h, Operation::Publish, policy(), "r").unwrap_err();
        assert!(e.diagnostics.contains("when publishing"));
    }
}
