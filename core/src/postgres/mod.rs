//! The PostgreSQL engine behind the storage seam, chosen by `core.database_url`: any
//! number of cores share one database (leases with `FOR UPDATE SKIP LOCKED`, wake-ups
//! with `LISTEN`/`NOTIFY` and a polling fallback).
//!
//! # Layout
//! - `migrations/NNNN_name.sql`: the versioned schema, embedded in the binary.
//! - `migrator.rs`: applies what a database lacks, once, whichever core gets there first.
//! - `backend.rs`: `PgBackend`, the seam's `Backend`, and why matching sees exactly what
//!   was committed before an event.
//! - `view.rs`: the matching and acceptance views over a transaction; demographics.
//! - `subscriptions.rs`, `ledger.rs`, `refdata.rs`, `audit.rs` (and the directory): SQL per
//!   area.
//! - `error.rs`: driver errors as the seam's error.

mod audit;
mod backend;
mod error;
mod group;
mod ledger;
mod migrator;
mod refdata;
mod subscriptions;
#[cfg(test)]
mod tests;
mod tls;
mod view;

pub(crate) use backend::PgBackend;

/// The advisory lock that orders acceptances against subscription creates (see
/// `backend.rs`): creates hold it shared until they commit, an acceptance takes it
/// exclusively for the instant it reads its acceptance time.
pub(crate) const ORDER_LOCK: i64 = 0x6e65_6d73_6f72_6472;

/// A 128-bit id as uuid text (`8-4-4-4-12` hex).
pub(crate) fn uuid_text(id: u128) -> String {
    let h = format!("{id:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parses uuid text (with or without dashes) into the 128-bit id.
pub(crate) fn parse_uuid(text: &str) -> Option<u128> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    crate::backend::keys::parse_id(&hex)
}

/// Statements through each pooled connection's statement cache: one round trip per
/// statement (a `&str` given to the driver is prepared again every time, a second one).
pub(crate) trait Db: deadpool_postgres::GenericClient {
    /// Rows of `sql`.
    async fn fetch(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query(&statement, params).await
    }

    /// The one row of `sql`.
    async fn fetch_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_one(&statement, params).await
    }

    /// The row of `sql`, if any.
    async fn fetch_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_opt(&statement, params).await
    }

    /// Runs `sql`: the rows it changed.
    async fn run(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.execute(&statement, params).await
    }
}

impl<C: deadpool_postgres::GenericClient> Db for C {}

pub use migrator::{MIGRATIONS, Migrated, Migration, SchemaError, migrate, migrate_with};

/// Throwaway clusters for core's own PostgreSQL tests: the e2e harness's (one source).
#[cfg(test)]
#[allow(unreachable_pub, dead_code, reason = "shared with the e2e harness")]
#[path = "../../../tests/src/postgres.rs"]
pub(crate) mod cluster;

/// The harness's missing-tool rule, for `cluster`: a failure under `NEMS_REQUIRE_TOOLS=1`,
/// else a skip notice.
#[cfg(test)]
pub(crate) mod tools {
    pub(crate) fn missing_tool(test: &str, what: &str) {
        #[allow(
            clippy::disallowed_methods,
            reason = "test harness reads its own settings"
        )]
        let required = std::env::var_os("NEMS_REQUIRE_TOOLS").is_some();
        assert!(!required, "{test}: {what}");
        #[allow(clippy::print_stderr, reason = "a skip notice is the point")]
        {
            eprintln!("skipping {test}: {what}");
        }
    }
}
