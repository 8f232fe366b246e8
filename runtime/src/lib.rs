//! What every nems process shares besides the gRPC contract (`nems-proto`): the operations
//! registry behind `/metrics` and `/readyz`, TLS settings for servers and clients, and the
//! configuration helpers (human durations, TOML errors that never quote a secret).
//!
//! # Layout
//! - `ops.rs`: the process's metrics registry and readiness checks.
//! - `tls.rs`: `[*.tls]` sections read into rustls and tonic settings.
//! - `config.rs`: durations, secrets as "set"/"not set", TOML error descriptions.

pub mod config;
pub mod ops;
pub mod tls;
