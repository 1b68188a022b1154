//! Files the platform stores for organizations: provider outputs (and, later,
//! uploads). Blobs live on local disk under `$DATA/files`; records live in the store.
//! Content type comes from magic bytes and size is measured, never trusted.

use anyhow::{Context, Result};
use chrono::{DateTime, Duration, Utc};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use crate::ids::new_id;
use crate::store::{self, FILES, FILES_BY_ORG};

/// How long output files are kept unless configured otherwise.
pub const OUTPUT_TTL_DAYS: i64 = 30;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRecord {
    pub file_id: String,
    pub organization_id: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub purpose: String,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl FileRecord {
    /// The file object of SPEC §8.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "file_id": self.file_id,
            "content_type": self.content_type,
            "size_bytes": self.size_bytes,
            "purpose": self.purpose,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        })
    }
}

/// Facts read from a stored blob.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub record: FileRecord,
    /// `png`, `jpeg`, `webp`, `mp4`, …
    pub format: String,
    pub dimensions: Option<(u64, u64)>,
}

#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(dir: PathBuf) -> Result<FileStore> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(FileStore { dir })
    }

    pub fn path(&self, file_id: &str) -> PathBuf {
        self.dir.join(file_id)
    }

    /// A fresh id and the path its blob should be written to.
    pub fn reserve(&self) -> (String, PathBuf) {
        let id = new_id("file");
        let path = self.path(&id);
        (id, path)
    }

    /// Writes `bytes` as a new blob and returns its id.
    pub async fn write_blob(&self, bytes: &[u8]) -> Result<String> {
        let (id, path) = self.reserve();
        tokio::fs::write(&path, bytes).await?;
        tokio::fs::File::open(&path).await?.sync_all().await?;
        Ok(id)
    }

    /// Reads what a blob is (type from magic bytes, size, hash, image dimensions) and
    /// builds its record for `org_id`. The record is not stored here.
    pub async fn inspect(&self, file_id: &str, org_id: &str, purpose: &str) -> Result<Inspected> {
        let path = self.path(file_id);
        let file_id = file_id.to_string();
        let org_id = org_id.to_string();
        let purpose = purpose.to_string();
        tokio::task::spawn_blocking(move || inspect_blocking(&path, file_id, org_id, purpose))
            .await?
    }

    pub async fn remove_blob(&self, file_id: &str) {
        let _ = tokio::fs::remove_file(self.path(file_id)).await;
    }
}

fn inspect_blocking(
    path: &Path,
    file_id: String,
    org_id: String,
    purpose: String,
) -> Result<Inspected> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut head = Vec::with_capacity(8192);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        if head.len() < 8192 {
            let take = read.min(8192 - head.len());
            head.extend_from_slice(&buffer[..take]);
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    let kind = infer::get(&head);
    let content_type = kind
        .map(|k| k.mime_type().to_string())
        .unwrap_or_else(|| "application/octet-stream".into());
    let format = kind
        .map(|k| k.extension().to_string())
        .unwrap_or_else(|| "bin".into());
    let format = if format == "jpg" {
        "jpeg".to_string()
    } else {
        format
    };
    let dimensions = imagesize::blob_size(&head)
        .ok()
        .map(|size| (size.width as u64, size.height as u64));
    let now = Utc::now();
    Ok(Inspected {
        record: FileRecord {
            file_id,
            organization_id: org_id,
            content_type,
            size_bytes: size,
            purpose,
            sha256: hex::encode(hasher.finalize()),
            created_at: now,
            expires_at: now + Duration::days(OUTPUT_TTL_DAYS),
        },
        format,
        dimensions,
    })
}

/// Stores a file record (inside a write transaction).
pub fn insert(txn: &WriteTransaction, record: &FileRecord) -> Result<()> {
    txn.open_table(FILES)?
        .insert(record.file_id.as_str(), store::encode(record)?.as_slice())?;
    txn.open_table(FILES_BY_ORG)?.insert(
        format!("{}/{}", record.organization_id, record.file_id).as_str(),
        [].as_slice(),
    )?;
    Ok(())
}

/// The live file `file_id` of `org_id`; another organization's or an expired file
/// is indistinguishable from a missing one.
pub fn get(
    txn: &ReadTransaction,
    org_id: &str,
    file_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<FileRecord>> {
    let record: Option<FileRecord> = store::get(&txn.open_table(FILES)?, file_id)?;
    Ok(record.filter(|r| r.organization_id == org_id && r.expires_at > now))
}
