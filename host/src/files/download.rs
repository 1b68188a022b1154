//! Reading files: lookups and listing for their owner, downloads, and the signed
//! URLs that reach them.

use anyhow::Result;
use chrono::{DateTime, Duration, Utc};

use super::Files;
use super::audit::{self, Action, AuditEntry};
use super::record::{FileRecord, FileStatus, Origin};
use super::signing::Signature;
use super::storage::ByteStream;
use super::{db, get_any};
use crate::auth::Caller;
use crate::clock;
use crate::error::{ApiError, Code, DetailCode};

impl Files {
    /// A live file of the caller's organization, in any state.
    pub fn get(&self, caller: &Caller, file_id: &str) -> Result<FileRecord, ApiError> {
        let now = clock::now();
        self.store
            .read(|txn| get_any(txn, &caller.org_id, file_id, now))?
            .ok_or_else(ApiError::not_found)
    }

    /// A ready file of the caller's organization.
    pub(super) fn get_ready(&self, caller: &Caller, file_id: &str) -> Result<FileRecord, ApiError> {
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
            .read(|snapshot| {
                let after = match starting_after {
                    None => None,
                    Some(cursor) => match get_any(snapshot, org, cursor, now)? {
                        Some(after) => Some(after),
                        None => {
                            return Ok(Err(ApiError::invalid(
                                "starting_after",
                                DetailCode::InvalidValue,
                                "no such file",
                            )));
                        }
                    },
                };
                let page =
                    db::page_of_org(snapshot, org, after.as_ref(), limit, |r| r.expires_at > now)?;
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

    pub(super) async fn open_audited(
        &self,
        record: FileRecord,
        action: Action,
        origin: Origin,
    ) -> Result<(FileRecord, ByteStream), ApiError> {
        let stream = match self.storage.open(record.object_key()).await {
            Ok(stream) => stream,
            // A record whose bytes are gone (a storage restored from an older
            // backup, an object removed by hand): the file no longer exists.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(file = %record.file_id, "a file's bytes are missing from storage");
                return Err(gone());
            }
            Err(error) => return Err(anyhow::Error::from(error).into()),
        };
        let entry = AuditEntry::new(&record, action, &origin);
        self.store
            .write(move |txn| audit::record(txn, &entry))
            .await?;
        Ok((record, stream))
    }

    pub(super) fn signed_url_lifetime(&self) -> Duration {
        Duration::seconds(self.settings.signed_url_seconds as i64)
    }

    /// `{public}/files/{kind}/{id}?expires=…&signature=…`, bound to the file, the
    /// kind of access and the expiry.
    pub(super) fn signed(&self, kind: &str, record: &FileRecord, expires: DateTime<Utc>) -> String {
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
    pub(super) fn verify_signed(
        &self,
        kind: &str,
        file_id: &str,
        signature: &Signature,
    ) -> Result<FileRecord, ApiError> {
        let now = clock::now();
        let verified = self.signer.verify_file(kind, file_id, signature, now)?;
        let record: Option<FileRecord> = self
            .store
            .read(|snapshot| db::file(snapshot, &verified.file_id))?;
        record.filter(|r| r.expires_at > now).ok_or_else(gone)
    }
}

/// A genuine signed URL whose file was deleted or has expired.
pub(super) fn gone() -> ApiError {
    ApiError::new(
        Code::NotFound,
        "The file no longer exists (it was deleted or has expired).",
    )
}
