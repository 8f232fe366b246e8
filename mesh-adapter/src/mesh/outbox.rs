//! Sending: `POST /messageexchange/{mb}/outbox`, chunked above the configured size.
//!
//! The first POST is never retried here: a lost answer may still have created the message,
//! so a failure there is returned (`Ambiguous` when the request may have been written) and
//! the caller reconciles through tracking. Chunk POSTs 2..n go to a message id we already hold
//! and are retried on transient failures, like mesh-client does.

use std::io::Write;
use std::ops::Range;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::{HeaderName, HeaderValue, Method, header};
use http_body_util::Full;
use serde_json::Value;
use tracing::{debug, warn};

use super::client::{MeshClient, encode_component};
use super::headers::{
    MEX_CHUNK_RANGE, MEX_CONTENT_TYPE, MEX_FILE_NAME, MEX_FROM, MEX_LOCAL_ID, MEX_PARTNER_ID,
    MEX_SUBJECT, MEX_TO, MEX_WORKFLOW_ID, mex_value,
};
use crate::error::DeliveryError;

/// One message to send. Optional headers are omitted when `None` or empty.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Recipient mailbox (`mex-To`).
    pub to: String,
    /// Workflow id (`mex-WorkflowID`).
    pub workflow_id: String,
    /// Our reference, stable across attempts (`mex-LocalID`); used to reconcile.
    pub local_id: String,
    /// `mex-PartnerID`.
    pub partner_id: Option<String>,
    /// `mex-Subject` (never patient data).
    pub subject: Option<String>,
    /// `mex-FileName` (never patient data).
    pub file_name: Option<String>,
    /// `mex-Content-Type`: the payload's type for the recipient.
    pub content_type: Option<String>,
    /// The payload, sent unchanged.
    pub payload: Bytes,
}

impl std::fmt::Debug for OutboundMessage {
    /// Prints the addressing headers and the payload size, never the payload.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundMessage")
            .field("to", &self.to)
            .field("workflow_id", &self.workflow_id)
            .field("local_id", &self.local_id)
            .field("partner_id", &self.partner_id)
            .field("subject", &self.subject)
            .field("file_name", &self.file_name)
            .field("content_type", &self.content_type)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

// === OutboundMessage ===

impl OutboundMessage {
    /// Returns a message with the required fields and no optional headers.
    pub fn new(
        to: impl Into<String>,
        workflow_id: impl Into<String>,
        local_id: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Self {
        Self {
            to: to.into(),
            workflow_id: workflow_id.into(),
            local_id: local_id.into(),
            partner_id: None,
            subject: None,
            file_name: None,
            content_type: None,
            payload: payload.into(),
        }
    }

    /// Returns the validated `mex-*` headers for the first POST.
    fn mex_headers(&self, from: &str) -> Result<Vec<(HeaderName, HeaderValue)>, DeliveryError> {
        let mut headers = vec![
            (MEX_FROM, Some(from)),
            (MEX_TO, Some(self.to.as_str())),
            (MEX_WORKFLOW_ID, Some(self.workflow_id.as_str())),
            (MEX_LOCAL_ID, Some(self.local_id.as_str())),
            (MEX_PARTNER_ID, self.partner_id.as_deref()),
            (MEX_SUBJECT, self.subject.as_deref()),
            (MEX_FILE_NAME, self.file_name.as_deref()),
            (MEX_CONTENT_TYPE, self.content_type.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.filter(|v| !v.is_empty()).map(|v| (name, v)))
        .map(|(name, value)| Ok((HeaderName::from_static(name), mex_value(name, value)?)))
        .collect::<Result<Vec<_>, DeliveryError>>()?;
        headers.push((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        ));
        Ok(headers)
    }
}

// === MeshClient: outbox ===

impl MeshClient {
    /// Sends a message and returns its MESH message id.
    ///
    /// Payloads longer than the configured chunk size are split (uncompressed) into parts,
    /// each gzipped on its own and sent with `Content-Encoding: gzip`.
    pub async fn send(&self, message: &OutboundMessage) -> Result<String, DeliveryError> {
        if message.local_id.is_empty() {
            return Err(DeliveryError::permanent(
                "INVALID_HEADER",
                "mex-localid is required to reconcile sends; not sent",
            ));
        }
        let headers = message.mex_headers(self.mailbox())?;
        let ranges = chunk_ranges(message.payload.len(), self.chunk_size());
        let total = ranges.len();
        if total == 1 {
            return self
                .post_first(headers, message.payload.clone(), None)
                .await;
        }
        debug!(chunks = total, local_id = %message.local_id, "mesh send chunked");
        let mut parts = ranges.into_iter().map(|range| message.payload.slice(range));
        let first = match parts.next() {
            Some(part) => gzip(part).await?,
            None => return Err(DeliveryError::permanent("INVALID_REQUEST", "empty payload")),
        };
        let message_id = self.post_first(headers, first, Some(total)).await?;
        for (index, part) in parts.enumerate() {
            let number = index + 2;
            let body = gzip(part).await?;
            self.post_chunk(&message_id, number, total, body)
                .await
                .inspect_err(|failure| {
                    warn!(
                        message_id = %message_id,
                        chunk = number,
                        chunks = total,
                        code = failure.code(),
                        "mesh chunk upload failed; message left incomplete"
                    );
                })?;
        }
        Ok(message_id)
    }

    /// POSTs the message or its first chunk (never retried).
    async fn post_first(
        &self,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        chunks: Option<usize>,
    ) -> Result<String, DeliveryError> {
        let mut request = self.request(Method::POST, &self.mailbox_path("/outbox"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(total) = chunks {
            request = request
                .header(header::CONTENT_ENCODING, "gzip")
                .header(MEX_CHUNK_RANGE, format!("1:{total}"));
        }
        let response = self.call(request.body(Full::new(body))).await?;
        message_id_from(&response.body).ok_or_else(|| {
            DeliveryError::ambiguous(
                "INVALID_RESPONSE",
                format!(
                    "http {} without a message id; the message may exist",
                    response.status.as_u16()
                ),
            )
        })
    }

    /// POSTs chunk `number` of `total`, retrying transient failures.
    async fn post_chunk(
        &self,
        message_id: &str,
        number: usize,
        total: usize,
        body: Bytes,
    ) -> Result<(), DeliveryError> {
        let path = self.mailbox_path(&format!(
            "/outbox/{}/{number}",
            encode_component(message_id)
        ));
        let mut retry = 0;
        loop {
            let request = self
                .request(Method::POST, &path)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_ENCODING, "gzip")
                .header(MEX_CHUNK_RANGE, format!("{number}:{total}"))
                .body(Full::new(body.clone()));
            match self.call(request).await {
                Ok(_) => return Ok(()),
                Err(failure) if failure.is_transient() && retry < self.chunk_retries() => {
                    retry += 1;
                    let delay = self
                        .chunk_retry_policy()
                        .delay(retry, failure.retry_after());
                    debug!(
                        chunk = number,
                        retry,
                        code = failure.code(),
                        ?delay,
                        "mesh chunk retry"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(failure) => return Err(failure),
            }
        }
    }
}

/// Splits `len` bytes into consecutive ranges of at most `chunk_size` (one range, possibly
/// empty, when it fits).
pub fn chunk_ranges(len: usize, chunk_size: usize) -> Vec<Range<usize>> {
    let chunk_size = chunk_size.max(1);
    if len <= chunk_size {
        return std::iter::once(0..len).collect();
    }
    (0..len)
        .step_by(chunk_size)
        .map(|start| start..(start + chunk_size).min(len))
        .collect()
}

/// Gzips one part off the async runtime.
async fn gzip(part: Bytes) -> Result<Bytes, DeliveryError> {
    let compress = move || -> std::io::Result<Vec<u8>> {
        let mut encoder = GzEncoder::new(
            Vec::with_capacity(part.len() / 2 + 64),
            Compression::default(),
        );
        encoder.write_all(&part)?;
        encoder.finish()
    };
    match tokio::task::spawn_blocking(compress).await {
        Ok(Ok(bytes)) => Ok(Bytes::from(bytes)),
        Ok(Err(e)) => Err(DeliveryError::transient(
            "GZIP",
            format!("compression failed: {e}"),
        )),
        Err(e) => Err(DeliveryError::transient(
            "GZIP",
            format!("compression task failed: {e}"),
        )),
    }
}

/// Reads the message id from a v2 (`message_id`) or v1 (`messageID`) send answer.
pub fn message_id_from(body: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(body).ok()?;
    ["message_id", "messageID", "messageId"]
        .iter()
        .find_map(|key| json.get(*key).and_then(Value::as_str))
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn chunk_ranges_cover_the_payload_in_order() {
        assert_eq!(
            chunk_ranges(0, 10),
            std::iter::once(0..0).collect::<Vec<_>>()
        );
        assert_eq!(
            chunk_ranges(10, 10),
            std::iter::once(0..10).collect::<Vec<_>>()
        );
        assert_eq!(chunk_ranges(11, 10), vec![0..10, 10..11]);
        assert_eq!(chunk_ranges(30, 10), vec![0..10, 10..20, 20..30]);
        assert_eq!(chunk_ranges(3, 0), vec![0..1, 1..2, 2..3]);
        for (len, size) in [(1000, 7), (1, 1), (75, 74), (999_999, 65_536)] {
            let ranges = chunk_ranges(len, size);
            assert_eq!(ranges.first().unwrap().start, 0);
            assert_eq!(ranges.last().unwrap().end, len);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            assert!(ranges.iter().all(|r| r.len() <= size && !r.is_empty()));
        }
    }

    #[tokio::test]
    async fn each_part_gzips_on_its_own() {
        let payload = Bytes::from((0..5000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let mut restored = Vec::new();
        for range in chunk_ranges(payload.len(), 1024) {
            let zipped = gzip(payload.slice(range)).await.unwrap();
            let mut part = Vec::new();
            flate2::read::GzDecoder::new(&zipped[..])
                .read_to_end(&mut part)
                .unwrap();
            restored.extend(part);
        }
        assert_eq!(restored, payload);
    }

    #[test]
    fn reads_both_answer_versions() {
        assert_eq!(
            message_id_from(br#"{"message_id":"A1"}"#).as_deref(),
            Some("A1")
        );
        assert_eq!(
            message_id_from(br#"{"messageID":"B2"}"#).as_deref(),
            Some("B2")
        );
        assert_eq!(message_id_from(b"null"), None);
        assert_eq!(message_id_from(br#"{"message_id":""}"#), None);
    }

    #[test]
    fn headers_are_validated_and_optional_ones_omitted() {
        let mut message = OutboundMessage::new("X26ABC2", "WF", "local-1", "payload");
        message.subject = Some(String::new());
        let headers = message.mex_headers("SVC01").unwrap();
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "mex-from",
                "mex-to",
                "mex-workflowid",
                "mex-localid",
                "content-type"
            ]
        );
        message.partner_id = Some("bad\nvalue".into());
        let error = message.mex_headers("SVC01").unwrap_err();
        assert_eq!(error.code(), "INVALID_HEADER");
        assert!(error.reason().contains("mex-partnerid"));
    }

    #[test]
    fn debug_hides_the_payload() {
        let message = OutboundMessage::new("X", "WF", "L", "NHS 9434765919");
        let printed = format!("{message:?}");
        assert!(!printed.contains("9434765919"));
        assert!(printed.contains("payload_len: 14"));
    }
}
