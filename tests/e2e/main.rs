//! End-to-end tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod foundation;

mod generic_demographics;
mod generic_refdata;
mod generic_rules;
mod generic_support;

mod mesh_faults;
mod mesh_sandbox_interop;
mod mesh_tls;
