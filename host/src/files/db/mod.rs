//! Where file records are kept: the records, their indexes by organization and by
//! expiry, the per-organization usage counters, the audit trail, and the objects
//! left unreferenced. The only code that knows these tables (redb here, PostgreSQL
//! in [`postgres`]).

use anyhow::Result;
use chrono::{DateTime, Utc};
use redb::{ReadableTable, TableDefinition, TableError};
use std::collections::HashMap;

use super::FileRecord;
use super::audit::AuditEntry;
use super::quota::OrgFiles;
use crate::store::{self, JsonTable, Reader, Txn};

mod postgres;

store::table!(FILES = "files");
store::table! {
    /// `{org}/{newest-first sort key}/{file}` → empty
    FILES_BY_ORG = "files_by_org"
}
store::table! {
    /// `{expires_at ms:020}/{file}` → empty: the expiry sweeper's queue
    FILES_BY_EXPIRY = "files_by_expiry"
}
store::table! {
    /// `{file}/{µs:020}/{nonce}` → audit entry
    FILE_AUDIT = "file_audit"
}

/// Stored objects whose record is gone, noted in the transaction that removed it:
/// their bytes are deleted after the commit, or by the next sweep when a crash came
/// in between. Created on first use.
const UNREFERENCED: JsonTable = TableDefinition::new("file_objects_unreferenced");

/// Per organization: its usage and the operator's override of the quota. Created
/// on first use, and then built from the records (see [`counted`]).
const FILE_USAGE: JsonTable = TableDefinition::new("file_usage");

/// The key (no organization id looks like it) whose presence says the counters were
/// built from the file records.
const COUNTED: &str = "~counted";

pub fn file(reader: &impl Reader, file_id: &str) -> Result<Option<FileRecord>> {
    if let Some(pg) = reader.postgres() {
        return postgres::file(pg, file_id);
    }
    store::get(&reader.open_table(FILES)?, file_id)
}

/// Stores a new file record with its indexes.
pub fn insert(txn: &Txn, record: &FileRecord) -> Result<()> {
    if txn.postgres().is_some() {
        return save(txn, record); // the index by organization is the table's
    }
    save(txn, record)?;
    txn.open_table(FILES_BY_ORG)?
        .insert(by_org_key(record).as_str(), [].as_slice())?;
    Ok(())
}

/// Writes the record and its expiry index entry, and counts it in its
/// organization's usage.
pub fn save(txn: &Txn, record: &FileRecord) -> Result<()> {
    let before = file(txn, &record.file_id)?;
    count_change(txn, before.as_ref(), Some(record))?;
    if let Some(pg) = txn.postgres() {
        return postgres::save(pg, record);
    }
    txn.open_table(FILES)?
        .insert(record.file_id.as_str(), store::encode(record)?.as_slice())?;
    txn.open_table(FILES_BY_EXPIRY)?
        .insert(expiry_key(record).as_str(), [].as_slice())?;
    Ok(())
}

/// Takes the record out of the expiry queue (its expiry is about to change).
pub fn remove_expiry(txn: &Txn, record: &FileRecord) -> Result<()> {
    if txn.postgres().is_some() {
        return Ok(()); // there, the queue is an index of the records
    }
    txn.open_table(FILES_BY_EXPIRY)?
        .remove(expiry_key(record).as_str())?;
    Ok(())
}

/// Removes the record with its indexes, uncounts it and notes its bytes for removal.
pub fn remove(txn: &Txn, record: &FileRecord) -> Result<()> {
    let before = file(txn, &record.file_id)?;
    count_change(txn, before.as_ref(), None)?;
    note_unreferenced(txn, record.object_key())?;
    if let Some(pg) = txn.postgres() {
        return postgres::remove(pg, record);
    }
    txn.open_table(FILES)?.remove(record.file_id.as_str())?;
    txn.open_table(FILES_BY_ORG)?
        .remove(by_org_key(record).as_str())?;
    remove_expiry(txn, record)
}

/// Notes that no record points to `object` any more.
pub fn note_unreferenced(txn: &Txn, object: &str) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::note_unreferenced(pg, object);
    }
    txn.open_table(UNREFERENCED)?
        .insert(object, [].as_slice())?;
    Ok(())
}

/// Up to `limit` objects noted unreferenced.
pub fn unreferenced(reader: &impl Reader, limit: usize) -> Result<Vec<String>> {
    if let Some(pg) = reader.postgres() {
        return postgres::unreferenced(pg, limit);
    }
    let Some(table) = existing(reader.open_table(UNREFERENCED))? else {
        return Ok(Vec::new());
    };
    let mut objects = Vec::new();
    for row in table.range::<&str>(..)?.take(limit) {
        objects.push(row?.0.value().to_string());
    }
    Ok(objects)
}

/// Forgets the notes of objects whose bytes are gone.
pub fn forget_unreferenced(txn: &Txn, objects: &[String]) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::forget_unreferenced(pg, objects);
    }
    let mut table = txn.open_table(UNREFERENCED)?;
    for object in objects {
        table.remove(object.as_str())?;
    }
    Ok(())
}

/// A file the expiry queue names: its queue entry and its id.
pub struct Due {
    /// its redb queue key (empty on PostgreSQL, where the queue is an index)
    entry: String,
    pub file_id: String,
}

/// Up to `limit` files whose expiry is before `now`, soonest first.
pub fn due_for_expiry(reader: &impl Reader, now: DateTime<Utc>, limit: usize) -> Result<Vec<Due>> {
    if let Some(pg) = reader.postgres() {
        return postgres::due_for_expiry(pg, now, limit);
    }
    let due_before = expiry_key_prefix(now);
    let mut due = Vec::new();
    for row in reader
        .open_table(FILES_BY_EXPIRY)?
        .range(..due_before.as_str())?
        .take(limit)
    {
        let (key, _) = row?;
        let entry = key.value().to_string();
        let file_id = entry.rsplit('/').next().unwrap_or_default().to_string();
        due.push(Due { entry, file_id });
    }
    Ok(due)
}

/// Drops a queue entry left without its record.
pub fn drop_due(txn: &Txn, due: &Due) -> Result<()> {
    if txn.postgres().is_some() {
        return Ok(()); // there, the queue is an index of the records
    }
    txn.open_table(FILES_BY_EXPIRY)?
        .remove(due.entry.as_str())?;
    Ok(())
}

/// Up to `limit` of the organization's records that `keep` accepts, newest first,
/// after `after` when given, and whether more follow.
pub fn page_of_org(
    reader: &impl Reader,
    org_id: &str,
    after: Option<&FileRecord>,
    limit: usize,
    keep: impl FnMut(&FileRecord) -> bool,
) -> Result<(Vec<FileRecord>, bool)> {
    if let Some(pg) = reader.postgres() {
        return postgres::page_of_org(pg, org_id, after, limit, keep);
    }
    let prefix = format!("{org_id}/");
    let start = after.map_or(prefix.clone(), |after| by_org_key(after) + "\u{0}");
    store::page(
        &reader.open_table(FILES_BY_ORG)?,
        &reader.open_table(FILES)?,
        &prefix,
        &start,
        limit,
        keep,
    )
}

/// The organization's usage as of `reader` (zero before the counters were built: the
/// check inside a write, [`usage_for_update`], is the one that holds).
pub fn usage(reader: &impl Reader, org_id: &str) -> Result<OrgFiles> {
    if let Some(pg) = reader.postgres() {
        return postgres::usage(pg, org_id);
    }
    let Some(table) = existing(reader.open_table(FILE_USAGE))? else {
        return Ok(OrgFiles::default());
    };
    Ok(store::get(&table, org_id)?.unwrap_or_default())
}

/// The organization's usage inside a write (building the counters if this is their
/// first use).
pub fn usage_for_update(txn: &Txn, org_id: &str) -> Result<OrgFiles> {
    if let Some(pg) = txn.postgres() {
        return postgres::usage(pg, org_id);
    }
    counted(txn)?;
    Ok(store::get(&txn.open_table(FILE_USAGE)?, org_id)?.unwrap_or_default())
}

pub fn put_usage(txn: &Txn, org_id: &str, usage: &OrgFiles) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::put_usage(pg, org_id, usage);
    }
    txn.open_table(FILE_USAGE)?
        .insert(org_id, store::encode(usage)?.as_slice())?;
    Ok(())
}

/// Counts a change of one file record, from `before` to `after` (either absent).
fn count_change(txn: &Txn, before: Option<&FileRecord>, after: Option<&FileRecord>) -> Result<()> {
    counted(txn)?;
    let mut changes: Vec<(&str, i128, i128)> = Vec::with_capacity(2);
    if let Some(record) = before {
        changes.push((&record.organization_id, -(record.size_bytes as i128), -1));
    }
    if let Some(record) = after {
        changes.push((&record.organization_id, record.size_bytes as i128, 1));
    }
    for (org_id, bytes, files) in changes {
        let mut usage = usage_for_update(txn, org_id)?;
        usage.bytes = apply(usage.bytes, bytes);
        usage.files = apply(usage.files, files);
        put_usage(txn, org_id, &usage)?;
    }
    Ok(())
}

fn apply(value: u64, delta: i128) -> u64 {
    (value as i128 + delta).clamp(0, u64::MAX as i128) as u64
}

/// Builds the counters from the file records, once (a store written before quotas
/// existed has records and no counters).
fn counted(txn: &Txn) -> Result<()> {
    if txn.postgres().is_some() {
        return Ok(()); // its schema has always had them
    }
    let mut table = txn.open_table(FILE_USAGE)?;
    if table.get(COUNTED)?.is_some() {
        return Ok(());
    }
    let mut totals: HashMap<String, OrgFiles> = HashMap::new();
    for row in txn.open_table(FILES)?.iter()? {
        let (_, value) = row?;
        let record: FileRecord = store::decode(value.value())?;
        let usage = totals.entry(record.organization_id).or_default();
        usage.bytes += record.size_bytes;
        usage.files += 1;
    }
    for (org_id, usage) in totals {
        table.insert(org_id.as_str(), store::encode(&usage)?.as_slice())?;
    }
    table.insert(COUNTED, [].as_slice())?;
    Ok(())
}

/// Appends an audit entry. Keys sort by file, then time.
pub fn append_audit(txn: &Txn, entry: &AuditEntry) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::append_audit(pg, entry);
    }
    let key = format!(
        "{}/{:020}/{}",
        entry.file_id,
        entry.at.timestamp_micros().max(0),
        uuid::Uuid::new_v4().simple()
    );
    txn.open_table(FILE_AUDIT)?
        .insert(key.as_str(), store::encode(entry)?.as_slice())?;
    Ok(())
}

/// Every audit entry of `file_id`, oldest first (they outlive the file).
pub fn audit_of(reader: &impl Reader, file_id: &str) -> Result<Vec<AuditEntry>> {
    if let Some(pg) = reader.postgres() {
        return postgres::audit_of(pg, file_id);
    }
    let prefix = format!("{file_id}/");
    let mut entries = Vec::new();
    for row in reader.open_table(FILE_AUDIT)?.range(prefix.as_str()..)? {
        let (key, value) = row?;
        if !key.value().starts_with(&prefix) {
            break;
        }
        entries.push(store::decode(value.value())?);
    }
    Ok(entries)
}

/// A table created on first use: `None` until then.
fn existing<T>(opened: Result<T>) -> Result<Option<T>> {
    match opened {
        Ok(table) => Ok(Some(table)),
        Err(error) => match error.downcast_ref::<TableError>() {
            Some(TableError::TableDoesNotExist(_)) => Ok(None),
            _ => Err(error),
        },
    }
}

/// `{org}/{newest-first key}/{file}`.
fn by_org_key(record: &FileRecord) -> String {
    crate::ids::newest_first_key(&record.organization_id, record.created_at, &record.file_id)
}

fn expiry_key_prefix(at: DateTime<Utc>) -> String {
    format!("{:020}", at.timestamp_millis().max(0))
}

fn expiry_key(record: &FileRecord) -> String {
    format!(
        "{}/{}",
        expiry_key_prefix(record.expires_at),
        record.file_id
    )
}
