//! The expiry sweep: files whose time has come are removed, each record checked
//! again in the transaction that removes it, and their bytes deleted only after
//! that commit (or, after a crash in between, by the next sweep).

use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;

use super::audit::{self, Action, AuditEntry};
use super::{Files, Origin, db};
use crate::clock;

impl Files {
    /// Deletes every file whose time has come, and the bytes of files removed
    /// before a crash could delete them. Returns how many files expired.
    pub async fn sweep(&self) -> Result<usize> {
        let leftovers = self.unreferenced_objects()?;
        self.purge(leftovers).await;
        let now = clock::now();
        let due = self.due_for_expiry(now)?;
        if due.is_empty() {
            return Ok(0);
        }
        let objects = self.expire(due, now).await?;
        let count = objects.len();
        self.purge(objects).await;
        Ok(count)
    }

    /// Up to 1,000 objects noted unreferenced.
    pub(super) fn unreferenced_objects(&self) -> Result<Vec<String>> {
        self.store.read(|snapshot| db::unreferenced(snapshot, 1000))
    }

    /// Up to 1,000 files whose expiry has passed at `now`.
    pub(super) fn due_for_expiry(&self, now: DateTime<Utc>) -> Result<Vec<db::Due>> {
        self.store
            .read(|snapshot| db::due_for_expiry(snapshot, now, 1000))
    }

    /// Removes the records of `due` that are still expired at `now`, checked again
    /// inside the write (a confirm may have committed since they were read, giving
    /// the file a new expiry), and answers the objects whose bytes may go now that
    /// no record points to them.
    pub(super) async fn expire(
        &self,
        due: Vec<db::Due>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        self.store
            .write(move |txn| {
                let origin = Origin {
                    actor: "expiry".into(),
                    address: None,
                };
                let mut objects = Vec::new();
                for due in &due {
                    match db::file(txn, &due.file_id)? {
                        Some(record) if record.expires_at <= now => {
                            db::remove(txn, &record)?;
                            audit::record(txn, &AuditEntry::new(&record, Action::Expire, &origin))?;
                            objects.push(record.object_key().to_string());
                        }
                        Some(_) => {}
                        // An index entry left without its record.
                        None => db::drop_due(txn, due)?,
                    }
                }
                Ok(objects)
            })
            .await
    }

    /// Runs [`Files::sweep`] every `sweep_interval_seconds` (of the service clock).
    pub fn start_sweeper(self: &Arc<Self>) {
        let files = self.clone();
        let interval = Duration::seconds(self.settings.sweep_interval_seconds.max(1) as i64);
        tokio::spawn(async move {
            loop {
                match files.sweep().await {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(count, "expired files deleted"),
                    Err(error) => {
                        tracing::error!(error = format!("{error:#}"), "file sweep failed")
                    }
                }
                clock::sleep_until(
                    clock::now() + interval,
                    std::time::Duration::from_secs(3600),
                )
                .await;
            }
        });
    }
}
