//! A file's record as stored and shown, and what an upload learns and hands out.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FileStatus {
    /// an upload URL was handed out; no bytes yet
    AwaitingUpload,
    /// bytes arrived; the client has not confirmed them
    Uploaded,
    /// usable (confirmed uploads, provider outputs)
    Ready,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRecord {
    pub file_id: String,
    pub organization_id: String,
    pub status: FileStatus,
    /// from magic bytes; empty until bytes arrived
    pub content_type: String,
    pub size_bytes: u64,
    /// `INPUT`, `UPLOAD` or `OUTPUT`
    pub purpose: String,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    /// when the sweeper deletes it (for an unconfirmed upload: when its URL lapses)
    pub expires_at: DateTime<Utc>,
    /// lifetime once ready
    pub ttl_days: u32,
    /// the API key that created it, for the audit trail
    pub created_by: Option<String>,
    /// where the bytes are in storage, when not under the file's id (each upload
    /// writes its own object, so a refused upload never touches accepted bytes)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

impl FileRecord {
    /// The storage key of the file's bytes.
    pub fn object_key(&self) -> &str {
        self.object.as_deref().unwrap_or(&self.file_id)
    }

    /// The file object of SPEC §8 (`status` added: uploads are usable once `READY`).
    pub fn view(&self) -> FileView<'_> {
        let uploaded = self.status != FileStatus::AwaitingUpload;
        FileView {
            file_id: &self.file_id,
            object: "file",
            status: self.status,
            content_type: uploaded.then_some(self.content_type.as_str()),
            size_bytes: uploaded.then_some(self.size_bytes),
            sha256: uploaded.then_some(self.sha256.as_str()),
            purpose: &self.purpose,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

/// A file as clients see it; what its bytes are is known once they arrived.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = File)]
pub struct FileView<'a> {
    #[schema(example = "file_0f6e1c7a-52b1-4d0e-a1f4-7d2f3f1a9c20")]
    pub file_id: &'a str,
    /// always `file`
    pub object: &'static str,
    pub status: FileStatus,
    /// from the bytes' magic numbers
    pub content_type: Option<&'a str>,
    pub size_bytes: Option<u64>,
    pub sha256: Option<&'a str>,
    /// `INPUT`, `UPLOAD` or `OUTPUT`
    pub purpose: &'a str,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What was learned while bytes streamed in.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub content_type: String,
    /// `png`, `jpeg`, `webp`, `mp4`, … (`bin` when unknown)
    pub format: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub dimensions: Option<(u64, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the file exceeds {0} bytes")]
    TooLarge(u64),
    #[error("the file does not fit in the organization's storage quota")]
    OverQuota,
    #[error("reading the bytes failed: {0}")]
    Source(String),
    #[error("storing the bytes failed: {0}")]
    Storage(#[from] std::io::Error),
}

/// Where a new upload's bytes go, as handed to the client.
pub struct UploadTicket {
    pub record: FileRecord,
    pub upload_url: String,
    pub expires_at: DateTime<Utc>,
}

/// A request's origin, for the audit trail.
#[derive(Debug, Clone)]
pub struct Origin {
    pub actor: String,
    pub address: Option<String>,
}

impl Origin {
    pub fn caller(caller: &Caller, address: Option<std::net::SocketAddr>) -> Origin {
        Origin {
            actor: caller.key_id.clone(),
            address: address.map(|a| a.ip().to_string()),
        }
    }
}
