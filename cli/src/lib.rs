//! The `nems` launcher as a library: configuration loading, logging, running the services
//! together or one at a time, imports and operator commands.
//!
//! # Layout
//! - `config.rs`: the TOML file and environment overrides; `logging.rs`: tracing.
//! - `run.rs`: `up`, `core`, `edge`, `mesh-adapter`; `embedded.rs`: `up`'s defaults.
//! - `import.rs`: streaming imports with progress; `admin.rs`: operator commands.
//! - `ops.rs`: the `/metrics`, `/livez`, `/readyz` endpoint.

pub mod admin;
pub mod config;
pub mod embedded;
pub mod import;
pub mod logging;
pub mod ops;
pub mod run;
