//! The embedded backend: objects as files under one directory.

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use std::io;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

use super::{ByteStream, ObjectWriter, Storage, checked_key};

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
        Ok(self.objects.join(checked_key(key)?))
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
