//! The OpenAI-compatible door, `/openai/v1` (SPEC §12): OpenAI's wire format over the
//! same platform. Every call is an execution (listed, billed, in the ledger); errors
//! are OpenAI's shape with the platform's codes; a stream never ends as a truncated
//! success; and the official `openai` Python SDK drives it end to end.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

use modelroute_tests::emulators::{DEFAULT_TOKEN, Emulator, Fault, openai};

use crate::support::{Options, Reply, Server, decimal, openai_provider, pydeps_python};

const CHAT: &str = "/openai/v1/chat/completions";
const IMAGES: &str = "/openai/v1/images/generations";
const LLAMA: &str = "llama-3.1-8b-instruct";

async fn emulator() -> Emulator<openai::OpenAi> {
    openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap()
}

fn chat(content: &str) -> Value {
    json!({"model": LLAMA, "messages": [{"role": "user", "content": content}]})
}

/// Asserts the door's error shape (SPEC §12) and returns `(type, code, param)`.
fn openai_error(reply: &Reply) -> (String, String, Value) {
    let error = &reply.body["error"];
    assert!(error.is_object(), "not an error: {}", reply.body);
    assert!(error["message"].is_string(), "{}", reply.body);
    assert!(error["retryable"].is_boolean(), "{}", reply.body);
    assert!(
        error.get("param").is_some(),
        "param is always there: {}",
        reply.body
    );
    assert_eq!(
        error["request_id"].as_str(),
        reply.header("x-request-id"),
        "{}",
        reply.body
    );
    (
        error["type"].as_str().unwrap().to_string(),
        error["code"].as_str().unwrap().to_string(),
        error["param"].clone(),
    )
}

/// A streamed answer: status, headers and the `data:` payloads, in order.
async fn stream(server: &Server, body: Value, headers: &[(&str, &str)]) -> (Reply, Vec<String>) {
    let mut request = reqwest::Client::new()
        .post(format!("{}{CHAT}", server.url))
        .bearer_auth(&server.api_key)
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = tokio::time::timeout(Duration::from_secs(60), response.text())
        .await
        .expect("the stream ends")
        .unwrap();
    if !status.is_success() {
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        return (
            Reply {
                status,
                headers,
                body,
            },
            Vec::new(),
        );
    }
    let events = text
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("only data lines: {text}"))
                .to_string()
        })
        .collect();
    (
        Reply {
            status,
            headers,
            body: Value::Null,
        },
        events,
    )
}

/// The text of a stream's content deltas.
fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn chunks_of(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter(|event| *event != "[DONE]")
        .map(|event| serde_json::from_str(event).unwrap())
        .collect()
}

async fn settled(server: &Server, id: &str) -> rust_decimal::Decimal {
    let ledger = server.get("/v1/ledger?limit=100").await;
    ledger.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["execution_id"] == id && entry["kind"] == "settle")
        .map(|entry| decimal(entry["amount"].as_str().unwrap()))
        .sum()
}

async fn ledger_verifies(server: &Server) {
    server.assert_ledger_verifies().await;
}

#[tokio::test]
async fn a_chat_completion_is_an_execution_billed_as_its_header_says() {
    let emulator = emulator().await;
    let server = Server::start(&[openai_provider(&emulator)]).await;
    let mut body = chat("one two three");
    body["user"] = json!("user-42");
    body["metadata"] = json!({"team": "search"});
    body["max_completion_tokens"] = json!(50);
    let reply = server.post(CHAT, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("exec_"));
    assert_eq!(reply.body["object"], "chat.completion");
    assert!(reply.body["created"].is_i64());
    assert_eq!(reply.body["model"], LLAMA);
    assert_eq!(
        reply.body["choices"][0]["message"],
        json!({"role": "assistant", "content": "Echo: three two one"})
    );
    assert_eq!(reply.body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        reply.body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    );
    assert!(reply.header("x-request-id").unwrap().starts_with("req_"));
    assert_eq!(reply.header("x-modelroute-execution-id"), Some(id.as_str()));
    assert!(reply.header("x-ratelimit-limit").is_some());
    let cost = decimal(reply.header("x-modelroute-cost").expect("cost header"));
    assert!(cost > decimal("0"), "{cost}");

    // The same execution on the native API: listed, with that cost, and in the ledger.
    let listed = server.get("/v1/executions?limit=5").await;
    let execution = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .expect("listed")
        .clone();
    assert_eq!(execution["status"], "COMPLETED");
    assert_eq!(decimal(execution["cost"].as_str().unwrap()), cost);
    assert_eq!(
        execution["metadata"],
        json!({"team": "search", "user": "user-42"})
    );
    assert_eq!(settled(&server, &id).await, cost);
    let sent = emulator
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/chat/completions")
        .unwrap();
    assert!(sent.body.contains("\"max_tokens\":50"), "{}", sent.body);
    ledger_verifies(&server).await;

    // Idempotency: the same request answers the same; another body is a 409.
    let server = &server;
    let keyed = |body: Value| async move {
        server
            .call(
                Method::POST,
                CHAT,
                Some(&server.api_key),
                Some(body),
                &[("Idempotency-Key", "door-1")],
            )
            .await
    };
    let first = keyed(chat("alpha beta")).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let again = keyed(chat("alpha beta")).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    assert_eq!(
        again.header("x-modelroute-cost"),
        first.header("x-modelroute-cost")
    );
    let other = keyed(chat("gamma")).await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{:?}", other.body);
    assert_eq!(
        openai_error(&other),
        (
            "invalid_request_error".into(),
            "CONFLICT".into(),
            Value::Null
        )
    );
    assert_eq!(other.header("x-should-retry"), Some("false"));
    let chats = emulator
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .count();
    assert_eq!(chats, 2, "a replay runs nothing");
    ledger_verifies(server).await;
}

#[tokio::test]
async fn the_door_refuses_in_openai_s_shape_with_the_platform_s_codes() {
    let emulator = emulator().await;
    let server = Server::start(&[openai_provider(&emulator)]).await;
    let cases = [
        (json!({"frequency_penalty": 0.5}), "frequency_penalty"),
        (json!({"n": 2}), "n"),
        (json!({"models": [LLAMA, "gpt-x"]}), "models[1]"),
        (
            json!({"messages": [{"role": "robot", "content": "hi"}]}),
            "messages[0].role",
        ),
        (json!({"max_completion_tokens": 0}), "max_completion_tokens"),
        (json!({"model": "no-such-model"}), "model"),
    ];
    for (change, param) in cases {
        let mut body = chat("hi");
        body.as_object_mut()
            .unwrap()
            .extend(change.as_object().unwrap().clone());
        let reply = server.post(CHAT, body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{change}: {:?}",
            reply.body
        );
        assert_eq!(
            openai_error(&reply),
            (
                "invalid_request_error".into(),
                "INPUT_VALIDATION_ERROR".into(),
                json!(param)
            ),
            "{change}"
        );
    }
    let unknown = server
        .post(
            CHAT,
            json!({"model": LLAMA, "messages": [], "logit_bias": {}}),
        )
        .await;
    assert!(
        unknown.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("logit_bias"),
        "{:?}",
        unknown.body
    );

    // 401, with or without a key, on any path of the door.
    for (path, key) in [(CHAT, None), ("/openai/v1/models", Some("sk_nope"))] {
        let reply = server.call(Method::GET, path, key, None, &[]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{:?}", reply.body);
        assert_eq!(
            openai_error(&reply),
            (
                "authentication_error".into(),
                "UNAUTHORIZED".into(),
                Value::Null
            )
        );
    }
    // Unknown routes and methods, malformed JSON.
    let reply = server.get("/openai/v1/completions").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(openai_error(&reply).0, "not_found_error");
    let reply = server.get(CHAT).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(openai_error(&reply).0, "not_found_error");
    let response = reqwest::Client::new()
        .post(format!("{}{CHAT}", server.url))
        .bearer_auth(&server.api_key)
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    let reply = Reply {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.json().await.unwrap(),
    };
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(openai_error(&reply).0, "invalid_request_error");
    // (On a client of its own: the server closes a connection whose body it refused.)
    let huge =
        json!({"model": LLAMA, "messages": [{"role": "user", "content": "x".repeat(2 << 20)}]});
    let response = reqwest::Client::new()
        .post(format!("{}{CHAT}", server.url))
        .bearer_auth(&server.api_key)
        .json(&huge)
        .send()
        .await
        .unwrap();
    let reply = Reply {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.json().await.unwrap(),
    };
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(openai_error(&reply).1, "PAYLOAD_TOO_LARGE");

    // 402: the hold is beyond the balance.
    let poor = server.new_organization("0.001").await;
    let reply = server
        .call(Method::POST, CHAT, Some(&poor), Some(chat("hi")), &[])
        .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYMENT_REQUIRED,
        "{:?}",
        reply.body
    );
    assert_eq!(
        openai_error(&reply),
        (
            "insufficient_quota".into(),
            "INSUFFICIENT_BALANCE".into(),
            Value::Null
        )
    );

    // A provider failure is the platform's code with OpenAI's family.
    emulator.set_always(Some(Fault::Status {
        status: 400,
        retry_after: None,
        body: None,
    }));
    let reply = server.post(CHAT, chat("hi")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(openai_error(&reply).0, "invalid_request_error");
    emulator.set_always(None);

    // The models the door serves: chat and text-to-image, not video or image edits.
    let models = server.get("/openai/v1/models").await;
    assert_eq!(models.status, StatusCode::OK);
    assert_eq!(models.body["object"], "list");
    let ids: Vec<&str> = models.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["flux-1.1-pro", LLAMA]);
    let one = server.get(&format!("/openai/v1/models/{LLAMA}")).await;
    assert_eq!(one.body["id"], LLAMA);
    assert_eq!(one.body["object"], "model");
    assert_eq!(one.body["owned_by"], "modelroute");
    assert!(one.body["created"].is_i64());
    let none = server.get("/openai/v1/models/kling-video").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(openai_error(&none).0, "not_found_error");
    ledger_verifies(&server).await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_in_openai_s_shape() {
    let emulator = emulator().await;
    let server = Server::start_with(
        &[openai_provider(&emulator)],
        Options {
            rate_limit: (1, 1),
            ..Options::default()
        },
    )
    .await;
    let first = server.get("/openai/v1/models").await;
    assert_eq!(first.status, StatusCode::OK);
    let second = server.get("/openai/v1/models").await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        openai_error(&second),
        (
            "rate_limit_error".into(),
            "RATE_LIMITED".into(),
            Value::Null
        )
    );
    assert!(second.header("retry-after").is_some());
    assert_eq!(second.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(second.header("x-should-retry"), Some("true"));
}

#[tokio::test]
async fn a_streamed_chat_sends_chunks_usage_and_done() {
    let emulator = emulator().await;
    let server = Server::start(&[openai_provider(&emulator)]).await;
    let mut body = chat("one two three");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (reply, events) = stream(&server, body, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let id = reply
        .header("x-modelroute-execution-id")
        .unwrap()
        .to_string();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = chunks_of(&events);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"
        && c["id"] == id.as_str()
        && c["model"] == LLAMA));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&chunks), "Echo: three two one");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    );
    let execution = server.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(execution["status"], "COMPLETED");
    assert_eq!(
        settled(&server, &id).await,
        decimal(execution["cost"].as_str().unwrap())
    );

    // Without include_usage: no usage chunk; a replay streams the whole answer again.
    let mut body = chat("four five");
    body["stream"] = json!(true);
    let key = [("Idempotency-Key", "door-stream")];
    let (_, events) = stream(&server, body.clone(), &key).await;
    let chunks = chunks_of(&events);
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "{events:?}"
    );
    assert_eq!(streamed_text(&chunks), "Echo: five four");
    let (replay, again) = stream(&server, body, &key).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(streamed_text(&chunks_of(&again)), "Echo: five four");
    assert_eq!(again.last().unwrap(), "[DONE]");
    ledger_verifies(&server).await;
}

/// A provider's stream cut after part of the answer went out: the retry continues
/// the delivered text (the model accepts a prefill; a retry that cannot is held
/// back, see `executions/rescue.rs`), so the client gets the whole answer exactly
/// once, billed once. When no attempt can finish, the stream ends
/// with one in-band error and no `[DONE]`, and nothing is billed.
#[tokio::test]
async fn a_cut_stream_is_completed_without_repeating_or_losing_text() {
    let emulator = emulator().await;
    // Two attempts: few enough failures that no breaker opens and makes work wait.
    let server = Server::start_with(
        &[openai_provider(&emulator)],
        Options {
            executions: "max_attempts = 2",
            ..Options::default()
        },
    )
    .await;
    emulator.push_fault(Fault::CutStream { after: 2 });
    let mut body = chat("one two three");
    body["stream"] = json!(true);
    let (reply, events) = stream(&server, body, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let id = reply
        .header("x-modelroute-execution-id")
        .unwrap()
        .to_string();
    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    let chunks = chunks_of(&events);
    assert_eq!(streamed_text(&chunks), "Echo: three two one", "{events:?}");
    let execution = server.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(execution["status"], "COMPLETED");
    let record = server
        .admin_get(&format!("/admin/v1/executions/{id}"))
        .await;
    assert_eq!(
        record.body["attempts"].as_array().unwrap().len(),
        2,
        "{}",
        record.body
    );
    let cost = decimal(execution["cost"].as_str().unwrap());
    assert_eq!(settled(&server, &id).await, cost, "billed once");

    // Every attempt cut: one in-band error, no [DONE], nothing billed.
    let mut body = chat("[cut] one two three");
    body["stream"] = json!(true);
    let (reply, events) = stream(&server, body, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let id = reply
        .header("x-modelroute-execution-id")
        .unwrap()
        .to_string();
    assert!(!events.contains(&"[DONE]".to_string()), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "api_error", "{last}");
    assert_eq!(
        last["error"]["request_id"].as_str(),
        reply.header("x-request-id")
    );
    let errors = events.iter().filter(|e| e.contains("\"error\"")).count();
    assert_eq!(errors, 1, "{events:?}");
    // The retry continued the first attempt's text (the model accepts a prefill),
    // and was cut too: what went out is sent once.
    let text = streamed_text(&chunks_of(&events[..events.len() - 1]));
    assert_eq!(
        text, "Echo: three ",
        "the cut text is sent once: {events:?}"
    );
    let execution = server.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(execution["status"], "FAILED");
    assert_eq!(settled(&server, &id).await, decimal("0"));
    ledger_verifies(&server).await;

    // An execution that fails before any text is an ordinary HTTP error.
    emulator.set_always(Some(Fault::Status {
        status: 400,
        retry_after: None,
        body: None,
    }));
    let mut body = chat("hi");
    body["stream"] = json!(true);
    let (reply, _) = stream(&server, body, &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(openai_error(&reply).0, "invalid_request_error");
}

#[tokio::test]
async fn images_come_as_signed_urls_or_base64() {
    let emulator = emulator().await;
    let server = Server::start(&[openai_provider(&emulator)]).await;
    let reply = server
        .post(
            IMAGES,
            json!({"model": "flux-1.1-pro", "prompt": "a lighthouse", "size": "512x384"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert!(reply.body["created"].is_i64());
    let id = reply
        .header("x-modelroute-execution-id")
        .unwrap()
        .to_string();
    assert!(decimal(reply.header("x-modelroute-cost").unwrap()) > decimal("0"));
    let url = reply.body["data"][0]["url"].as_str().unwrap();
    assert!(url.contains("/files/download/file_"), "{url}");
    let png = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert_eq!(
        modelroute_tests::emulators::png_dimensions(&png),
        Some((512, 384))
    );
    let execution = server.get(&format!("/v1/executions/{id}")).await;
    assert_eq!(execution.body["status"], "COMPLETED");

    let reply = server
        .post(
            IMAGES,
            json!({"model": "flux-1.1-pro", "prompt": "a lighthouse", "size": "256x256", "response_format": "b64_json"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(reply.body["data"][0]["b64_json"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        modelroute_tests::emulators::png_dimensions(&bytes),
        Some((256, 256))
    );

    for (change, param) in [
        (json!({"n": 2}), "n"),
        (json!({"size": "500x500"}), "size"),
        (json!({"size": "big"}), "size"),
        (json!({"style": "vivid"}), "style"),
    ] {
        let mut body = json!({"model": "flux-1.1-pro", "prompt": "a lighthouse"});
        body.as_object_mut()
            .unwrap()
            .extend(change.as_object().unwrap().clone());
        let reply = server.post(IMAGES, body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{change}: {:?}",
            reply.body
        );
        assert_eq!(openai_error(&reply).2, json!(param), "{change}");
    }
    ledger_verifies(&server).await;
}

/// The official `openai` Python SDK, unchanged, against the live server: chat
/// (plain and streamed) and images. `make test` installs the SDK into
/// `target/pydeps`; under CI a missing SDK fails the test.
#[tokio::test]
async fn the_official_openai_python_sdk_works_against_the_door() {
    let emulator = emulator().await;
    let server = Server::start(&[openai_provider(&emulator)]).await;
    run_sdk_script(&server, &[]).await;
}

#[tokio::test]
async fn the_openai_sdk_retries_a_429_after_its_retry_after() {
    let emulator = emulator().await;
    let server = Server::start_with(
        &[openai_provider(&emulator)],
        Options {
            rate_limit: (1, 1),
            ..Options::default()
        },
    )
    .await;
    run_sdk_script(&server, &["retry"]).await;
}

/// Runs `tests/openai_sdk/drive.py` with `args` against `server` through the
/// official `openai` SDK (installed by `make pydeps`; in CI, its absence fails),
/// then checks the ledger.
async fn run_sdk_script(server: &Server, args: &[&str]) {
    let Some(mut python) = pydeps_python("pydeps", "openai") else {
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/openai_sdk/drive.py");
    let output = python
        .arg(&script)
        .args(args)
        .env("OPENAI_BASE_URL", format!("{}/openai/v1", server.url))
        .env("OPENAI_API_KEY", &server.api_key)
        .env("MODELROUTE_URL", &server.url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK script failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        server.log()
    );
    assert!(stdout.contains("ok"), "{stdout}");
    ledger_verifies(server).await;
}

/// A client that hangs up before its answer, without an `Idempotency-Key`, cancels
/// the execution (nobody can receive the answer; nothing is charged). With a key it
/// runs on, and a replay answers it.
#[tokio::test]
async fn a_hang_up_cancels_unless_a_replay_can_fetch_the_answer() {
    let emulator = emulator().await;
    let server = Server::start(&[openai_provider(&emulator)]).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let send = |body: Value, key: Option<&'static str>| {
        let mut request = impatient
            .post(format!("{}{CHAT}", server.url))
            .bearer_auth(&server.api_key)
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send()
    };
    let newest = || async {
        let listed = server.get("/v1/executions?limit=1").await;
        listed.body["data"][0]["id"].as_str().unwrap().to_string()
    };

    emulator.push_fault(Fault::Delay { ms: 2_000 });
    assert!(send(chat("one"), None).await.is_err(), "the client gave up");
    let id = newest().await;
    let execution = server.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(execution["status"], "CANCELLED", "{execution}");
    assert_eq!(settled(&server, &id).await, decimal("0"));

    let mut body = chat("two");
    body["stream"] = json!(true);
    emulator.push_fault(Fault::Delay { ms: 2_000 });
    assert!(send(body, None).await.is_err(), "the client gave up");
    let id = newest().await;
    let execution = server.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(execution["status"], "CANCELLED", "{execution}");

    emulator.push_fault(Fault::Delay { ms: 1_000 });
    assert!(send(chat("three"), Some("hang-up")).await.is_err());
    let id = newest().await;
    let execution = server.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let replay = server
        .call(
            Method::POST,
            CHAT,
            Some(&server.api_key),
            Some(chat("three")),
            &[("Idempotency-Key", "hang-up")],
        )
        .await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    assert_eq!(replay.body["id"], id.as_str());
    assert_eq!(
        replay.body["choices"][0]["message"]["content"],
        "Echo: three"
    );
    ledger_verifies(&server).await;
}

/// An execution that does not finish by its deadline ends the request with
/// `504 GENERATION_TIMEOUT` (the platform expires it; nothing is charged).
#[tokio::test]
async fn a_chat_past_its_deadline_is_a_generation_timeout() {
    let emulator = emulator().await;
    let server = Server::start_with(
        &[openai_provider(&emulator)],
        Options {
            executions: "[executions.models.\"llama-3.1-8b-instruct\"]\nexpiry_seconds = 1",
            ..Options::default()
        },
    )
    .await;
    emulator.set_always(Some(Fault::Hang));
    let reply = server.post(CHAT, chat("hi")).await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{:?}",
        reply.body
    );
    assert_eq!(
        openai_error(&reply),
        ("api_error".into(), "GENERATION_TIMEOUT".into(), Value::Null)
    );
    let mut body = chat("hi");
    body["stream"] = json!(true);
    let (reply, _) = stream(&server, body, &[]).await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{:?}",
        reply.body
    );
    emulator.set_always(None);
    ledger_verifies(&server).await;
}
