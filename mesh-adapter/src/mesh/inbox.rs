//! Our own inbox: list message ids (v2 pagination through `links.next`), read a message's
//! `mex-*` headers, download it (all chunks) and acknowledge it.

use std::collections::BTreeMap;
use std::io::Read;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, header};
use http_body_util::Full;
use serde_json::Value;

use super::client::{MeshClient, encode_component};
use super::headers::{MEX_CHUNK_RANGE, MEX_MESSAGE_TYPE};
use crate::error::DeliveryError;

/// The most inbox pages followed in one listing (500 ids each by default).
const MAX_PAGES: usize = 100;

/// The `mex-*` headers of an inbox message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxMessage {
    /// The message id.
    pub message_id: String,
    /// Every `mex-*` header, names lower-cased (with the `mex-` prefix).
    pub headers: BTreeMap<String, String>,
}

/// A downloaded message.
#[derive(Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Its headers (from the first chunk).
    pub message: InboxMessage,
    /// The payload, all chunks joined and decompressed.
    pub payload: Bytes,
}

impl std::fmt::Debug for Downloaded {
    /// Prints the headers and the payload size, never the payload.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloaded")
            .field("message", &self.message)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

// === InboxMessage ===

impl InboxMessage {
    /// Collects the `mex-*` headers of a response.
    pub fn from_headers(message_id: &str, headers: &HeaderMap) -> Self {
        let headers = headers
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("mex-"))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        Self {
            message_id: message_id.to_owned(),
            headers,
        }
    }

    /// Returns a header by name (case-insensitive, e.g. `mex-LocalID`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Returns `mex-MessageType` (`DATA` or `REPORT`).
    pub fn message_type(&self) -> Option<&str> {
        self.header(MEX_MESSAGE_TYPE)
    }

    /// Returns true for a MESH REPORT (an asynchronous error about a message we sent).
    pub fn is_report(&self) -> bool {
        self.message_type()
            .is_some_and(|kind| kind.eq_ignore_ascii_case("REPORT"))
    }
}

// === MeshClient: inbox ===

impl MeshClient {
    /// Lists the ids of all messages waiting in our inbox, following `links.next`.
    pub async fn list_inbox(&self) -> Result<Vec<String>, DeliveryError> {
        let mut ids = Vec::new();
        let mut path = self.mailbox_path("/inbox");
        for _ in 0..MAX_PAGES {
            let request = self.request(Method::GET, &path).body(Full::default());
            let response = self.call(request).await?;
            let (page_ids, next) = inbox_page(&response.body)?;
            ids.extend(page_ids);
            match next {
                Some(next) if next != path => path = next,
                _ => return Ok(ids),
            }
        }
        Ok(ids)
    }

    /// Reads a message's `mex-*` headers without downloading it (`HEAD`).
    pub async fn message_headers(&self, message_id: &str) -> Result<InboxMessage, DeliveryError> {
        let path = self.mailbox_path(&format!("/inbox/{}", encode_component(message_id)));
        let request = self.request(Method::HEAD, &path).body(Full::default());
        let response = self.call(request).await?;
        Ok(InboxMessage::from_headers(message_id, &response.headers))
    }

    /// Downloads a message with all its chunks (does not acknowledge it).
    pub async fn download(&self, message_id: &str) -> Result<Downloaded, DeliveryError> {
        let base = self.mailbox_path(&format!("/inbox/{}", encode_component(message_id)));
        let request = self.request(Method::GET, &base).body(Full::default());
        let first = self.call(request).await?;
        let message = InboxMessage::from_headers(message_id, &first.headers);
        let total = chunk_total(&message);
        let mut payload = BytesMut::from(&decoded(&first.headers, first.body)?[..]);
        for number in 2..=total {
            let request = self
                .request(Method::GET, &format!("{base}/{number}"))
                .body(Full::default());
            let chunk = self.call(request).await?;
            payload.extend_from_slice(&decoded(&chunk.headers, chunk.body)?);
        }
        Ok(Downloaded {
            message,
            payload: payload.freeze(),
        })
    }

    /// Acknowledges a message, which removes it from the inbox.
    pub async fn acknowledge(&self, message_id: &str) -> Result<(), DeliveryError> {
        let path = self.mailbox_path(&format!(
            "/inbox/{}/status/acknowledged",
            encode_component(message_id)
        ));
        let request = self.request(Method::PUT, &path).body(Full::default());
        self.call(request).await.map(|_| ())
    }
}

/// Reads one inbox listing page: its message ids and the path of `links.next`, if any.
pub fn inbox_page(body: &[u8]) -> Result<(Vec<String>, Option<String>), DeliveryError> {
    let page: Value = serde_json::from_slice(body)
        .map_err(|_| DeliveryError::transient("INVALID_RESPONSE", "inbox listing is not json"))?;
    let messages = page
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            DeliveryError::transient("INVALID_RESPONSE", "inbox listing without messages")
        })?;
    let ids = messages
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let next = page
        .pointer("/links/next")
        .and_then(Value::as_str)
        .and_then(path_of);
    Ok((ids, next))
}

/// The number of chunks a downloaded message has, from `mex-Chunk-Range` (`1:N`); 1 without.
pub fn chunk_total(message: &InboxMessage) -> usize {
    message
        .header(MEX_CHUNK_RANGE)
        .and_then(|range| range.split_once(':'))
        .and_then(|(_, total)| total.trim().parse::<usize>().ok())
        .unwrap_or(1)
}

/// Returns the path and query of a `links.next` value (relative or absolute).
pub fn path_of(link: &str) -> Option<String> {
    let rest = link
        .strip_prefix("https://")
        .or_else(|| link.strip_prefix("http://"));
    let path = match rest {
        Some(after_scheme) => &after_scheme[after_scheme.find('/')?..],
        None => link,
    };
    path.starts_with('/').then(|| path.to_owned())
}

/// Undoes `Content-Encoding: gzip` when the server sent the stored compressed bytes.
pub fn decoded(headers: &HeaderMap, body: Bytes) -> Result<Bytes, DeliveryError> {
    let gzipped = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzipped {
        return Ok(body);
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut plain)
        .map_err(|_| DeliveryError::transient("INVALID_RESPONSE", "gzip chunk does not decode"))?;
    Ok(Bytes::from(plain))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn next_links_become_paths() {
        assert_eq!(
            path_of("/messageexchange/MB/inbox?continue_from=abc").as_deref(),
            Some("/messageexchange/MB/inbox?continue_from=abc")
        );
        assert_eq!(
            path_of("https://mesh.example/messageexchange/MB/inbox?x=1").as_deref(),
            Some("/messageexchange/MB/inbox?x=1")
        );
        assert_eq!(path_of("https://mesh.example"), None);
        assert_eq!(path_of("relative"), None);
    }

    #[test]
    fn collects_mex_headers_case_insensitively() {
        let mut headers = HeaderMap::new();
        headers.insert("mex-messagetype", HeaderValue::from_static("REPORT"));
        headers.insert("Mex-LocalID", HeaderValue::from_static("L1"));
        headers.insert("content-length", HeaderValue::from_static("0"));
        let message = InboxMessage::from_headers("M1", &headers);
        assert!(message.is_report());
        assert_eq!(message.header("mex-LocalID"), Some("L1"));
        assert_eq!(message.headers.len(), 2);
    }
}
