//! The PostgreSQL backend (issue 13), being built: today its schema and the migrator that
//! core runs at start. It is not selectable yet; `nems up` and `nems core` run on redb.
//!
//! # Layout
//! - `migrations/NNNN_name.sql`: the versioned schema, embedded in the binary.
//! - `migrator.rs`: applies what a database lacks, once, whichever core gets there first.

mod migrator;

pub use migrator::{MIGRATIONS, Migrated, Migration, SchemaError, migrate, migrate_with};
