//! The upload flow: a pending file and its signed URL, the bytes `PUT` to it, the
//! client's confirmation.

use anyhow::Result;
use bytes::Bytes;
use chrono::Duration;
use futures_util::{Stream, StreamExt};

use super::audit::{self, Action, AuditEntry};
use super::download::gone;
use super::quota;
use super::record::{FileRecord, FileStatus, IngestError, Origin, UploadTicket};
use super::signing::Signature;
use super::{Files, db, get_any};
use crate::auth::Caller;
use crate::clock;
use crate::error::{ApiError, Code, DetailCode};
use crate::ids::{new_id, new_short_id};

impl Files {
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
                let usage = db::usage_for_update(txn, &stored.organization_id)?;
                if let Err(full) = usage.admit_new_file(&settings) {
                    return Ok(Err(full));
                }
                if declared_size.is_some_and(|size| size > usage.room(&settings, 0)) {
                    return Ok(Err(quota::over_quota(&usage, &settings, 0)));
                }
                db::insert(txn, &stored)?;
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
            .read(|snapshot| db::usage(snapshot, &record.organization_id))?;
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
                let Some(mut record) = db::file(txn, &id)? else {
                    return Ok(Err(gone()));
                };
                if record.status == FileStatus::Ready {
                    return Ok(Err(ApiError::new(
                        Code::Conflict,
                        "the file was confirmed meanwhile; request a new upload URL",
                    )));
                }
                // Other uploads of the organization may have committed meanwhile.
                let usage = db::usage_for_update(txn, &record.organization_id)?;
                if ingested.size_bytes > usage.room(&settings, record.size_bytes) {
                    return Ok(Err(quota::over_quota(&usage, &settings, record.size_bytes)));
                }
                let replaced = record.object.replace(uploaded.clone());
                if let Some(object) = &replaced {
                    db::note_unreferenced(txn, object)?;
                }
                record.status = FileStatus::Uploaded;
                record.content_type = ingested.content_type.clone();
                record.size_bytes = ingested.size_bytes;
                record.sha256 = ingested.sha256.clone();
                db::save(txn, &record)?;
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
                db::remove_expiry(txn, &record)?;
                record.status = FileStatus::Ready;
                record.expires_at = now + Duration::days(record.ttl_days.into());
                db::save(txn, &record)?;
                audit::record(txn, &AuditEntry::new(&record, Action::Confirm, &origin))?;
                Ok(Ok(record))
            })
            .await?
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

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!("files may be at most {max} bytes; nothing was kept"),
    )
}
