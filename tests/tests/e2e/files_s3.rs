//! File bytes in an S3-compatible object store (`[files.storage] backend = "s3"`),
//! against a real S3-compatible server (moto): uploads, outputs, signed URLs and
//! deletes go to the bucket; large uploads go up in parts with the cap enforced
//! while they stream; the store itself is never exposed.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

use modelroute_tests::emulators::{DEFAULT_TOKEN, png, replicate};

use crate::object_store::{CREDENTIALS, S3Server};
use crate::support::{Options, Server, flux_input, replicate_with_files, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// Upload → PUT → confirm of `bytes`; the PUT's status, and the file id.
async fn upload(server: &Server, bytes: Vec<u8>) -> (StatusCode, String) {
    let ticket = server
        .post("/v1/files/upload", json!({"purpose": "INPUT"}))
        .await;
    assert_eq!(ticket.status, StatusCode::CREATED, "{:?}", ticket.body);
    let file_id = ticket.body["file_id"].as_str().unwrap().to_string();
    let put = reqwest::Client::new()
        .put(ticket.body["upload_url"].as_str().unwrap())
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = put.status();
    if status == StatusCode::OK {
        let confirmed = server
            .post("/v1/files/confirm", json!({ "file_id": file_id }))
            .await;
        assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    }
    (status, file_id)
}

async fn download(url: &str, key: Option<&str>) -> Vec<u8> {
    let mut request = reqwest::Client::new().get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let reply = request.send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK, "{url}");
    reply.bytes().await.unwrap().to_vec()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn uploads_and_outputs_live_in_the_bucket_behind_the_platforms_signed_urls() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let config = s3.config();
    let server = Server::start_with(
        &[replicate_with_files(&emulator)],
        Options {
            config: &config,
            env: CREDENTIALS,
            ..Options::default()
        },
    )
    .await;
    let image = png(16, 16, 7);
    let (status, file_id) = upload(&server, image.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let keys = s3.keys().await;
    assert!(keys.len() == 1 && keys[0].starts_with(&file_id), "{keys:?}");
    let api = format!("{}/v1/files/{file_id}/download", server.url);
    assert_eq!(download(&api, Some(&server.api_key)).await, image);
    let signed = server
        .call(
            Method::GET,
            &format!("/v1/files/{file_id}/url"),
            Some(&server.api_key),
            None,
            &[],
        )
        .await;
    let url = signed.body["url"].as_str().unwrap();
    assert!(
        url.starts_with(&server.url),
        "served by the platform: {url}"
    );
    assert!(!signed.body.to_string().contains(&s3.url));
    assert_eq!(download(url, None).await, image);

    // A provider's output is fetched by the host and stored in the bucket too.
    let body = json!({"model": "flux-1.1-pro", "input": flux_input()});
    let created = server.post("/v1/executions", body).await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{:?}", created.body);
    let done = server
        .wait_terminal(created.body["id"].as_str().unwrap(), WAIT)
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let output = done["result"]["output"]["images"][0]["file_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(s3.keys().await.iter().any(|key| key.starts_with(&output)));
    let bytes = download(
        &format!("{}/v1/files/{output}/download", server.url),
        Some(&server.api_key),
    )
    .await;
    assert!(bytes.starts_with(b"\x89PNG"));

    let deleted = server
        .call(
            Method::DELETE,
            &format!("/v1/files/{file_id}"),
            Some(&server.api_key),
            None,
            &[],
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{:?}", deleted.body);
    let keys = s3.keys().await;
    assert!(
        !keys.iter().any(|key| key.starts_with(&file_id)),
        "{keys:?}"
    );
    let local = server.data.path().join("state/files/objects");
    assert_eq!(std::fs::read_dir(local).map_or(0, |dir| dir.count()), 0);
    server.assert_ledger_verifies().await;
}

/// An upload larger than a part goes up as a multipart upload and reads back
/// whole; one over the cap is refused while it streams (`413`), and leaves no
/// object and no unfinished upload in the bucket.
#[tokio::test]
async fn large_uploads_go_up_in_parts_and_one_over_the_cap_leaves_nothing() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let config = format!("\n[files]\nmax_upload_bytes = 20000000\n{}", s3.config());
    let server = Server::start_with(
        &[],
        Options {
            config: &config,
            env: CREDENTIALS,
            ..Options::default()
        },
    )
    .await;
    let large: Vec<u8> = (0..18_000_000u32).map(|i| (i % 251) as u8).collect();
    let (status, file_id) = upload(&server, large.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let object: Value = server
        .call(
            Method::GET,
            &format!("/v1/files/{file_id}"),
            Some(&server.api_key),
            None,
            &[],
        )
        .await
        .body;
    assert_eq!(object["size_bytes"], json!(large.len()));
    assert_eq!(object["sha256"], json!(sha256(&large)));
    let read = download(
        &format!("{}/v1/files/{file_id}/download", server.url),
        Some(&server.api_key),
    )
    .await;
    assert_eq!(sha256(&read), sha256(&large));

    // No length declared: parts go up while the bytes stream in, until the cap.
    let ticket = server
        .post("/v1/files/upload", json!({"purpose": "INPUT"}))
        .await;
    let chunks = (0..25).map(|_| Ok::<_, std::io::Error>(vec![7u8; 1_000_000]));
    let refused = reqwest::Client::new()
        .put(ticket.body["upload_url"].as_str().unwrap())
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("the server answers before the client finishes");
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(s3.keys().await.len(), 1, "only the accepted upload is kept");
    wait_until(
        "the refused upload is aborted",
        Duration::from_secs(10),
        || async { s3.unfinished_uploads().await.is_empty() },
    )
    .await;
}

#[tokio::test]
async fn a_bucket_that_does_not_answer_stops_the_start_naming_it() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = format!(
        "\n[files.storage]\nbackend = \"s3\"\nendpoint = \"http://127.0.0.1:{port}\"\nbucket = \"missing\"\n"
    );
    let printed = Server::refused(
        &[],
        Options {
            config: &config,
            env: CREDENTIALS,
            ..Options::default()
        },
    );
    assert!(
        printed.contains("[files.storage] bucket \"missing\""),
        "{printed}"
    );
}
