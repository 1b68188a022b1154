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
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

use super::db;
use crate::config::FileSettings;
use crate::error::{ApiError, Code};
use crate::store::Txn;

/// An organization's file storage: what it uses and may use.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = FileUsage)]
pub struct QuotaView {
    pub bytes_used: u64,
    pub files_used: u64,
    pub quota_bytes: u64,
    pub quota_files: u64,
}

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
    pub fn view(&self, settings: &FileSettings) -> QuotaView {
        QuotaView {
            bytes_used: self.bytes,
            files_used: self.files,
            quota_bytes: self.quota_bytes(settings),
            quota_files: self.quota_files(settings),
        }
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

/// Sets (`Some(Some(_))`) or clears (`Some(None)`) the operator's overrides; `None`
/// leaves one as it is.
pub fn set_quota(
    txn: &Txn,
    org_id: &str,
    quota_bytes: Option<Option<u64>>,
    quota_files: Option<Option<u64>>,
) -> Result<OrgFiles> {
    let mut usage = db::usage_for_update(txn, org_id)?;
    if let Some(quota) = quota_bytes {
        usage.quota_bytes = quota;
    }
    if let Some(quota) = quota_files {
        usage.quota_files = quota;
    }
    db::put_usage(txn, org_id, &usage)?;
    Ok(usage)
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
