//! NEMS core: subscriptions, publishing, matching and the delivery ledger, served over
//! gRPC on an embedded redb store.
//!
//! # Layout
//! - `server.rs`: [`run`] / [`Core`]: open the store, serve the service and operator APIs
//!   (with health and reflection), shut down gracefully.
//! - `config.rs`: the `[core]` configuration section.
//! - `domain/`: every NEMS rule as pure functions (criteria grammar, subscription and event
//!   validation, event catalogue, NHS numbers, FHIR dates).
//! - `directory/`: the Spine directory and its permission checks.
//! - `trust/`: who a gRPC caller is (roles from its certificate or listener, forwarded
//!   Spine certificates verified again) and the gate refusing calls a role does not open.
//! - `service/`: thin gRPC services over the domain and the store.
//! - `accept.rs`: accepting an event, the one use case behind publishing and an operator's
//!   injected delivery (the acceptance transaction and every chore after its commit).
//! - `audit.rs`: the bounded, aggregating queue of detached audit records (reads and
//!   refusals).
//! - `backend/`: the storage seam: the `Backend` trait the services call, the values that
//!   cross it, and the views shared code (matching, the acceptance body) runs on.
//! - `store/`: the redb engine: synchronous code, one writer thread with group commit.
//! - `postgres/`: the PostgreSQL engine being built (issue 13): schema and migrator.
//! - `refdata/`: readers for the official reference files and the demographics CSV.
//! - `bench.rs`: hidden benchmarking hooks over crate-private matching (not an API).

mod accept;
mod audit;
pub mod backend;
#[doc(hidden)]
pub mod bench;
pub mod config;
pub mod directory;
pub(crate) mod dispatch;
pub mod domain;
mod matching;
mod metrics;
pub mod pds;
pub mod postgres;
pub mod refdata;
mod server;
mod service;
mod state;
pub mod store;
pub mod trust;

pub use config::{CoreConfig, ImportLimits};
pub use server::{Core, CoreError, CoreListeners, run};
