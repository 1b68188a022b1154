//! Where file bytes live. Callers see one small trait; local disk is the embedded
//! backend ([`local`]), an S3-compatible object store the one for many hosts
//! ([`s3`]: `create` is a multipart upload, `commit` its completion, `open` a GET
//! stream).

mod local;
mod s3;

pub use local::LocalDisk;
pub use s3::ObjectStore;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use std::io;

pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Objects by key. Keys are file ids: ASCII letters, digits, `_` and `-`.
pub trait Storage: Send + Sync + 'static {
    /// Starts a new object. Nothing is readable under `key` until the writer
    /// commits; a writer dropped or aborted before that leaves nothing behind.
    fn create<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Box<dyn ObjectWriter>>>;
    /// The object's bytes as a stream; `NotFound` when there is none.
    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<ByteStream>>;
    /// Removes the object; removing a missing object succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>>;
}

/// Whether `key` is one the backends take: ASCII letters, digits, `_` and `-`.
fn checked_key(key: &str) -> io::Result<&str> {
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(key)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid object key",
        ))
    }
}

pub trait ObjectWriter: Send {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, io::Result<()>>;
    /// Makes the object durable and visible.
    fn commit(self: Box<Self>) -> BoxFuture<'static, io::Result<()>>;
}

/// Reads a whole object (for inline delivery), refusing more than `max` bytes.
pub async fn read_all(storage: &dyn Storage, key: &str, max: u64) -> io::Result<Vec<u8>> {
    let mut stream = storage.open(key).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if (bytes.len() + chunk.len()) as u64 > max {
            return Err(io::Error::other(format!("the object exceeds {max} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_object_appears_only_when_committed_and_a_dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let disk = LocalDisk::open(dir.path()).unwrap();
        let mut writer = disk.create("file_a").await.unwrap();
        writer.write(b"hello ").await.unwrap();
        assert!(disk.open("file_a").await.is_err(), "visible before commit");
        writer.write(b"world").await.unwrap();
        writer.commit().await.unwrap();
        assert_eq!(
            read_all(&disk, "file_a", 100).await.unwrap(),
            b"hello world"
        );
        assert!(read_all(&disk, "file_a", 5).await.is_err());

        let mut abandoned = disk.create("file_b").await.unwrap();
        abandoned.write(b"partial").await.unwrap();
        drop(abandoned);
        assert!(disk.open("file_b").await.is_err());
        assert_eq!(
            std::fs::read_dir(dir.path().join("partial"))
                .unwrap()
                .count(),
            0
        );

        disk.delete("file_a").await.unwrap();
        disk.delete("file_a").await.unwrap();
        assert!(disk.open("file_a").await.is_err());
        assert!(disk.create("../escape").await.is_err());
    }
}
