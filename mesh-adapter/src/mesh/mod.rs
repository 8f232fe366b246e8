//! The MESH API client (`shared/spec/mesh.md`).
//!
//! # Layout
//! - `config.rs`: [`MeshClientConfig`], [`TlsConfig`] and the redacting [`Secret`].
//! - `auth.rs`: the `NHSMESH` token (pure; tested with the spec's test vector).
//! - `client.rs`: [`MeshClient`]: hyper-util pooled client over hyper-rustls (ring), fresh token
//!   and `Accept: application/vnd.mesh.v2+json` on every request, timeouts, handshake.
//! - `outbox.rs`: [`OutboundMessage`] and `send` (chunking with per-part gzip).
//! - `tracking.rs`: [`Tracked`]; tracking by message id and by `mex-LocalID`.
//! - `inbox.rs`: listing, headers, download and acknowledgement of our own inbox.
//! - `headers.rs`: `mex-*` names and value checks; `tls.rs`: the rustls configuration.
//!
//! Every operation returns [`crate::error::DeliveryError`] on failure, already classified.

pub mod auth;
mod client;
mod config;
pub mod headers;
mod inbox;
mod outbox;
mod tls;
mod tracking;

pub use client::MeshClient;
pub use config::{ConfigError, DEFAULT_CHUNK_SIZE, MeshClientConfig, Secret, TlsConfig};
pub use inbox::{Downloaded, InboxMessage};
pub use outbox::{OutboundMessage, chunk_ranges};
pub use tracking::{LOCAL_ID_NOT_UNIQUE, LOCAL_ID_ROUTE_UNCONFIRMED, Tracked, TrackedState};

/// The pure parsers of MESH answers, for the fuzz targets (`fuzz-targets/`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::inbox::{chunk_total, decoded, inbox_page, path_of};
    pub use super::outbox::message_id_from;
}
