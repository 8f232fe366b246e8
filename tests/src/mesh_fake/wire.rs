//! Wire helpers for the fake: MESH v2 response bodies, header and query parsing.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

/// The v2 media type, also the fake's JSON content type.
pub(super) const ACCEPT_V2: &str = "application/vnd.mesh.v2+json";

pub(super) fn mex_headers(headers: &HeaderMap) -> HashMap<String, String> {
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("mex-"))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

pub(super) fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
}

pub(super) fn chunk_range(value: &str) -> Option<(usize, usize)> {
    let (number, total) = value.split_once(':')?;
    let number: usize = number.trim().parse().ok()?;
    let total: usize = total.trim().parse().ok()?;
    (1..=total).contains(&number).then_some((number, total))
}

pub(super) fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase()
    })
}

pub(super) fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

pub(super) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ACCEPT_V2)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("fake response")
}

pub(super) fn empty_response(status: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("fake response")
}

/// A v2 error body: `{"detail":[{"event","code","msg"}]}`.
pub(super) fn error_response(
    status: StatusCode,
    event: &str,
    code: &str,
    msg: &str,
) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({ "detail": [{ "event": event, "code": code, "msg": msg }] }),
    )
}

pub(super) fn missing_header(name: &str) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({ "detail": [{ "type": "missing", "loc": ["header", name], "msg": "Field required" }] }),
    )
}

pub(super) fn failure_response(status: u16, retry_after: Option<&str>) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(status).expect("scripted status is valid");
    let mut response = error_response(status, "SEND", "", "scripted failure");
    if let Some(value) = retry_after {
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_str(value).expect("scripted retry-after is a header value"),
        );
    }
    response
}
