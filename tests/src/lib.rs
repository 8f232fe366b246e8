//! End-to-end test harness for nems.
//!
//! # Layout
//! - `stack.rs`: [`stack::TestStack`]: core, edge and adapter in-process on port 0.
//! - `http.rs`: an HTTP client; `spine.rs`: callers, JWTs, NEMS headers, Subscriptions.
//! - `eventually.rs`: bounded polling of explicit conditions; `outbox.rs`: the folder sink.
//! - `tools.rs`: finds the pinned Python venv (mesh-sandbox, mesh-client, fhir.resources).
//! - `mesh_fake.rs`: an in-process MESH server with scripted faults and a request log.
//! - `mesh_sandbox.rs`: the real local `mesh-sandbox` as a child process.
//! - `pds_fake.rs`: an in-process PDS FHIR API (`GET /Patient/{nhs}`) with scripted answers.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test harness")]

pub mod bench;
pub mod browser;
pub mod events;
pub mod eventually;
pub mod http;
pub mod mesh_fake;
pub mod mesh_sandbox;
pub mod outbox;
pub mod pds_fake;
pub mod pki;
pub mod postgres;
pub mod spine;
pub mod stack;
pub mod tools;
