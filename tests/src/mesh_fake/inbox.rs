//! The fake's inbox: list (v2 pagination), download (HEAD/GET, chunks) and acknowledge.

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::Inner;
use super::server::Call;
use super::wire::{empty_response, error_response, header_text, json_response};

pub(super) fn list(inner: &Inner, request: &Call) -> Response<Full<Bytes>> {
    let page_size = request
        .query
        .get("max_results")
        .and_then(|v| v.parse().ok())
        .or(inner.page_size)
        .unwrap_or(500);
    let waiting: Vec<&str> = inner
        .messages
        .iter()
        .filter(|m| m.to() == request.mailbox && m.status == "accepted")
        .map(|m| m.message_id.as_str())
        .collect();
    let start = request
        .query
        .get("continue_from")
        .and_then(|last| waiting.iter().position(|id| id == last))
        .map_or(0, |i| i + 1);
    let page: Vec<&str> = waiting
        .iter()
        .skip(start)
        .take(page_size)
        .copied()
        .collect();
    let base = format!("/messageexchange/{}/inbox", request.mailbox);
    let mut links = json!({ "self": base });
    if start + page.len() < waiting.len()
        && let Some(last) = page.last()
    {
        links["next"] = json!(format!(
            "{base}?max_results={page_size}&continue_from={last}"
        ));
    }
    json_response(
        StatusCode::OK,
        &json!({ "messages": page, "links": links, "approx_inbox_count": waiting.len() }),
    )
}

pub(super) fn download(
    inner: &Inner,
    request: &Call,
    id: &str,
    number: usize,
) -> Response<Full<Bytes>> {
    let Some(message) = inner
        .messages
        .iter()
        .find(|m| m.message_id.eq_ignore_ascii_case(id) && m.to() == request.mailbox)
    else {
        return error_response(
            StatusCode::NOT_FOUND,
            "RECEIVE",
            "20",
            "Message does not exist",
        );
    };
    if message.status == "acknowledged" {
        return error_response(
            StatusCode::GONE,
            "RECEIVE",
            "",
            "Message has been acknowledged",
        );
    }
    let total = message.total_chunks();
    if number < 1 || (total > 0 && number > total) {
        return error_response(
            StatusCode::NOT_FOUND,
            "RECEIVE",
            "20",
            "Chunk does not exist",
        );
    }
    let mut response = Response::builder().status(if number < total {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    });
    for (name, value) in &message.mex_headers {
        response = response.header(name.as_str(), value.as_str());
    }
    if !message.sender.is_empty() {
        response = response.header("mex-from", message.sender.as_str());
    }
    response = response
        .header("mex-messageid", message.message_id.as_str())
        .header("mex-messagetype", message.message_type.as_str())
        .header("mex-chunk-range", format!("{number}:{total}"))
        .header("mex-total-chunks", total.to_string())
        .header("content-type", "application/octet-stream");
    if message.message_type == "DATA" {
        response = response
            .header("mex-statuscode", "00")
            .header("mex-statusevent", "TRANSFER")
            .header("mex-statussuccess", "SUCCESS");
    }
    let part = message
        .chunks
        .get(number - 1)
        .cloned()
        .flatten()
        .unwrap_or_default();
    let accepts_gzip =
        header_text(&request.headers, "accept-encoding").is_some_and(|v| v.contains("gzip"));
    let body = if accepts_gzip && message.content_encoding.is_some() {
        response = response.header("content-encoding", "gzip");
        part
    } else {
        Bytes::from(super::decode_part(
            message.content_encoding.as_deref(),
            &part,
        ))
    };
    let body = if request.method == Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    response.body(Full::new(body)).expect("fake response")
}

pub(super) fn acknowledge(inner: &mut Inner, request: &Call, id: &str) -> Response<Full<Bytes>> {
    let Some(message) = inner
        .messages
        .iter_mut()
        .find(|m| m.message_id.eq_ignore_ascii_case(id) && m.to() == request.mailbox)
    else {
        return error_response(
            StatusCode::NOT_FOUND,
            "RECEIVE",
            "20",
            "Message does not exist",
        );
    };
    message.status = "acknowledged".to_owned();
    empty_response(StatusCode::OK)
}
