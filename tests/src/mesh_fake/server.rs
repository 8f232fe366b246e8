//! The fake's accept loop and request router.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::wire::{
    ACCEPT_V2, capitalised, chunk_range, empty_response, error_response, failure_response,
    header_text, json_response, mex_headers, missing_header, parse_query, percent_decode,
};
use super::{Behaviour, Inner, RecordedRequest, State, StoredMessage, auth, inbox, new_message_id};

/// What to do after routing (under the state lock).
enum Action {
    Reply(Response<Full<Bytes>>),
    /// Wait, then store the message and answer 202.
    SlowAccept(Duration, StoredMessage),
    /// Never answer; release the connection when the fake stops.
    Hang,
    /// Close the connection without an answer.
    Drop,
}

/// The parts of a request the router needs.
pub(super) struct Call {
    pub(super) method: Method,
    /// The authenticated mailbox (from the path, upper case).
    pub(super) mailbox: String,
    /// Path segments after the mailbox, percent-decoded.
    pub(super) segments: Vec<String>,
    pub(super) query: HashMap<String, String>,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

/// Accepts connections until the fake stops.
pub(super) async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut shutdown = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = Arc::clone(&state);
        let mut connection_shutdown = state.shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&state), request));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = connection_shutdown.wait_for(|stop| *stop) => {}
            }
        });
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(std::io::Error::other)?;
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let at = std::time::Instant::now();
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: path.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
        status: None,
        at,
    };
    let (index, action, stored) = {
        let mut inner = state.inner.lock().expect("mesh fake state");
        let mut recorded = recorded;
        if inner.drop_request_bodies {
            recorded.body = Bytes::new();
        }
        inner.requests.push(recorded);
        let index = inner.requests.len() - 1;
        let action = if inner.unreachable {
            Action::Drop
        } else {
            route(&mut inner, parts.method, &path, parts.headers, body)
        };
        (index, action, inner.messages.len())
    };
    state.recorded.send_replace(index + 1);
    state.stored.send_replace(stored);
    let response = match action {
        Action::Reply(response) => response,
        Action::SlowAccept(delay, message) => {
            // Like a real server, finish the work even when the client gives up and hyper
            // drops this handler: store from a detached task.
            let id = message.message_id.clone();
            let store_state = Arc::clone(&state);
            let store = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let stored = {
                    let mut inner = store_state.inner.lock().expect("mesh fake state");
                    inner.messages.push(message);
                    inner.messages.len()
                };
                store_state.stored.send_replace(stored);
            });
            store.await.map_err(std::io::Error::other)?;
            json_response(StatusCode::ACCEPTED, &json!({ "message_id": id }))
        }
        Action::Hang => {
            let mut shutdown = state.shutdown.clone();
            let _ = shutdown.wait_for(|stop| *stop).await;
            return Err(std::io::Error::other(
                "mesh fake stopped while holding a request",
            ));
        }
        Action::Drop => {
            return Err(std::io::Error::other("mesh fake dropped the connection"));
        }
    };
    let status = response.status().as_u16();
    state.inner.lock().expect("mesh fake state").requests[index].status = Some(status);
    Ok(response)
}

fn route(inner: &mut Inner, method: Method, path: &str, headers: HeaderMap, body: Bytes) -> Action {
    let (path_only, query) = path.split_once('?').unwrap_or((path, ""));
    let Some(rest) = path_only.strip_prefix("/messageexchange/") else {
        return Action::Reply(error_response(StatusCode::NOT_FOUND, "", "", "Not Found"));
    };
    let segments: Vec<String> = rest.split('/').map(percent_decode).collect();
    let mailbox = segments[0].to_ascii_uppercase();
    if headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        != Some(ACCEPT_V2)
    {
        return Action::Reply(error_response(
            StatusCode::BAD_REQUEST,
            "",
            "",
            "Accept header api format incorrect",
        ));
    }
    let authorization = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(reason) = auth::check(inner, &mailbox, authorization) {
        return Action::Reply(error_response(StatusCode::FORBIDDEN, "", "", &reason));
    }
    let request = Call {
        method,
        mailbox,
        segments: segments[1..].to_vec(),
        query: parse_query(query),
        headers,
        body,
    };
    let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
    match (&request.method, segments.as_slice()) {
        (_, ["outbox", "tracking", _]) if inner.local_id_tracking_withdrawn => {
            Action::Reply(error_response(StatusCode::NOT_FOUND, "", "", "Not Found"))
        }
        (&Method::POST | &Method::GET, []) => Action::Reply(handshake(&request)),
        (&Method::POST, ["outbox"]) => send(inner, &request),
        (&Method::POST, ["outbox", id, number]) => {
            Action::Reply(chunk(inner, &request, id, number))
        }
        (&Method::GET, ["outbox", "tracking"]) => Action::Reply(track_by_id(inner, &request)),
        (&Method::GET, ["outbox", "tracking", local_id]) => {
            Action::Reply(track_by_local_id(inner, &request, local_id))
        }
        (&Method::PUT | &Method::DELETE | &Method::PATCH, ["outbox", "tracking", _]) => {
            Action::Reply(error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "",
                "",
                "Method Not Allowed",
            ))
        }
        (&Method::GET, ["inbox"]) => Action::Reply(inbox::list(inner, &request)),
        (&Method::GET | &Method::HEAD, ["inbox", id]) => {
            Action::Reply(inbox::download(inner, &request, id, 1))
        }
        (&Method::GET, ["inbox", id, number]) => match number.parse() {
            Ok(number) => Action::Reply(inbox::download(inner, &request, id, number)),
            Err(_) => Action::Reply(error_response(StatusCode::NOT_FOUND, "", "", "Not Found")),
        },
        (&Method::PUT, ["inbox", id, "status", "acknowledged"]) => {
            Action::Reply(inbox::acknowledge(inner, &request, id))
        }
        _ => Action::Reply(error_response(StatusCode::NOT_FOUND, "", "", "Not Found")),
    }
}

fn handshake(request: &Call) -> Response<Full<Bytes>> {
    for required in ["mex-clientversion", "mex-osname", "mex-osversion"] {
        if request.headers.get(required).is_none() {
            return missing_header(required);
        }
    }
    empty_response(StatusCode::OK)
}

fn send(inner: &mut Inner, request: &Call) -> Action {
    for required in ["mex-to", "mex-workflowid"] {
        if request.headers.get(required).is_none() {
            return Action::Reply(missing_header(required));
        }
    }
    let mex_headers = mex_headers(&request.headers);
    if mex_headers
        .values()
        .any(|v| v.chars().any(|c| c.is_control()))
    {
        return Action::Reply(error_response(
            StatusCode::BAD_REQUEST,
            "TRANSFER",
            "06",
            "MalformedControlFile",
        ));
    }
    let encoding = header_text(&request.headers, "content-encoding");
    if encoding.as_deref().is_some_and(|e| e != "gzip") {
        return Action::Reply(error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "SEND",
            "",
            "UnsupportedContentEncoding",
        ));
    }
    let total = match mex_headers.get("mex-chunk-range").map(|r| chunk_range(r)) {
        None => 1,
        Some(Some((1, total))) => total,
        Some(_) => {
            return Action::Reply(error_response(
                StatusCode::EXPECTATION_FAILED,
                "SEND",
                "",
                "InvalidHeaderChunks",
            ));
        }
    };
    if request.body.is_empty() {
        return Action::Reply(error_response(
            StatusCode::EXPECTATION_FAILED,
            "COLLECT",
            "02",
            "DataFileIsMissingOrInaccessible",
        ));
    }
    let recipient = mex_headers
        .get("mex-to")
        .cloned()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let behaviour = inner
        .behaviours
        .get(&recipient)
        .cloned()
        .unwrap_or(Behaviour::Accept);
    if behaviour == Behaviour::Dead {
        return Action::Reply(error_response(
            StatusCode::EXPECTATION_FAILED,
            "SEND",
            "12",
            "Unregistered to address",
        ));
    }
    if let Behaviour::Fail {
        times,
        status,
        retry_after,
    } = &behaviour
        && *times > 0
    {
        let response = failure_response(*status, retry_after.as_deref());
        inner.behaviours.insert(
            recipient,
            Behaviour::Fail {
                times: times - 1,
                status: *status,
                retry_after: retry_after.clone(),
            },
        );
        return Action::Reply(response);
    }
    let mut chunks = vec![None; total];
    chunks[0] = Some(request.body.clone());
    let mut mex_headers = mex_headers;
    mex_headers.insert("mex-to".to_owned(), recipient);
    let message = StoredMessage {
        message_id: new_message_id(),
        message_type: "DATA".to_owned(),
        status: if total > 1 { "uploading" } else { "accepted" }.to_owned(),
        sender: request.mailbox.clone(),
        mex_headers,
        content_encoding: encoding,
        chunks,
    };
    let id = message.message_id.clone();
    match behaviour {
        Behaviour::Slow(delay) => Action::SlowAccept(delay, message),
        Behaviour::Hang => Action::Hang,
        Behaviour::StoreThenHang => {
            inner.messages.push(message);
            Action::Hang
        }
        Behaviour::StoreThenDrop => {
            inner.messages.push(message);
            Action::Drop
        }
        _ => {
            inner.messages.push(message);
            Action::Reply(json_response(
                StatusCode::ACCEPTED,
                &json!({ "message_id": id }),
            ))
        }
    }
}

fn chunk(inner: &mut Inner, request: &Call, id: &str, number: &str) -> Response<Full<Bytes>> {
    let Some(position) = inner
        .messages
        .iter()
        .position(|m| m.message_id.eq_ignore_ascii_case(id) && m.sender == request.mailbox)
    else {
        return error_response(
            StatusCode::NOT_FOUND,
            "SEND",
            "20",
            "Message does not exist",
        );
    };
    let total = inner.messages[position].total_chunks();
    let range = header_text(&request.headers, "mex-chunk-range").and_then(|r| chunk_range(&r));
    let number: usize = number.parse().unwrap_or(0);
    if range != Some((number, total)) || number < 2 {
        return error_response(
            StatusCode::EXPECTATION_FAILED,
            "SEND",
            "",
            "InvalidHeaderChunks",
        );
    }
    if inner.messages[position].status != "uploading" {
        return error_response(StatusCode::LOCKED, "SEND", "", "Locked");
    }
    if header_text(&request.headers, "content-encoding")
        != inner.messages[position].content_encoding
    {
        return error_response(
            StatusCode::EXPECTATION_FAILED,
            "SEND",
            "",
            "cannot change content encoding",
        );
    }
    let recipient = inner.messages[position].to().to_owned();
    if let Some(Behaviour::FailChunks { times, status }) = inner.behaviours.get(&recipient).cloned()
        && times > 0
    {
        inner.behaviours.insert(
            recipient,
            Behaviour::FailChunks {
                times: times - 1,
                status,
            },
        );
        return failure_response(status, None);
    }
    let message = &mut inner.messages[position];
    message.chunks[number - 1] = Some(request.body.clone());
    if message.chunks.iter().all(Option::is_some) {
        message.status = "accepted".to_owned();
    }
    json_response(StatusCode::ACCEPTED, &Value::Null)
}

fn track_by_local_id(inner: &Inner, request: &Call, local_id: &str) -> Response<Full<Bytes>> {
    let matches: Vec<&StoredMessage> = inner
        .messages
        .iter()
        .filter(|m| m.sender == request.mailbox && m.mex_header("mex-localid") == Some(local_id))
        .collect();
    match matches.as_slice() {
        [] => error_response(StatusCode::NOT_FOUND, "", "", "Not Found"),
        [message] => json_response(
            StatusCode::OK,
            &json!({
                "dtsId": message.message_id,
                "messageId": message.message_id,
                "localId": message.mex_header("mex-localid"),
                "status": capitalised(&message.status),
                "recipient": message.to(),
                "workflowId": message.mex_header("mex-workflowid"),
                "messageType": capitalised(&message.message_type),
                "version": "1.0",
            }),
        ),
        _ => error_response(StatusCode::MULTIPLE_CHOICES, "", "", "Multiple Choices"),
    }
}

fn track_by_id(inner: &Inner, request: &Call) -> Response<Full<Bytes>> {
    let id = request.query.get("messageID").cloned().unwrap_or_default();
    let Some(message) = inner
        .messages
        .iter()
        .find(|m| m.message_id.eq_ignore_ascii_case(&id) && m.sender == request.mailbox)
    else {
        return error_response(StatusCode::NOT_FOUND, "", "", "Not Found");
    };
    json_response(
        StatusCode::OK,
        &json!({
            "message_id": message.message_id,
            "local_id": message.mex_header("mex-localid"),
            "workflow_id": message.mex_header("mex-workflowid"),
            "recipient": message.to(),
            "status": message.status,
            "status_success": true,
        }),
    )
}
