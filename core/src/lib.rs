//! NEMS core: subscriptions, publishing, matching and the delivery ledger, served over
//! gRPC on an embedded redb store.
//!
//! # Layout
//! - `refdata/`: readers for the official reference files (NHSPD, NSPL, ONSPD, epraccur,
//!   the GSS→ODS lookups) and the demographics CSV.

pub mod refdata;
