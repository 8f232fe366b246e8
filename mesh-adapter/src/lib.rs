//! NEMS delivery adapter: streams leased deliveries from core, hands each to a sink, and
//! reports every outcome back to core.
//!
//! # Layout
//! - `sink/`: the [`sink::Sink`] interface and its two implementations: the folder sink (the
//!   embedded default, one file per delivery) and the MESH sink.
//! - `mesh/`: the MESH API client (NHSMESH auth, outbox with chunking, tracking, inbox reports).
//! - `retry.rs`: backoff policy; `error.rs`: the delivery error classes.
//! - `reports.rs`: polls MESH non-delivery reports and forwards them to core.

pub mod error;
pub mod mesh;
pub mod reports;
pub mod retry;
pub mod sink;
