//! Each provider wire format end to end: outputs re-hosted as files, inline
//! images and text, polling, callbacks, moderation, video.

use super::*;

/// Also guards the bug where a completion looked for its attempt in a snapshot
/// taken before the attempt started, and failed every execution.
#[tokio::test]
async fn flux_completes_with_a_real_png_and_the_hold_settles_to_the_cost() {
    let emulator = replicate_emulator().await;
    let server = Server::start(&[replicate_provider(&emulator)]).await;
    let reply = server
        .call(
            Method::POST,
            "/v1/executions",
            Some(&server.api_key),
            Some(flux()),
            &[("Idempotency-Key", "first")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    let accepted = &reply.body;
    assert!(accepted["id"].as_str().unwrap().starts_with("exec_"));
    assert_eq!(accepted["status"], "PENDING");
    assert_eq!(accepted["estimated_cost"], "0.04");
    assert_eq!(accepted["hold_amount"], "0.048");
    assert!(accepted["expires_at"].is_string() && accepted["created_at"].is_string());

    let id = accepted["id"].as_str().unwrap();
    let execution = server.wait_terminal(id, WAIT).await;
    assert_eq!(
        execution["status"],
        "COMPLETED",
        "{execution}\n{}",
        server.log()
    );
    assert_eq!(execution["cost"], "0.04");
    assert!(execution["latency_ms"].as_i64().unwrap() >= 0);
    assert_no_provider_leak(&execution, &emulator.base_url());

    let result = server.get(&format!("/v1/executions/{id}/result")).await;
    assert_eq!(result.status, StatusCode::OK);
    let image = &result.body["output"]["images"][0];
    assert_eq!(
        (
            image["format"].as_str(),
            image["width"].as_u64(),
            image["height"].as_u64()
        ),
        (Some("png"), Some(512), Some(384))
    );
    let file_id = image["file_id"].as_str().unwrap();
    assert!(file_id.starts_with("file_"));

    let (status, bytes) = server.bytes(&format!("/v1/files/{file_id}/download")).await;
    assert_eq!(status, StatusCode::OK);
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let info = decoder.read_info().expect("a real PNG").info().clone();
    assert_eq!((info.width, info.height), (512, 384));

    let balance = server.get("/v1/balance").await.body;
    assert_eq!(
        balance,
        json!({"available": "99.96", "held": "0", "currency": "USD"})
    );
    let ledger = server.get("/v1/ledger").await.body;
    let kinds: Vec<&str> = ledger["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    // Newest first, like every list.
    assert_eq!(kinds, ["release", "settle", "hold", "deposit"]);

    // The host, not the client, authenticated to the provider.
    let created = emulator
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/predictions"))
        .unwrap();
    assert_eq!(created.header("authorization"), Some("Bearer emulator-key"));
    assert!(!created.body.contains(&server.api_key));
}

#[tokio::test]
async fn the_openai_format_returns_inline_images_and_text() {
    let emulator = openai_emulator().await;
    let server = Server::start(&[openai_provider(&emulator)]).await;
    let id = create(&server, flux()).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let image = &execution["result"]["output"]["images"][0];
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(512), Some(384))
    );
    assert_no_provider_leak(&execution, &emulator.base_url());

    let reply = server
        .post(
            "/v1/executions",
            json!({"model": "llama-3.1-8b-instruct", "mode": "SYNC", "input": {"messages": [{"role": "user", "content": "Say hi"}]}}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "SYNC answers the terminal execution: {:?}",
        reply.body
    );
    assert_eq!(reply.body["status"], "COMPLETED");
    assert_eq!(reply.body["result"]["output"]["text"], "Echo: hi Say");
    assert_eq!(
        reply.body["result"]["output"]["usage"],
        json!({"input_tokens": 2, "output_tokens": 3})
    );
}

/// The provider calls back when it is done (1.5 s in): after the adapter's first poll
/// (0.5 s) polling is pushed out to a minute, so only the verified callback can wake
/// the execution in time. A forged one is refused.
#[tokio::test]
async fn a_provider_callback_completes_a_job_without_waiting_for_the_next_poll() {
    let emulator = replicate_emulator().await;
    emulator.state.complete_in_background(1500);
    let server = Server::start_with(
        &[replicate_provider(&emulator)],
        Options {
            executions: "callback_fallback_poll_ms = 60000",
            ..Options::default()
        },
    )
    .await;
    let id = create(&server, flux()).await;
    let execution = server.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let created = emulator
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/predictions"))
        .unwrap();
    let body: Value = serde_json::from_str(&created.body).unwrap();
    let callback = body["webhook"].as_str().expect("a callback URL was given");
    assert!(callback.starts_with(&format!(
        "{}/v1/provider-webhooks/replicate-emulator/",
        server.url
    )));
    assert_eq!(body["webhook_events_filter"], json!(["completed"]));

    let forged = format!(
        "{}/v1/provider-webhooks/replicate-emulator/{id}.att_x.00000000000000000000000000000000",
        server.url
    );
    let response = reqwest::Client::new()
        .post(forged)
        .json(&json!({"id": "x", "status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // A replayed genuine callback after the end is accepted and changes nothing.
    let replay = reqwest::Client::new()
        .post(callback)
        .json(&json!({"id": "x", "status": "failed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(
        server.get(&format!("/v1/executions/{id}")).await.body["status"],
        "COMPLETED"
    );
}

/// Black Forest Labs' format: the key in `x-key`, a task polled at its
/// `polling_url`, moderation as a task status.
#[tokio::test]
async fn the_bfl_format_polls_its_task_and_reports_moderation() {
    let emulator = modelroute_tests::emulators::bfl::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = Server::start(&[ProviderSpec {
        name: "bfl-emulator",
        adapter: "bfl",
        base_url: emulator.base_url(),
        models: &["flux-1.1-pro"],
    }])
    .await;
    let id = create(&server, flux()).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let image = &execution["result"]["output"]["images"][0];
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(512), Some(384))
    );
    assert_eq!(execution["cost"], "0.04");
    let submitted = emulator
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/flux-pro-1.1")
        .unwrap();
    assert_eq!(submitted.header("x-key"), Some(DEFAULT_TOKEN));
    assert_eq!(submitted.header("authorization"), None);
    assert!(
        emulator.count("/v1/get_result") >= 2,
        "the task was polled until ready"
    );

    let id = create(
        &server,
        json!({"model": "flux-1.1-pro", "input": {"prompt": "nsfw please"}}),
    )
    .await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["error"]["code"], "CONTENT_MODERATION_REJECTED");
}

/// fal's queue format: submit, status until COMPLETED, then the result; the key in
/// `Authorization: Key`; a video model whose output is stored and described.
#[tokio::test]
async fn the_fal_queue_format_serves_images_and_video() {
    let emulator = modelroute_tests::emulators::fal::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = Server::start(&[ProviderSpec {
        name: "fal-emulator",
        adapter: "fal",
        base_url: emulator.base_url(),
        models: &["flux-1.1-pro", "kling-video"],
    }])
    .await;
    let id = create(&server, flux()).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let image = &execution["result"]["output"]["images"][0];
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(512), Some(384))
    );
    let submitted = emulator
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert_eq!(submitted.header("authorization"), Some("Key emulator-key"));
    assert!(submitted.path.starts_with("/fal-ai/flux-pro/v1.1"));

    let id = create(
        &server,
        json!({"model": "kling-video", "input": {"prompt": "waves at dusk", "duration": 10}}),
    )
    .await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let video = &execution["result"]["output"]["videos"][0];
    assert_eq!(video["format"], "mp4");
    assert_eq!(video["duration_s"], 10.0);
    assert_eq!(execution["cost"], "0.5", "10 s at $0.05 a second");
    let (status, bytes) = server
        .bytes(&format!(
            "/v1/files/{}/download",
            video["file_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&bytes[4..8], b"ftyp");

    let id = create(
        &server,
        json!({"model": "flux-1.1-pro", "input": {"prompt": "nsfw again"}}),
    )
    .await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["error"]["code"], "CONTENT_MODERATION_REJECTED");

    let models = server.get("/v1/models/kling-video").await.body;
    assert_eq!(models["modality"], "video");
    assert_eq!(models["pricing"]["per_second"], "0.05");
}
