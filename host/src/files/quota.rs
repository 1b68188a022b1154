//! Each organization's storage quota: at most so many bytes and so many files
//! (`[files] quota_bytes` and `quota_files`, or the operator's override for the
//! organization), so that one organization cannot fill the disk.
//!
//! What counts is every stored file record of the organization, in any state: its
//! bytes (`size_bytes`, zero until an upload's bytes arrive) and one file each,
//! until the record is deleted or swept. Provider outputs count too, but they are
//! never refused (a completed, paid generation must not fail for lack of room):
//! only uploads are, so an organization over its quota through outputs can upload
//! again once it has deleted enough. Bytes of uploads still streaming in count
//! against the quota as they arrive ([`InFlight`]); the commit of an upload checks
//! again against the counters it updates, in the same transaction.
//!
//! The counters live in their own table, updated in the transaction that changes a
//! file record (by [`account`], which `files::save` and `files::remove` call), and
//! are built once from the file records when the table is first used.

use anyhow::Result;
use redb::{ReadTransaction, ReadableTable, TableDefinition, TableError, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

use super::FILES;
use super::FileRecord;
use crate::config::FileSettings;
use crate::error::{ApiError, Code};
use crate::store::{self, JsonTable};

/// Per organization: its usage and the operator's override of the quota.
const FILE_USAGE: JsonTable = TableDefinition::new("file_usage");

/// The key (no organization id looks like it) whose presence says the counters were
/// built from the file records.
const COUNTED: &str = "~counted";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OrgFiles {
    /// bytes of the organization's stored files
    pub bytes: u64,
    /// how many file records it has
    pub files: u64,
    /// the operator's override of `files.quota_bytes`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    /// the operator's override of `files.quota_files`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_files: Option<u64>,
}

impl OrgFiles {
    pub fn quota_bytes(&self, settings: &FileSettings) -> u64 {
        self.quota_bytes.unwrap_or(settings.quota_bytes)
    }

    pub fn quota_files(&self, settings: &FileSettings) -> u64 {
        self.quota_files.unwrap_or(settings.quota_files)
    }

    /// Bytes an upload may still bring, when `replacing` bytes of it are already
    /// counted (an upload sent again before its confirmation replaces its bytes).
    pub fn room(&self, settings: &FileSettings, replacing: u64) -> u64 {
        self.quota_bytes(settings)
            .saturating_sub(self.bytes.saturating_sub(replacing))
    }

    /// The effective quota and usage, for operators.
    pub fn view(&self, settings: &FileSettings) -> serde_json::Value {
        serde_json::json!({
            "bytes_used": self.bytes,
            "files_used": self.files,
            "quota_bytes": self.quota_bytes(settings),
            "quota_files": self.quota_files(settings),
        })
    }

    /// `409 CONFLICT` when the organization cannot take one more file.
    pub fn admit_new_file(&self, settings: &FileSettings) -> Result<(), ApiError> {
        let (quota_files, quota_bytes) = (self.quota_files(settings), self.quota_bytes(settings));
        if self.files >= quota_files {
            return Err(ApiError::new(
                Code::Conflict,
                format!(
                    "the organization's file quota is full: {} of {quota_files} files are \
                     stored, 0 left; delete files to upload more",
                    self.files
                ),
            ));
        }
        if self.bytes >= quota_bytes {
            return Err(ApiError::new(
                Code::Conflict,
                format!(
                    "the organization's storage quota is full: {} of {quota_bytes} bytes are \
                     used, 0 left; delete files to upload more",
                    self.bytes
                ),
            ));
        }
        Ok(())
    }
}

/// `413 PAYLOAD_TOO_LARGE`: an upload that does not fit in what is left.
pub fn over_quota(usage: &OrgFiles, settings: &FileSettings, replacing: u64) -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!(
            "the upload would pass the organization's storage quota of {} bytes: {} bytes \
             are left; nothing was kept",
            usage.quota_bytes(settings),
            usage.room(settings, replacing)
        ),
    )
}

/// The organization's usage as of `txn` (zero before the counters were built: the
/// commit's check, in a write transaction, is the one that holds).
pub fn usage(txn: &ReadTransaction, org_id: &str) -> Result<OrgFiles> {
    let table = match txn.open_table(FILE_USAGE) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(OrgFiles::default()),
        Err(error) => return Err(error.into()),
    };
    Ok(store::get(&table, org_id)?.unwrap_or_default())
}

/// The organization's usage inside a write transaction (building the counters if
/// this is their first use).
pub fn usage_for_update(txn: &WriteTransaction, org_id: &str) -> Result<OrgFiles> {
    counted(txn)?;
    Ok(store::get(&txn.open_table(FILE_USAGE)?, org_id)?.unwrap_or_default())
}

/// Sets (`Some(Some(_))`) or clears (`Some(None)`) the operator's overrides; `None`
/// leaves one as it is.
pub fn set_quota(
    txn: &WriteTransaction,
    org_id: &str,
    quota_bytes: Option<Option<u64>>,
    quota_files: Option<Option<u64>>,
) -> Result<OrgFiles> {
    let mut usage = usage_for_update(txn, org_id)?;
    if let Some(quota) = quota_bytes {
        usage.quota_bytes = quota;
    }
    if let Some(quota) = quota_files {
        usage.quota_files = quota;
    }
    put(txn, org_id, &usage)?;
    Ok(usage)
}

/// Counts a change of one file record, from `before` to `after` (either absent).
/// Called before the record itself is written, in the same transaction.
pub fn account(
    txn: &WriteTransaction,
    before: Option<&FileRecord>,
    after: Option<&FileRecord>,
) -> Result<()> {
    counted(txn)?;
    let mut changes: Vec<(&str, i128, i128)> = Vec::with_capacity(2);
    if let Some(record) = before {
        changes.push((&record.organization_id, -(record.size_bytes as i128), -1));
    }
    if let Some(record) = after {
        changes.push((&record.organization_id, record.size_bytes as i128, 1));
    }
    for (org_id, bytes, files) in changes {
        let mut usage: OrgFiles =
            store::get(&txn.open_table(FILE_USAGE)?, org_id)?.unwrap_or_default();
        usage.bytes = apply(usage.bytes, bytes);
        usage.files = apply(usage.files, files);
        put(txn, org_id, &usage)?;
    }
    Ok(())
}

fn apply(value: u64, delta: i128) -> u64 {
    (value as i128 + delta).clamp(0, u64::MAX as i128) as u64
}

fn put(txn: &WriteTransaction, org_id: &str, usage: &OrgFiles) -> Result<()> {
    txn.open_table(FILE_USAGE)?
        .insert(org_id, store::encode(usage)?.as_slice())?;
    Ok(())
}

/// Builds the counters from the file records, once (a store written before quotas
/// existed has records and no counters).
fn counted(txn: &WriteTransaction) -> Result<()> {
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

/// Bytes of uploads still streaming in, per organization.
#[derive(Default)]
pub struct InFlight(Mutex<HashMap<String, u64>>);

impl InFlight {
    /// A reservation for one upload of `org_id`, whose uploads in flight may hold
    /// at most `room` bytes together.
    pub fn reserve(&self, org_id: &str, room: u64) -> Reservation<'_> {
        Reservation {
            in_flight: self,
            org_id: org_id.to_string(),
            held: 0,
            room,
        }
    }
}

/// The bytes one upload holds in [`InFlight`], given back when it is dropped (keep
/// it until the upload's record is committed, so that its bytes always count).
pub struct Reservation<'a> {
    in_flight: &'a InFlight,
    org_id: String,
    held: u64,
    room: u64,
}

impl Reservation<'_> {
    /// Takes `bytes` more; `false` (taking nothing) when the organization's uploads
    /// in flight would then pass the room.
    pub fn take(&mut self, bytes: u64) -> bool {
        let mut streaming = self.in_flight.0.lock().expect("in-flight map poisoned");
        let total = streaming.entry(self.org_id.clone()).or_default();
        if total.saturating_add(bytes) > self.room {
            return false;
        }
        *total += bytes;
        self.held += bytes;
        true
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut streaming = self.in_flight.0.lock().expect("in-flight map poisoned");
        if let Some(total) = streaming.get_mut(&self.org_id) {
            *total = total.saturating_sub(self.held);
            if *total == 0 {
                streaming.remove(&self.org_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_uploads_of_one_organization_share_its_room() {
        let in_flight = InFlight::default();
        let mut first = in_flight.reserve("org_a", 100);
        let mut second = in_flight.reserve("org_a", 100);
        let mut other = in_flight.reserve("org_b", 100);
        assert!(first.take(60));
        assert!(!second.take(41), "two uploads together passed the room");
        assert!(second.take(40));
        assert!(other.take(100), "another organization's room is its own");
        drop(first);
        assert!(second.take(60), "a finished upload gives its bytes back");
        drop(second);
        drop(other);
        assert!(in_flight.0.lock().unwrap().is_empty());
    }

    #[test]
    fn room_counts_the_bytes_an_upload_replaces() {
        let settings = FileSettings {
            quota_bytes: 1000,
            ..FileSettings::default()
        };
        let usage = OrgFiles {
            bytes: 900,
            files: 3,
            ..OrgFiles::default()
        };
        assert_eq!(usage.room(&settings, 0), 100);
        assert_eq!(usage.room(&settings, 300), 400);
        let full = OrgFiles {
            bytes: 1200,
            ..usage.clone()
        };
        assert_eq!(full.room(&settings, 0), 0);
        assert_eq!(
            full.admit_new_file(&settings).unwrap_err().code,
            Code::Conflict
        );
        let few = OrgFiles {
            quota_files: Some(3),
            ..usage
        };
        assert!(few.admit_new_file(&settings).is_err());
    }
}
