//! What a client sends and reads: `SYNC` waits, idempotency, isolation between
//! organizations, listing, and `STREAMING`.

use super::*;

/// `SYNC` waits `wait_seconds` at most (1 to 300, whole seconds), then answers
/// `202` with the execution still running; bad values are validation errors.
#[tokio::test]
async fn sync_answers_202_when_wait_seconds_pass_and_refuses_bad_values() {
    let emulator = replicate_emulator().await;
    emulator.state.set_never_finish(true);
    let server = Server::start(&[replicate_provider(&emulator)]).await;
    let started = std::time::Instant::now();
    let reply = server
        .post(
            "/v1/executions",
            json!({"model": "flux-1.1-pro", "mode": "SYNC", "wait_seconds": 1, "input": flux_input()}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let status = reply.body["status"].as_str().unwrap();
    assert!(
        ["PENDING", "PROCESSING", "AWAITING_WEBHOOK"].contains(&status),
        "{:?}",
        reply.body
    );
    assert!(reply.body["id"].as_str().unwrap().starts_with("exec_"));

    for (wait_seconds, code) in [
        (json!(0), "OUT_OF_RANGE"),
        (json!(301), "OUT_OF_RANGE"),
        (json!(1.5), "INVALID_TYPE"),
        (json!("5"), "INVALID_TYPE"),
    ] {
        let reply = server
            .post(
                "/v1/executions",
                json!({"model": "flux-1.1-pro", "mode": "SYNC", "wait_seconds": wait_seconds, "input": flux_input()}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{wait_seconds}");
        assert_eq!(reply.error_code(), "INPUT_VALIDATION_ERROR");
        assert_eq!(
            reply.body["error"]["details"][0],
            json!({"field": "wait_seconds", "code": code, "message": reply.body["error"]["details"][0]["message"]}),
            "{wait_seconds}"
        );
    }
    let listed = server.get("/v1/executions").await.body;
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        1,
        "refusals create nothing"
    );
}

/// Regression: replaying a `SYNC` create whose execution was still running answered
/// `202` at once; a client retrying a call that timed out gets the same wait.
#[tokio::test]
async fn a_replayed_sync_create_waits_like_the_original() {
    let emulator = openai_emulator().await;
    emulator.push_fault(Fault::Delay { ms: 4000 });
    let server = Server::start(&[openai_provider(&emulator)]).await;
    let body = json!({
        "model": "llama-3.1-8b-instruct",
        "mode": "SYNC",
        "wait_seconds": 3,
        "input": {"messages": [{"role": "user", "content": "hi"}]},
    });
    let send = || {
        server.call(
            Method::POST,
            "/v1/executions",
            Some(&server.api_key),
            Some(body.clone()),
            &[("Idempotency-Key", "sync-retry")],
        )
    };
    let first = send().await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "the provider takes 4 s");
    let replay = send().await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    assert_eq!(replay.body["id"], first.body["id"]);
    assert_eq!(replay.body["status"], "COMPLETED");
}

#[tokio::test]
async fn an_idempotency_key_answers_the_same_execution_and_refuses_another_body() {
    let emulator = replicate_emulator().await;
    let server = Server::start_with(
        &[replicate_provider(&emulator)],
        Options {
            config: "[testing]\nclock_control = true",
            ..Options::default()
        },
    )
    .await;
    let send_as = |key: &str, body: Value| {
        let key = key.to_string();
        let server = &server;
        async move {
            server
                .call(
                    Method::POST,
                    "/v1/executions",
                    Some(&key),
                    Some(body),
                    &[("Idempotency-Key", "same")],
                )
                .await
        }
    };
    let send = |body: Value| send_as(&server.api_key, body);
    let first = send(flux()).await;
    let second = send(flux()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(second.status, StatusCode::ACCEPTED);
    assert_eq!(first.body["id"], second.body["id"]);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.header("idempotent-replayed"), None);

    let other = send(json!({"model": "flux-1.1-pro", "input": {"prompt": "another"}})).await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    assert_eq!(other.error_code(), "CONFLICT");
    let listed = server.get("/v1/executions").await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    let ledger = server.get("/v1/ledger").await.body;
    let holds = ledger["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "hold")
        .count();
    assert_eq!(holds, 1, "one hold for the one execution");

    // Another organization's use of the same key is its own.
    let stranger = server.new_organization("5").await;
    let theirs = send_as(&stranger, flux()).await;
    assert_eq!(theirs.status, StatusCode::ACCEPTED, "{:?}", theirs.body);
    assert_ne!(theirs.body["id"], first.body["id"]);
    assert_eq!(theirs.header("idempotent-replayed"), None);

    // After 24 hours the key is forgotten: the same request creates a new execution.
    server
        .wait_terminal(first.body["id"].as_str().unwrap(), WAIT)
        .await;
    server.advance_clock(24 * 3600 + 60).await;
    let later = send(flux()).await;
    assert_eq!(later.status, StatusCode::ACCEPTED, "{:?}", later.body);
    assert_ne!(later.body["id"], first.body["id"]);
    assert_eq!(later.header("idempotent-replayed"), None);
    let again = send(flux()).await;
    assert_eq!(again.body["id"], later.body["id"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let original = server
        .get(&format!(
            "/v1/executions/{}",
            first.body["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        original.body["status"], "COMPLETED",
        "the first is untouched"
    );
}

/// Also guards the bug where a stored file record lost its organization (and every
/// file read answered 500).
#[tokio::test]
async fn concurrent_duplicates_of_one_key_create_one_execution_and_one_hold() {
    let emulator = replicate_emulator().await;
    let server = Server::start(&[replicate_provider(&emulator)]).await;
    let replies = futures_util::future::join_all((0..20).map(|_| {
        server.call(
            Method::POST,
            "/v1/executions",
            Some(&server.api_key),
            Some(flux()),
            &[("Idempotency-Key", "race")],
        )
    }))
    .await;
    let ids: std::collections::HashSet<&str> = replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
            reply.body["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one execution for one key");
    let replayed = replies
        .iter()
        .filter(|r| r.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(replayed, 19);
    let ledger = server.get("/v1/ledger").await.body;
    let holds = ledger["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "hold")
        .count();
    assert_eq!(holds, 1);
}

#[tokio::test]
async fn another_organization_sees_nothing() {
    let emulator = replicate_emulator().await;
    let server = Server::start(&[replicate_provider(&emulator)]).await;
    let id = create(&server, flux()).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    let file = execution["result"]["output"]["images"][0]["file_id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = server.new_organization("5").await;
    for path in [
        format!("/v1/executions/{id}"),
        format!("/v1/executions/{id}/result"),
        format!("/v1/files/{file}"),
        format!("/v1/files/{file}/download"),
    ] {
        let reply = server
            .call(Method::GET, &path, Some(&other), None, &[])
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.error_code(), "NOT_FOUND");
    }
    let cancel = server
        .call(
            Method::POST,
            &format!("/v1/executions/{id}/cancel"),
            Some(&other),
            Some(json!({})),
            &[],
        )
        .await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND);
    let listed = server
        .call(Method::GET, "/v1/executions", Some(&other), None, &[])
        .await;
    assert_eq!(listed.body["data"], json!([]));
}

#[tokio::test]
async fn listing_is_newest_first_with_cursor_pagination_and_filters() {
    let emulator = replicate_emulator().await;
    let server = Server::start(&[replicate_provider(&emulator)]).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = create(&server, flux()).await;
        server.wait_terminal(&id, WAIT).await;
        ids.push(id);
    }
    let page = server.get("/v1/executions?limit=2").await.body;
    let first: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(first, [ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(page["has_more"], true);
    let rest = server
        .get(&format!("/v1/executions?limit=2&starting_after={}", ids[1]))
        .await
        .body;
    assert_eq!(rest["data"][0]["id"], ids[0].as_str());
    assert_eq!(rest["has_more"], false);
    let completed = server
        .get("/v1/executions?status=COMPLETED&model=flux-1.1-pro")
        .await
        .body;
    assert_eq!(completed["data"].as_array().unwrap().len(), 3);
    let none = server.get("/v1/executions?status=FAILED").await.body;
    assert_eq!(none["data"], json!([]));
    let bad = server.get("/v1/executions?limit=0").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn streaming_sends_status_changes_text_deltas_and_the_final_execution() {
    let emulator = openai_emulator().await;
    let server = Server::start(&[openai_provider(&emulator)]).await;
    let body = json!({"model": "llama-3.1-8b-instruct", "mode": "STREAMING", "input": {"messages": [{"role": "user", "content": "one two three"}]}});
    let response = reqwest::Client::new()
        .post(format!("{}/v1/executions", server.url))
        .bearer_auth(&server.api_key)
        .header("idempotency-key", "stream-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.first(), Some(&"execution"));
    assert_eq!(names.last(), Some(&"done"));
    // The accept started its first attempt (one commit for both): the execution is
    // PROCESSING from its first event, and no status event repeats it.
    assert_eq!(events[0].1["status"], "PROCESSING", "{names:?}");
    assert!(!names.contains(&"status"), "{names:?}");
    let deltas = delta_text(&events);
    assert_eq!(deltas, "Echo: three two one");
    assert!(
        events.iter().filter(|(name, _)| name == "delta").count() >= 3,
        "text arrives in pieces"
    );
    let done = &events.last().unwrap().1;
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["result"]["output"]["text"], "Echo: three two one");
    assert_eq!(done["result"]["output"]["usage"]["output_tokens"], 4);
    let sent = emulator
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/chat/completions")
        .unwrap();
    assert!(sent.body.contains("\"stream\":true"));

    // Regression: a replay answered the short create answer, without the output a
    // client whose stream dropped came back for.
    let replay = server
        .call(
            Method::POST,
            "/v1/executions",
            Some(&server.api_key),
            Some(body),
            &[("Idempotency-Key", "stream-1")],
        )
        .await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body["id"], done["id"]);
    assert_eq!(
        replay.body["result"]["output"]["text"],
        "Echo: three two one"
    );

    // A model whose provider does not stream text still streams its status changes:
    // a provider job, polled until done, waits in AWAITING_WEBHOOK.
    let replicate = replicate_emulator().await;
    replicate.state.set_polls_until_done(2);
    let server = Server::start(&[replicate_provider(&replicate)]).await;
    let body = json!({"model": "flux-1.1-pro", "mode": "STREAMING", "input": flux_input()});
    let events = streamed_execution(&server, body).await;
    let statuses: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "status")
        .map(|(_, data)| &data["status"])
        .collect();
    assert_eq!(statuses, [&json!("AWAITING_WEBHOOK")]);
    let done = &events.last().unwrap().1;
    assert_eq!(events.last().unwrap().0, "done");
    assert_eq!(done["status"], "COMPLETED");
    assert!(done["result"]["output"]["images"][0]["file_id"].is_string());
}

/// Regression: a provider stream cut off mid-answer (no finish, no usage, no
/// `[DONE]`) completed the execution with the partial text and billed it. It is a
/// failed attempt: the retry continues the text the client got (the model accepts
/// a prefill), is cut off too, and the execution fails with nothing charged.
#[tokio::test]
async fn a_stream_cut_off_mid_answer_is_a_failed_attempt_and_nothing_is_billed() {
    let emulator = openai_emulator().await;
    let server = Server::start_with(
        &[openai_provider(&emulator)],
        Options {
            executions: "max_attempts = 2",
            ..Options::default()
        },
    )
    .await;
    let body = json!({"model": "llama-3.1-8b-instruct", "mode": "STREAMING", "input": {"messages": [{"role": "user", "content": "[cut] one two three"}]}});
    let events = streamed_execution(&server, body).await;
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert!(!names.contains(&"reset"), "the retry continued: {names:?}");
    let deltas = delta_text(&events);
    assert_eq!(deltas, "Echo: three ", "each attempt cut after a piece");
    // Regression: every retry repeated `status: PROCESSING`; statuses are changes
    // (and the accept's event already said PROCESSING).
    assert_eq!(events[0].1["status"], "PROCESSING", "{names:?}");
    assert!(!names.contains(&"status"), "{names:?}");
    let done = &events.last().unwrap().1;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["error"]["code"], "GENERATION_FAILED");
    assert_eq!(emulator.count("/v1/chat/completions"), 2);
    let balance = server.get("/v1/balance").await.body;
    assert_eq!(balance["available"], "100");
    assert_eq!(balance["held"], "0");
}
