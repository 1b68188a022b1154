//! Files of organizations: client uploads and copies of provider outputs.
//!
//! Zero trust: bytes stream into [`storage`] with the size cap enforced while they
//! arrive; the type comes from magic bytes, the size is measured and the SHA-256
//! computed on the way; what a client claims about a file is never stored. Files
//! leave the platform only as a stream to their owner, through a signed URL, or
//! through a grant minted for one execution attempt ([`grants`]); every such URL is
//! checked by [`signing`] before anything is read. Every upload, download, grant and
//! delete is audited ([`audit`]); each organization's storage is bounded by its
//! [`quota`]; expired files are deleted by [`Files::sweep`].

pub mod audit;
pub mod grants;
pub mod quota;
pub mod signing;
pub mod storage;
mod sweep;

use anyhow::Result;
use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use futures_util::{Stream, StreamExt};
use redb::{ReadTransaction, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use crate::auth::{self, Caller};
use crate::clock;
use crate::config::FileSettings;
use crate::error::{ApiError, Code, DetailCode};
use crate::ids::{new_id, new_short_id};
use crate::store::{self, FILES, FILES_BY_EXPIRY, FILES_BY_ORG, Store};
use audit::{Action, AuditEntry};
use quota::{InFlight, Reservation};
use signing::{Signature, UrlSigner};
use storage::{ByteStream, Storage};

/// The store's name for the key that signs file URLs.
pub const FILE_URL_KEY: &str = "file-url-key";

/// Bytes of a file's head read for magic bytes and image dimensions.
const SNIFF_BYTES: usize = 8192;

/// Stored objects whose record is gone, noted in the transaction that removed it:
/// their bytes are deleted after the commit ([`Files::purge`]), or by the next sweep
/// when a crash came in between.
const UNREFERENCED: store::JsonTable = TableDefinition::new("file_objects_unreferenced");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub fn view(&self) -> serde_json::Value {
        let uploaded = self.status != FileStatus::AwaitingUpload;
        serde_json::json!({
            "file_id": self.file_id,
            "object": "file",
            "status": self.status,
            "content_type": uploaded.then_some(&self.content_type),
            "size_bytes": uploaded.then_some(self.size_bytes),
            "sha256": uploaded.then_some(&self.sha256),
            "purpose": self.purpose,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        })
    }
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

pub struct Files {
    store: Store,
    storage: Arc<dyn Storage>,
    settings: FileSettings,
    signer: UrlSigner,
    /// bytes of uploads streaming in, counted against their organizations' quotas
    in_flight: InFlight,
    public_url: String,
}

impl Files {
    /// `url_key` signs upload, download and grant URLs: keep it across restarts
    /// (`store::signing_key(store, FILE_URL_KEY)`).
    pub fn new(
        store: Store,
        storage: Arc<dyn Storage>,
        settings: FileSettings,
        public_url: &str,
        url_key: Vec<u8>,
    ) -> Files {
        Files {
            store,
            storage,
            settings,
            signer: UrlSigner::new(url_key),
            in_flight: InFlight::default(),
            public_url: public_url.to_string(),
        }
    }

    pub fn settings(&self) -> &FileSettings {
        &self.settings
    }

    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// Streams `body` into a new object `key`: at most `max` bytes (and what the
    /// `quota` reservation, if any, can take), typed by magic bytes, measured and
    /// hashed. On any error nothing is kept.
    pub async fn ingest<S, E>(
        &self,
        key: &str,
        body: &mut S,
        max: u64,
        mut quota: Option<&mut Reservation<'_>>,
    ) -> Result<Ingested, IngestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut writer = self.storage.create(key).await?;
        let mut hasher = Sha256::new();
        let mut head = Vec::with_capacity(SNIFF_BYTES);
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| IngestError::Source(e.to_string()))?;
            size += chunk.len() as u64;
            if size > max {
                // The writer is dropped unfinished: the partial object goes with it.
                return Err(IngestError::TooLarge(max));
            }
            if let Some(reservation) = quota.as_deref_mut()
                && !reservation.take(chunk.len() as u64)
            {
                return Err(IngestError::OverQuota);
            }
            if head.len() < SNIFF_BYTES {
                let take = chunk.len().min(SNIFF_BYTES - head.len());
                head.extend_from_slice(&chunk[..take]);
            }
            hasher.update(&chunk);
            writer.write(&chunk).await?;
        }
        writer.commit().await?;
        let (content_type, format) = sniff(&head);
        Ok(Ingested {
            content_type,
            format,
            size_bytes: size,
            sha256: hex::encode(hasher.finalize()),
            dimensions: imagesize::blob_size(&head)
                .ok()
                .map(|size| (size.width as u64, size.height as u64)),
        })
    }

    /// Stores a provider's output as a new ready file of `org_id`. The record is the
    /// caller's to insert (with the execution's completion, in one transaction).
    pub async fn ingest_output<S, E>(
        &self,
        org_id: &str,
        body: S,
        max: u64,
    ) -> Result<(FileRecord, Ingested), IngestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let file_id = new_id("file");
        let mut body = body;
        // Counted toward the organization's quota, never refused by it.
        let ingested = self.ingest(&file_id, &mut body, max, None).await?;
        let now = clock::now();
        let ttl_days = self.ttl_days_of(org_id).map_err(std::io::Error::other)?;
        let record = FileRecord {
            file_id,
            organization_id: org_id.to_string(),
            status: FileStatus::Ready,
            content_type: ingested.content_type.clone(),
            size_bytes: ingested.size_bytes,
            purpose: "OUTPUT".into(),
            sha256: ingested.sha256.clone(),
            created_at: now,
            expires_at: now + Duration::days(ttl_days.into()),
            ttl_days,
            created_by: None,
            object: None,
        };
        Ok((record, ingested))
    }

    /// Removes stored objects no record points to (any more).
    pub async fn discard(&self, objects: impl IntoIterator<Item = String>) {
        for object in objects {
            if let Err(error) = self.storage.delete(&object).await {
                tracing::warn!(%object, %error, "removing an unused object failed");
            }
        }
    }

    /// Removes objects noted [`UNREFERENCED`] by a committed write, then the notes.
    async fn purge(&self, objects: Vec<String>) {
        if objects.is_empty() {
            return;
        }
        self.discard(objects.clone()).await;
        let forgotten = self
            .store
            .write(move |txn| {
                let mut table = txn.open_table(UNREFERENCED)?;
                for object in &objects {
                    table.remove(object.as_str())?;
                }
                Ok(())
            })
            .await;
        if let Err(error) = forgotten {
            tracing::warn!(
                error = format!("{error:#}"),
                "the next sweep removes them again"
            );
        }
    }

    /// `POST /v1/files/upload`: a pending file and the signed URL its bytes go to.
    /// `409` when the organization's quota has no room for another file; `413` when
    /// the size an older client declares (not trusted otherwise) cannot fit.
    pub async fn create_upload(
        &self,
        caller: &Caller,
        purpose: String,
        ttl_days: Option<u32>,
        declared_size: Option<u64>,
        origin: Origin,
    ) -> Result<UploadTicket, ApiError> {
        let max = self.settings.max_upload_bytes;
        if declared_size.is_some_and(|size| size > max) {
            return Err(too_large(max));
        }
        let now = clock::now();
        let url_expires = now + self.signed_url_lifetime();
        let ttl_days = match ttl_days {
            Some(days) => days,
            None => self.ttl_days_of(&caller.org_id)?,
        };
        let record = FileRecord {
            file_id: new_id("file"),
            organization_id: caller.org_id.clone(),
            status: FileStatus::AwaitingUpload,
            content_type: String::new(),
            size_bytes: 0,
            purpose,
            sha256: String::new(),
            created_at: now,
            expires_at: url_expires,
            ttl_days,
            created_by: Some(caller.key_id.clone()),
            object: None,
        };
        let stored = record.clone();
        let settings = self.settings.clone();
        self.store
            .write(move |txn| {
                let usage = quota::usage_for_update(txn, &stored.organization_id)?;
                if let Err(full) = usage.admit_new_file(&settings) {
                    return Ok(Err(full));
                }
                if declared_size.is_some_and(|size| size > usage.room(&settings, 0)) {
                    return Ok(Err(quota::over_quota(&usage, &settings, 0)));
                }
                insert(txn, &stored)?;
                audit::record(txn, &AuditEntry::new(&stored, Action::UploadUrl, &origin))?;
                Ok(Ok(()))
            })
            .await??;
        let upload_url = self.signed("upload", &record, url_expires);
        Ok(UploadTicket {
            record,
            upload_url,
            expires_at: url_expires,
        })
    }

    /// `PUT` to an upload URL: the bytes, streamed to storage.
    pub async fn receive_upload<S, E>(
        &self,
        file_id: &str,
        signature: &Signature,
        declared_length: Option<u64>,
        body: S,
        address: Option<String>,
    ) -> Result<FileRecord, ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let record = self.verify_signed("upload", file_id, signature)?;
        if record.status == FileStatus::Ready {
            return Err(ApiError::new(
                Code::Conflict,
                "this file was already confirmed; request a new upload URL",
            ));
        }
        let max = self.settings.max_upload_bytes;
        if declared_length.is_some_and(|length| length > max) {
            return Err(too_large(max));
        }
        // The bytes this upload may bring: what the quota leaves, plus what an
        // earlier PUT of it holds (they are replaced).
        let usage = self
            .store
            .read(|txn| quota::usage(txn, &record.organization_id))?;
        let replacing = record.size_bytes;
        let room = usage.room(&self.settings, replacing);
        if declared_length.is_some_and(|length| length > room) {
            return Err(quota::over_quota(&usage, &self.settings, replacing));
        }
        // Held until the record is committed, so that the bytes always count.
        let mut reservation = self.in_flight.reserve(&record.organization_id, room);
        let mut body = body;
        let object = format!("{file_id}-{}", new_short_id("upload"));
        let ingested = match self
            .ingest(&object, &mut body, max, Some(&mut reservation))
            .await
        {
            Ok(ingested) => ingested,
            Err(IngestError::TooLarge(max)) => {
                linger(&mut body).await;
                return Err(too_large(max));
            }
            Err(IngestError::OverQuota) => {
                linger(&mut body).await;
                return Err(quota::over_quota(&usage, &self.settings, replacing));
            }
            Err(IngestError::Source(error)) => {
                return Err(ApiError::invalid(
                    "body",
                    DetailCode::InvalidValue,
                    format!("the upload was interrupted: {error}"),
                ));
            }
            Err(IngestError::Storage(error)) => return Err(anyhow::Error::from(error).into()),
        };
        if ingested.size_bytes == 0 {
            self.discard([object]).await;
            return Err(ApiError::invalid(
                "body",
                DetailCode::Required,
                "the upload is empty: send the file's bytes",
            ));
        }
        let id = file_id.to_string();
        let origin = Origin {
            actor: record.created_by.clone().unwrap_or_default(),
            address,
        };
        let uploaded = object.clone();
        let settings = self.settings.clone();
        let updated = self
            .store
            .write(move |txn| {
                let Some(mut record) = store::get::<FileRecord>(&txn.open_table(FILES)?, &id)?
                else {
                    return Ok(Err(gone()));
                };
                if record.status == FileStatus::Ready {
                    return Ok(Err(ApiError::new(
                        Code::Conflict,
                        "the file was confirmed meanwhile; request a new upload URL",
                    )));
                }
                // Other uploads of the organization may have committed meanwhile.
                let usage = quota::usage_for_update(txn, &record.organization_id)?;
                if ingested.size_bytes > usage.room(&settings, record.size_bytes) {
                    return Ok(Err(quota::over_quota(&usage, &settings, record.size_bytes)));
                }
                let replaced = record.object.replace(uploaded);
                if let Some(object) = &replaced {
                    unreferenced(txn, object)?;
                }
                record.status = FileStatus::Uploaded;
                record.content_type = ingested.content_type;
                record.size_bytes = ingested.size_bytes;
                record.sha256 = ingested.sha256;
                save(txn, &record)?;
                audit::record(txn, &AuditEntry::new(&record, Action::Upload, &origin))?;
                Ok(Ok((record, replaced)))
            })
            .await?;
        drop(reservation);
        match updated {
            Ok((record, replaced)) => {
                // An earlier PUT of the same upload URL, superseded.
                self.purge(replaced.into_iter().collect()).await;
                Ok(record)
            }
            Err(refusal) => {
                self.discard([object]).await;
                Err(refusal)
            }
        }
    }

    /// `POST /v1/files/confirm`: an uploaded file becomes usable, with its TTL.
    pub async fn confirm(
        &self,
        caller: &Caller,
        file_id: &str,
        origin: Origin,
    ) -> Result<FileRecord, ApiError> {
        let org = caller.org_id.clone();
        let id = file_id.to_string();
        let now = clock::now();
        self.store
            .write(move |txn| {
                let Some(mut record) = get_any(txn, &org, &id, now)? else {
                    return Ok(Err(ApiError::not_found()));
                };
                match record.status {
                    FileStatus::AwaitingUpload => {
                        return Ok(Err(ApiError::new(
                            Code::Conflict,
                            "no bytes were uploaded for this file yet",
                        )));
                    }
                    FileStatus::Ready => return Ok(Ok(record)),
                    FileStatus::Uploaded => {}
                }
                remove_expiry(txn, &record)?;
                record.status = FileStatus::Ready;
                record.expires_at = now + Duration::days(record.ttl_days.into());
                save(txn, &record)?;
                audit::record(txn, &AuditEntry::new(&record, Action::Confirm, &origin))?;
                Ok(Ok(record))
            })
            .await?
    }

    /// A live file of the caller's organization, in any state.
    pub fn get(&self, caller: &Caller, file_id: &str) -> Result<FileRecord, ApiError> {
        let now = clock::now();
        self.store
            .read(|txn| get_any(txn, &caller.org_id, file_id, now))?
            .ok_or_else(ApiError::not_found)
    }

    /// A ready file of the caller's organization.
    fn get_ready(&self, caller: &Caller, file_id: &str) -> Result<FileRecord, ApiError> {
        let record = self.get(caller, file_id)?;
        if record.status != FileStatus::Ready {
            return Err(ApiError::new(
                Code::Conflict,
                "the file is not confirmed yet (POST /v1/files/confirm)",
            ));
        }
        Ok(record)
    }

    /// Newest first, after `starting_after`.
    pub fn list(
        &self,
        caller: &Caller,
        limit: usize,
        starting_after: Option<&str>,
    ) -> Result<(Vec<FileRecord>, bool), ApiError> {
        let now = clock::now();
        let org = caller.org_id.as_str();
        self.store
            .read(|txn| {
                let records = txn.open_table(FILES)?;
                let index = txn.open_table(FILES_BY_ORG)?;
                let prefix = format!("{org}/");
                let start = match starting_after {
                    None => prefix.clone(),
                    Some(cursor) => match get_any(txn, org, cursor, now)? {
                        Some(after) => by_org_key(&after) + "\u{0}",
                        None => {
                            return Ok(Err(ApiError::invalid(
                                "starting_after",
                                DetailCode::InvalidValue,
                                "no such file",
                            )));
                        }
                    },
                };
                let page = store::page(
                    &index,
                    &records,
                    &prefix,
                    &start,
                    limit,
                    |r: &FileRecord| r.expires_at > now,
                )?;
                Ok(Ok(page))
            })
            .map_err(ApiError::from)?
    }

    /// The bytes of a ready file of the caller's organization.
    pub async fn download(
        &self,
        caller: &Caller,
        file_id: &str,
        origin: Origin,
    ) -> Result<(FileRecord, ByteStream), ApiError> {
        let record = self.get_ready(caller, file_id)?;
        self.open_audited(record, Action::Download, origin).await
    }

    /// `GET /v1/files/{id}/url`: a signed download URL and when it lapses.
    pub async fn download_url(
        &self,
        caller: &Caller,
        file_id: &str,
        origin: Origin,
    ) -> Result<(FileRecord, String, DateTime<Utc>), ApiError> {
        let record = self.get_ready(caller, file_id)?;
        let expires = clock::now() + self.signed_url_lifetime();
        let entry = AuditEntry::new(&record, Action::DownloadUrl, &origin);
        self.store
            .write(move |txn| audit::record(txn, &entry))
            .await?;
        let url = self.signed("download", &record, expires);
        Ok((record, url, expires))
    }

    /// A `GET` of a signed download URL.
    pub async fn signed_download(
        &self,
        file_id: &str,
        signature: &Signature,
        address: Option<String>,
    ) -> Result<(FileRecord, ByteStream), ApiError> {
        let record = self.verify_signed("download", file_id, signature)?;
        if record.status != FileStatus::Ready {
            return Err(ApiError::not_found());
        }
        let origin = Origin {
            actor: "signed-url".into(),
            address,
        };
        self.open_audited(record, Action::Download, origin).await
    }

    async fn open_audited(
        &self,
        record: FileRecord,
        action: Action,
        origin: Origin,
    ) -> Result<(FileRecord, ByteStream), ApiError> {
        let stream = self
            .storage
            .open(record.object_key())
            .await
            .map_err(anyhow::Error::from)?;
        let entry = AuditEntry::new(&record, action, &origin);
        self.store
            .write(move |txn| audit::record(txn, &entry))
            .await?;
        Ok((record, stream))
    }

    /// `DELETE /v1/files/{id}`: the record goes first (nothing can reach the file
    /// any more), then its bytes.
    pub async fn delete(
        &self,
        caller: &Caller,
        file_id: &str,
        origin: Origin,
    ) -> Result<FileRecord, ApiError> {
        let org = caller.org_id.clone();
        let id = file_id.to_string();
        let now = clock::now();
        let record = self
            .store
            .write(move |txn| {
                let Some(record) = get_any(txn, &org, &id, now)? else {
                    return Ok(None);
                };
                remove(txn, &record)?;
                audit::record(txn, &AuditEntry::new(&record, Action::Delete, &origin))?;
                Ok(Some(record))
            })
            .await?
            .ok_or_else(ApiError::not_found)?;
        self.purge(vec![record.object_key().to_string()]).await;
        Ok(record)
    }

    /// The organization's file lifetime, else the server's default.
    fn ttl_days_of(&self, org_id: &str) -> Result<u32> {
        let days = self.store.read(|txn| auth::file_ttl_days(txn, org_id))?;
        Ok(days.unwrap_or(self.settings.default_ttl_days))
    }

    fn signed_url_lifetime(&self) -> Duration {
        Duration::seconds(self.settings.signed_url_seconds as i64)
    }

    /// `{public}/files/{kind}/{id}?expires=…&signature=…`, bound to the file, the
    /// kind of access and the expiry.
    fn signed(&self, kind: &str, record: &FileRecord, expires: DateTime<Utc>) -> String {
        let (expires, signature) = self.signer.sign_file(kind, &record.file_id, expires);
        format!(
            "{}/files/{kind}/{}?expires={expires}&signature={signature}",
            self.public_url, record.file_id
        )
    }

    /// The live file a signed URL names, when the signature holds and has not lapsed.
    ///
    /// The signature is checked first, with no store access: a forged or lapsed URL
    /// is `401`. A genuine, unexpired URL whose file no longer exists (deleted, or
    /// past its expiry) is `404`.
    fn verify_signed(
        &self,
        kind: &str,
        file_id: &str,
        signature: &Signature,
    ) -> Result<FileRecord, ApiError> {
        let now = clock::now();
        let verified = self.signer.verify_file(kind, file_id, signature, now)?;
        let record: Option<FileRecord> = self.store.read(|txn| txn.file(&verified.file_id))?;
        record.filter(|r| r.expires_at > now).ok_or_else(gone)
    }
}

/// Reads (and drops) a little more of a refused body, so that closing the
/// connection with unread bytes does not reset it before the client has read the
/// `413` (a "lingering close").
async fn linger<S, E>(body: &mut S)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    const LINGER_BYTES: usize = 1024 * 1024;
    let drain = async {
        let mut drained = 0;
        while let Some(Ok(chunk)) = body.next().await {
            drained += chunk.len();
            if drained > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), drain).await;
}

/// A genuine signed URL whose file was deleted or has expired.
fn gone() -> ApiError {
    ApiError::new(
        Code::NotFound,
        "The file no longer exists (it was deleted or has expired).",
    )
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!("files may be at most {max} bytes; nothing was kept"),
    )
}

/// Content type and format from magic bytes.
fn sniff(head: &[u8]) -> (String, String) {
    match infer::get(head) {
        Some(kind) => {
            let format = match kind.extension() {
                "jpg" => "jpeg",
                other => other,
            };
            (kind.mime_type().to_string(), format.to_string())
        }
        None => ("application/octet-stream".into(), "bin".into()),
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

/// Stores a new file record with its indexes (inside a write transaction).
pub fn insert(txn: &WriteTransaction, record: &FileRecord) -> Result<()> {
    save(txn, record)?;
    txn.open_table(FILES_BY_ORG)?
        .insert(by_org_key(record).as_str(), [].as_slice())?;
    Ok(())
}

/// Writes the record and its expiry index entry, and counts it in its
/// organization's quota.
fn save(txn: &WriteTransaction, record: &FileRecord) -> Result<()> {
    let before = txn.file(&record.file_id)?;
    quota::account(txn, before.as_ref(), Some(record))?;
    txn.open_table(FILES)?
        .insert(record.file_id.as_str(), store::encode(record)?.as_slice())?;
    txn.open_table(FILES_BY_EXPIRY)?
        .insert(expiry_key(record).as_str(), [].as_slice())?;
    Ok(())
}

fn remove_expiry(txn: &WriteTransaction, record: &FileRecord) -> Result<()> {
    txn.open_table(FILES_BY_EXPIRY)?
        .remove(expiry_key(record).as_str())?;
    Ok(())
}

/// Removes the record with its indexes, uncounts it and notes its bytes for removal.
fn remove(txn: &WriteTransaction, record: &FileRecord) -> Result<()> {
    let before = txn.file(&record.file_id)?;
    quota::account(txn, before.as_ref(), None)?;
    unreferenced(txn, record.object_key())?;
    txn.open_table(FILES)?.remove(record.file_id.as_str())?;
    txn.open_table(FILES_BY_ORG)?
        .remove(by_org_key(record).as_str())?;
    remove_expiry(txn, record)
}

fn unreferenced(txn: &WriteTransaction, object: &str) -> Result<()> {
    txn.open_table(UNREFERENCED)?
        .insert(object, [].as_slice())?;
    Ok(())
}

/// The live file `file_id` of `org_id` in any state; another organization's or an
/// expired file is indistinguishable from a missing one.
fn get_any(
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
trait ReadTables {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;

    struct Fixture {
        files: Files,
        caller: Caller,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let disk = storage::LocalDisk::open(&dir.path().join("files")).unwrap();
        let files = Files::new(
            store,
            Arc::new(disk),
            FileSettings::default(),
            "http://127.0.0.1:1",
            b"test key".to_vec(),
        );
        let caller = Caller {
            org_id: new_id("org"),
            key_id: new_id("key"),
            scope: Scope::Full,
        };
        Fixture {
            files,
            caller,
            _dir: dir,
        }
    }

    /// An upload with its bytes, not confirmed (its record lapses with its URL).
    async fn uploaded(fixture: &Fixture, bytes: &'static [u8]) -> FileRecord {
        let origin = Origin::caller(&fixture.caller, None);
        let files = &fixture.files;
        let ticket = files
            .create_upload(&fixture.caller, "INPUT".into(), Some(1), None, origin)
            .await
            .unwrap();
        let (expires, signature) =
            files
                .signer
                .sign_file("upload", &ticket.record.file_id, ticket.expires_at);
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(bytes))]);
        files
            .receive_upload(
                &ticket.record.file_id,
                &Signature { expires, signature },
                None,
                body,
                None,
            )
            .await
            .unwrap()
    }

    /// Regression: the sweep removed the records it had read as expired without
    /// looking again, and had deleted their bytes before that: a confirm committed in
    /// between answered `READY` for a file whose bytes were gone. The sweep's write
    /// now checks each record again, and bytes go only after its commit.
    #[tokio::test]
    async fn a_file_confirmed_while_the_sweep_runs_keeps_its_record_and_bytes() {
        let fixture = fixture();
        let files = &fixture.files;
        let confirmed = uploaded(&fixture, b"confirmed in between").await;
        let lapsed = uploaded(&fixture, b"never confirmed").await;
        // The sweep reads at a time when both upload URLs have lapsed…
        let later = confirmed.expires_at + Duration::minutes(1);
        let due = files.due_for_expiry(later).unwrap();
        let due_ids: Vec<&str> = due.iter().map(|(_, id)| id.as_str()).collect();
        assert!(due_ids.contains(&confirmed.file_id.as_str()), "{due_ids:?}");
        assert!(due_ids.contains(&lapsed.file_id.as_str()), "{due_ids:?}");
        // …then a confirm commits before the sweep's write.
        let origin = Origin::caller(&fixture.caller, None);
        let ready = files
            .confirm(&fixture.caller, &confirmed.file_id, origin)
            .await
            .unwrap();
        assert_eq!(ready.status, FileStatus::Ready);
        assert!(ready.expires_at > later);

        let removed = files.expire(due, later).await.unwrap();
        assert_eq!(removed, vec![lapsed.object_key().to_string()]);
        files.purge(removed).await;

        let kept = files.get(&fixture.caller, &confirmed.file_id).unwrap();
        assert_eq!(kept.status, FileStatus::Ready);
        let bytes = storage::read_all(files.storage(), kept.object_key(), 100)
            .await
            .unwrap();
        assert_eq!(bytes, b"confirmed in between");
        assert!(files.storage().open(lapsed.object_key()).await.is_err());
        let usage = files
            .store
            .read(|txn| quota::usage(txn, &fixture.caller.org_id))
            .unwrap();
        assert_eq!((usage.files, usage.bytes), (1, 20), "{usage:?}");
    }

    /// Bytes go only after the commit that removed their record; a crash in between
    /// must not leave them on disk for good: the next sweep deletes them.
    #[tokio::test]
    async fn bytes_whose_record_went_before_a_crash_are_deleted_by_the_next_sweep() {
        let fixture = fixture();
        let files = &fixture.files;
        let record = uploaded(&fixture, b"orphaned by a crash").await;
        let removed = record.clone();
        // The record's removal commits; the process dies before the bytes go.
        files
            .store
            .write(move |txn| remove(txn, &removed))
            .await
            .unwrap();
        assert!(files.storage().open(record.object_key()).await.is_ok());
        assert_eq!(files.sweep().await.unwrap(), 0);
        assert!(files.storage().open(record.object_key()).await.is_err());
        assert!(files.unreferenced_objects().unwrap().is_empty());
    }

    #[test]
    fn magic_bytes_decide_the_type_whatever_the_name() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x08\x08\x02\0\0\0";
        assert_eq!(sniff(png), ("image/png".into(), "png".into()));
        assert_eq!(
            sniff(b"\xff\xd8\xff\xe0\0\x10JFIF"),
            ("image/jpeg".into(), "jpeg".into())
        );
        assert_eq!(
            sniff(b"just text"),
            ("application/octet-stream".into(), "bin".into())
        );
    }
}
