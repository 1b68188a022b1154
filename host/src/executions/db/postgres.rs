//! Executions on PostgreSQL: the `executions` table (see the schema); the queue is
//! its partial index of executions that are not terminal.

use anyhow::Result;
use chrono::{DateTime, Utc};
use postgres::types::Json;
use serde_json::value::RawValue;

use super::super::{Execution, Mode};
use crate::store::Session;
use crate::store::postgres::{self as pg, to_bigint};

/// An execution's columns (its record is written beside them).
pub struct Columns {
    id: String,
    organization_id: String,
    model: String,
    mode: &'static str,
    status: &'static str,
    hold_amount: i64,
    cost: Option<i64>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

impl Columns {
    pub fn of(execution: &Execution) -> Result<Columns> {
        Ok(Columns {
            id: execution.id.clone(),
            organization_id: execution.organization_id.clone(),
            model: execution.model.clone(),
            mode: match execution.mode {
                Mode::Async => "ASYNC",
                Mode::Sync => "SYNC",
                Mode::Streaming => "STREAMING",
            },
            status: execution.status.as_str(),
            hold_amount: to_bigint(execution.hold_amount.0)?,
            cost: execution.cost.map(|cost| to_bigint(cost.0)).transpose()?,
            created_at: execution.created_at,
            expires_at: execution.expires_at,
            completed_at: execution.completed_at,
        })
    }
}

macro_rules! insert_sql {
    () => {
        "INSERT INTO executions (id, organization_id, model, mode, status, hold_amount, \
         cost, created_at, expires_at, completed_at, record, driver) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    };
}

pub fn load(pg: &Session, id: &str) -> Result<Option<Execution>> {
    let sql = format!(
        "SELECT record FROM executions WHERE id = $1{}",
        pg.for_update()
    );
    pg.query_opt(&sql, &[&id])?
        .map(|row| pg::record(&row))
        .transpose()
}

/// Writes a new execution; its id must be new.
pub fn insert(pg: &Session, columns: &Columns, record: &[u8]) -> Result<()> {
    write(pg, insert_sql!(), columns, record)
}

/// The channel on which a host tells the others that an execution ended (its id).
pub const ENDED: &str = "modelroute_execution_ended";

/// Writes the execution's new state; once it is terminal, tells every host (its
/// waiters may be connected to any) when the batch commits.
pub fn save(pg: &Session, execution: &Execution) -> Result<()> {
    if execution.status.is_terminal() {
        pg.append(ENDED, execution.id.clone(), tell_ended)?;
    }
    const SQL: &str = concat!(
        insert_sql!(),
        " ON CONFLICT (id) DO UPDATE SET model = EXCLUDED.model, status = EXCLUDED.status, \
        hold_amount = EXCLUDED.hold_amount, cost = EXCLUDED.cost, \
        expires_at = EXCLUDED.expires_at, completed_at = EXCLUDED.completed_at, \
        record = EXCLUDED.record"
    );
    write(
        pg,
        SQL,
        &Columns::of(execution)?,
        &crate::store::encode(execution)?,
    )
}

fn write(pg: &Session, sql: &str, c: &Columns, record: &[u8]) -> Result<()> {
    let record: &RawValue = serde_json::from_slice(record)?;
    pg.execute(
        sql,
        &[
            &c.id,
            &c.organization_id,
            &c.model,
            &c.mode,
            &c.status,
            &c.hold_amount,
            &c.cost,
            &c.created_at,
            &c.expires_at,
            &c.completed_at,
            &Json(record),
            // A new execution is driven by the host that accepted it.
            &pg.host(),
        ],
    )?;
    Ok(())
}

fn tell_ended(pg: &Session, ids: &[String]) -> Result<()> {
    pg.execute(
        "SELECT pg_notify($1, id) FROM unnest($2::text[]) AS id",
        &[&ENDED, &ids],
    )?;
    Ok(())
}

/// The organization's executions newest first (ties by id), after `after`.
pub fn page_of_org(
    pg: &Session,
    org_id: &str,
    after: Option<&Execution>,
    limit: usize,
    keep: impl FnMut(&Execution) -> bool,
) -> Result<(Vec<Execution>, bool)> {
    let after = after.map(|after| (after.created_at, after.id.clone()));
    pg::page_newest_first(pg, "executions", org_id, after, limit, keep)
}

/// Every execution that is not terminal, with its deadline, soonest first.
pub fn active(pg: &Session) -> Result<Vec<(String, DateTime<Utc>)>> {
    let rows = pg.query(
        "SELECT id, expires_at FROM executions \
         WHERE status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED', 'EXPIRED') \
         ORDER BY expires_at, id",
        &[],
    )?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Takes up to `limit` executions that are not terminal and that no living host
/// drives (the hosts adopting at once each skip what another is taking), for
/// `host`; their ids, soonest deadline first.
pub fn adopt(pg: &Session, host: &str, limit: i64) -> Result<Vec<String>> {
    let rows = pg.query(
        "UPDATE executions SET driver = $1 WHERE id IN ( \
            SELECT id FROM executions e \
            WHERE status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED', 'EXPIRED') \
            AND (driver IS NULL OR NOT EXISTS (SELECT 1 FROM hosts h WHERE h.id = e.driver)) \
            ORDER BY expires_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING id",
        &[&host, &limit],
    )?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
