//! An in-process stand-in for the PDS FHIR R4 API (`GET /Patient/{nhs}`), answering the
//! shapes of NHS's own sandbox (reference-data.md §4–5.6) per NHS number, with scripted
//! faults (an error status, no answer at all) and a log of the requests. There is no
//! packaged PDS sandbox to run locally (the official one is a Karate mock in Docker).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How the fake answers one NHS number.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status and JSON body.
    Json(u16, Value),
    /// Never answers (a timeout).
    Hang,
}

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The NHS number asked for.
    pub nhs: String,
    /// `X-Request-ID`.
    pub request_id: String,
    /// `Authorization`.
    pub authorization: String,
}

#[derive(Default)]
struct State {
    answers: Mutex<HashMap<String, Answer>>,
    requests: Mutex<Vec<Recorded>>,
}

/// The running fake; stops when dropped.
pub struct PdsFake {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for PdsFake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdsFake").field("addr", &self.addr).finish()
    }
}

/// A PDS Patient as the sandbox's `patient_9000000009.json`, living at `postcode` (home,
/// current) and registered at `practice`.
pub fn patient(nhs: &str, postcode: &str, practice: &str) -> Value {
    json!({ "resourceType": "Patient", "id": nhs,
      "meta": { "versionId": "2", "security": [ { "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "U", "display": "unrestricted" } ] },
      "identifier": [ { "system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs } ],
      "birthDate": "2010-10-22",
      "generalPractitioner": [ { "id": "254406A3", "type": "Organization",
          "identifier": { "system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": practice,
                          "period": { "start": "2020-01-01" } } } ],
      "address": [ { "id": "456", "use": "home", "period": { "start": "2020-01-01" },
          "line": [ "1 Trevelyan Square", "Boar Lane", "Leeds" ], "postalCode": postcode } ] })
}

/// A restricted (sensitive) Patient as the sandbox's `9000000025`: no address, no GP.
pub fn restricted(nhs: &str) -> Value {
    json!({ "resourceType": "Patient", "id": nhs,
      "meta": { "versionId": "2", "security": [ { "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R", "display": "restricted" } ] },
      "identifier": [ { "system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs } ],
      "birthDate": "2010-10-22" })
}

/// PDS's `404` OperationOutcome with `code` (`INVALIDATED_RESOURCE`, `RESOURCE_NOT_FOUND`).
pub fn not_found(code: &str) -> Value {
    json!({ "resourceType": "OperationOutcome", "issue": [ { "severity": "error", "code": "not-found",
      "details": { "coding": [ { "system": "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode",
          "version": "1", "code": code } ] } } ] })
}

impl PdsFake {
    /// Starts the fake on a free loopback port; NHS numbers without an answer get `404`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, Arc::clone(&state), stopped));
        PdsFake { addr, state, stop }
    }

    /// The base URL to configure (`core.pds.base_url`).
    pub fn base_url(&self) -> String {
        format!("http://{}/personal-demographics/FHIR/R4", self.addr)
    }

    /// Sets the answer for `nhs`.
    pub fn answer(&self, nhs: &str, answer: Answer) {
        self.state
            .answers
            .lock()
            .expect("lock")
            .insert(nhs.to_string(), answer);
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// The requests for `nhs`.
    pub fn requests_for(&self, nhs: &str) -> usize {
        self.requests().iter().filter(|r| r.nhs == nhs).count()
    }
}

impl Drop for PdsFake {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn serve(listener: TcpListener, state: Arc<State>, mut stopped: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = Arc::clone(&state);
        let mut connection_stopped = stopped.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&state), request));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = connection_stopped.wait_for(|stop| *stop) => {}
            }
        });
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let nhs = request
        .uri()
        .path()
        .strip_prefix("/personal-demographics/FHIR/R4/Patient/")
        .unwrap_or_default()
        .to_string();
    state.requests.lock().expect("lock").push(Recorded {
        nhs: nhs.clone(),
        request_id: header("x-request-id"),
        authorization: header("authorization"),
    });
    let answer = state.answers.lock().expect("lock").get(&nhs).cloned();
    let (status, body) = match answer {
        Some(Answer::Json(status, body)) => (status, body),
        Some(Answer::Hang) => {
            std::future::pending::<()>().await;
            unreachable!("a pending future never completes")
        }
        None => (404, not_found("RESOURCE_NOT_FOUND")),
    };
    Ok(Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("Content-Type", "application/fhir+json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response"))
}
