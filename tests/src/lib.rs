//! End-to-end test harness for nems.
//!
//! # Layout
//! - `tools.rs`: finds the pinned Python venv (mesh-sandbox, mesh-client, fhir.resources).
//! - `mesh_fake.rs`: an in-process MESH server with scripted faults and a request log.
//! - `mesh_sandbox.rs`: the real local `mesh-sandbox` as a child process.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test harness")]

pub mod mesh_fake;
pub mod mesh_sandbox;
pub mod tools;
