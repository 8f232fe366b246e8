//! Coverage-guided fuzz targets (issue 10 §4): one `pub fn <target>(data: &[u8])` per parser
//! that reads untrusted input. Each calls the real parser and asserts the invariants that are
//! cheap to check; a panic is a failure.
//!
//! The AFL++ harnesses (`afl/`, outside the workspace, built by `scripts/fuzz.sh`) call these
//! functions; `tests/replay.rs` replays every file of `corpus/<target>/` through them, so CI
//! re-checks what the fuzzer found in seconds.

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use nems_core::domain::catalogue::Catalogue;
use nems_core::domain::criteria;
use nems_edge::error::EdgeError;
use nems_edge::fhir::outcome::{self, Issue, OperationOutcome, Severity};
use nems_edge::fhir::{FhirError, Format};
use nems_edge::handlers::subscription::fhir_error;
use nems_edge::jwt::{self, Operation};
use nems_edge::negotiate::{self, Formats};
use nems_edge::translate::{bundle, subscription};
use nems_mesh_adapter::error::{classify_response, parse_retry_after};
use nems_mesh_adapter::mesh::fuzzing as mesh;
use nems_mesh_adapter::mesh::{InboxMessage, Tracked};

/// A fuzz target: panics on a failed check.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory (and the harness's argument).
pub const TARGETS: [(&str, Target); 7] = [
    ("bundle", bundle_extract),
    ("subscription_xml", subscription_xml),
    ("subscription_json", subscription_json),
    ("criteria", criteria),
    ("jwt", jwt),
    ("headers", headers),
    ("mesh", mesh_response),
];

/// "Now" for the time-dependent checks (JWT `exp`/`iat`, `Retry-After` dates).
const NOW: i64 = 1_700_000_100;

// === FHIR bodies ===

/// The published-bundle extractor: an `Err` always renders as an OperationOutcome.
pub fn bundle_extract(data: &[u8]) {
    if let Err(e) = bundle::extract(data) {
        renders_as_outcome(e);
    }
}

/// The Subscription XML reader.
pub fn subscription_xml(data: &[u8]) {
    subscription_in(Format::Xml, data);
}

/// The Subscription JSON reader.
pub fn subscription_json(data: &[u8]) {
    subscription_in(Format::Json, data);
}

/// Reads a Subscription; an `Err` renders as an OperationOutcome, and what was read is written
/// in both formats, each of which reads back and writes the same bytes again.
fn subscription_in(format: Format, data: &[u8]) {
    let sub = match subscription::parse(format, data) {
        Ok(sub) => sub,
        Err(e) => return renders_as_outcome(e),
    };
    for out in [Format::Xml, Format::Json] {
        let written = subscription::write(out, &sub);
        let again = match subscription::parse(out, &written) {
            Ok(again) => again,
            Err(e) => panic!("{out:?} written from a read Subscription does not read back: {e}"),
        };
        assert_eq!(
            subscription::write(out, &again),
            written,
            "{out:?}: writing what was read back changes the bytes"
        );
    }
}

/// Renders a FHIR read failure the way the handlers do, in both formats, and checks that the
/// result is well-formed.
fn renders_as_outcome(e: FhirError) {
    let edge: EdgeError = fhir_error(e);
    let (status, code) = edge.http();
    assert!(status.is_client_error(), "a body error must be a 4xx");
    let outcome = OperationOutcome {
        id: "fuzz".to_owned(),
        issues: vec![Issue {
            severity: Severity::Error,
            code,
            spine_code: edge.code,
            diagnostics: Some(edge.diagnostics),
        }],
    };
    let json = outcome::write(Format::Json, &outcome);
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&json) {
        panic!("OperationOutcome JSON does not parse: {e}");
    }
    let xml = outcome::write(Format::Xml, &outcome);
    let mut reader = quick_xml::Reader::from_reader(&xml[..]);
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => buf.clear(),
            Err(e) => panic!("OperationOutcome XML is not well-formed: {e}"),
        }
    }
}

// === criteria ===

/// The subscription criteria parser, against the built-in catalogue.
pub fn criteria(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    thread_local! {
        static CATALOGUE: Catalogue = Catalogue::default();
    }
    CATALOGUE.with(|catalogue| {
        let _ = criteria::parse(text, catalogue);
    });
    let _ = criteria::parse_rule(text);
}

// === Spine headers and JWT ===

/// The operation selected by the low two bits of a byte.
fn operation(byte: u8) -> Operation {
    match byte & 3 {
        0 => Operation::Create,
        1 => Operation::Read,
        2 => Operation::Delete,
        _ => Operation::Publish,
    }
}

/// The JWT check. The first byte picks the operation (bits 0-1) and the mode (bit 2): the rest
/// is either the `Authorization` value as sent, or the claims JSON, sent as an unsigned token
/// (so that the fuzzer reaches the claim rules without having to find base64).
pub fn jwt(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let op = operation(first);
    let authorization = if first & 4 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        text.to_owned()
    } else {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        format!("Bearer {header}.{}.", URL_SAFE_NO_PAD.encode(rest))
    };
    if let Ok(claims) = jwt::check(&authorization, op, NOW, 60) {
        assert_eq!(claims.asid.len(), 12, "an accepted ASID has 12 digits");
        assert!(
            !claims.ods_code.is_empty(),
            "an accepted ODS code is not empty"
        );
    }
}

/// Splits `name: value` lines into a header map (lines that are not a valid header are skipped).
fn header_map(text: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in text.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let value = value.strip_suffix(b"\r").unwrap_or(value);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

/// The Spine request headers and content negotiation. The first byte picks the operation; the
/// first line is the query string, the other lines are `name: value` headers.
pub fn headers(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let op = operation(first);
    let (query, rest) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let query = std::str::from_utf8(query).ok();
    let map = header_map(rest);
    let policy = nems_edge::headers::Policy {
        service_asid: "200000000115",
        now: NOW,
        skew: 60,
    };
    if let Ok(checked) = nems_edge::headers::check(&map, op, policy, "fuzz") {
        assert!(!checked.interaction_id.is_empty());
    }
    for formats in [Formats::XmlOnly, Formats::XmlOrJson] {
        let _ = negotiate::request_format(&map, formats);
        let _ = negotiate::response_format(&map, query, formats, Format::Xml);
    }
}

// === MESH answers ===

/// The parsers of MESH API answers. The first two bytes are the HTTP status (big-endian, taken
/// modulo 1000); then `name: value` header lines up to an empty line; the rest is the body.
/// Every parser sees the same status, headers and body.
pub fn mesh_response(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let status = u16::from_be_bytes([data[0], data[1]]) % 1000;
    let rest = &data[2..];
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (&[][..], rest),
    };
    let map = header_map(head);
    let now = UNIX_EPOCH + Duration::from_secs(NOW as u64);
    match classify_response(status, &map, body, now) {
        None => assert!((200..300).contains(&status), "only a 2xx is a success"),
        Some(error) => {
            assert!(!(200..300).contains(&status), "a 2xx is never an error");
            assert!(!error.code().is_empty());
        }
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = parse_retry_after(text, now);
        let _ = mesh::path_of(text);
    }
    if let Some(tracked) = Tracked::parse(body) {
        assert!(!tracked.message_id.is_empty());
        let _ = tracked.state();
    }
    if let Some(id) = mesh::message_id_from(body) {
        assert!(!id.is_empty());
    }
    if let Ok((_, Some(next))) = mesh::inbox_page(body) {
        assert!(next.starts_with('/'), "links.next becomes a path");
    }
    let message = InboxMessage::from_headers("fuzz", &map);
    let _ = message.is_report();
    let _ = mesh::chunk_total(&message);
    let _ = mesh::decoded(&map, Bytes::copy_from_slice(body));
}
