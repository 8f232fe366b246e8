//! The Spine JWT as NEMS checks it (nems.md §2.3, decisions.md §11): an unsigned token
//! (`alg: none`, empty signature) whose claims identify the calling system, organisation
//! and user. Pure functions; every failure names the claim at fault.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// The accredited-system prefix of `requesting_system`.
pub const SYSTEM_PREFIX: &str = "https://fhir.nhs.uk/Id/accredited-system|";
/// The ODS prefix of `requesting_organisation`.
pub const ORGANISATION_PREFIX: &str = "https://fhir.nhs.uk/Id/ods-organization-code|";
const PATIENT_PREFIXES: [&str; 2] = [
    "http://fhir.nhs.net/Id/nhs-number|",
    "https://fhir.nhs.uk/Id/nhs-number|",
];
const REASONS: [&str; 3] = ["directcare", "secondaryuses", "patientaccess"];

/// What the request does, which decides the scope needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `POST /STU3/Subscription`.
    Create,
    /// `GET /STU3/Subscription/{id}`.
    Read,
    /// `DELETE /STU3/Subscription/{id}`.
    Delete,
    /// `POST /STU3/Events/1/$process-message`.
    Publish,
}

/// The claims NEMS uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// ASID from `requesting_system`.
    pub asid: String,
    /// ODS code from `requesting_organisation` (or `requesting_organization`).
    pub ods_code: String,
    /// `requesting_user`, when present.
    pub user: Option<String>,
}

/// Checks an `Authorization` header value at time `now` (epoch seconds).
pub fn check(authorization: &str, op: Operation, now: i64, skew: i64) -> Result<Claims, String> {
    let token = authorization
        .strip_prefix(' ')
        .unwrap_or(authorization)
        .strip_prefix("Bearer")
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_whitespace()))
        .map(str::trim_start)
        .ok_or("Authorization must be `Bearer <JWT>`")?;
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the JWT must have three dot-separated parts".into());
    };
    if !signature.is_empty() {
        return Err(
            "the JWT must be unsigned (alg none, empty signature after the last dot)".into(),
        );
    }
    let header = decode(header).ok_or("the JWT header is not base64url-encoded JSON")?;
    if header.get("alg").and_then(Value::as_str) != Some("none") {
        return Err("the JWT header alg must be `none`".into());
    }
    if header
        .get("typ")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.eq_ignore_ascii_case("JWT"))
    {
        return Err("the JWT header typ must be `JWT`".into());
    }
    let claims = decode(payload).ok_or("the JWT payload is not base64url-encoded JSON")?;
    let text = |name: &str| -> Result<&str, String> {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("JWT claim `{name}` is missing or empty"))
    };
    text("iss")?;
    text("aud")?;
    let sub = text("sub")?;
    let number = |name: &str| -> Result<i64, String> {
        claims
            .get(name)
            .and_then(Value::as_i64)
            .filter(|n| (1_000_000_000..10_000_000_000).contains(n))
            .ok_or_else(|| format!("JWT claim `{name}` must be a 10-digit epoch time in seconds"))
    };
    let (exp, iat) = (number("exp")?, number("iat")?);
    if exp - iat != 300 {
        return Err("JWT claims `exp` - `iat` must be 300 seconds".into());
    }
    if exp + skew < now {
        return Err("the JWT has expired (`exp` is in the past)".into());
    }
    if iat - skew > now {
        return Err("JWT claim `iat` is in the future".into());
    }
    if !REASONS.contains(&text("reason_for_request")?) {
        return Err(
            "JWT claim `reason_for_request` must be directcare, secondaryuses or patientaccess"
                .into(),
        );
    }
    check_scope(text("scope")?, op)?;
    let system = text("requesting_system")?;
    let asid = system
        .strip_prefix(SYSTEM_PREFIX)
        .filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            format!("JWT claim `requesting_system` must be {SYSTEM_PREFIX}<12-digit ASID>")
        })?;
    let organisation = claims
        .get("requesting_organisation")
        .or_else(|| claims.get("requesting_organization"))
        .and_then(Value::as_str)
        .ok_or("JWT claim `requesting_organisation` is missing")?;
    let ods = organisation
        .strip_prefix(ORGANISATION_PREFIX)
        .filter(|c| !c.is_empty() && c.len() <= 12 && c.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or_else(|| {
            format!("JWT claim `requesting_organisation` must be {ORGANISATION_PREFIX}<ODS code>")
        })?;
    let user = match claims.get("requesting_user") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .filter(|u| !u.is_empty())
                .ok_or("JWT claim `requesting_user` must be a non-empty string")?,
        ),
    };
    match user {
        Some(u) if sub != u => return Err("JWT claim `sub` must equal `requesting_user`".into()),
        None if sub != system => {
            return Err(
                "JWT claim `sub` must equal `requesting_system` when there is no requesting_user"
                    .into(),
            );
        }
        _ => {}
    }
    if let Some(patient) = claims.get("requesting_patient") {
        if op == Operation::Publish {
            return Err("JWT claim `requesting_patient` is not allowed when publishing".into());
        }
        let number = patient
            .as_str()
            .and_then(|p| PATIENT_PREFIXES.iter().find_map(|prefix| p.strip_prefix(prefix)))
            .ok_or("JWT claim `requesting_patient` must be http://fhir.nhs.net/Id/nhs-number|<NHS number>")?;
        if !nems_proto::ids::nhs_number_is_valid(number) {
            return Err("JWT claim `requesting_patient` is not a valid NHS number".into());
        }
    }
    Ok(Claims {
        asid: asid.to_string(),
        ods_code: ods.to_ascii_uppercase(),
        user: user.map(str::to_string),
    })
}

fn check_scope(scope: &str, op: Operation) -> Result<(), String> {
    let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
    let ok = match op {
        Operation::Publish => scopes == ["patient/Bundle.write"],
        Operation::Create | Operation::Delete => {
            scopes.len() <= 2
                && scopes.contains(&"patient/Subscription.write")
                && scopes.iter().all(|s| {
                    matches!(
                        *s,
                        "patient/Subscription.write" | "patient/Subscription.read"
                    )
                })
        }
        Operation::Read => {
            scopes.len() <= 2
                && !scopes.is_empty()
                && scopes.iter().all(|s| {
                    matches!(
                        *s,
                        "patient/Subscription.write" | "patient/Subscription.read"
                    )
                })
        }
    };
    if ok {
        return Ok(());
    }
    Err(match op {
        Operation::Publish => "JWT claim `scope` must be exactly patient/Bundle.write".into(),
        Operation::Create | Operation::Delete => {
            "JWT claim `scope` must include patient/Subscription.write".into()
        }
        Operation::Read => {
            "JWT claim `scope` must be patient/Subscription.read or patient/Subscription.write"
                .into()
        }
    })
}

fn decode(part: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.is_object().then_some(value)
}

/// Builds an unsigned JWT from claims (tests and tools).
pub fn encode(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

#[cfg(test)]
mod tests;
