//! The Subscription API's success contract over HTTP (nems.md §4.3–4.5, decisions.md §3, §4,
//! §8): create answers `201` with `Location: {base}/STU3/Subscription/{32 lowercase hex}`, an
//! empty body, `ETag W/"1"` and `Last-Modified`; read answers `200` with the stored resource
//! (`id`, `meta.versionId`, `meta.lastUpdated`, `meta.profile`, `status` `active`, or `off`
//! once `end` has passed); delete answers `200` with an empty body, after which the id is
//! `404`. All eight FHIR MIME types are accepted, XML is the default, `_format` overrides
//! `Accept`, and what is read back (in either format) is what was sent (in either format).
//!
//! This module also holds what the other `subscription_*` modules share: a Subscription
//! builder ([`Sub`]) rendering XML and JSON, an [`Api`] client that records every FHIR body
//! the edge writes (for the STU3 oracle in `subscription_oracle.rs`), a small independent
//! FHIR-XML reader, and [`outcome`], which checks a Spine OperationOutcome field by field.
//! The error rows are in `subscription_errors.rs`, gRPC parity and the operator listing in
//! `subscription_grpc.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use nems_e2e::eventually::eventually;
use nems_e2e::http::HttpResponse;
use nems_e2e::spine::{self, Caller, Op, SUBSCRIBER};
use nems_e2e::stack::TestStack;
use nems_proto::spine::SpineCode;
use serde_json::{Map, Value, json};

/// `meta.profile` of a stored Subscription.
pub(crate) const EMS_PROFILE: &str =
    "https://fhir.nhs.uk/STU3/StructureDefinition/EMS-Subscription-1";
/// `meta.profile` of every OperationOutcome.
pub(crate) const SPINE_OO_PROFILE: &str =
    "https://fhir.nhs.uk/STU3/StructureDefinition/Spine-OperationOutcome-1";
/// The contact value prefix.
pub(crate) const CONTACT_PREFIX: &str = "https://directory.spineservices.nhs.uk/STU3/Organization/";

/// Valid NHS numbers (Modulus 11) used by these tests; [`NOT_NHS`] are invalid ones.
pub(crate) const NHS: [&str; 12] = [
    "9434765919",
    "9434765900",
    "9434765927",
    "9434765935",
    "9434765943",
    "9434765951",
    "9434765978",
    "9434765986",
    "9434765994",
    "9434766001",
    "9434766028",
    "9434766036",
];
/// Invalid NHS numbers sent by these tests (bad check digit; nine digits).
pub(crate) const NOT_NHS: [&str; 2] = ["9434765918", "943476591"];

/// A FHIR wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fmt {
    Xml,
    Json,
}

impl Fmt {
    /// Both formats.
    pub(crate) const BOTH: [Fmt; 2] = [Fmt::Xml, Fmt::Json];

    /// The canonical media type.
    pub(crate) fn mime(self) -> &'static str {
        match self {
            Fmt::Xml => "application/fhir+xml",
            Fmt::Json => "application/fhir+json",
        }
    }

    /// The file extension.
    pub(crate) fn ext(self) -> &'static str {
        match self {
            Fmt::Xml => "xml",
            Fmt::Json => "json",
        }
    }

    /// The format a `Content-Type` the edge wrote names.
    pub(crate) fn of_content_type(ct: &str) -> Option<Fmt> {
        if ct.starts_with("application/fhir+xml") {
            Some(Fmt::Xml)
        } else if ct.starts_with("application/fhir+json") {
            Some(Fmt::Json)
        } else {
            None
        }
    }

    /// The other format.
    pub(crate) fn other(self) -> Fmt {
        match self {
            Fmt::Xml => Fmt::Json,
            Fmt::Json => Fmt::Xml,
        }
    }
}

// === Subscription builder ===

/// A Subscription create body, renderable in both formats, with the faults the error rows
/// need.
#[derive(Debug, Clone)]
pub(crate) struct Sub {
    pub(crate) id: Option<String>,
    pub(crate) version_id: Option<String>,
    pub(crate) last_updated: Option<String>,
    pub(crate) status: String,
    pub(crate) contact_ods: String,
    pub(crate) end: Option<String>,
    pub(crate) reason: String,
    pub(crate) criteria: String,
    pub(crate) channel_type: String,
    pub(crate) mailbox: String,
    /// Adds `colour`, an element STU3 Subscription does not have.
    pub(crate) unknown_element: bool,
}

impl Sub {
    /// A valid subscription of `contact_ods` delivering to `mailbox`.
    pub(crate) fn new(contact_ods: &str, mailbox: &str, criteria: &str) -> Sub {
        Sub {
            id: None,
            version_id: None,
            last_updated: None,
            status: "requested".into(),
            contact_ods: contact_ods.into(),
            end: None,
            reason: "Direct care".into(),
            criteria: criteria.into(),
            channel_type: "message".into(),
            mailbox: mailbox.into(),
            unknown_element: false,
        }
    }

    /// RR8's explicit subscription for `nhs` and `events`, to `RR8MBX01`.
    pub(crate) fn explicit(nhs: &str, events: &[&str]) -> Sub {
        Sub::new("RR8", "RR8MBX01", &spine::explicit(nhs, events, ""))
    }

    /// Renders the body.
    pub(crate) fn render(&self, fmt: Fmt) -> String {
        match fmt {
            Fmt::Xml => self.xml(),
            Fmt::Json => self.json().to_string(),
        }
    }

    fn xml(&self) -> String {
        let mut x = String::from(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        x.push_str(r#"<Subscription xmlns="http://hl7.org/fhir">"#);
        if let Some(id) = &self.id {
            x.push_str(&format!(r#"<id value="{}"/>"#, esc(id)));
        }
        x.push_str("<meta>");
        if let Some(v) = &self.version_id {
            x.push_str(&format!(r#"<versionId value="{}"/>"#, esc(v)));
        }
        if let Some(v) = &self.last_updated {
            x.push_str(&format!(r#"<lastUpdated value="{}"/>"#, esc(v)));
        }
        x.push_str(&format!(
            r#"<profile value="{EMS_PROFILE}"/></meta><status value="{}"/>"#,
            esc(&self.status)
        ));
        x.push_str(&format!(
            r#"<contact><system value="url"/><value value="{CONTACT_PREFIX}{}"/><use value="work"/></contact>"#,
            esc(&self.contact_ods)
        ));
        if let Some(end) = &self.end {
            x.push_str(&format!(r#"<end value="{}"/>"#, esc(end)));
        }
        x.push_str(&format!(
            r#"<reason value="{}"/><criteria value="{}"/>"#,
            esc(&self.reason),
            esc(&self.criteria)
        ));
        x.push_str(&format!(
            r#"<channel><type value="{}"/><endpoint value="{}"/></channel>"#,
            esc(&self.channel_type),
            esc(&self.mailbox)
        ));
        if self.unknown_element {
            x.push_str(r#"<colour value="red"/>"#);
        }
        x.push_str("</Subscription>");
        x
    }

    fn json(&self) -> Value {
        let mut meta = Map::new();
        if let Some(v) = &self.version_id {
            meta.insert("versionId".into(), json!(v));
        }
        if let Some(v) = &self.last_updated {
            meta.insert("lastUpdated".into(), json!(v));
        }
        meta.insert("profile".into(), json!([EMS_PROFILE]));
        let mut o = Map::new();
        o.insert("resourceType".into(), json!("Subscription"));
        if let Some(id) = &self.id {
            o.insert("id".into(), json!(id));
        }
        o.insert("meta".into(), Value::Object(meta));
        o.insert("status".into(), json!(self.status));
        o.insert(
            "contact".into(),
            json!([{"system": "url", "value": format!("{CONTACT_PREFIX}{}", self.contact_ods), "use": "work"}]),
        );
        if let Some(end) = &self.end {
            o.insert("end".into(), json!(end));
        }
        o.insert("reason".into(), json!(self.reason));
        o.insert("criteria".into(), json!(self.criteria));
        o.insert(
            "channel".into(),
            json!({"type": self.channel_type, "endpoint": self.mailbox}),
        );
        if self.unknown_element {
            o.insert("colour".into(), json!("red"));
        }
        Value::Object(o)
    }
}

/// Escapes text for an XML attribute.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

// === Requests ===

/// One HTTP request.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: String,
}

impl Req {
    /// `POST /STU3/Subscription` of `sub` by `caller`, the body in `body` format, answered
    /// in `accept` format.
    pub(crate) fn create(caller: Caller, body: Fmt, accept: Fmt, sub: &Sub) -> Req {
        Req {
            method: Method::POST,
            path: "/STU3/Subscription".into(),
            headers: spine::with_media(caller, Op::Create, body.mime(), Some(accept.mime())),
            body: sub.render(body),
        }
    }

    /// `GET /STU3/Subscription/{id}` answered in `accept` format.
    pub(crate) fn read(caller: Caller, accept: Fmt, id: &str) -> Req {
        let mut headers = spine::headers(caller, Op::Read);
        headers.push(("Accept", accept.mime().into()));
        Req {
            method: Method::GET,
            path: format!("/STU3/Subscription/{id}"),
            headers,
            body: String::new(),
        }
    }

    /// `DELETE /STU3/Subscription/{id}` answered in `accept` format.
    pub(crate) fn delete(caller: Caller, accept: Fmt, id: &str) -> Req {
        let mut headers = spine::headers(caller, Op::Delete);
        headers.push(("Accept", accept.mime().into()));
        Req {
            method: Method::DELETE,
            path: format!("/STU3/Subscription/{id}"),
            headers,
            body: String::new(),
        }
    }

    /// Sets header `name` (replacing any value).
    pub(crate) fn with(mut self, name: &'static str, value: impl Into<String>) -> Req {
        self = self.without(name);
        self.headers.push((name, value.into()));
        self
    }

    /// Removes header `name`.
    pub(crate) fn without(mut self, name: &str) -> Req {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Replaces the method.
    pub(crate) fn method(mut self, method: Method) -> Req {
        self.method = method;
        self
    }

    /// Replaces the path.
    pub(crate) fn path(mut self, path: impl Into<String>) -> Req {
        self.path = path.into();
        self
    }

    /// Replaces the body.
    pub(crate) fn body(mut self, body: impl Into<String>) -> Req {
        self.body = body.into();
        self
    }
}

/// The JWT claims [`spine::jwt`] sends, for tests that break one.
pub(crate) fn claims(caller: Caller, scope: &str) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({
        "iss": "https://nems-tests.example",
        "sub": format!("https://fhir.nhs.uk/Id/accredited-system|{}", caller.asid),
        "aud": "https://nems.example/STU3",
        "exp": now + 300,
        "iat": now,
        "reason_for_request": "directcare",
        "scope": scope,
        "requesting_system": format!("https://fhir.nhs.uk/Id/accredited-system|{}", caller.asid),
        "requesting_organisation": format!("https://fhir.nhs.uk/Id/ods-organization-code|{}", caller.ods),
    })
}

/// `Bearer` and the unsigned token of `claims`.
pub(crate) fn bearer(claims: &Value) -> String {
    format!("Bearer {}", nems_edge::jwt::encode(claims))
}

// === The client ===

/// A FHIR body the edge wrote.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    /// A name for the file: pairs of XML and JSON renderings of one resource share it.
    pub(crate) label: String,
    pub(crate) format: Fmt,
    pub(crate) body: Bytes,
}

/// Collects every FHIR body the edge writes through an [`Api`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorder(Arc<Mutex<Vec<Recorded>>>);

impl Recorder {
    fn record(&self, response: &HttpResponse) {
        let Some(format) = response
            .header("content-type")
            .and_then(Fmt::of_content_type)
        else {
            return;
        };
        if response.body.is_empty() {
            return;
        }
        let mut all = self.0.lock().unwrap();
        // Successful reads of one subscription in one state pair up across formats, so the
        // oracle also compares the XML and JSON renderings.
        let value = parse(format, &response.body);
        let paired = (value["resourceType"] == "Subscription").then(|| {
            format!(
                "subscription-{}-{}",
                value["id"].as_str().unwrap_or_default(),
                value["status"].as_str().unwrap_or_default()
            )
        });
        let label = match paired {
            Some(l) if !all.iter().any(|r| r.label == l && r.format == format) => l,
            _ => format!("body-{:04}", all.len()),
        };
        all.push(Recorded {
            label,
            format,
            body: response.body.clone(),
        });
    }

    /// Everything recorded so far.
    pub(crate) fn bodies(&self) -> Vec<Recorded> {
        self.0.lock().unwrap().clone()
    }
}

impl Recorded {
    /// The file name for the oracle.
    pub(crate) fn file_name(&self) -> String {
        format!("{}.{}", self.label, self.format.ext())
    }
}

/// The edge of one stack, recording every FHIR body it answers with.
#[derive(Debug, Clone)]
pub(crate) struct Api<'s> {
    pub(crate) stack: &'s TestStack,
    recorder: Recorder,
}

impl<'s> Api<'s> {
    /// A client with its own recorder.
    pub(crate) fn new(stack: &'s TestStack) -> Self {
        Api::recording(stack, Recorder::default())
    }

    /// A client recording into `recorder`.
    pub(crate) fn recording(stack: &'s TestStack, recorder: Recorder) -> Self {
        Api { stack, recorder }
    }

    /// Sends `req`.
    pub(crate) async fn send(&self, req: Req) -> HttpResponse {
        let response = self
            .stack
            .http
            .send(req.method, &req.path, &req.headers, req.body)
            .await;
        self.recorder.record(&response);
        response
    }

    /// Creates `sub` as `caller` in `fmt`; returns the id after checking the `201`.
    pub(crate) async fn create_ok(&self, caller: Caller, fmt: Fmt, sub: &Sub) -> String {
        let r = self.send(Req::create(caller, fmt, fmt, sub)).await;
        assert_eq!(r.status, 201, "create: {}", r.text());
        id_of(&r, &self.stack.base_url())
    }

    /// Reads `id` as `caller` in `fmt`, checking the `200`; returns the resource.
    pub(crate) async fn read_ok(&self, caller: Caller, fmt: Fmt, id: &str) -> Value {
        let r = self.send(Req::read(caller, fmt, id)).await;
        assert_eq!(r.status, 200, "read {id}: {}", r.text());
        let v = body_of(&r, fmt);
        assert_eq!(v["resourceType"], "Subscription");
        v
    }
}

/// The id in a `201`'s `Location`, checking its form.
pub(crate) fn id_of(r: &HttpResponse, base: &str) -> String {
    let location = r.header("location").expect("Location header");
    let id = location
        .strip_prefix(&format!("{base}/STU3/Subscription/"))
        .unwrap_or_else(|| panic!("Location {location} is not under {base}/STU3/Subscription/"));
    assert!(
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "id `{id}` is not 32 lowercase hex characters"
    );
    id.to_string()
}

// === Reading what the edge wrote ===

/// Parses a FHIR body (XML through [`xml_to_json`]) into the JSON form with every
/// one-element array collapsed to its element, so that one path reads both formats.
pub(crate) fn parse(fmt: Fmt, body: &[u8]) -> Value {
    let text = std::str::from_utf8(body).expect("utf-8 body");
    let value = match fmt {
        Fmt::Xml => xml_to_json(text),
        Fmt::Json => {
            serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        }
    };
    collapse(value)
}

/// Checks that `r` carries a body in `fmt` (by `Content-Type`) and parses it.
pub(crate) fn body_of(r: &HttpResponse, fmt: Fmt) -> Value {
    let ct = r.header("content-type").unwrap_or_default();
    assert_eq!(
        Fmt::of_content_type(ct),
        Some(fmt),
        "Content-Type `{ct}` for {}",
        r.text()
    );
    assert!(ct.ends_with(";charset=utf-8"), "{ct}");
    parse(fmt, &r.body)
}

fn collapse(value: Value) -> Value {
    match value {
        Value::Array(mut items) if items.len() == 1 => collapse(items.remove(0)),
        Value::Array(items) => Value::Array(items.into_iter().map(collapse).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, collapse(v))).collect())
        }
        other => other,
    }
}

/// Reads FHIR XML as written by a FHIR server (elements, `value` attributes, no mixed
/// content) into the FHIR JSON shape: the root's name becomes `resourceType`, an element
/// with a `value` attribute becomes a string, repeated elements become arrays. Independent
/// of the product's reader; panics on anything it does not understand.
pub(crate) fn xml_to_json(text: &str) -> Value {
    let mut p = XmlText {
        s: text.as_bytes(),
        i: 0,
    };
    p.skip_misc();
    let (name, value) = p.element();
    p.skip_misc();
    assert_eq!(p.i, p.s.len(), "content after the root element: {text}");
    let mut out = Map::new();
    out.insert("resourceType".into(), Value::String(name));
    if let Value::Object(members) = value {
        out.extend(members);
    }
    Value::Object(out)
}

struct XmlText<'a> {
    s: &'a [u8],
    i: usize,
}

impl XmlText<'_> {
    fn rest(&self) -> &[u8] {
        &self.s[self.i..]
    }

    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    /// Skips white space, the XML declaration and comments.
    fn skip_misc(&mut self) {
        loop {
            self.skip_ws();
            let (open, close): (&[u8], &[u8]) = if self.rest().starts_with(b"<?") {
                (b"<?", b"?>")
            } else if self.rest().starts_with(b"<!--") {
                (b"<!--", b"-->")
            } else {
                return;
            };
            self.i += open.len();
            let at = self
                .rest()
                .windows(close.len())
                .position(|w| w == close)
                .expect("unterminated declaration or comment");
            self.i += at + close.len();
        }
    }

    fn name(&mut self) -> String {
        let start = self.i;
        while self.i < self.s.len()
            && !self.s[self.i].is_ascii_whitespace()
            && !matches!(self.s[self.i], b'/' | b'>' | b'=')
        {
            self.i += 1;
        }
        assert!(self.i > start, "empty name at byte {start}");
        String::from_utf8(self.s[start..self.i].to_vec()).unwrap()
    }

    fn expect(&mut self, what: &[u8]) {
        assert!(
            self.rest().starts_with(what),
            "expected `{}` at byte {}",
            String::from_utf8_lossy(what),
            self.i
        );
        self.i += what.len();
    }

    /// One element: `(name, value)`.
    fn element(&mut self) -> (String, Value) {
        self.expect(b"<");
        let name = self.name();
        let mut value_attr = None;
        loop {
            self.skip_ws();
            if self.rest().starts_with(b"/>") {
                self.i += 2;
                return (name, leaf(value_attr));
            }
            if self.rest().starts_with(b">") {
                self.i += 1;
                break;
            }
            let attr = self.name();
            self.expect(b"=");
            let quote = self.s[self.i];
            assert!(quote == b'"' || quote == b'\'', "unquoted attribute {attr}");
            self.i += 1;
            let len = self
                .rest()
                .iter()
                .position(|b| *b == quote)
                .expect("unterminated attribute");
            let raw = std::str::from_utf8(&self.s[self.i..self.i + len]).unwrap();
            self.i += len + 1;
            if attr == "value" {
                value_attr = Some(unescape(raw));
            }
        }
        let mut children = Map::new();
        loop {
            self.skip_misc();
            if self.rest().starts_with(b"</") {
                self.i += 2;
                let closing = self.name();
                assert_eq!(closing, name, "mismatched end tag");
                self.skip_ws();
                self.expect(b">");
                break;
            }
            assert!(
                self.rest().starts_with(b"<"),
                "text content in <{name}> at byte {}",
                self.i
            );
            let (child, value) = self.element();
            match children.get_mut(&child) {
                Some(Value::Array(items)) => items.push(value),
                Some(single) => {
                    let first = single.take();
                    *single = Value::Array(vec![first, value]);
                }
                None => {
                    children.insert(child, value);
                }
            }
        }
        if children.is_empty() {
            return (name, leaf(value_attr));
        }
        assert!(
            value_attr.is_none(),
            "<{name}> has both a value and children"
        );
        (name, Value::Object(children))
    }
}

fn leaf(value: Option<String>) -> Value {
    value.map_or_else(|| Value::Object(Map::new()), Value::String)
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let end = rest[at..].find(';').expect("unterminated entity") + at;
        let entity = &rest[at + 1..end];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16)
                } else {
                    entity.strip_prefix('#').expect("entity").parse()
                }
                .expect("character reference");
                char::from_u32(code).expect("character")
            }
        };
        out.push(c);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

// === OperationOutcomes ===

/// Checks that `r` is a Spine OperationOutcome in `fmt` with exactly one `error` issue:
/// HTTP `status`, `issue.code` `issue`, Spine code `spine` (system and display from the
/// CodeSystem), `meta.profile`, an `id` equal to the `x-request-id` header, non-empty
/// diagnostics, and no NHS number anywhere in the body. Returns the diagnostics.
pub(crate) fn outcome(r: &HttpResponse, fmt: Fmt, status: u16, spine: &str, issue: &str) -> String {
    check_outcome(r, fmt, status, spine, issue).unwrap_or_else(|e| panic!("{e}"))
}

/// [`outcome`], returning what is wrong instead of panicking.
pub(crate) fn check_outcome(
    r: &HttpResponse,
    fmt: Fmt,
    status: u16,
    spine: &str,
    issue: &str,
) -> Result<String, String> {
    macro_rules! ensure {
        ($ok:expr, $($what:tt)*) => {
            if !$ok {
                return Err(format!("{} (expected {status} {spine} `{issue}` in {fmt:?}; got {} {:?}: {})",
                    format!($($what)*), r.status, r.header("content-type"), r.text()));
            }
        };
    }
    ensure!(r.status == status, "HTTP status");
    let ct = r.header("content-type").unwrap_or_default();
    ensure!(Fmt::of_content_type(ct) == Some(fmt), "Content-Type");
    let v = std::panic::catch_unwind(|| parse(fmt, &r.body));
    ensure!(v.is_ok(), "body does not parse");
    let v = v.unwrap_or_default();
    ensure!(v["resourceType"] == "OperationOutcome", "resourceType");
    let id = v["id"].as_str().unwrap_or_default();
    ensure!(!id.is_empty(), "no id");
    ensure!(
        Some(id) == r.header("x-request-id"),
        "id is not the request id"
    );
    ensure!(v["meta"]["profile"] == SPINE_OO_PROFILE, "meta.profile");
    let i = &v["issue"];
    ensure!(i.is_object(), "not exactly one issue");
    ensure!(i["severity"] == "error", "severity");
    ensure!(i["code"] == issue, "issue.code");
    let coding = &i["details"]["coding"];
    ensure!(coding.is_object(), "not exactly one coding");
    ensure!(
        coding["system"] == nems_proto::spine::CODE_SYSTEM,
        "coding.system"
    );
    ensure!(coding["code"] == spine, "Spine code");
    let code: SpineCode = spine.parse().expect("a Spine code");
    ensure!(coding["display"] == code.display(), "coding.display");
    let diagnostics = i["diagnostics"].as_str().unwrap_or_default().to_string();
    ensure!(!diagnostics.trim().is_empty(), "no diagnostics");
    let echoed = echoed_nhs_number(r);
    ensure!(echoed.is_none(), "the body echoes NHS number {echoed:?}");
    Ok(diagnostics)
}

/// The first NHS number these tests send that appears in `r`'s body.
pub(crate) fn echoed_nhs_number(r: &HttpResponse) -> Option<&'static str> {
    let text = r.text();
    NHS.iter()
        .chain(NOT_NHS.iter())
        .find(|nhs| text.contains(**nhs))
        .copied()
}

// === Scenarios ===

/// Create, read and delete in each format, checking every part of the contract.
pub(crate) async fn create_read_delete(api: &Api<'_>) {
    let base = api.stack.base_url();
    for (n, fmt) in Fmt::BOTH.into_iter().enumerate() {
        let sub = Sub::explicit(NHS[n], &["vaccinations-1", "pds-change-of-address-1"]);
        let created = api.send(Req::create(SUBSCRIBER, fmt, fmt, &sub)).await;
        assert_eq!(created.status, 201, "{}", created.text());
        let id = id_of(&created, &base);
        assert!(created.body.is_empty(), "201 body: {}", created.text());
        assert_eq!(created.header("content-type"), None);
        assert_eq!(created.header("etag"), Some(r#"W/"1""#));
        let last_modified = created.header("last-modified").expect("Last-Modified");
        assert!(last_modified.ends_with(" GMT"), "{last_modified}");

        let read = api.send(Req::read(SUBSCRIBER, fmt, &id)).await;
        assert_eq!(read.status, 200, "{}", read.text());
        assert_eq!(read.header("etag"), Some(r#"W/"1""#));
        assert_eq!(read.header("last-modified"), Some(last_modified));
        let v = body_of(&read, fmt);
        assert_eq!(v["resourceType"], "Subscription");
        assert_eq!(v["id"], id.as_str());
        assert_eq!(v["meta"]["versionId"], "1");
        assert_eq!(v["meta"]["profile"], EMS_PROFILE);
        let updated = v["meta"]["lastUpdated"].as_str().expect("lastUpdated");
        let updated =
            time::OffsetDateTime::parse(updated, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|e| panic!("lastUpdated `{updated}` is not an instant: {e}"));
        let age = time::OffsetDateTime::now_utc() - updated;
        assert!(
            age >= time::Duration::ZERO && age < time::Duration::minutes(5),
            "lastUpdated {updated} is not the creation time"
        );
        assert_eq!(v["status"], "active");
        // Ids are matched without regard to case.
        let upper = api.read_ok(SUBSCRIBER, fmt, &id.to_ascii_uppercase()).await;
        assert_eq!(upper["id"], id.as_str());
        // A read may also carry the write scope, or both (decisions.md §11).
        for scope in [
            "patient/Subscription.write",
            "patient/Subscription.read patient/Subscription.write",
        ] {
            let token = bearer(&claims(SUBSCRIBER, scope));
            let r = api
                .send(Req::read(SUBSCRIBER, fmt, &id).with("Authorization", token))
                .await;
            assert_eq!(r.status, 200, "read with scope `{scope}`: {}", r.text());
        }

        let deleted = api.send(Req::delete(SUBSCRIBER, fmt, &id)).await;
        assert_eq!(deleted.status, 200, "{}", deleted.text());
        assert!(deleted.body.is_empty(), "delete body: {}", deleted.text());
        assert_eq!(deleted.header("content-type"), None);

        let gone = api.send(Req::read(SUBSCRIBER, fmt, &id)).await;
        outcome(&gone, fmt, 404, "NO_RECORD_FOUND", "not-found");
    }
    american_spelling(api).await;
}

/// The JWT may spell the organisation claim `requesting_organization` (decisions.md §11).
async fn american_spelling(api: &Api<'_>) {
    let mut c = claims(SUBSCRIBER, "patient/Subscription.write");
    let ods = c
        .as_object_mut()
        .unwrap()
        .remove("requesting_organisation")
        .unwrap();
    c["requesting_organization"] = ods;
    let sub = Sub::explicit(NHS[3], &["vaccinations-1"]);
    let r = api
        .send(Req::create(SUBSCRIBER, Fmt::Json, Fmt::Json, &sub).with("Authorization", bearer(&c)))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

/// `status` reads `off` once `end` has passed (and `active` before).
pub(crate) async fn status_turns_off_after_end(api: &Api<'_>) {
    let end = (time::OffsetDateTime::now_utc() + time::Duration::seconds(3))
        .replace_nanosecond(0)
        .unwrap();
    let end_text = end
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let mut sub = Sub::explicit(NHS[2], &["vaccinations-1"]);
    sub.end = Some(end_text.clone());
    let id = api.create_ok(SUBSCRIBER, Fmt::Json, &sub).await;
    let before = api.read_ok(SUBSCRIBER, Fmt::Json, &id).await;
    if time::OffsetDateTime::now_utc() < end {
        assert_eq!(before["status"], "active");
    }
    for fmt in Fmt::BOTH {
        let id = id.as_str();
        let off = eventually(
            "status off after end",
            Duration::from_secs(20),
            || async move {
                let v = api.read_ok(SUBSCRIBER, fmt, id).await;
                (v["status"] == "off").then_some(v)
            },
        )
        .await;
        assert!(time::OffsetDateTime::now_utc() >= end, "off before end");
        assert_eq!(off["end"], end_text.as_str());
        assert_eq!(off["id"], id);
    }
    // The operator sees it off too.
    let listed = api
        .stack
        .operator()
        .list_subscriptions(nems_proto::v1::ListSubscriptionsRequest {
            filter: Some(
                nems_proto::v1::list_subscriptions_request::Filter::NhsNumber(NHS[2].into()),
            ),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .subscriptions;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state(), nems_proto::v1::SubscriptionState::Off);
    // The same subscription can be created again once the first has ended.
    let mut perpetual = sub.clone();
    perpetual.end = None;
    let again = api.create_ok(SUBSCRIBER, Fmt::Xml, &perpetual).await;
    assert_ne!(again, id);
    // An ended subscription is still the owner's to delete.
    let deleted = api.send(Req::delete(SUBSCRIBER, Fmt::Xml, &id)).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
}

/// The eight media types, the XML default, and `_format` over `Accept`.
pub(crate) async fn media_types(api: &Api<'_>) {
    let types = [
        ("application/fhir+xml", Fmt::Xml),
        ("application/fhir+xml;charset=utf-8", Fmt::Xml),
        ("application/xml+fhir", Fmt::Xml),
        ("application/xml+fhir;charset=utf-8", Fmt::Xml),
        ("application/fhir+json", Fmt::Json),
        ("application/fhir+json;charset=utf-8", Fmt::Json),
        ("application/json+fhir", Fmt::Json),
        ("application/json+fhir;charset=utf-8", Fmt::Json),
    ];
    let mut ids = Vec::new();
    for (n, (mime, fmt)) in types.into_iter().enumerate() {
        let sub = Sub::explicit(NHS[n], &["vaccinations-1"]);
        let req = Req::create(SUBSCRIBER, fmt, fmt, &sub)
            .with("Content-Type", mime)
            .with("Accept", mime);
        let r = api.send(req).await;
        assert_eq!(r.status, 201, "{mime}: {}", r.text());
        let id = id_of(&r, &api.stack.base_url());
        // Read back with the same type as Accept: answered in that format.
        let read = api
            .send(Req::read(SUBSCRIBER, fmt, &id).with("Accept", mime))
            .await;
        assert_eq!(read.status, 200, "{mime}: {}", read.text());
        let v = body_of(&read, fmt);
        assert_eq!(v["criteria"], sub.criteria.as_str(), "{mime}");
        // A fault answered in the same type.
        let again = api
            .send(
                Req::create(SUBSCRIBER, fmt, fmt, &sub)
                    .with("Content-Type", mime)
                    .with("Accept", mime),
            )
            .await;
        outcome(&again, fmt, 422, "DUPLICATE_REJECTED", "duplicate");
        ids.push(id);
    }

    // No Content-Type and no Accept: the body is read as XML and answered in XML.
    let sub = Sub::explicit(NHS[8], &["vaccinations-1"]);
    let plain = Req::create(SUBSCRIBER, Fmt::Xml, Fmt::Xml, &sub)
        .without("Content-Type")
        .without("Accept");
    let r = api.send(plain.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = id_of(&r, &api.stack.base_url());
    let read = api
        .send(Req::read(SUBSCRIBER, Fmt::Xml, &id).without("Accept"))
        .await;
    assert_eq!(body_of(&read, Fmt::Xml)["id"], id.as_str());
    let duplicate = api.send(plain).await;
    outcome(&duplicate, Fmt::Xml, 422, "DUPLICATE_REJECTED", "duplicate");
    // A JSON body without Content-Type is read as XML: not well-formed.
    let json_as_xml = api
        .send(
            Req::create(SUBSCRIBER, Fmt::Json, Fmt::Xml, &sub)
                .without("Content-Type")
                .without("Accept"),
        )
        .await;
    outcome(
        &json_as_xml,
        Fmt::Xml,
        400,
        "MESSAGE_NOT_WELL_FORMED",
        "structure",
    );
    // With a JSON body and no Accept, the answer follows the body.
    let json_only = api
        .send(Req::create(SUBSCRIBER, Fmt::Json, Fmt::Json, &sub).without("Accept"))
        .await;
    outcome(
        &json_only,
        Fmt::Json,
        422,
        "DUPLICATE_REJECTED",
        "duplicate",
    );

    // `_format` wins over Accept, on reads and on errors.
    for (param, fmt) in [
        ("json", Fmt::Json),
        ("xml", Fmt::Xml),
        ("application/fhir%2Bjson", Fmt::Json),
        ("application/fhir%2Bxml", Fmt::Xml),
    ] {
        let read = api
            .send(
                Req::read(SUBSCRIBER, fmt.other(), &id)
                    .path(format!("/STU3/Subscription/{id}?_format={param}")),
            )
            .await;
        assert_eq!(read.status, 200, "{param}: {}", read.text());
        assert_eq!(body_of(&read, fmt)["id"], id.as_str(), "{param}");
        let refused = api
            .send(
                Req::create(SUBSCRIBER, Fmt::Xml, fmt.other(), &sub)
                    .path(format!("/STU3/Subscription?_format={param}")),
            )
            .await;
        outcome(&refused, fmt, 422, "DUPLICATE_REJECTED", "duplicate");
    }
    for id in ids {
        let r = api.send(Req::delete(SUBSCRIBER, Fmt::Xml, &id)).await;
        assert_eq!(r.status, 200);
    }
}

/// Created in one format and read in the other (both ways), the content is what was sent.
pub(crate) async fn round_trip(api: &Api<'_>) {
    let end = "2099-12-31T23:59:59+00:00";
    for (n, (from, to)) in [(Fmt::Xml, Fmt::Json), (Fmt::Json, Fmt::Xml)]
        .into_iter()
        .enumerate()
    {
        let mut sub = Sub::new(
            "RR8",
            ["RR8MBX02", "RR8MBX03"][n],
            &format!(
                "/Bundle?type=message&serviceType=CHO&subscriptionRuleType=CHO_POSTCODE_CCG&Organization.identifier=X2458&MessageHeader.event=pds-change-of-address-1&Patient.age=gt5&Patient.age=lt19&GPRegistration=RegisteredOnly&tag=site-{n}|a,b_c"
            ),
        );
        sub.reason = format!("Child health <CHO> & \"Leeds\" 'north' café №{n}");
        sub.end = Some(end.into());
        let id = api.create_ok(SUBSCRIBER, from, &sub).await;
        for fmt in [to, from] {
            let v = api.read_ok(SUBSCRIBER, fmt, &id).await;
            let context = format!("created in {from:?}, read in {fmt:?}");
            assert_eq!(
                v["contact"],
                json!({"system": "url", "value": format!("{CONTACT_PREFIX}RR8"), "use": "work"}),
                "{context}"
            );
            assert_eq!(v["reason"], sub.reason.as_str(), "{context}");
            assert_eq!(v["criteria"], sub.criteria.as_str(), "{context}");
            assert_eq!(
                v["channel"],
                json!({"type": "message", "endpoint": sub.mailbox}),
                "{context}"
            );
            assert_eq!(v["end"], end, "{context}");
            assert_eq!(v["status"], "active", "{context}");
            let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                [
                    "resourceType",
                    "id",
                    "meta",
                    "status",
                    "contact",
                    "end",
                    "reason",
                    "criteria",
                    "channel"
                ],
                "{context}: elements in schema order, nothing else"
            );
        }
    }
    // An explicit subscription with several events round-trips its criteria unchanged,
    // including the old-style NHS-number system.
    let criteria = format!(
        "/Bundle?type=message&serviceType=GP&Patient.identifier=http://fhir.nhs.net/Id/nhs-number|{}&MessageHeader.event=pds-change-of-gp-1&MessageHeader.event=pds-death-notification-1",
        NHS[9]
    );
    let id = api
        .create_ok(
            SUBSCRIBER,
            Fmt::Xml,
            &Sub::new("RR8", "RR8MBX01", &criteria),
        )
        .await;
    let v = api.read_ok(SUBSCRIBER, Fmt::Json, &id).await;
    assert_eq!(v["criteria"], criteria.as_str());
    assert!(v.get("end").is_none(), "no end was sent: {v}");
}

#[tokio::test]
async fn create_read_delete_in_xml_and_json() {
    let stack = TestStack::start().await;
    create_read_delete(&Api::new(&stack)).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn status_is_off_once_end_has_passed() {
    let stack = TestStack::start().await;
    status_turns_off_after_end(&Api::new(&stack)).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn eight_media_types_xml_default_and_format_parameter() {
    let stack = TestStack::start().await;
    media_types(&Api::new(&stack)).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn content_round_trips_between_xml_and_json() {
    let stack = TestStack::start().await;
    round_trip(&Api::new(&stack)).await;
    stack.shutdown().await;
}
