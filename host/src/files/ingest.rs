//! Bytes streaming into storage: capped, typed by magic bytes, measured and hashed.

use anyhow::Result;
use bytes::Bytes;
use chrono::Duration;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::Files;
use super::quota::Reservation;
use super::record::{FileRecord, FileStatus, IngestError, Ingested};
use crate::clock;
use crate::ids::new_id;

/// Bytes of a file's head read for magic bytes and image dimensions.
const SNIFF_BYTES: usize = 8192;

impl Files {
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

#[cfg(test)]
mod tests {
    use super::*;
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
