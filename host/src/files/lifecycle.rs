//! Deleting files, and removing the objects no record points to any more.

use anyhow::Result;

use super::Files;
use super::audit::{self, Action, AuditEntry};
use super::record::{FileRecord, Origin};
use super::{db, get_any};
use crate::auth::{self, Caller};
use crate::clock;
use crate::error::ApiError;

impl Files {
    /// Removes stored objects no record points to (any more).
    pub async fn discard(&self, objects: impl IntoIterator<Item = String>) {
        for object in objects {
            if let Err(error) = self.storage.delete(&object).await {
                tracing::warn!(%object, %error, "removing an unused object failed");
            }
        }
    }

    /// Removes objects noted unreferenced by a committed write, then the notes.
    pub(super) async fn purge(&self, objects: Vec<String>) {
        if objects.is_empty() {
            return;
        }
        self.discard(objects.clone()).await;
        let forgotten = self
            .store
            .write(move |txn| db::forget_unreferenced(txn, &objects))
            .await;
        if let Err(error) = forgotten {
            tracing::warn!(
                error = format!("{error:#}"),
                "the next sweep removes them again"
            );
        }
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
                db::remove(txn, &record)?;
                audit::record(txn, &AuditEntry::new(&record, Action::Delete, &origin))?;
                Ok(Some(record))
            })
            .await?
            .ok_or_else(ApiError::not_found)?;
        self.purge(vec![record.object_key().to_string()]).await;
        Ok(record)
    }

    /// The organization's file lifetime, else the server's default.
    pub(super) fn ttl_days_of(&self, org_id: &str) -> Result<u32> {
        let days = self.store.read(|txn| auth::file_ttl_days(txn, org_id))?;
        Ok(days.unwrap_or(self.settings.default_ttl_days))
    }
}
