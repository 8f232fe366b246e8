//! End-to-end tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod foundation;

mod delivery_bench;
mod delivery_faults;
mod delivery_operator;
mod delivery_sandbox;
mod delivery_support;

mod mesh_faults;
mod mesh_sandbox_interop;
mod mesh_tls;
