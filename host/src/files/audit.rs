//! The audit trail of files: every upload, download, grant and delete, with who
//! (an API key id, `signed-url`, a provider attempt, `expiry`), when, and from which
//! address. Kept with the store's other state and read by operators
//! (`GET /admin/v1/files/{id}/audit`).

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::db;
use super::{FileRecord, Origin};
use crate::clock;
use crate::store::{Store, Txn};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = FileAction)]
pub enum Action {
    /// the host stored an execution's output (the actor is the execution)
    Output,
    UploadUrl,
    Upload,
    Confirm,
    DownloadUrl,
    Download,
    /// a URL minted for one provider attempt
    Grant,
    /// a provider fetched a grant
    GrantFetch,
    Delete,
    Expire,
}

/// One thing done to a file, and by whom.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = FileAuditEntry)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub organization_id: String,
    pub file_id: String,
    pub action: Action,
    pub actor: String,
    pub address: Option<String>,
}

impl AuditEntry {
    pub fn new(record: &FileRecord, action: Action, origin: &Origin) -> AuditEntry {
        AuditEntry {
            at: clock::now(),
            organization_id: record.organization_id.clone(),
            file_id: record.file_id.clone(),
            action,
            actor: origin.actor.clone(),
            address: origin.address.clone(),
        }
    }
}

/// Appends `entry`, in the transaction of the change it records.
pub fn record(txn: &Txn, entry: &AuditEntry) -> Result<()> {
    db::append_audit(txn, entry)
}

/// The trail of `file_id`, oldest first; `None` when no such file ever existed
/// (the trail outlives the file: a deleted or expired one still shows it).
pub fn trail(store: &Store, file_id: &str) -> Result<Option<Vec<AuditEntry>>> {
    if !crate::ids::has_prefix(file_id, "file") {
        return Ok(None);
    }
    store.read(|snapshot| {
        let entries = db::audit_of(snapshot, file_id)?;
        let exists = !entries.is_empty() || db::file(snapshot, file_id)?.is_some();
        Ok(exists.then_some(entries))
    })
}
