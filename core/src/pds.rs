//! Optional lookup of patients the demographics store does not know, from a PDS FHIR R4
//! API endpoint (`[core.pds]`; off when absent). decisions.md §17: without any record the
//! event's own Patient is used, so a lookup that fails (timeout, error status) only logs
//! and counts; the publish goes on.
//!
//! What is read from the R4 `Patient` (reference-data.md §4): the `home` address whose
//! period covers today, `generalPractitioner[0]` while its period has not ended,
//! `birthDate`, `deceasedDateTime`, and `meta.security[0].code` (`R` restricted → S).
//! `404` with `INVALIDATED_RESOURCE` is an invalidated record (I); any other `404` means
//! PDS does not know the patient.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nems_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::Date;

use crate::domain::datetime;
use crate::domain::patient::DemographicUpdate;
use crate::refdata::normalise_postcode;

/// `[core.pds]`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PdsConfig {
    /// Base URL of the PDS FHIR R4 API, for example
    /// `https://sandbox.api.service.nhs.uk/personal-demographics/FHIR/R4`.
    /// Env: `NEMS_PDS_URL` (setting it turns the lookup on).
    pub base_url: String,
    /// Deadline of one lookup; past it the publish goes on without.
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
    /// Bearer token sent as `Authorization` (secret; never printed). Env: `NEMS_PDS_TOKEN`.
    #[serde(serialize_with = "nems_runtime::config::secret::optional")]
    pub bearer_token: Option<String>,
    /// CA certificates (PEM) to trust for `https` (the system roots when absent).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub client_key_file: Option<PathBuf>,
}

impl Default for PdsConfig {
    fn default() -> Self {
        PdsConfig {
            base_url: String::new(),
            timeout: Duration::from_secs(2),
            bearer_token: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

impl std::fmt::Debug for PdsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdsConfig")
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "<set>"))
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .finish()
    }
}

impl PdsConfig {
    /// Checks the settings (the message names the key).
    pub fn validate(&self) -> Result<(), String> {
        let url = self.base_url.trim_end_matches('/');
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() < 10 {
            return Err("core.pds.base_url must be an http:// or https:// URL".into());
        }
        if self.timeout < Duration::from_millis(10) {
            return Err("core.pds.timeout must be at least 10ms".into());
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(
                "core.pds.client_cert_file and core.pds.client_key_file go together".into(),
            );
        }
        Ok(())
    }
}

/// What PDS said about a patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The record, as a demographics update.
    Found(DemographicUpdate),
    /// PDS does not know the NHS number.
    Unknown,
}

/// Why a lookup gave no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PdsError {
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request failed (connection, TLS).
    #[error("request failed: {0}")]
    Request(String),
    /// An unexpected status.
    #[error("answered {0}")]
    Status(StatusCode),
    /// A body that is not a FHIR Patient.
    #[error("unreadable answer: {0}")]
    Body(String),
}

/// The PDS client.
#[derive(Clone)]
pub(crate) struct PdsClient {
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    base: String,
    token: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for PdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdsClient")
            .field("base", &self.base)
            .finish()
    }
}

impl PdsClient {
    /// Builds the client (reads the TLS files).
    pub(crate) fn new(config: &PdsConfig) -> Result<Self, String> {
        config.validate()?;
        let client_identity = config
            .client_cert_file
            .as_deref()
            .zip(config.client_key_file.as_deref());
        let tls =
            nems_runtime::tls::https_client_config(config.ca_file.as_deref(), client_identity)
                .map_err(|e| format!("core.pds: {e}"))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(PdsClient {
            http: Client::builder(TokioExecutor::new()).build(connector),
            base: config.base_url.trim_end_matches('/').to_string(),
            token: config.bearer_token.clone(),
            timeout: config.timeout,
        })
    }

    /// Looks `nhs` up; `now_ms` stamps the facts (they are PDS's truth as of now).
    pub(crate) async fn lookup(&self, nhs: &str, now_ms: u64) -> Result<Lookup, PdsError> {
        let mut request = Request::get(format!("{}/Patient/{nhs}", self.base))
            .header(http::header::ACCEPT, "application/fhir+json")
            .header("X-Request-ID", uuid::Uuid::new_v4().to_string());
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| PdsError::Request(e.to_string()))?;
        let answer = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| PdsError::Request(e.to_string()))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| PdsError::Request(e.to_string()))?
                .to_bytes();
            Ok::<_, PdsError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| PdsError::Timeout(self.timeout))??;
        let key = crate::store::keys::nhs_key(nhs)
            .ok_or_else(|| PdsError::Body("the NHS number is not valid".into()))?;
        match status {
            StatusCode::OK => {
                let patient: Value =
                    serde_json::from_slice(&body).map_err(|e| PdsError::Body(e.to_string()))?;
                let today = time::OffsetDateTime::now_utc().date();
                patient_update(&patient, key, now_ms, today).map(Lookup::Found)
            }
            StatusCode::NOT_FOUND if invalidated(&body) => Ok(Lookup::Found(DemographicUpdate {
                nhs: key,
                at_ms: now_ms,
                flag: Some(pb::PatientFlag::Invalid),
                ..Default::default()
            })),
            StatusCode::NOT_FOUND => Ok(Lookup::Unknown),
            other => Err(PdsError::Status(other)),
        }
    }
}

/// A `404` whose OperationOutcome says `INVALIDATED_RESOURCE`.
fn invalidated(body: &[u8]) -> bool {
    let Ok(outcome) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|issue| issue["details"]["coding"].as_array().into_iter().flatten())
        .any(|coding| coding["code"].as_str() == Some("INVALIDATED_RESOURCE"))
}

/// Whether a FHIR `period` covers `today` (open ends allowed; a period that cannot be read
/// counts as open).
fn covers(period: &Value, today: Date) -> bool {
    let date = |key: &str| {
        period[key]
            .as_str()
            .and_then(datetime::parse_date_time)
            .map(|d| d.date)
    };
    date("start").is_none_or(|start| start <= today) && date("end").is_none_or(|end| end >= today)
}

/// The demographics update a PDS R4 `Patient` gives.
pub(crate) fn patient_update(
    patient: &Value,
    nhs: u64,
    now_ms: u64,
    today: Date,
) -> Result<DemographicUpdate, PdsError> {
    if patient["resourceType"].as_str() != Some("Patient") {
        return Err(PdsError::Body("not a FHIR Patient".into()));
    }
    let flag = match patient["meta"]["security"][0]["code"].as_str() {
        Some("R") => pb::PatientFlag::Sensitive,
        Some("REDACTED") => pb::PatientFlag::Invalid,
        _ => pb::PatientFlag::Unspecified,
    };
    let home = patient["address"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["use"].as_str() == Some("home") && covers(&a["period"], today))
        .find_map(|a| a["postalCode"].as_str().and_then(normalise_postcode));
    let practice = patient["generalPractitioner"][0]["identifier"]
        .as_object()
        .filter(|identifier| {
            identifier.get("system").and_then(Value::as_str)
                == Some("https://fhir.nhs.uk/Id/ods-organization-code")
                && covers(identifier.get("period").unwrap_or(&Value::Null), today)
        })
        .and_then(|identifier| identifier.get("value").and_then(Value::as_str))
        .map(str::to_ascii_uppercase)
        .unwrap_or_default();
    let day = |key: &str| {
        patient[key]
            .as_str()
            .and_then(datetime::parse_date_time)
            .map(|d| datetime::format_date(d.date))
    };
    Ok(DemographicUpdate {
        nhs,
        at_ms: now_ms,
        // A restricted record has no address or GP in the answer: nothing is known.
        postcode: home.map(|p| (p, String::new())),
        gp_practice: (flag != pb::PatientFlag::Sensitive).then_some(practice),
        flag: Some(flag),
        date_of_death: Some(day("deceasedDateTime").unwrap_or_default()),
        birth_date: day("birthDate"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::date;

    const TODAY: Date = date!(2026 - 11 - 21);

    /// The sandbox's `patient_9000000009.json` (reference-data.md §5.6) with current periods.
    fn full() -> Value {
        json!({ "resourceType": "Patient", "id": "9000000009",
          "meta": { "versionId": "2", "security": [ { "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "U", "display": "unrestricted" } ] },
          "identifier": [ { "system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009" } ],
          "birthDate": "2010-10-22",
          "generalPractitioner": [ { "id": "254406A3", "type": "Organization",
              "identifier": { "system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "y12345",
                              "period": { "start": "2020-01-01" } } } ],
          "address": [
            { "id": "455", "use": "temp", "postalCode": "NE61 1AA" },
            { "id": "456", "use": "home", "period": { "start": "2020-01-01", "end": "2021-12-31" }, "postalCode": "LS2 7EW" },
            { "id": "457", "use": "home", "period": { "start": "2022-01-01" },
              "line": [ "1 Trevelyan Square", "Boar Lane", "Leeds" ], "postalCode": "LS1 6AE" } ] })
    }

    #[test]
    fn reads_the_current_home_address_and_practice() {
        let u = patient_update(&full(), 9_000_000_009, 7, TODAY).unwrap();
        assert_eq!(u.nhs, 9_000_000_009);
        assert_eq!(u.at_ms, 7);
        assert_eq!(u.postcode, Some(("LS16AE".into(), String::new())));
        assert_eq!(u.gp_practice.as_deref(), Some("Y12345"));
        assert_eq!(u.flag, Some(pb::PatientFlag::Unspecified));
        assert_eq!(u.birth_date.as_deref(), Some("2010-10-22"));
        assert_eq!(u.date_of_death.as_deref(), Some(""));
    }

    #[test]
    fn ended_periods_give_no_address_and_no_practice() {
        let mut p = full();
        p["address"] = json!([{ "use": "home", "period": { "start": "2020-01-01", "end": "2021-12-31" }, "postalCode": "LS1 6AE" }]);
        p["generalPractitioner"][0]["identifier"]["period"] =
            json!({ "start": "2020-01-01", "end": "2021-12-31" });
        p["deceasedDateTime"] = json!("2026-01-02T10:00:00+00:00");
        let u = patient_update(&p, 9_000_000_009, 7, TODAY).unwrap();
        assert_eq!(u.postcode, None);
        assert_eq!(
            u.gp_practice.as_deref(),
            Some(""),
            "known to be unregistered"
        );
        assert_eq!(u.date_of_death.as_deref(), Some("2026-01-02"));
    }

    #[test]
    fn restricted_records_are_flagged_sensitive_and_say_nothing_else() {
        let p = json!({ "resourceType": "Patient", "id": "9000000025",
            "meta": { "security": [ { "code": "R", "display": "restricted" } ] },
            "birthDate": "2010-10-22" });
        let u = patient_update(&p, 9_000_000_025, 7, TODAY).unwrap();
        assert_eq!(u.flag, Some(pb::PatientFlag::Sensitive));
        assert_eq!(u.postcode, None);
        assert_eq!(u.gp_practice, None);
    }

    #[test]
    fn other_resources_are_refused() {
        let e = patient_update(&json!({"resourceType": "Bundle"}), 1, 7, TODAY).unwrap_err();
        assert!(e.to_string().contains("not a FHIR Patient"), "{e}");
    }

    #[test]
    fn invalidated_is_read_from_the_operation_outcome() {
        let gone = json!({ "resourceType": "OperationOutcome", "issue": [ { "severity": "error", "code": "processing",
            "details": { "coding": [ { "system": "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode", "code": "INVALIDATED_RESOURCE" } ] } } ] });
        assert!(invalidated(gone.to_string().as_bytes()));
        let missing = json!({ "resourceType": "OperationOutcome", "issue": [ { "details": { "coding": [ { "code": "RESOURCE_NOT_FOUND" } ] } } ] });
        assert!(!invalidated(missing.to_string().as_bytes()));
        assert!(!invalidated(b"not json"));
    }

    #[test]
    fn configuration_is_checked_and_the_token_never_printed() {
        let mut c = PdsConfig {
            base_url: "https://pds.example/personal-demographics/FHIR/R4".into(),
            bearer_token: Some("secret-token".into()),
            ..Default::default()
        };
        assert!(c.validate().is_ok());
        assert!(!format!("{c:?}").contains("secret-token"));
        c.client_cert_file = Some("cert.pem".into());
        assert!(c.validate().unwrap_err().contains("client_key_file"));
        c.client_cert_file = None;
        c.base_url = "pds.example".into();
        assert!(c.validate().unwrap_err().contains("core.pds.base_url"));
    }
}
