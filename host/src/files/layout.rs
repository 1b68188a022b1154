//! How file records sit in the store: the records, their indexes by organization
//! and by expiry, and the objects left unreferenced.

use anyhow::Result;
use chrono::{DateTime, Utc};
use redb::{ReadTransaction, WriteTransaction};

use super::UNREFERENCED;
use super::quota;
use super::record::{FileRecord, FileStatus};
use super::{FILES, FILES_BY_EXPIRY, FILES_BY_ORG};
use crate::store;

/// `{org}/{newest-first key}/{file}`.
pub(super) fn by_org_key(record: &FileRecord) -> String {
    crate::ids::newest_first_key(&record.organization_id, record.created_at, &record.file_id)
}

pub(super) fn expiry_key_prefix(at: DateTime<Utc>) -> String {
    format!("{:020}", at.timestamp_millis().max(0))
}

pub(super) fn expiry_key(record: &FileRecord) -> String {
    format!(
        "{}/{}",
        expiry_key_prefix(record.expires_at),
        record.file_id
    )
}

/// Stores a new file record with its indexes (inside a write transaction).
pub fn insert(txn: &WriteTransaction, record: &FileRecord) -> Result<()> {
    save(txn, record)?;
    txn.open_table(FILES_BY_ORG)?
        .insert(by_org_key(record).as_str(), [].as_slice())?;
    Ok(())
}

/// Writes the record and its expiry index entry, and counts it in its
/// organization's quota.
pub(super) fn save(txn: &WriteTransaction, record: &FileRecord) -> Result<()> {
    let before = txn.file(&record.file_id)?;
    quota::account(txn, before.as_ref(), Some(record))?;
    txn.open_table(FILES)?
        .insert(record.file_id.as_str(), store::encode(record)?.as_slice())?;
    txn.open_table(FILES_BY_EXPIRY)?
        .insert(expiry_key(record).as_str(), [].as_slice())?;
    Ok(())
}

pub(super) fn remove_expiry(txn: &WriteTransaction, record: &FileRecord) -> Result<()> {
    txn.open_table(FILES_BY_EXPIRY)?
        .remove(expiry_key(record).as_str())?;
    Ok(())
}

/// Removes the record with its indexes, uncounts it and notes its bytes for removal.
pub(super) fn remove(txn: &WriteTransaction, record: &FileRecord) -> Result<()> {
    let before = txn.file(&record.file_id)?;
    quota::account(txn, before.as_ref(), None)?;
    unreferenced(txn, record.object_key())?;
    txn.open_table(FILES)?.remove(record.file_id.as_str())?;
    txn.open_table(FILES_BY_ORG)?
        .remove(by_org_key(record).as_str())?;
    remove_expiry(txn, record)
}

pub(super) fn unreferenced(txn: &WriteTransaction, object: &str) -> Result<()> {
    txn.open_table(UNREFERENCED)?
        .insert(object, [].as_slice())?;
    Ok(())
}

/// The live file `file_id` of `org_id` in any state; another organization's or an
/// expired file is indistinguishable from a missing one.
pub(super) fn get_any(
    txn: &impl ReadTables,
    org_id: &str,
    file_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<FileRecord>> {
    let record = txn.file(file_id)?;
    Ok(record.filter(|r| r.organization_id == org_id && r.expires_at > now))
}

/// The live, ready file `file_id` of `org_id` (what executions may use).
pub fn get(
    txn: &ReadTransaction,
    org_id: &str,
    file_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<FileRecord>> {
    Ok(get_any(txn, org_id, file_id, now)?.filter(|r| r.status == FileStatus::Ready))
}

/// File lookups inside either kind of transaction.
pub(super) trait ReadTables {
    fn file(&self, file_id: &str) -> Result<Option<FileRecord>>;
}

impl ReadTables for ReadTransaction {
    fn file(&self, file_id: &str) -> Result<Option<FileRecord>> {
        store::get(&self.open_table(FILES)?, file_id)
    }
}

impl ReadTables for WriteTransaction {
    fn file(&self, file_id: &str) -> Result<Option<FileRecord>> {
        store::get(&self.open_table(FILES)?, file_id)
    }
}
