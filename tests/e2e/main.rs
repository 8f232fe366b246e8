//! End-to-end tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod abuse;
mod console;
mod core_failover;
mod crash;
mod directory_runtime;
mod disk_full;
mod edge_core_faults;
mod foundation;
mod ops;
mod ops_visibility;

mod generic_demographics;
mod generic_pds_lookup;
mod generic_refdata;
mod generic_rules;
mod generic_support;
mod ha_postgres;
mod ha_standby;

mod delivery_bench;
mod delivery_faults;
mod delivery_operator;
mod delivery_outage;
mod delivery_recovery;
mod delivery_restart;
mod delivery_sandbox;
mod delivery_support;

mod mesh_faults;
mod mesh_sandbox_interop;
mod mesh_tls;

mod security;
mod security_abuse;
mod security_roles;

mod postgres_schema;

mod publish_common;
mod publish_fixtures;
mod publish_grpc;
mod publish_ledger;
mod publish_matching;
mod publish_outcome;
mod publish_permissions;
mod publish_transport;
mod publish_validation;

mod subscription_api;
mod subscription_errors;
mod subscription_grpc;
mod subscription_oracle;
