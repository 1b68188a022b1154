//! The schema's migrations, shipped in the binary (`migrations/`) and applied in
//! order, each whole or not at all.

use anyhow::{Context, Result};
use postgres::{Client, NoTls};

use super::postgres::redacted;

/// The schema's migrations, in order: `(version, name, SQL)`. A released migration
/// is never edited; a change is a new one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "schema", include_str!("migrations/0001_schema.sql")),
    (2, "hosts", include_str!("migrations/0002_hosts.sql")),
    (
        3,
        "rate_limits",
        include_str!("migrations/0003_rate_limits.sql"),
    ),
    (
        4,
        "adapters",
        include_str!("migrations/0004_installed_adapters.sql"),
    ),
];

/// Any number to lock migrations with: hosts starting together migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6d6f_6465_6c72_6f75;

/// Brings the database at `url` up to the schema this binary knows; returns the
/// versions it applied. Each migration commits whole or not at all, hosts starting
/// at once wait for each other, and a database migrated by a newer version is left
/// as it is (its migrations keep the older schema working: see the README).
pub fn migrate(url: &str) -> Result<Vec<i32>> {
    let mut client = Client::connect(url, NoTls)
        .with_context(|| format!("connecting to PostgreSQL at {}", redacted(url)))?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let applied = apply(&mut client);
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
    applied
}

fn apply(client: &mut Client) -> Result<Vec<i32>> {
    client.batch_execute(
        "SET client_min_messages = warning;
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )?;
    let done: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if done.contains(&version) {
            continue;
        }
        let mut txn = client.transaction()?;
        txn.batch_execute(sql)
            .with_context(|| format!("applying migration {version} ({name})"))?;
        txn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )?;
        txn.commit()?;
        tracing::info!(version, name, "applied a database migration");
        applied.push(version);
    }
    if let Some(newest) = done.iter().max().filter(|&&v| v > MIGRATIONS.len() as i32) {
        tracing::warn!(
            database = newest,
            binary = MIGRATIONS.len(),
            "the database's schema is newer than this binary's; running on it (an upgrade in progress)"
        );
    }
    Ok(applied)
}
