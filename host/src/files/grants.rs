//! Provider isolation: a provider never sees a client's file id, storage or other
//! files. Each attempt gets, per input file (a property the model's schema marks
//! with `x-file-types`, nothing else the input holds), a URL minted for that attempt
//! alone (signed, lapsing within minutes, and refused as soon as the attempt is no
//! longer the execution's running one), or the bytes inline where the adapter asks.

use anyhow::{Context, Result};
use chrono::Duration;
use serde_json::Value;

use super::audit::{self, Action, AuditEntry};
use super::signing::{GrantQuery, VerifiedGrant};
use super::storage::{self, ByteStream};
use super::{FileRecord, FileStatus, Files, Origin};
use crate::clock;
use crate::error::{ApiError, Code, Detail, DetailCode};
use crate::file_fields::{FileField, field_file_ids, file_fields};
use crate::ids::has_prefix;
use crate::plugins::types;

/// One attempt of an execution: whom a grant is for.
#[derive(Debug, Clone)]
pub struct AttemptRef {
    pub organization_id: String,
    pub execution_id: String,
    pub attempt_id: String,
}

impl Files {
    /// Grants for the files in `input`'s properties that `input_schema` (the serving
    /// model's) marks as files, each a ready file of the attempt's organization, for
    /// `attempt` alone; with the bytes when `inline`.
    pub async fn mint_grants(
        &self,
        attempt: &AttemptRef,
        input: &Value,
        input_schema: &str,
        inline: bool,
    ) -> Result<Vec<types::FileGrant>> {
        let AttemptRef {
            organization_id,
            execution_id,
            attempt_id,
        } = attempt;
        let schema: Value =
            serde_json::from_str(input_schema).context("the model's input schema")?;
        let ids = field_file_ids(&file_fields(&schema), input);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = clock::now();
        let records: Vec<FileRecord> = self.store.read(|txn| {
            ids.iter()
                .filter_map(|id| super::get(txn, organization_id, id, now).transpose())
                .collect()
        })?;
        let expires = (now + Duration::seconds(self.settings.grant_seconds as i64)).timestamp();
        let mut grants = Vec::with_capacity(records.len());
        for record in &records {
            let bytes = if inline {
                let max = self.settings.max_inline_bytes;
                Some(storage::read_all(self.storage(), record.object_key(), max).await?)
            } else {
                None
            };
            let signature =
                self.signer
                    .sign_grant(&record.file_id, execution_id, attempt_id, expires);
            grants.push(types::FileGrant {
                file_id: record.file_id.clone(),
                url: format!(
                    "{}/files/grant/{}?execution={execution_id}&attempt={attempt_id}&expires={expires}&signature={signature}",
                    self.public_url, record.file_id
                ),
                content_type: record.content_type.clone(),
                bytes,
            });
        }
        let origin = Origin {
            actor: format!("attempt {attempt_id} of {execution_id}"),
            address: None,
        };
        self.store
            .write(move |txn| {
                for record in &records {
                    audit::record(txn, &AuditEntry::new(record, Action::Grant, &origin))?;
                }
                Ok(())
            })
            .await?;
        Ok(grants)
    }

    /// The first step of serving a grant URL, before anything is read: the grant
    /// the platform minted, unlapsed (else `401`).
    pub fn verify_grant(
        &self,
        file_id: &str,
        query: &GrantQuery,
    ) -> Result<VerifiedGrant, ApiError> {
        self.signer.verify_grant(file_id, query, clock::now())
    }

    /// A provider's `GET` of a verified grant: the bytes, while its attempt is still
    /// the `running` one of its execution (looked up after the verification), else
    /// `404`.
    pub async fn serve_grant(
        &self,
        grant: VerifiedGrant,
        running: Option<AttemptRef>,
        address: Option<String>,
    ) -> Result<(FileRecord, ByteStream), ApiError> {
        let dead = || ApiError::new(Code::NotFound, "This file grant is not valid any more.");
        let Some(running) = running.filter(|running| {
            running.execution_id == grant.execution_id && running.attempt_id == grant.attempt_id
        }) else {
            return Err(dead());
        };
        let now = clock::now();
        let record = self
            .store
            .read(|txn| super::get(txn, &running.organization_id, &grant.file_id, now))?
            .ok_or_else(dead)?;
        let origin = Origin {
            actor: format!("attempt {} of {}", grant.attempt_id, running.execution_id),
            address,
        };
        self.open_audited(record, Action::GrantFetch, origin).await
    }
}

impl Files {
    /// Checks the files an input names before anything is held: each must be a
    /// ready file of `org_id` (else `FILE_NOT_FOUND`) of a type the model accepts
    /// (else `FILE_FORMAT_UNSUPPORTED`).
    pub fn check_input_files(
        &self,
        org_id: &str,
        fields: &[FileField],
        input: &Value,
    ) -> Result<(), ApiError> {
        let now = clock::now();
        for field in fields {
            let Some(file_id) = input.get(&field.name).and_then(Value::as_str) else {
                continue;
            };
            let record = if has_prefix(file_id, "file") {
                self.store
                    .read(|txn| super::get_any(txn, org_id, file_id, now))?
            } else {
                None
            };
            let Some(record) = record else {
                return Err(ApiError::new(
                    Code::FileNotFound,
                    format!("input.{}: file {file_id:?} was not found", field.name),
                ));
            };
            if record.status != FileStatus::Ready {
                return Err(unconfirmed(&field.name, &record));
            }
            if !field.types.contains(&record.content_type) {
                return Err(ApiError::new(
                    Code::FileFormatUnsupported,
                    format!(
                        "input.{}: the file is {}; this model accepts {}",
                        field.name,
                        record.content_type,
                        field.types.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `FILE_NOT_FOUND` for a file of the organization that exists but cannot be used
/// yet, saying so in the message and in a detail on the field.
fn unconfirmed(field: &str, record: &FileRecord) -> ApiError {
    let state = match record.status {
        FileStatus::AwaitingUpload => "no bytes were uploaded for it yet",
        _ => "it was uploaded but is not confirmed",
    };
    let message = format!(
        "file {:?} exists, but {state}: confirm it with POST /v1/files/confirm before using it",
        record.file_id
    );
    ApiError {
        details: vec![Detail::new(
            format!("input.{field}"),
            DetailCode::InvalidValue,
            message.clone(),
        )],
        ..ApiError::new(Code::FileNotFound, format!("input.{field}: {message}"))
    }
}
