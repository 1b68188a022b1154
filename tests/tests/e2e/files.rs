//! Files (SPEC §8): uploads through signed URLs, provider isolation through
//! per-attempt grants, re-hosted outputs, the size cap while streaming, TTLs.

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use modelroute_tests::emulators::{DEFAULT_TOKEN, bfl, png, replicate};

use crate::support::{
    Options, ProviderSpec, Server, process_status, replicate_with_files, wait_until,
};

const WAIT: Duration = Duration::from_secs(60);
const MAX_UPLOAD: u64 = 150 * 1024 * 1024;

/// Upload → PUT → confirm; returns the confirmed file object.
async fn upload(server: &Server, key: &str, bytes: Vec<u8>) -> Value {
    let ticket = server
        .call(
            Method::POST,
            "/v1/files/upload",
            Some(key),
            Some(json!({"purpose": "INPUT", "filename": "cat.png", "content_type": "image/gif"})),
            &[],
        )
        .await;
    assert_eq!(ticket.status, StatusCode::CREATED, "{:?}", ticket.body);
    let file_id = ticket.body["file_id"].as_str().unwrap().to_string();
    assert!(ticket.body["expires_at"].is_string());
    let url = ticket.body["upload_url"].as_str().unwrap();
    assert!(url.starts_with(&server.url), "{url}");
    let put = reqwest::Client::new()
        .put(url)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK, "{:?}", put.text().await);
    let confirmed = server
        .call(
            Method::POST,
            "/v1/files/confirm",
            Some(key),
            Some(json!({ "file_id": file_id })),
            &[],
        )
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    confirmed.body
}

/// A `PUT` whose body is held open until the returned sender is dropped.
fn held_put(
    url: String,
    first: Vec<u8>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<StatusCode>,
) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
        futures_util::stream::once(async move {
            let _ = released.await;
            Ok(b"trailing bytes".to_vec())
        }),
    );
    let put = tokio::spawn(async move {
        reqwest::Client::new()
            .put(url)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .unwrap()
            .status()
    });
    (release, put)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn an_upload_reaches_the_provider_only_through_a_grant_for_one_attempt() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = Server::start(&[replicate_with_files(&emulator)]).await;
    let image = png(64, 48, 7);
    let file = upload(&server, &server.api_key, image.clone()).await;
    let file_id = file["file_id"].as_str().unwrap();
    assert!(file_id.starts_with("file_"));
    // Measured, never trusted: the client said GIF and cat.png.
    assert_eq!(file["content_type"], "image/png");
    assert_eq!(file["size_bytes"], json!(image.len()));
    assert_eq!(file["sha256"], json!(sha256(&image)));
    assert_eq!(file["purpose"], "INPUT");
    assert!(!file.to_string().contains("cat.png"));

    let created = server
        .post(
            "/v1/executions",
            json!({"model": "flux-kontext-pro", "input": {"prompt": "make it night", "image": file_id}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap();
    let done = server.wait_terminal(id, WAIT).await;
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", server.log());

    // The provider fetched the bytes through a grant, not the client's id.
    let fetched = emulator.state.fetched();
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert_eq!(fetched[0].status, 200);
    assert_eq!(fetched[0].sha256, sha256(&image));
    assert!(fetched[0].url.contains("/files/grant/"));
    let submitted = emulator.requests();
    assert!(
        submitted.iter().all(|r| !r.body.contains(&server.api_key)),
        "the client's key reached the provider"
    );
    // Once the execution ended the grant is dead.
    let again = reqwest::get(&fetched[0].url).await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);

    // The output is a file of the organization, downloadable by its owner only.
    let output_id = done["result"]["output"]["images"][0]["file_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!done.to_string().contains(&emulator.base_url()));
    let (status, bytes) = server
        .bytes(&format!("/v1/files/{output_id}/download"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let other = server.new_organization("1.00").await;
    for path in [
        format!("/v1/files/{output_id}"),
        format!("/v1/files/{output_id}/download"),
        format!("/v1/files/{file_id}"),
    ] {
        let reply = server
            .call(Method::GET, &path, Some(&other), None, &[])
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.error_code(), "NOT_FOUND");
    }
    // …and another organization's file in an input is FILE_NOT_FOUND, with no hold.
    let foreign = server
        .call(
            Method::POST,
            "/v1/executions",
            Some(&other),
            Some(json!({"model": "flux-kontext-pro", "input": {"prompt": "x", "image": file_id}})),
            &[],
        )
        .await;
    assert_eq!(foreign.status, StatusCode::BAD_REQUEST);
    assert_eq!(foreign.error_code(), "FILE_NOT_FOUND");
    let balance = server
        .call(Method::GET, "/v1/balance", Some(&other), None, &[])
        .await;
    assert_eq!(balance.body["held"], "0");

    // Every upload, grant and fetch is in the audit trail.
    let audit = server
        .admin_get(&format!("/admin/v1/files/{file_id}/audit"))
        .await;
    let actions: Vec<&str> = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["upload_url", "upload", "confirm", "grant", "grant_fetch"],
        "{}",
        audit.body
    );
    assert!(audit.body["data"][1]["address"].as_str().is_some());
    assert!(
        audit.body["data"][0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("key_")
    );
    // The output's trail starts with the execution that made it, then the download.
    let audit = server
        .admin_get(&format!("/admin/v1/files/{output_id}/audit"))
        .await;
    let trail = audit.body["data"].as_array().unwrap();
    assert_eq!(trail[0]["action"], "output", "{}", audit.body);
    assert_eq!(trail[0]["actor"], done["id"]);
    assert_eq!(trail[1]["action"], "download", "{}", audit.body);
}

#[tokio::test]
async fn an_adapter_that_asks_for_inline_bytes_gets_them() {
    let emulator = bfl::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = Server::start(&[ProviderSpec {
        name: "bfl-emulator",
        adapter: "bfl",
        base_url: emulator.base_url(),
        models: &["flux-kontext-pro"],
    }])
    .await;
    let image = png(32, 32, 3);
    let file = upload(&server, &server.api_key, image.clone()).await;
    let created = server
        .post(
            "/v1/executions",
            json!({"model": "flux-kontext-pro", "input": {"prompt": "snow", "image": file["file_id"]}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{:?}", created.body);
    let done = server
        .wait_terminal(created.body["id"].as_str().unwrap(), WAIT)
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let fetched = emulator.state.fetched();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].sha256, sha256(&image));
}

#[tokio::test]
async fn wrong_magic_bytes_or_missing_files_are_refused_before_any_hold() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = Server::start(&[replicate_with_files(&emulator)]).await;
    // A PDF named like a PNG.
    let file = upload(&server, &server.api_key, b"%PDF-1.7\n%binary".to_vec()).await;
    assert_eq!(file["content_type"], "application/pdf");
    let cases = [
        (file["file_id"].clone(), "FILE_FORMAT_UNSUPPORTED"),
        (
            json!(format!("file_{}", uuid::Uuid::new_v4())),
            "FILE_NOT_FOUND",
        ),
    ];
    for (image, code) in cases {
        let reply = server
            .post(
                "/v1/executions",
                json!({"model": "flux-kontext-pro", "input": {"prompt": "x", "image": image}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
        assert_eq!(reply.error_code(), code);
    }
    let balance = server.get("/v1/balance").await;
    assert_eq!(balance.body["held"], "0");
    assert_eq!(emulator.count("/v1/models"), 0, "a provider was called");
}

/// Regression: a PUT still streaming when its file was confirmed (or deleted) wrote
/// over the confirmed bytes (or left them behind with no record) before it was
/// refused. Each PUT now writes its own object, kept only if the upload is still
/// open when it ends. The refusal is `409` when the file was confirmed meanwhile,
/// `404` when it was deleted (as for a PUT that starts after the delete).
#[tokio::test]
async fn a_put_refused_after_confirm_or_delete_changes_and_keeps_nothing() {
    let server = Server::start(&[]).await;
    let accepted = png(64, 48, 1);
    for end in ["confirm", "delete"] {
        let ticket = server
            .post("/v1/files/upload", json!({"purpose": "UPLOAD"}))
            .await;
        let file_id = ticket.body["file_id"].as_str().unwrap().to_string();
        let url = ticket.body["upload_url"].as_str().unwrap().to_string();
        let (release, late) = held_put(url.clone(), png(32, 32, 2));
        let put = reqwest::Client::new()
            .put(&url)
            .body(accepted.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), StatusCode::OK);
        let ended = match end {
            "confirm" => {
                server
                    .post("/v1/files/confirm", json!({ "file_id": file_id }))
                    .await
            }
            _ => server.delete(&format!("/v1/files/{file_id}")).await,
        };
        assert_eq!(ended.status, StatusCode::OK, "{end}: {:?}", ended.body);
        drop(release);
        let refused = match end {
            "confirm" => StatusCode::CONFLICT,
            _ => StatusCode::NOT_FOUND,
        };
        assert_eq!(late.await.unwrap(), refused, "{end}");
        if end == "confirm" {
            assert_eq!(ended.body["sha256"], sha256(&accepted));
            let (status, bytes) = server.bytes(&format!("/v1/files/{file_id}/download")).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(bytes, accepted, "the confirmed bytes are intact");
            assert_eq!(server.objects_of(&file_id), 1);
        } else {
            assert_eq!(server.objects_of(&file_id), 0, "nothing kept");
        }
    }
}

/// Regression: the input's files were checked before the idempotency key, so a
/// retry after the file was deleted got FILE_NOT_FOUND instead of its execution.
#[tokio::test]
async fn a_retry_with_its_idempotency_key_is_replayed_after_the_input_file_is_deleted() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = Server::start(&[replicate_with_files(&emulator)]).await;
    let file = upload(&server, &server.api_key, png(64, 48, 7)).await;
    let file_id = file["file_id"].as_str().unwrap();
    let body = json!({"model": "flux-kontext-pro", "input": {"prompt": "x", "image": file_id}});
    let send = || {
        server.call(
            Method::POST,
            "/v1/executions",
            Some(&server.api_key),
            Some(body.clone()),
            &[("Idempotency-Key", "kontext-1")],
        )
    };
    let first = send().await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{:?}", first.body);
    let id = first.body["id"].as_str().unwrap();
    server.wait_terminal(id, WAIT).await;
    let deleted = server.delete(&format!("/v1/files/{file_id}")).await;
    assert_eq!(deleted.status, StatusCode::OK, "{:?}", deleted.body);
    let retry = send().await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{:?}", retry.body);
    assert_eq!(retry.body["id"], id);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.body["status"], "COMPLETED");
}

#[tokio::test]
async fn an_upload_over_150_mb_is_refused_while_streaming_and_nothing_is_kept() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = Server::start(&[replicate_with_files(&emulator)]).await;
    let ticket = server
        .post("/v1/files/upload", json!({"purpose": "UPLOAD"}))
        .await;
    let file_id = ticket.body["file_id"].as_str().unwrap().to_string();
    let url = ticket.body["upload_url"].as_str().unwrap().to_string();
    let peak_before = process_status(server.pid(), "VmHWM");

    // With no Content-Length to trust: the cap holds while the bytes stream in.
    let response = reqwest::Client::new()
        .put(&url)
        .body(reqwest::Body::wrap_stream(over_the_cap()))
        .send()
        .await;
    let response = response.expect("the server answers before the client finishes");
    {
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE");
    }
    // The server never held the body: its peak memory grew far less than 150 MB.
    let grown_mib = (process_status(server.pid(), "VmHWM") - peak_before) / 1024;
    assert!(grown_mib < 64, "peak RSS grew by {grown_mib} MiB");
    // Nothing was kept, and the file still awaits its bytes.
    let state = server.data.path().join("state/files");
    assert_eq!(server.objects_of(&file_id), 0);
    assert_eq!(std::fs::read_dir(state.join("partial")).unwrap().count(), 0);
    let object = server.get(&format!("/v1/files/{file_id}")).await;
    assert_eq!(object.body["status"], "AWAITING_UPLOAD");
    let confirm = server
        .post("/v1/files/confirm", json!({"file_id": file_id}))
        .await;
    assert_eq!(confirm.status, StatusCode::CONFLICT);

    // A declared length over the cap is refused before the body is read: the
    // answer comes while the client has sent only the request head.
    let head = format!(
        "PUT {} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n\r\n",
        &url[server.url.len()..],
        &server.url["http://".len()..],
        MAX_UPLOAD + 1
    );
    let mut stream = tokio::net::TcpStream::connect(&server.url["http://".len()..])
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(WAIT, stream.read(&mut answer))
        .await
        .expect("an answer before the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

/// 150 MB + 1 byte in 1 MiB chunks, made as they are sent.
fn over_the_cap() -> impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> {
    let chunk = axum::body::Bytes::from(vec![0x42u8; 1024 * 1024]);
    let chunks = (MAX_UPLOAD / chunk.len() as u64) as usize;
    futures_util::stream::iter(
        std::iter::repeat_n(chunk, chunks)
            .chain([axum::body::Bytes::from_static(b"!")])
            .map(Ok),
    )
}

#[tokio::test]
async fn signed_urls_list_delete_and_ttl_expiry() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = Server::start_with(
        &[replicate_with_files(&emulator)],
        Options {
            config: "\n[files]\nsweep_interval_seconds = 1\n\n[testing]\nclock_control = true\n",
            ..Options::default()
        },
    )
    .await;
    let image = png(16, 16, 1);
    let kept = upload(&server, &server.api_key, image.clone()).await;
    let kept_id = kept["file_id"].as_str().unwrap();
    let ticket = server
        .post(
            "/v1/files/upload",
            json!({"purpose": "UPLOAD", "ttl_days": 1}),
        )
        .await;
    let short_id = ticket.body["file_id"].as_str().unwrap().to_string();
    reqwest::Client::new()
        .put(ticket.body["upload_url"].as_str().unwrap())
        .body(image.clone())
        .send()
        .await
        .unwrap();
    server
        .post("/v1/files/confirm", json!({"file_id": short_id}))
        .await;

    // A signed download URL works without a key; a tampered one does not.
    let url = server.get(&format!("/v1/files/{kept_id}/url")).await;
    assert_eq!(url.status, StatusCode::OK, "{:?}", url.body);
    assert_eq!(url.body["content_type"], "image/png");
    assert_eq!(url.body["size_bytes"], json!(image.len()));
    let signed = url.body["url"].as_str().unwrap();
    let fetched = reqwest::get(signed).await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.bytes().await.unwrap().to_vec(), image);
    let tampered = reqwest::get(signed.replace(kept_id, &short_id))
        .await
        .unwrap();
    assert_eq!(tampered.status(), StatusCode::UNAUTHORIZED);

    // Newest first, paginated.
    let page = server.get("/v1/files?limit=1").await;
    assert_eq!(page.body["data"][0]["file_id"], json!(short_id));
    assert_eq!(page.body["has_more"], json!(true));
    let next = server
        .get(&format!("/v1/files?limit=1&starting_after={short_id}"))
        .await;
    assert_eq!(next.body["data"][0]["file_id"], json!(kept_id));
    assert_eq!(next.body["has_more"], json!(false));

    // An organization's TTL applies when an upload does not say.
    let org = server
        .call(
            Method::POST,
            "/admin/v1/organizations",
            Some(&server.admin_token),
            Some(json!({"name": "Short-lived"})),
            &[],
        )
        .await;
    let (org_id, org_key) = (
        org.body["organization_id"].as_str().unwrap(),
        org.body["api_key"].as_str().unwrap(),
    );
    // (set by the operator's CLI, which calls the admin API)
    let ttl = std::process::Command::new(crate::support::binary())
        .args([
            "admin",
            "--url",
            &server.url,
            "--token",
            &server.admin_token,
        ])
        .args(["file-ttl", "--org", org_id, "--days", "3"])
        .output()
        .expect("run modelroute admin");
    assert!(
        ttl.status.success(),
        "{}",
        String::from_utf8_lossy(&ttl.stderr)
    );
    let ttl: Value = serde_json::from_slice(&ttl.stdout).unwrap();
    assert_eq!(ttl["file_ttl_days"], json!(3));
    let three_days = upload(&server, org_key, image.clone()).await;
    let lifetime = chrono::DateTime::parse_from_rfc3339(three_days["expires_at"].as_str().unwrap())
        .unwrap()
        - chrono::DateTime::parse_from_rfc3339(three_days["created_at"].as_str().unwrap()).unwrap();
    assert!(
        (lifetime - chrono::Duration::days(3)).num_seconds().abs() < 60,
        "{three_days}"
    );

    // Two days later the one-day file is gone, bytes and all; the other stays.
    server.advance_clock(2 * 86_400).await;
    wait_until("the file expires", WAIT, || async {
        server.get(&format!("/v1/files/{short_id}")).await.status == StatusCode::NOT_FOUND
    })
    .await;
    let used = server
        .post(
            "/v1/executions",
            json!({"model": "flux-kontext-pro", "input": {"prompt": "x", "image": short_id}}),
        )
        .await;
    assert_eq!(used.status, StatusCode::BAD_REQUEST, "{:?}", used.body);
    assert_eq!(used.error_code(), "FILE_NOT_FOUND", "an expired file");
    wait_until("the bytes are deleted", WAIT, || async {
        server.objects_of(&short_id) == 0
    })
    .await;
    assert_eq!(
        server.get(&format!("/v1/files/{kept_id}")).await.status,
        StatusCode::OK
    );

    // Delete: the record, the bytes and the signed URL go together.
    let deleted = server.delete(&format!("/v1/files/{kept_id}")).await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(deleted.body["deleted"], json!(true));
    assert_eq!(
        server.get(&format!("/v1/files/{kept_id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(server.objects_of(kept_id), 0);
    // (the URL lapsed when the clock moved two days; a URL still valid whose file
    // was deleted is 404, see below)
    assert_eq!(
        reqwest::get(signed).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Regression: a `PUT` with an empty body answered `400 INPUT_VALIDATION_ERROR`
/// with no `details`; SPEC §5 gives that code details. It names the body.
#[tokio::test]
async fn an_empty_upload_is_refused_with_a_detail_on_the_body() {
    let server = Server::start(&[]).await;
    let ticket = server
        .post("/v1/files/upload", json!({"purpose": "UPLOAD"}))
        .await;
    let file_id = ticket.body["file_id"].as_str().unwrap();
    let url = ticket.body["upload_url"].as_str().unwrap();
    let put = reqwest::Client::new().put(url).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::BAD_REQUEST);
    let body: Value = put.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INPUT_VALIDATION_ERROR", "{body}");
    assert_eq!(
        body["error"]["details"],
        json!([{"field": "body", "code": "REQUIRED", "message": "the upload is empty: send the file's bytes"}]),
        "{body}"
    );
    // Nothing changed: the file still awaits its bytes, which may still come.
    let object = server.get(&format!("/v1/files/{file_id}")).await;
    assert_eq!(object.body["status"], "AWAITING_UPLOAD");
    let put = reqwest::Client::new()
        .put(url)
        .body(png(8, 8, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
}

/// Regression: a still-valid signed upload (or download) URL of a deleted file
/// answered `401` "invalid or expired", as if it were forged. A genuine, unexpired
/// URL whose file is gone is `404 NOT_FOUND`; forged and lapsed ones stay `401`.
#[tokio::test]
async fn a_valid_signed_url_of_a_deleted_file_is_not_found_not_unauthorized() {
    let server = Server::start_with(
        &[],
        Options {
            config: "\n[testing]\nclock_control = true\n",
            ..Options::default()
        },
    )
    .await;
    let status = |url: String, put: bool| async move {
        let client = reqwest::Client::new();
        let request = if put {
            client.put(url).body(png(8, 8, 2))
        } else {
            client.get(url)
        };
        request.send().await.unwrap().status()
    };
    let delete = |file_id: String| {
        let server = &server;
        async move {
            let reply = server.delete(&format!("/v1/files/{file_id}")).await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        }
    };
    // An upload URL of a file deleted before any bytes came.
    let ticket = server
        .post("/v1/files/upload", json!({"purpose": "UPLOAD"}))
        .await;
    let pending = ticket.body["file_id"].as_str().unwrap().to_string();
    let upload_url = ticket.body["upload_url"].as_str().unwrap().to_string();
    delete(pending.clone()).await;
    let put = reqwest::Client::new()
        .put(&upload_url)
        .body(png(8, 8, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::NOT_FOUND);
    let body: Value = put.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND", "{body}");
    // The same URL forged (another signature, or another file's id) stays 401.
    let forged = upload_url.replace("signature=", "signature=00");
    assert_eq!(status(forged, true).await, StatusCode::UNAUTHORIZED);
    let never = format!("file_{}", uuid::Uuid::new_v4());
    assert_eq!(
        status(upload_url.replace(&pending, &never), true).await,
        StatusCode::UNAUTHORIZED
    );

    // A download URL of a confirmed file, deleted.
    let file = upload(&server, &server.api_key, png(16, 16, 3)).await;
    let file_id = file["file_id"].as_str().unwrap().to_string();
    let url = server.get(&format!("/v1/files/{file_id}/url")).await;
    let download_url = url.body["url"].as_str().unwrap().to_string();
    assert_eq!(status(download_url.clone(), false).await, StatusCode::OK);
    delete(file_id.clone()).await;
    assert_eq!(
        status(download_url.clone(), false).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(download_url.replace("signature=", "signature=ab"), false).await,
        StatusCode::UNAUTHORIZED
    );
    // Once the URL itself lapses, it is 401 again, whatever became of the file.
    server.advance_clock(2 * 3600).await;
    assert_eq!(status(download_url, false).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(upload_url, true).await, StatusCode::UNAUTHORIZED);
}

/// Regression: `GET /admin/v1/files/{id}/audit` answered `200` with an empty list
/// for anything. An id that is not a file id, or names a file that never existed,
/// is `404`; a deleted file's trail is still shown (that is what it is for).
#[tokio::test]
async fn the_audit_of_an_unknown_or_malformed_file_id_is_not_found() {
    let server = Server::start(&[]).await;
    let audit = |id: String| {
        let server = &server;
        async move {
            server
                .admin_get(&format!("/admin/v1/files/{id}/audit"))
                .await
        }
    };
    for id in [
        "garbage".to_string(),
        "file_not-a-uuid".to_string(),
        format!("exec_{}", uuid::Uuid::new_v4()),
        format!("file_{}", uuid::Uuid::new_v4()),
    ] {
        let reply = audit(id.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{id}: {:?}",
            reply.body
        );
        assert_eq!(reply.error_code(), "NOT_FOUND");
    }
    let file = upload(&server, &server.api_key, png(8, 8, 4)).await;
    let file_id = file["file_id"].as_str().unwrap().to_string();
    let deleted = server.delete(&format!("/v1/files/{file_id}")).await;
    assert_eq!(deleted.status, StatusCode::OK);
    let reply = audit(file_id).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let actions: Vec<&str> = reply.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["upload_url", "upload", "confirm", "delete"]);
}

/// Runs one flux execution to its end.
async fn run_flux(server: &Server) -> Value {
    let body = json!({"model": "flux-1.1-pro", "input": crate::support::flux_input()});
    let reply = server.post("/v1/executions", body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_string();
    server.wait_terminal(&id, WAIT).await
}

fn assert_no_objects(server: &Server) {
    let objects = server.data.path().join("state/files/objects");
    let left = std::fs::read_dir(objects).map_or(0, |dir| dir.count());
    assert_eq!(left, 0, "no output object is left behind");
}

/// Provider outputs are fetched by the host under its own limits: an asset over
/// `executions.max_asset_bytes`, or an asset URL that answers a redirect (here to
/// the same file at the same provider, which a client following redirects would
/// get), fails the attempt; nothing of it is kept and nothing is charged.
#[tokio::test]
async fn an_output_over_the_cap_or_behind_a_redirect_fails_and_nothing_is_kept() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let small_cap = Server::start_with(
        &[replicate_with_files(&emulator)],
        Options {
            executions: "max_attempts = 1\nmax_asset_bytes = 200",
            ..Options::default()
        },
    )
    .await;
    let execution = run_flux(&small_cap).await;
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert_eq!(execution["error"]["code"], "GENERATION_FAILED");
    assert_eq!(small_cap.get("/v1/files").await.body["data"], json!([]));
    assert_eq!(small_cap.get("/v1/balance").await.body["available"], "100");
    assert_no_objects(&small_cap);
    drop(small_cap);

    let server = Server::start_with(
        &[replicate_with_files(&emulator)],
        Options {
            executions: "max_attempts = 1",
            ..Options::default()
        },
    )
    .await;
    emulator.redirect_files(true);
    let execution = run_flux(&server).await;
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert_eq!(execution["error"]["code"], "GENERATION_FAILED");
    assert_eq!(server.get("/v1/files").await.body["data"], json!([]));
    assert_no_objects(&server);
    assert!(
        server.log().contains("302"),
        "the redirect was not followed"
    );

    emulator.redirect_files(false);
    let execution = run_flux(&server).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
}
