//! The records and components kept in PostgreSQL, shared by the hosts:
//! `installed_adapters` (one row per adapter swapped at runtime) and
//! `adapter_components` (each component named there, by sha256). A saved record
//! is announced on `modelroute_adapters` (the adapter's name), which every host
//! hears (see [`super::Installed::follow`]).

use anyhow::Result;
use std::collections::BTreeMap;

use super::{Record, Version};
use crate::store::{Reader, Session};

/// Where hosts announce a swap: the payload is the adapter's name.
pub const SWAPPED: &str = "modelroute_adapters";

pub fn records(reader: &impl Reader) -> Result<BTreeMap<String, Record>> {
    let Some(pg) = reader.postgres() else {
        anyhow::bail!("adapters are kept in the database only on PostgreSQL");
    };
    let rows = pg.query(
        "SELECT name, active_sha256, active_version, previous_sha256, previous_version, \
         plugins_dir_sha256 FROM installed_adapters",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|row| {
            let previous = match (row.get(3), row.get(4)) {
                (Some(sha256), Some(version)) => Some(Version { sha256, version }),
                _ => None,
            };
            let record = Record {
                active: Version {
                    sha256: row.get(1),
                    version: row.get(2),
                },
                previous,
                plugins_dir: row.get(5),
            };
            (row.get(0), record)
        })
        .collect())
}

pub fn keep_component(pg: &Session, sha256: &str, wasm: &[u8]) -> Result<()> {
    pg.execute(
        "INSERT INTO adapter_components (sha256, wasm) VALUES ($1, $2) \
         ON CONFLICT (sha256) DO NOTHING",
        &[&sha256, &wasm],
    )?;
    Ok(())
}

/// Writes `name`'s record and tells every host.
pub fn save(pg: &Session, name: &str, record: &Record) -> Result<()> {
    let previous = record.previous.as_ref();
    pg.execute(
        "INSERT INTO installed_adapters (name, active_sha256, active_version, \
         previous_sha256, previous_version, plugins_dir_sha256, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT (name) DO UPDATE SET \
         active_sha256 = EXCLUDED.active_sha256, active_version = EXCLUDED.active_version, \
         previous_sha256 = EXCLUDED.previous_sha256, \
         previous_version = EXCLUDED.previous_version, \
         plugins_dir_sha256 = EXCLUDED.plugins_dir_sha256, updated_at = now()",
        &[
            &name,
            &record.active.sha256,
            &record.active.version,
            &previous.map(|version| &version.sha256),
            &previous.map(|version| &version.version),
            &record.plugins_dir,
        ],
    )?;
    pg.execute("SELECT pg_notify($1, $2)", &[&SWAPPED, &name])?;
    Ok(())
}

pub fn component(reader: &impl Reader, sha256: &str) -> Result<Option<Vec<u8>>> {
    let Some(pg) = reader.postgres() else {
        anyhow::bail!("adapters are kept in the database only on PostgreSQL");
    };
    let row = pg.query_opt(
        "SELECT wasm FROM adapter_components WHERE sha256 = $1",
        &[&sha256],
    )?;
    Ok(row.map(|row| row.get(0)))
}

/// Removes the components no record names.
pub fn forget_unnamed(pg: &Session) -> Result<()> {
    pg.execute(
        "DELETE FROM adapter_components c WHERE NOT EXISTS (SELECT 1 FROM installed_adapters a \
         WHERE a.active_sha256 = c.sha256 OR a.previous_sha256 = c.sha256)",
        &[],
    )?;
    Ok(())
}
