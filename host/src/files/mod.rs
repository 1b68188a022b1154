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
mod db;
mod download;
pub mod grants;
mod ingest;
mod lifecycle;
pub mod quota;
mod record;
pub mod signing;
pub mod storage;
mod sweep;
mod upload;

use anyhow::Result;
use chrono::{DateTime, Utc};
use std::sync::Arc;

use crate::config::FileSettings;
use crate::store::{Reader, Store};
pub use db::insert;
use quota::InFlight;
pub use record::{FileRecord, FileStatus, FileView, IngestError, Ingested, Origin, UploadTicket};
use signing::UrlSigner;
use storage::Storage;

/// The store's name for the key that signs file URLs.
pub const FILE_URL_KEY: &str = "file-url-key";

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
}

/// The live file `file_id` of `org_id` in any state; another organization's or an
/// expired file is indistinguishable from a missing one.
fn get_any(
    reader: &impl Reader,
    org_id: &str,
    file_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<FileRecord>> {
    let record = db::file(reader, file_id)?;
    Ok(record.filter(|r| r.organization_id == org_id && r.expires_at > now))
}

/// The live, ready file `file_id` of `org_id` (what executions may use).
pub fn get(
    reader: &impl Reader,
    org_id: &str,
    file_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<FileRecord>> {
    Ok(get_any(reader, org_id, file_id, now)?.filter(|r| r.status == FileStatus::Ready))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Caller, Scope};
    use crate::ids::new_id;
    use bytes::Bytes;
    use chrono::Duration;
    use signing::Signature;

    struct Fixture {
        files: Files,
        caller: Caller,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("store.redb"),
            crate::store::Commits::Durable,
            crate::store::TEST_CACHE,
        )
        .unwrap();
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
        let due_ids: Vec<&str> = due.iter().map(|due| due.file_id.as_str()).collect();
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
            .read(|txn| db::usage(txn, &fixture.caller.org_id))
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
            .write(move |txn| db::remove(txn, &removed))
            .await
            .unwrap();
        assert!(files.storage().open(record.object_key()).await.is_ok());
        assert_eq!(files.sweep().await.unwrap(), 0);
        assert!(files.storage().open(record.object_key()).await.is_err());
        assert!(files.unreferenced_objects().unwrap().is_empty());
    }
}
