//! A real S3-compatible server for the tests: `moto`'s server (installed, pinned,
//! by `make pydeps` into `target/pydeps-s3`), one per test, on a free loopback port,
//! with one bucket. Where it is not installed the tests that need it are skipped,
//! except in CI, where that fails them.

use std::process::Stdio;
use std::time::Duration;
use tokio::process::Child;

use crate::support::{pydeps_python, wait_until};

pub struct S3Server {
    pub url: String,
    pub bucket: &'static str,
    _child: Child,
}

/// The credentials the server is given (moto takes any).
pub const CREDENTIALS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "modelroute-test"),
    ("AWS_SECRET_ACCESS_KEY", "modelroute-test-secret"),
];

impl S3Server {
    /// Starts moto with a bucket `files`, or `None` (the test skips) where moto is
    /// not installed outside CI.
    pub async fn start() -> Option<S3Server> {
        let mut moto = pydeps_python("pydeps-s3", "moto.server")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let child = moto
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting moto");
        let server = S3Server {
            url: format!("http://127.0.0.1:{port}"),
            bucket: "files",
            _child: child,
        };
        let bucket = format!("{}/{}", server.url, server.bucket);
        wait_until(
            "moto creates the bucket",
            Duration::from_secs(30),
            || async {
                reqwest::Client::new()
                    .put(&bucket)
                    .send()
                    .await
                    .is_ok_and(|reply| reply.status().is_success())
            },
        )
        .await;
        Some(server)
    }

    /// The `[files.storage]` table of a server using this bucket.
    pub fn config(&self) -> String {
        format!(
            "\n[files.storage]\nbackend = \"s3\"\nendpoint = {:?}\nbucket = {:?}\n",
            self.url, self.bucket
        )
    }

    /// The keys in the bucket.
    pub async fn keys(&self) -> Vec<String> {
        let listing = reqwest::get(format!("{}/{}", self.url, self.bucket))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        tags(&listing, "Key")
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub async fn unfinished_uploads(&self) -> Vec<String> {
        let listing = reqwest::get(format!("{}/{}?uploads", self.url, self.bucket))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        tags(&listing, "UploadId")
    }
}

/// The texts of the `<tag>` elements of an S3 XML listing.
fn tags(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(text, _)| text.to_string()))
        .collect()
}
