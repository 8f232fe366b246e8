//! NEMS edge: the FHIR STU3 HTTP API in front of core.
//!
//! # Layout
//! - `server.rs`: [`run`]: the hyper accept loop (connection limit, header timeout,
//!   graceful shutdown) behind tower-http layers (request id, tracing, timeout, body limit).
//! - `router.rs`: exact NEMS paths → handlers; `handlers/`: metadata, subscriptions, publish.
//! - `negotiate.rs`: media types; `headers.rs` and `jwt.rs`: Spine headers and the JWT.
//! - `error.rs`: the Spine error table; `fhir/`: OperationOutcome and CapabilityStatement.
//! - `translate/`: FHIR text ⇄ protobuf (Subscription; the event Bundle's structure).
//! - `core_client.rs`: the gRPC channel to core.
//!
//! The edge holds no state and applies no NEMS business rule: it checks HTTP concerns
//! (headers, JWT, media types, sizes), turns FHIR text into protobuf, calls core over gRPC,
//! and turns core's answers (and Spine error codes) back into FHIR.

pub mod config;
pub mod core_client;
pub mod error;
pub mod fhir;
pub mod grpc;
pub mod handlers;
pub mod headers;
pub mod jwt;
pub mod metrics;
pub mod negotiate;
pub mod ratelimit;
pub mod router;
pub mod server;
pub mod tls;
pub mod translate;

pub use config::EdgeConfig;
pub use server::{run, run_with_grpc};
