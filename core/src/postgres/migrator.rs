//! Versioned, embedded migrations, applied by core itself.
//!
//! [`migrate`] runs in one transaction that first takes a transaction-scoped advisory lock:
//! cores starting together on one database queue on it, the first applies what is missing
//! and the others find it applied. Each applied migration is recorded with a checksum of
//! its text; a database whose record disagrees with the binary (a migration edited after it
//! was applied, or a database from a newer nems) is refused, naming the versions, rather
//! than run on a schema nobody knows.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// One migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version (1, 2, …): applied in order, each once.
    pub version: i32,
    /// Its name, as in the file name.
    pub name: &'static str,
    /// Its SQL.
    pub sql: &'static str,
}

impl Migration {
    /// The checksum recorded when it is applied (SHA-256 of the text, hex).
    pub fn checksum(&self) -> String {
        let digest = Sha256::digest(self.sql.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Every migration this binary knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "uncontended_counters",
        sql: include_str!("migrations/0002_uncontended_counters.sql"),
    },
    Migration {
        version: 3,
        name: "console_indexes",
        sql: include_str!("migrations/0003_console_indexes.sql"),
    },
];

/// The key of the advisory lock the migrator holds (`nems` in ASCII, then `1`).
const LOCK_KEY: i64 = 0x6e_65_6d_73_00_00_00_01;

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The schema version now in the database.
    pub version: i32,
    /// The versions this call applied (empty when another core had, or nothing was new).
    pub applied: Vec<i32>,
}

/// Why the schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database has migrations this binary does not know: it was migrated by a newer
    /// nems.
    #[error(
        "the database schema is at version {database}, newer than this nems knows ({binary}); run the newer nems or restore a matching database"
    )]
    TooNew {
        /// The newest version recorded in the database.
        database: i32,
        /// The newest version this binary has.
        binary: i32,
    },
    /// A recorded migration differs from the binary's.
    #[error(
        "migration {version} ({name}) in the database differs from this nems's (checksum {recorded} recorded, {expected} expected): a migration was edited after it was applied"
    )]
    Changed {
        /// The version.
        version: i32,
        /// Its name.
        name: &'static str,
        /// The checksum in the database.
        recorded: String,
        /// The checksum of the binary's text.
        expected: String,
    },
    /// The database refused or failed a statement.
    #[error("database error while migrating: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// Applies the migrations the database lacks (see the module documentation).
pub async fn migrate(client: &mut Client) -> Result<Migrated, SchemaError> {
    migrate_with(client, MIGRATIONS).await
}

/// [`migrate`] with a given list of migrations instead of [`MIGRATIONS`] (tests of the
/// migrator's refusals).
pub async fn migrate_with(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Migrated, SchemaError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS nems_schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             checksum   text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let recorded: Vec<(i32, String)> = tx
        .query(
            "SELECT version, checksum FROM nems_schema_migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let binary = migrations.last().map_or(0, |m| m.version);
    if let Some(&(database, _)) = recorded.last()
        && database > binary
    {
        return Err(SchemaError::TooNew { database, binary });
    }
    let mut applied = Vec::new();
    for m in migrations {
        let expected = m.checksum();
        match recorded.iter().find(|(v, _)| *v == m.version) {
            Some((_, checksum)) if *checksum == expected => {}
            Some((_, checksum)) => {
                return Err(SchemaError::Changed {
                    version: m.version,
                    name: m.name,
                    recorded: checksum.clone(),
                    expected,
                });
            }
            None => {
                tx.batch_execute(m.sql).await?;
                tx.execute(
                    "INSERT INTO nems_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[&m.version, &m.name, &expected],
                )
                .await?;
                applied.push(m.version);
            }
        }
    }
    tx.commit().await?;
    if !applied.is_empty() {
        tracing::info!(version = binary, applied = ?applied, "database schema migrated");
    }
    Ok(Migrated {
        version: binary,
        applied,
    })
}
