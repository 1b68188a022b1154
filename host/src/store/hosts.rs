//! Hosts sharing one PostgreSQL database, each under a lease.
//!
//! A host has an entry in `hosts` with the time its lease lapses; it renews the
//! lease well before then ([`renew`], on a connection of its own, so that a busy
//! writer never delays it). Every write batch of a host first takes its entry
//! `FOR KEY SHARE` ([`begin_sql`]: renewals do not wait for it, removals do), and a host whose lease lapsed has its entry
//! removed by another ([`remove_lapsed`]): the removal waits for the batch in
//! flight, and every later batch of the lapsed host finds no entry and stops the
//! process ([`fenced`]). Work (executions, webhook deliveries) that no living host
//! drives is then adopted by the others. Times are the database's, so hosts' clocks
//! need not agree.

use anyhow::Result;
use std::time::Duration;

use super::Session;

/// Adds the entry of host `id` with a lease of `lease`, and removes that of
/// `predecessor` (the same host's previous run, whose work it takes over at once).
pub(super) fn register(
    session: &Session,
    id: &str,
    predecessor: Option<&str>,
    lease: Duration,
) -> Result<()> {
    if let Some(predecessor) = predecessor {
        session.execute("DELETE FROM hosts WHERE id = $1", &[&predecessor])?;
    }
    session.execute(
        "INSERT INTO hosts (id, expires_at) VALUES ($1, now() + make_interval(secs => $2))",
        &[&id, &lease.as_secs_f64()],
    )?;
    Ok(())
}

/// The statement that begins a write batch of host `id`: a row when the host's
/// entry lives (and it is held until the batch ends).
pub(super) fn begin_sql(id: &str) -> String {
    // The id is a UUID the host made itself; quoted all the same.
    let id = id.replace('\'', "''");
    format!("BEGIN; SELECT 1 FROM hosts WHERE id = '{id}' FOR KEY SHARE")
}

/// A write batch found its host's entry gone: another host took over this one's
/// work, and it must not write again.
pub(super) fn fenced(id: &str) -> ! {
    tracing::error!(host = %id, "this host's lease lapsed and other hosts took over its work; exiting");
    std::process::exit(75)
}

/// Renews host `id`'s lease for `lease` from now; `false` when its entry is gone.
pub fn renew(pg: &Session, id: &str, lease: Duration) -> Result<bool> {
    let renewed = pg.execute(
        "UPDATE hosts SET expires_at = now() + make_interval(secs => $2) WHERE id = $1",
        &[&id, &lease.as_secs_f64()],
    )?;
    Ok(renewed == 1)
}

/// Removes the entries of hosts whose lease lapsed; their ids.
pub fn remove_lapsed(pg: &Session) -> Result<Vec<String>> {
    let rows = pg.query(
        "DELETE FROM hosts WHERE expires_at < now() RETURNING id",
        &[],
    )?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
