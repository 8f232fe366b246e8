//! The `nems` launcher as a library: configuration loading, logging, running the services
//! together or one at a time, imports and operator commands.
//!
//! # Layout
//! - `config.rs`: the TOML file and environment overrides; `logging.rs`: tracing.
//! - `run.rs`: `up`, `core`, `edge`, `mesh-adapter`; `embedded.rs`: `up`'s defaults.
//! - `import.rs`: streaming imports with progress; `admin.rs`: operator commands;
//!   `remote.rs`: reaching core's operator API, and one-line errors when it does not answer.
//! - `ops.rs`: the `/metrics`, `/livez`, `/readyz` endpoint.

pub mod admin;
pub mod config;
pub mod console;
pub mod effective;
pub mod embedded;
pub mod import;
pub mod logging;
pub mod ops;
pub mod remote;
pub mod run;
