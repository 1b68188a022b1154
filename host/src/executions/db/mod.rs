//! Where executions are kept: the only code that knows their tables and index keys
//! (redb here, PostgreSQL in [`postgres`]).

use anyhow::Result;
use chrono::{DateTime, Utc};
use redb::ReadableTable;

use super::Execution;
use crate::store::{self, Reader, Session, Txn};

mod postgres;
pub use postgres::ENDED;

store::table!(EXECUTIONS = "executions");
store::table! {
    /// `{org}/{newest-first sort key}/{exec}` → empty
    EXECUTIONS_BY_ORG = "executions_by_org"
}
store::table! {
    /// `{expires_at ms}/{execution}` of every execution that is not terminal: the
    /// dispatcher's durable queue
    ACTIVE_EXECUTIONS = "active_executions"
}

pub fn load(reader: &impl Reader, id: &str) -> Result<Option<Execution>> {
    if let Some(pg) = reader.postgres() {
        return postgres::load(pg, id);
    }
    store::get(&reader.open_table(EXECUTIONS)?, id)
}

/// Writes the record; a terminal execution leaves the active queue.
pub fn save(txn: &Txn, execution: &Execution) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::save(pg, execution);
    }
    txn.open_table(EXECUTIONS)?
        .insert(execution.id.as_str(), store::encode(execution)?.as_slice())?;
    if execution.status.is_terminal() {
        txn.open_table(ACTIVE_EXECUTIONS)?
            .remove(active_key(execution).as_str())?;
    }
    Ok(())
}

/// A new execution's stored form and index keys, prepared before its write so the
/// single writer thread only copies bytes.
pub struct Prepared {
    id: String,
    record: Vec<u8>,
    active: String,
    by_org: String,
    columns: postgres::Columns,
}

impl Prepared {
    pub fn of(execution: &Execution) -> Result<Prepared> {
        Ok(Prepared {
            id: execution.id.clone(),
            record: store::encode(execution)?,
            active: active_key(execution),
            by_org: by_org_key(execution),
            columns: postgres::Columns::of(execution)?,
        })
    }
}

/// Stores a new execution with its place in the queue and in its organization's list.
pub fn insert(txn: &Txn, prepared: &Prepared) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::insert(pg, &prepared.columns, &prepared.record);
    }
    txn.open_table(EXECUTIONS)?
        .insert(prepared.id.as_str(), prepared.record.as_slice())?;
    txn.open_table(ACTIVE_EXECUTIONS)?
        .insert(prepared.active.as_str(), [].as_slice())?;
    txn.open_table(EXECUTIONS_BY_ORG)?
        .insert(prepared.by_org.as_str(), [].as_slice())?;
    Ok(())
}

/// Up to `limit` of the organization's executions that `keep` accepts, newest first,
/// after `after` when given, and whether more follow.
pub fn page_of_org(
    reader: &impl Reader,
    org_id: &str,
    after: Option<&Execution>,
    limit: usize,
    keep: impl FnMut(&Execution) -> bool,
) -> Result<(Vec<Execution>, bool)> {
    if let Some(pg) = reader.postgres() {
        return postgres::page_of_org(pg, org_id, after, limit, keep);
    }
    let prefix = format!("{org_id}/");
    let start = after.map_or(prefix.clone(), |after| by_org_key(after) + "\u{0}");
    store::page(
        &reader.open_table(EXECUTIONS_BY_ORG)?,
        &reader.open_table(EXECUTIONS)?,
        &prefix,
        &start,
        limit,
        keep,
    )
}

/// Takes up to `limit` executions that are not terminal and that no living host
/// drives, for host `host`; their ids (PostgreSQL: on redb one host owns the file).
pub fn adopt(pg: &Session, host: &str, limit: i64) -> Result<Vec<String>> {
    postgres::adopt(pg, host, limit)
}

/// Ids of every non-terminal execution with its deadline, soonest first.
pub fn active(reader: &impl Reader) -> Result<Vec<(String, DateTime<Utc>)>> {
    if let Some(pg) = reader.postgres() {
        return postgres::active(pg);
    }
    let mut active = Vec::new();
    for row in reader.open_table(ACTIVE_EXECUTIONS)?.iter()? {
        let (key, _) = row?;
        active.extend(parse_active_key(key.value()));
    }
    Ok(active)
}

/// `{org}/{newest-first key}/{id}`: inverted creation time sorts newest first.
fn by_org_key(execution: &Execution) -> String {
    crate::ids::newest_first_key(
        &execution.organization_id,
        execution.created_at,
        &execution.id,
    )
}

/// `{expires_at ms:020}/{id}`: new entries append (ids are random, deadlines are
/// not), which keeps a batch of accepts on few pages, and the queue reads in
/// deadline order.
fn active_key(execution: &Execution) -> String {
    format!(
        "{:020}/{}",
        execution.expires_at.timestamp_millis().max(0),
        execution.id
    )
}

/// Parses an [`active_key`].
fn parse_active_key(key: &str) -> Option<(String, DateTime<Utc>)> {
    let (millis, id) = key.split_once('/')?;
    let expires = DateTime::from_timestamp_millis(millis.parse().ok()?)?;
    Some((id.to_string(), expires))
}
