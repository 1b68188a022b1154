//! Where file bytes live. Callers see one small trait; local disk is the embedded
//! backend, and an object store (S3 and kin, e.g. through the `object_store` crate)
//! fits behind the same trait: `create` maps to a multipart upload, `commit` to its
//! completion, `open` to a ranged GET stream.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use std::io;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

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

pub trait ObjectWriter: Send {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, io::Result<()>>;
    /// Makes the object durable and visible.
    fn commit(self: Box<Self>) -> BoxFuture<'static, io::Result<()>>;
}

/// Objects as files under one directory; partial writes go to `partial/` and are
/// renamed into place on commit.
pub struct LocalDisk {
    objects: PathBuf,
    partial: PathBuf,
}

impl LocalDisk {
    /// Opens (creating) the directory and removes partial writes a crash left.
    pub fn open(dir: &Path) -> io::Result<LocalDisk> {
        let objects = dir.join("objects");
        let partial = dir.join("partial");
        std::fs::create_dir_all(&objects)?;
        if partial.exists() {
            std::fs::remove_dir_all(&partial)?;
        }
        std::fs::create_dir_all(&partial)?;
        Ok(LocalDisk { objects, partial })
    }

    fn object(&self, key: &str) -> io::Result<PathBuf> {
        let valid = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(self.objects.join(key))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid object key",
            ))
        }
    }
}

impl Storage for LocalDisk {
    fn create<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Box<dyn ObjectWriter>>> {
        async move {
            let target = self.object(key)?;
            let partial = self
                .partial
                .join(format!("{key}.{}", uuid::Uuid::new_v4().simple()));
            let file = tokio::fs::File::create(&partial).await?;
            Ok(Box::new(LocalWriter {
                file: Some(file),
                partial,
                target,
            }) as Box<dyn ObjectWriter>)
        }
        .boxed()
    }

    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<ByteStream>> {
        async move {
            let file = tokio::fs::File::open(self.object(key)?).await?;
            Ok(tokio_util::io::ReaderStream::new(file).boxed())
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>> {
        async move {
            match tokio::fs::remove_file(self.object(key)?).await {
                Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
                _ => Ok(()),
            }
        }
        .boxed()
    }
}

struct LocalWriter {
    /// `None` once committed
    file: Option<tokio::fs::File>,
    partial: PathBuf,
    target: PathBuf,
}

impl ObjectWriter for LocalWriter {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        async move {
            match &mut self.file {
                Some(file) => file.write_all(chunk).await,
                None => Err(io::Error::other("the object was already committed")),
            }
        }
        .boxed()
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, io::Result<()>> {
        async move {
            let file = self
                .file
                .take()
                .ok_or_else(|| io::Error::other("the object was already committed"))?;
            file.sync_all().await?;
            drop(file);
            // The file record that points at these bytes is committed after this
            // returns: the new name must survive a power loss before it is.
            let (partial, target) = (self.partial.clone(), self.target.clone());
            tokio::task::spawn_blocking(move || crate::durable::rename(&partial, &target))
                .await
                .map_err(io::Error::other)?
        }
        .boxed()
    }
}

impl Drop for LocalWriter {
    /// An upload cut short (too large, client gone, task cancelled) leaves nothing.
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
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
