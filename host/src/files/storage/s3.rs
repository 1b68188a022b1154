//! File bytes in an S3-compatible object store (AWS S3, MinIO, Ceph, R2, …), for
//! more than one host. Uploads stream through a multipart upload (parts of
//! [`PART_BYTES`], so memory stays bounded whatever the size); an object appears
//! only when its upload completes, and an upload dropped before that is aborted.
//! The store is never exposed: clients and providers reach bytes only through the
//! platform's signed URLs.

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use std::io;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

use super::{ByteStream, ObjectWriter, Storage, checked_key};
use crate::config::S3Settings;

/// The size of an upload's parts (S3's minimum is 5 MiB).
const PART_BYTES: usize = 8 * 1024 * 1024;

/// A bucket of an S3-compatible store.
pub struct ObjectStore {
    store: Arc<AmazonS3>,
}

impl ObjectStore {
    /// Connects to the bucket of `settings`, with the credentials of the standard
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`)
    /// variables, and checks that the bucket answers.
    pub async fn connect(settings: &S3Settings) -> anyhow::Result<ObjectStore> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder.build()?;
        // A key no file has: `NotFound` says the bucket answers and lets us in.
        match store.head(&Path::from("modelroute-startup-check")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => anyhow::bail!(
                "[files.storage] bucket {:?} does not answer: {error}",
                settings.bucket
            ),
        }
        Ok(ObjectStore {
            store: Arc::new(store),
        })
    }
}

fn path(key: &str) -> io::Result<Path> {
    Ok(Path::from(checked_key(key)?))
}

fn io_error(error: object_store::Error) -> io::Error {
    match error {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, error),
        error => io::Error::other(error),
    }
}

impl Storage for ObjectStore {
    fn create<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Box<dyn ObjectWriter>>> {
        async move {
            let writer = BufWriter::with_capacity(self.store.clone(), path(key)?, PART_BYTES);
            Ok(Box::new(Upload {
                writer: Some(writer),
            }) as Box<dyn ObjectWriter>)
        }
        .boxed()
    }

    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<ByteStream>> {
        async move {
            let object = self.store.get(&path(key)?).await.map_err(io_error)?;
            Ok(object.into_stream().map_err(io_error).boxed())
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>> {
        async move {
            match self.store.delete(&path(key)?).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(error) => Err(io_error(error)),
            }
        }
        .boxed()
    }
}

/// An object being uploaded; `None` once completed.
struct Upload {
    writer: Option<BufWriter>,
}

impl ObjectWriter for Upload {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        async move {
            match &mut self.writer {
                Some(writer) => writer.write_all(chunk).await,
                None => Err(io::Error::other("the object was already committed")),
            }
        }
        .boxed()
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, io::Result<()>> {
        let writer = self.writer.take();
        async move {
            let mut writer =
                writer.ok_or_else(|| io::Error::other("the object was already committed"))?;
            writer.shutdown().await
        }
        .boxed()
    }
}

impl Drop for Upload {
    /// An upload cut short (too large, client gone, task cancelled) leaves no
    /// object, and its parts are aborted rather than left to the bucket's lifecycle.
    fn drop(&mut self) {
        if let (Some(mut writer), Ok(runtime)) =
            (self.writer.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                if let Err(error) = writer.abort().await {
                    tracing::warn!(%error, "aborting an unfinished upload failed");
                }
            });
        }
    }
}
