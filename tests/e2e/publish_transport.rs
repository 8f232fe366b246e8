//! The transport rules of publishing, end to end (nems.md §2.2–§2.4, decisions.md §8, §9,
//! §11): XML media types only (`415` otherwise, for the body, `Accept` and `_format`); the
//! 3 MB body limit, with or without a `Content-Length`, at its exact boundary, and a 3 MB
//! message delivered unchanged; the Spine headers and the unsigned JWT, each missing or
//! wrong, refused with `400 MISSING_OR_INVALID_HEADER` (a foreign `toASID` with `403`), all
//! as Spine OperationOutcomes naming the header or claim at fault.

use nems_e2e::http::HttpResponse;
use nems_e2e::spine::{self, Op};
use nems_e2e::stack::TestStack;
use serde_json::json;

use crate::publish_common::{
    FHIR_XML, PUBLISH_PATH, VACC_NHS, assert_accepted, events_accepted, publish, subscribe,
    vaccination, wait_for_deliveries, wait_quiet,
};
use crate::publish_outcome::assert_refused;

#[tokio::test]
async fn publish_refuses_non_xml_media_types_with_415() {
    let stack = TestStack::start().await;
    let op = Op::Publish("Vaccinations");
    let json_body = json!({"resourceType": "Bundle", "type": "message"}).to_string();
    let refused: [(&str, Option<&str>, String, &str); 5] = [
        (
            "application/fhir+json",
            None,
            json_body.clone(),
            "Content-Type",
        ),
        ("application/json+fhir", None, json_body, "Content-Type"),
        ("text/plain", None, vaccination(), "Content-Type"),
        (
            "application/fhir+xml;charset=iso-8859-1",
            None,
            vaccination(),
            "Content-Type",
        ),
        (
            FHIR_XML,
            Some("application/fhir+json"),
            vaccination(),
            "Accept",
        ),
    ];
    for (content_type, accept, body, header) in refused {
        let headers = spine::with_media(spine::SUBSCRIBER, op, content_type, accept);
        let response = stack.http.post(PUBLISH_PATH, &headers, body).await;
        assert_refused(
            &response,
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            &[header, "application/fhir+xml", "XML only"],
        );
    }
    let headers = spine::with_media(spine::SUBSCRIBER, op, FHIR_XML, None);
    let path = format!("{PUBLISH_PATH}?_format=json");
    let response = stack.http.post(&path, &headers, vaccination()).await;
    assert_refused(&response, 415, "UNSUPPORTED_MEDIA_TYPE", &["_format"]);
    assert_eq!(events_accepted(&stack).await, 0);

    // The four XML media types are accepted for the body and the answer, parameters
    // compared without regard to case or spacing; no Content-Type means XML.
    let accepted: [(Option<&str>, Option<&str>); 7] = [
        (Some("application/fhir+xml"), Some("application/fhir+xml")),
        (
            Some("application/fhir+xml;charset=utf-8"),
            Some("application/fhir+xml;charset=utf-8"),
        ),
        (Some("application/xml+fhir"), Some("application/xml+fhir")),
        (
            Some("application/xml+fhir;charset=utf-8"),
            Some("application/xml+fhir;charset=utf-8"),
        ),
        (Some("application/fhir+xml; charset=UTF-8"), None),
        (
            Some(FHIR_XML),
            Some("application/fhir+json;q=0.9, application/fhir+xml"),
        ),
        (None, None),
    ];
    for (content_type, accept) in accepted {
        let mut headers = spine::headers(spine::SUBSCRIBER, op);
        if let Some(value) = content_type {
            headers.push(("Content-Type", value.into()));
        }
        if let Some(value) = accept {
            headers.push(("Accept", value.into()));
        }
        let response = stack.http.post(PUBLISH_PATH, &headers, vaccination()).await;
        assert_accepted(&response, &format!("{content_type:?} / {accept:?}"));
    }
    assert_eq!(events_accepted(&stack).await, 7);
    stack.shutdown().await;
}

/// Pads a valid message with an XML comment to exactly `size` bytes.
fn padded(size: usize) -> String {
    let text = vaccination();
    let (declaration, rest) = text.split_once("?>").unwrap();
    let filler = size - text.len() - "<!---->".len();
    let padded = format!("{declaration}?><!--{}-->{rest}", "x".repeat(filler));
    assert_eq!(padded.len(), size);
    padded
}

#[tokio::test]
async fn publish_body_limit_is_3_mb() {
    let stack = TestStack::start().await;
    let limit = 3 * 1024 * 1024;
    let response = publish(&stack, spine::SUBSCRIBER, "Vaccinations", padded(limit + 1)).await;
    assert_refused(
        &response,
        413,
        "INVALID_REQUEST_MESSAGE",
        &["3145728-byte limit"],
    );
    assert_eq!(events_accepted(&stack).await, 0);
    // Without a Content-Length the limit still holds, with the same answer.
    let response = publish_chunked(&stack, padded(limit + 1).into_bytes()).await;
    assert_refused(
        &response,
        413,
        "INVALID_REQUEST_MESSAGE",
        &["3145728-byte limit"],
    );
    assert_eq!(events_accepted(&stack).await, 0);

    // A message of exactly 3 MB is accepted and delivered byte for byte.
    let criteria = spine::explicit(VACC_NHS, &["vaccinations-1"], "");
    subscribe(&stack, spine::SUBSCRIBER, "RR8MBX01", &criteria).await;
    let largest = padded(limit);
    let response = publish(&stack, spine::SUBSCRIBER, "Vaccinations", largest.clone()).await;
    assert_accepted(&response, "a message of exactly 3 MB");
    assert_eq!(events_accepted(&stack).await, 1);
    let response = publish_chunked(&stack, largest.clone().into_bytes()).await;
    assert_accepted(&response, "3 MB sent in chunks");
    let delivered = wait_for_deliveries(&stack, 2).await;
    for d in &delivered {
        assert!(
            d.payload == largest.as_bytes(),
            "the 3 MB payload unchanged"
        );
    }
    wait_quiet(&stack).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn a_bundle_near_the_limit_with_much_to_extract_is_never_a_500() {
    // About 3 MB of entries: the edge extracts each entry's fullUrl, type and id, so the
    // request to core (payload plus extracted fields) is well over tonic's default 4 MiB
    // decode limit, which used to end in a 500.
    let stack = TestStack::start().await;
    let text = vaccination();
    let entry = |i: usize| {
        format!(
            r#"<entry><fullUrl value="urn:uuid:00000000-0000-4000-8000-{i:012}"/><resource><Basic><id value="basic-{i:012}"/></Basic></resource></entry>"#
        )
    };
    let one = entry(0).len();
    let room = 3 * 1024 * 1024 - text.len();
    let entries: String = (0..room / one).map(entry).collect();
    let body = text.replace("</Bundle>", &format!("{entries}</Bundle>"));
    assert!(body.len() <= 3 * 1024 * 1024 && body.len() > 3 * 1024 * 1024 - one);
    let response = publish(&stack, spine::SUBSCRIBER, "Vaccinations", body).await;
    assert_ne!(response.status, 500, "{}", response.text());
    assert!(
        response.status == 202 || response.text().contains("OperationOutcome"),
        "{}: {}",
        response.status,
        response.text()
    );
    stack.shutdown().await;
}

/// Publishes `body` with `Transfer-Encoding: chunked` (no `Content-Length`) over a raw
/// HTTP/1.1 connection, so that the limit is met while reading rather than up front.
async fn publish_chunked(stack: &TestStack, body: Vec<u8>) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(stack.edge_addr)
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let mut head = format!(
        "POST {PUBLISH_PATH} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n",
        stack.edge_addr
    );
    for (name, value) in spine::with_media(
        spine::SUBSCRIBER,
        Op::Publish("Vaccinations"),
        FHIR_XML,
        None,
    ) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // The server may answer and close before reading everything: write errors are fine.
    let writing = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 * 1024) {
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            writer.write_all(chunk).await?;
            writer.write_all(b"\r\n").await?;
        }
        writer.write_all(b"0\r\n\r\n").await?;
        writer.flush().await?;
        Ok::<_, std::io::Error>(writer)
    });
    let mut raw = Vec::new();
    reader.read_to_end(&mut raw).await.unwrap();
    // The write half lives in the task's output until now: dropping it earlier would
    // half-close the connection, which the server takes as the client going away.
    let _ = writing.await.unwrap();
    parse_response(&raw)
}

/// Parses a complete HTTP/1.1 response with a `Content-Length` body (as the edge sends).
fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of the response head");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').expect("header line");
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            http::HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    let body = &raw[split + 4..];
    if let Some(length) = headers.get("content-length") {
        let length: usize = length.to_str().unwrap().parse().unwrap();
        assert_eq!(body.len(), length, "the whole body was read");
    }
    HttpResponse {
        status,
        headers,
        body: bytes::Bytes::copy_from_slice(body),
    }
}

/// The publish headers for the subscriber with one header changed (`None`: removed).
fn headers_with(name: &str, value: Option<String>) -> Vec<(&'static str, String)> {
    let mut headers = spine::with_media(
        spine::SUBSCRIBER,
        Op::Publish("Vaccinations"),
        FHIR_XML,
        None,
    );
    let index = headers.iter().position(|(n, _)| *n == name).unwrap();
    match value {
        Some(v) => headers[index].1 = v,
        None => {
            headers.remove(index);
        }
    }
    headers
}

/// A JWT for the subscriber with `change` applied to the valid claims.
fn jwt_with(change: impl FnOnce(&mut serde_json::Value)) -> String {
    let valid = spine::jwt(spine::SUBSCRIBER, "patient/Bundle.write");
    let payload = valid.split('.').nth(1).unwrap();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&base64_url_decode(payload)).unwrap();
    change(&mut claims);
    format!("Bearer {}", nems_edge::jwt::encode(&claims))
}

fn base64_url_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes() {
        let value = ALPHABET.iter().position(|&a| a == byte).unwrap() as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

async fn send(stack: &TestStack, headers: &[(&'static str, String)]) -> HttpResponse {
    stack.http.post(PUBLISH_PATH, headers, vaccination()).await
}

#[tokio::test]
async fn publish_refuses_missing_or_invalid_headers_and_jwts() {
    let stack = TestStack::start().await;
    for name in ["InteractionID", "fromASID", "toASID", "Authorization"] {
        let response = send(&stack, &headers_with(name, None)).await;
        assert_refused(
            &response,
            400,
            "MISSING_OR_INVALID_HEADER",
            &[name, "missing"],
        );
    }
    let now = {
        let valid = spine::jwt(spine::SUBSCRIBER, "patient/Bundle.write");
        let claims: serde_json::Value =
            serde_json::from_slice(&base64_url_decode(valid.split('.').nth(1).unwrap())).unwrap();
        claims["iat"].as_i64().unwrap()
    };
    let unsigned = spine::jwt(spine::SUBSCRIBER, "patient/Bundle.write");
    let bad: Vec<(&str, &str, String, &[&str])> = vec![
        (
            "InteractionID",
            "subscription interaction",
            "urn:nhs:names:services:clinicals-sync:SubscriptionsApiPost".into(),
            &["InteractionID"],
        ),
        (
            "InteractionID",
            "no .Write suffix",
            "urn:nhs:names:services:events:Vaccinations".into(),
            &["InteractionID"],
        ),
        (
            "fromASID",
            "not 12 digits",
            "20000000011".into(),
            &["fromASID"],
        ),
        (
            "fromASID",
            "another ASID than the JWT's",
            spine::SCREENING.asid.into(),
            &["requesting_system", "fromASID"],
        ),
        ("toASID", "not 12 digits", "NEMS".into(), &["toASID"]),
        (
            "Authorization",
            "not a Bearer token",
            format!("Basic {unsigned}"),
            &["Bearer"],
        ),
        (
            "Authorization",
            "signed",
            format!("Bearer {unsigned}c2lnbmF0dXJl"),
            &["unsigned"],
        ),
        (
            "Authorization",
            "not a JWT",
            "Bearer not-a-token".into(),
            &["JWT"],
        ),
        (
            "Authorization",
            "subscription scope",
            jwt_with(|c| c["scope"] = json!("patient/Subscription.write")),
            &["scope", "patient/Bundle.write"],
        ),
        (
            "Authorization",
            "expired",
            jwt_with(|c| {
                c["iat"] = json!(now - 3600);
                c["exp"] = json!(now - 3300);
            }),
            &["expired"],
        ),
        (
            "Authorization",
            "lifetime not 5 minutes",
            jwt_with(|c| c["exp"] = json!(now + 3600)),
            &["300"],
        ),
        (
            "Authorization",
            "no requesting_organisation",
            jwt_with(|c| {
                c.as_object_mut().unwrap().remove("requesting_organisation");
            }),
            &["requesting_organisation"],
        ),
        (
            "Authorization",
            "no aud",
            jwt_with(|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            &["aud"],
        ),
        (
            "Authorization",
            "requesting_patient on a publish",
            jwt_with(|c| {
                c["requesting_patient"] =
                    json!(format!("https://fhir.nhs.uk/Id/nhs-number|{VACC_NHS}"));
            }),
            &["requesting_patient"],
        ),
    ];
    for (name, what, value, mentions) in bad {
        let response = send(&stack, &headers_with(name, Some(value))).await;
        assert_eq!(response.status, 400, "{name} {what}: {}", response.text());
        assert_refused(&response, 400, "MISSING_OR_INVALID_HEADER", mentions);
    }
    // toASID well formed but not this service's.
    let response = send(&stack, &headers_with("toASID", Some("200000000999".into()))).await;
    assert_refused(&response, 403, "ASID_CHECK_FAILED", &["toASID"]);
    assert_eq!(events_accepted(&stack).await, 0);
    // The spelling `requesting_organization` is accepted too (decisions.md §11).
    let response = send(
        &stack,
        &headers_with(
            "Authorization",
            Some(jwt_with(|c| {
                let claims = c.as_object_mut().unwrap();
                let ods = claims.remove("requesting_organisation").unwrap();
                claims.insert("requesting_organization".into(), ods);
            })),
        ),
    )
    .await;
    assert_accepted(&response, "requesting_organization");
    stack.shutdown().await;
}
