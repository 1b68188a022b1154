//! Shared buckets on PostgreSQL: `rate_limits` (unlogged: a bucket is worth nothing
//! after a crash of the database, and writing one costs no WAL). A bucket is the
//! moment, in microseconds of the database's clock, at which its key's budget is
//! full again; each request counts in one statement, so hosts counting the same key
//! at once never both take its last request, and hosts' clocks need not agree.

use anyhow::Result;
use std::time::Duration;

use crate::store::Session;

/// Counts one request of `key` whose quota books `interval` a request and lets a
/// bucket be booked up to `tolerance` ahead: `Ok(booked)` when it passes, with how
/// far ahead its bucket is now booked, `Err(booked)` when it is refused.
pub fn count(
    pg: &Session,
    key: &str,
    interval: Duration,
    tolerance: Duration,
) -> Result<Result<Duration, Duration>> {
    let counted = pg.query_opt(
        "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us) \
         INSERT INTO rate_limits AS bucket (key, full_at) SELECT $1, now.us + $2 FROM now \
         ON CONFLICT (key) DO UPDATE \
         SET full_at = greatest(bucket.full_at, EXCLUDED.full_at - $2) + $2 \
         WHERE greatest(bucket.full_at, EXCLUDED.full_at - $2) + $2 \
             <= EXCLUDED.full_at - $2 + $3 \
         RETURNING full_at - (SELECT us FROM now)",
        &[&key, &micros(interval)?, &micros(tolerance)?],
    )?;
    Ok(match counted {
        Some(row) => Ok(duration(row.get(0))),
        None => Err(booked(pg, key)?),
    })
}

/// How far ahead of now `key`'s bucket is booked (zero when it is full).
pub fn booked(pg: &Session, key: &str) -> Result<Duration> {
    let row = pg.query_opt(
        "SELECT full_at - (extract(epoch FROM clock_timestamp()) * 1000000)::bigint \
         FROM rate_limits WHERE key = $1",
        &[&key],
    )?;
    Ok(row.map_or(Duration::ZERO, |row| duration(row.get(0))))
}

/// Forgets buckets that are full again (the same as no bucket).
pub fn prune(pg: &Session) -> Result<()> {
    pg.execute(
        "DELETE FROM rate_limits \
         WHERE full_at <= (extract(epoch FROM clock_timestamp()) * 1000000)::bigint",
        &[],
    )?;
    Ok(())
}

fn micros(duration: Duration) -> Result<i64> {
    Ok(i64::try_from(duration.as_micros())?)
}

fn duration(micros: i64) -> Duration {
    Duration::from_micros(micros.max(0).unsigned_abs())
}
