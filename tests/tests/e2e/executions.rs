//! Executions end to end against the provider emulators: outputs, failover,
//! classification, cancel, expiry, idempotency, isolation.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

use modelroute_tests::emulators::{DEFAULT_TOKEN, Emulator, Fault, openai, replicate};

use crate::support::{
    Options, ProviderSpec, Server, eventually, flux_input, openai_provider, replicate_provider,
    wait_until,
};

const WAIT: Duration = Duration::from_secs(30);

async fn replicate_emulator() -> Emulator<replicate::Replicate> {
    replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap()
}

async fn openai_emulator() -> Emulator<openai::OpenAi> {
    openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap()
}

async fn create(server: &Server, body: Value) -> String {
    let reply = server.post("/v1/executions", body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

fn flux() -> Value {
    json!({"model": "flux-1.1-pro", "input": flux_input()})
}

/// Runs one flux execution and asserts that it completed.
async fn complete_flux(server: &Server) -> Value {
    let id = create(server, flux()).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    execution
}

/// Nothing a client sees may name the provider or its address.
fn assert_no_provider_leak(value: &Value, emulator_url: &str) {
    let text = value.to_string().to_lowercase();
    for leak in ["replicate", "openai", "together", emulator_url] {
        assert!(!text.contains(leak), "{leak} leaked in {value}");
    }
}

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

#[tokio::test]
async fn moderation_fails_at_once_without_failover_and_releases_the_hold() {
    let first = replicate_emulator().await;
    let second = openai_emulator().await;
    let server = Server::start(&[replicate_provider(&first), openai_provider(&second)]).await;
    let id = create(
        &server,
        json!({"model": "flux-1.1-pro", "input": {"prompt": "something nsfw"}}),
    )
    .await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "FAILED");
    assert_eq!(execution["error"]["code"], "CONTENT_MODERATION_REJECTED");
    assert_eq!(execution["error"]["retryable"], false);
    assert_eq!(
        first.count("/v1/") + second.count("/v1/"),
        1,
        "a moderation rejection must not fail over"
    );
    assert_no_provider_leak(&execution, &first.base_url());
    let balance = server.get("/v1/balance").await.body;
    assert_eq!(balance["available"], "100");
    assert_eq!(balance["held"], "0");
}

/// For 512×384 the OpenAI-format provider (priced per megapixel) is cheaper, so it
/// is ranked first: break it and the execution must move to the other one.
#[tokio::test]
async fn a_failing_provider_fails_over_to_the_next() {
    let broken = openai_emulator().await;
    broken.set_always(Some(Fault::Status {
        status: 500,
        retry_after: None,
        body: None,
    }));
    let healthy = replicate_emulator().await;
    let server = Server::start(&[replicate_provider(&healthy), openai_provider(&broken)]).await;
    let id = create(&server, flux()).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(
        broken.count("/v1/images/generations"),
        1,
        "the cheaper provider went first"
    );
    assert_eq!(healthy.count("/v1/models/"), 1);
    // The hold was placed for the cheaper provider ($0.01 floor); the dearer one that
    // ran it costs $0.04, but a settlement never exceeds its hold.
    assert_eq!(execution["cost"], "0.01");
    let ledger = server.get("/v1/ledger").await.body;
    let kinds: Vec<&str> = ledger["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    // Regression: the platform's own entry for the $0.03 it absorbed was listed to
    // the client, telling it the fallback provider's price.
    assert_eq!(kinds, ["settle", "hold", "deposit"]);
    let bad = server.get("/v1/ledger?starting_after=garbage").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
}

/// A 503 storm opens the broken provider's breaker: later executions go straight to
/// the healthy one instead of trying the broken one first. Once the provider has
/// recovered and the cool-down has passed (on the driven clock), one probe goes
/// through, its success closes the breaker, and the cheaper provider has the traffic
/// again.
#[tokio::test]
async fn a_503_storm_opens_the_breaker_traffic_moves_and_recovery_closes_it() {
    let broken = openai_emulator().await;
    broken.set_always(Some(Fault::Status {
        status: 503,
        retry_after: None,
        body: None,
    }));
    let healthy = replicate_emulator().await;
    let server = Server::start_with(
        &[replicate_provider(&healthy), openai_provider(&broken)],
        Options {
            config: "[testing]\nclock_control = true",
            ..Options::default()
        },
    )
    .await;
    for _ in 0..10 {
        complete_flux(&server).await;
    }
    let tried = broken.count("/v1/images/generations");
    assert!(
        tried <= 6,
        "the breaker should open after a handful of failures, not {tried}"
    );
    assert_eq!(healthy.count("/v1/models/"), 10);

    // Still open: the recovered provider is not tried before the cool-down ends.
    broken.set_always(None);
    complete_flux(&server).await;
    assert_eq!(broken.count("/v1/images/generations"), tried);
    assert_eq!(healthy.count("/v1/models/"), 11);

    server.advance_clock(11).await;
    for _ in 0..3 {
        complete_flux(&server).await;
    }
    assert_eq!(
        broken.count("/v1/images/generations"),
        tried + 3,
        "the probe succeeded and closed the breaker"
    );
    assert_eq!(healthy.count("/v1/models/"), 11);
}

/// Regression: a 429 with `Retry-After: 30` from the cheapest provider held the
/// execution for 30 s before it failed over to a healthy one.
#[tokio::test]
async fn retry_after_does_not_hold_back_failover_to_another_provider() {
    let limited = openai_emulator().await;
    limited.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(30),
        body: None,
    });
    let healthy = replicate_emulator().await;
    let server = Server::start(&[replicate_provider(&healthy), openai_provider(&limited)]).await;
    let execution = complete_flux(&server).await;
    assert_eq!(limited.count("/v1/images/generations"), 1, "cheaper, first");
    assert_eq!(healthy.count("/v1/models/"), 1);
    let latency = execution["latency_ms"].as_u64().unwrap();
    assert!(latency < 10_000, "failover waited {latency} ms");
}

/// Regression: while the only provider's breaker was open, every attempt failed at
/// once without reaching it, and an execution spent its attempts in a second. Now
/// it waits for the breaker: after the cool-down (on the driven clock) its probe
/// goes through and the execution completes.
#[tokio::test]
async fn an_open_breaker_defers_executions_instead_of_failing_them() {
    let emulator = openai_emulator().await;
    emulator.set_always(Some(Fault::Status {
        status: 503,
        retry_after: None,
        body: None,
    }));
    let server = Server::start_with(
        &[openai_provider(&emulator)],
        Options {
            executions: "max_attempts = 2",
            config: "[testing]\nclock_control = true",
            ..Options::default()
        },
    )
    .await;
    let llama = json!({"model": "llama-3.1-8b-instruct", "input": {"messages": [{"role": "user", "content": "hi"}]}});
    for _ in 0..2 {
        let id = create(&server, llama.clone()).await;
        let execution = server.wait_terminal(&id, WAIT).await;
        assert_eq!(
            execution["error"]["code"], "MODEL_OVERLOADED",
            "{execution}"
        );
    }
    // The next execution's first attempt is the fifth failure: the breaker opens,
    // and its retry waits instead of failing.
    let id = create(&server, llama.clone()).await;
    wait_until("five failures reach the provider", WAIT, || async {
        emulator.count("/v1/chat/completions") >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = server.get(&format!("/v1/executions/{id}")).await.body;
    assert_eq!(waiting["status"], "PROCESSING", "{waiting}");
    assert_eq!(emulator.count("/v1/chat/completions"), 5);

    // Recovered, and past the cool-down: the probe is the retry, and it succeeds.
    emulator.set_always(None);
    server.advance_clock(11).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(emulator.count("/v1/chat/completions"), 6);
}

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

/// A slow provider is not a failed one: its execution completes. Its observed
/// latency then sends later executions of the same price to a faster provider.
#[tokio::test]
async fn a_slow_provider_completes_and_latency_ranks_a_faster_one_first() {
    let slow = replicate_emulator().await;
    slow.set_always(Some(Fault::Delay { ms: 400 }));
    let fast = replicate_emulator().await;
    let server = Server::start(&[
        ProviderSpec {
            name: "slow",
            ..replicate_provider(&slow)
        },
        ProviderSpec {
            name: "fast",
            ..replicate_provider(&fast)
        },
    ])
    .await;
    let execution = complete_flux(&server).await;
    assert!(
        execution["latency_ms"].as_u64().unwrap() >= 400,
        "{execution}"
    );
    assert_eq!(
        slow.count("/v1/models/"),
        1,
        "equal price: config order first"
    );
    for _ in 0..4 {
        complete_flux(&server).await;
    }
    assert_eq!(slow.count("/v1/models/"), 1);
    assert_eq!(fast.count("/v1/models/"), 4);
}

/// A replicate-format provider of flux as config TOML, with extra lines for the
/// provider table and for its `flux-1.1-pro` entry.
fn flux_provider(
    name: &str,
    emulator: &Emulator<replicate::Replicate>,
    provider_lines: &str,
    model_lines: &str,
) -> String {
    format!(
        "\n[[providers]]\nname = {name:?}\nadapter = \"replicate\"\nbase_url = {:?}\napi_key = \"emulator-key\"\n{provider_lines}\n[providers.models.\"flux-1.1-pro\"]\n{model_lines}\n",
        emulator.base_url()
    )
}

/// The operator's weight outranks config order at equal cost, and a pin serves a
/// model alone: when the pinned provider fails, the others are not tried.
#[tokio::test]
async fn operator_weights_rank_providers_and_a_pin_excludes_the_others() {
    let (a, b) = (replicate_emulator().await, replicate_emulator().await);
    // Same price: config order would pick `a`.
    let weighted = flux_provider("a", &a, "", "") + &flux_provider("b", &b, "", "weight = 2.0");
    let server = Server::start_with(
        &[],
        Options {
            config: &weighted,
            ..Options::default()
        },
    )
    .await;
    for _ in 0..3 {
        complete_flux(&server).await;
    }
    assert_eq!(a.count("/v1/models/"), 0);
    assert_eq!(b.count("/v1/models/"), 3);
    drop(server);

    let (a, b) = (replicate_emulator().await, replicate_emulator().await);
    let pinned =
        flux_provider("a", &a, "", "pinned = true") + &flux_provider("b", &b, "", "weight = 2.0");
    let server = Server::start_with(
        &[],
        Options {
            config: &pinned,
            executions: "max_attempts = 2",
            ..Options::default()
        },
    )
    .await;
    complete_flux(&server).await;
    assert_eq!((a.count("/v1/models/"), b.count("/v1/models/")), (1, 0));
    a.set_always(Some(Fault::Status {
        status: 500,
        retry_after: None,
        body: None,
    }));
    let id = create(&server, flux()).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert_eq!(
        a.count("/v1/models/"),
        3,
        "two attempts, both at the pinned provider"
    );
    assert_eq!(b.count("/v1/models/"), 0);
}

/// A provider's `max_concurrency` caps the requests in flight to it: six
/// executions queue behind a bulkhead of two and all complete.
#[tokio::test]
async fn the_bulkhead_caps_requests_in_flight_to_a_provider() {
    let emulator = replicate_emulator().await;
    emulator.set_always(Some(Fault::Delay { ms: 1000 }));
    let config = flux_provider("slow", &emulator, "max_concurrency = 2", "");
    let server = Server::start_with(
        &[],
        Options {
            config: &config,
            ..Options::default()
        },
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(create(&server, flux()).await);
    }
    for id in &ids {
        let execution = server.wait_terminal(id, WAIT).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
    }
    assert_eq!(
        emulator.peak_in_flight(),
        2,
        "the bulkhead is filled, never overfilled"
    );
}

#[tokio::test]
async fn transient_faults_are_retried_until_the_provider_answers() {
    for fault in [
        Fault::Status {
            status: 429,
            retry_after: Some(1),
            body: None,
        },
        Fault::Status {
            status: 429,
            retry_after: None,
            body: None,
        },
        Fault::Status {
            status: 500,
            retry_after: None,
            body: None,
        },
        Fault::Reset,
        Fault::Malformed,
    ] {
        let emulator = replicate_emulator().await;
        emulator.push_fault(fault.clone());
        let server = Server::start(&[replicate_provider(&emulator)]).await;
        let id = create(&server, flux()).await;
        let execution = server.wait_terminal(&id, WAIT).await;
        assert_eq!(execution["status"], "COMPLETED", "{fault:?}: {execution}");
        assert_eq!(
            emulator.count("/v1/models/"),
            2,
            "{fault:?}: one failed submit, one retry"
        );
        if let Fault::Status {
            retry_after: Some(seconds),
            ..
        } = fault
        {
            let waited = execution["latency_ms"].as_u64().unwrap();
            assert!(
                waited >= u64::from(seconds) * 1000,
                "the retry came {waited} ms in, before Retry-After: {seconds}"
            );
        }
    }
}

#[tokio::test]
async fn a_silent_provider_times_out_and_the_execution_fails_cleanly() {
    let emulator = replicate_emulator().await;
    emulator.set_always(Some(Fault::Hang));
    let server = Server::start_with(
        &[replicate_provider(&emulator)],
        Options {
            executions: "max_attempts = 2\nupstream_timeout_ms = 300",
            ..Options::default()
        },
    )
    .await;
    let id = create(&server, flux()).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "FAILED");
    assert_eq!(execution["error"]["code"], "GENERATION_TIMEOUT");
    assert_eq!(emulator.count("/v1/models/"), 2);
    assert_eq!(server.get("/v1/balance").await.body["available"], "100");
}

/// The first provider says it is overloaded, the fallback cannot be reached: the
/// execution reports the overload (what a client can act on), not the last
/// connection error.
#[tokio::test]
async fn a_failed_failover_reports_the_most_informative_code() {
    let overloaded = openai_emulator().await;
    overloaded.set_always(Some(Fault::Status {
        status: 503,
        retry_after: None,
        body: None,
    }));
    let unreachable = replicate_emulator().await;
    unreachable.set_always(Some(Fault::Reset));
    let server = Server::start_with(
        &[
            replicate_provider(&unreachable),
            openai_provider(&overloaded),
        ],
        Options {
            executions: "max_attempts = 2",
            ..Options::default()
        },
    )
    .await;
    let id = create(&server, flux()).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert_eq!(
        overloaded.count("/v1/images/generations"),
        1,
        "cheaper, first"
    );
    assert_eq!(unreachable.count("/v1/models/"), 1, "then the fallback");
    assert_eq!(
        execution["error"]["code"], "MODEL_OVERLOADED",
        "{execution}"
    );
    assert_eq!(execution["error"]["retryable"], true);
}

/// Also guards the off-by-one that made one attempt more than `max_attempts`.
#[tokio::test]
async fn exhausted_retries_fail_with_the_provider_classification() {
    let emulator = replicate_emulator().await;
    emulator.set_always(Some(Fault::Status {
        status: 503,
        retry_after: None,
        body: None,
    }));
    let server = Server::start_with(
        &[replicate_provider(&emulator)],
        Options {
            executions: "max_attempts = 3",
            ..Options::default()
        },
    )
    .await;
    let id = create(&server, flux()).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "FAILED");
    assert_eq!(execution["error"]["code"], "MODEL_OVERLOADED");
    assert_eq!(execution["error"]["retryable"], true);
    assert_eq!(emulator.count("/v1/models/"), 3);
}

#[tokio::test]
async fn cancel_stops_a_running_job_releases_the_hold_and_is_idempotent() {
    let emulator = replicate_emulator().await;
    emulator.state.set_never_finish(true);
    let server = Server::start(&[replicate_provider(&emulator)]).await;
    let id = create(&server, flux()).await;
    wait_status(&server, &id, "AWAITING_WEBHOOK").await;

    let cancelled = server
        .post(&format!("/v1/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    assert_eq!(cancelled.body["status"], "CANCELLED");
    let again = server
        .post(&format!("/v1/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(server.get("/v1/balance").await.body["held"], "0");
    assert_eq!(server.get("/v1/balance").await.body["available"], "100");
    wait_until("the provider is asked to cancel", WAIT, || async {
        emulator.count("/v1/predictions/") > 0
            && emulator
                .requests()
                .iter()
                .any(|r| r.path.ends_with("/cancel"))
    })
    .await;
    let result = server.get(&format!("/v1/executions/{id}/result")).await;
    assert_eq!(result.status, StatusCode::CONFLICT);
    assert_eq!(result.error_code(), "CONFLICT");
    assert_eq!(result.body["error"]["status"], "CANCELLED");

    let done = create(&server, flux()).await;
    emulator.state.set_never_finish(false);
    server.wait_terminal(&done, WAIT).await;
    let conflict = server
        .post(&format!("/v1/executions/{done}/cancel"), json!({}))
        .await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(conflict.body["error"]["status"], "COMPLETED");
    assert!(
        conflict.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("COMPLETED")
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

/// Waits until `done` holds, failing with `what` after [`WAIT`].
async fn until(what: &str, done: impl Fn() -> bool) {
    wait_until(what, WAIT, || async { done() }).await
}

/// Regression: a cancelled or expired execution's request kept waiting on a silent
/// provider until the upstream timeout, holding a bulkhead slot that new executions
/// queued behind. Its connection is now closed as soon as the execution ends.
#[tokio::test]
async fn cancel_and_expiry_close_the_provider_request_and_free_its_bulkhead_slot() {
    let emulator = openai_emulator().await;
    emulator.set_always(Some(Fault::Hang));
    let provider = format!(
        "\n[[providers]]\nname = \"one-slot\"\nadapter = \"openai\"\nbase_url = {:?}\napi_key = \"emulator-key\"\nmax_concurrency = 1\n[providers.models.\"llama-3.1-8b-instruct\"]\n",
        emulator.base_url()
    );
    let server = Server::start_with(
        &[],
        Options {
            executions: "upstream_timeout_ms = 600000",
            config: &(provider + "\n[testing]\nclock_control = true\n"),
            ..Options::default()
        },
    )
    .await;
    let chat = json!({"model": "llama-3.1-8b-instruct", "input": {"messages": [{"role": "user", "content": "hi"}]}});

    let cancelled = create(&server, chat.clone()).await;
    until("the request never reached the provider", || {
        emulator.in_flight() == 1
    })
    .await;
    let reply = server
        .post(&format!("/v1/executions/{cancelled}/cancel"), json!({}))
        .await;
    assert_eq!(reply.body["status"], "CANCELLED", "{:?}", reply.body);
    until("the cancelled request was left open", || {
        emulator.in_flight() == 0
    })
    .await;

    let expired = create(&server, chat.clone()).await;
    until("the request never reached the provider", || {
        emulator.in_flight() == 1
    })
    .await;
    server.advance_clock(3600).await;
    assert_eq!(
        server.wait_terminal(&expired, WAIT).await["status"],
        "EXPIRED"
    );
    until("the expired request was left open", || {
        emulator.in_flight() == 0
    })
    .await;

    // The slot is free: the next execution is answered.
    emulator.set_always(None);
    let next = create(&server, chat).await;
    assert_eq!(
        server.wait_terminal(&next, WAIT).await["status"],
        "COMPLETED"
    );
}

/// Regression: a provider job started by a submit that answered after the execution
/// was cancelled was never stopped. A submit to a provider that can cancel jobs is
/// let answer, and its job is cancelled at once.
#[tokio::test]
async fn a_job_started_by_a_submit_that_answers_after_cancel_is_cancelled() {
    let emulator = replicate_emulator().await;
    emulator.state.set_never_finish(true);
    emulator.push_fault(Fault::Delay { ms: 5000 });
    let server = Server::start(&[replicate_provider(&emulator)]).await;
    let id = create(&server, flux()).await;
    until("the submit never reached the provider", || {
        emulator.in_flight() == 1
    })
    .await;
    let reply = server
        .post(&format!("/v1/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(reply.body["status"], "CANCELLED", "{:?}", reply.body);
    until("the provider was never asked to cancel the job", || {
        emulator
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/cancel"))
    })
    .await;
    let record = server
        .call(
            Method::GET,
            &format!("/admin/v1/executions/{id}"),
            Some(&server.admin_token),
            None,
            &[],
        )
        .await;
    assert!(
        record.body["attempts"][0]["job"].is_null(),
        "the job was never recorded, so only the submit's answer could cancel it: {}",
        record.body
    );
}

#[tokio::test]
async fn a_job_that_never_finishes_expires_and_releases_its_hold() {
    let emulator = replicate_emulator().await;
    emulator.state.set_never_finish(true);
    let server = Server::start_with(
        &[replicate_provider(&emulator)],
        Options {
            executions: "[executions.models.\"flux-1.1-pro\"]\nexpiry_seconds = 2",
            ..Options::default()
        },
    )
    .await;
    let id = create(&server, flux()).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "EXPIRED");
    assert_eq!(server.get("/v1/balance").await.body["available"], "100");
    wait_until("the provider job is stopped", WAIT, || async {
        emulator
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/cancel"))
    })
    .await;
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

pub async fn wait_status(server: &Server, id: &str, status: &str) {
    eventually(&format!("{id} reaches {status}"), WAIT, || async {
        let current = server.get(&format!("/v1/executions/{id}")).await.body;
        if current["status"] == status {
            Ok(())
        } else {
            Err(current)
        }
    })
    .await;
}

/// Parses a server-sent event stream into (event, data) pairs.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = Some(name.trim().to_string());
                } else if let Some(chunk) = line.strip_prefix("data:") {
                    data.push_str(chunk.trim_start());
                }
            }
            Some((event?, serde_json::from_str(&data).ok()?))
        })
        .collect()
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
    assert!(names.contains(&"status"));
    let deltas: String = events
        .iter()
        .filter(|(name, _)| name == "delta")
        .map(|(_, data)| data["text"].as_str().unwrap())
        .collect();
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

    // A model whose provider does not stream text still streams its status.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/executions", server.url))
        .bearer_auth(&server.api_key)
        .json(&json!({"model": "flux-1.1-pro", "mode": "STREAMING", "input": flux_input()}))
        .send()
        .await
        .unwrap();
    let events = sse_events(&response.text().await.unwrap());
    let done = &events.last().unwrap().1;
    assert_eq!(events.last().unwrap().0, "done");
    assert_eq!(done["status"], "COMPLETED");
    assert!(done["result"]["output"]["images"][0]["file_id"].is_string());
}

/// Regression: a provider stream cut off mid-answer (no finish, no usage, no
/// `[DONE]`) completed the execution with the partial text and billed it. It is a
/// failed attempt: the client is told to drop the text it got, the retry is cut off
/// too, and the execution fails with nothing charged.
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
    let response = reqwest::Client::new()
        .post(format!("{}/v1/executions", server.url))
        .bearer_auth(&server.api_key)
        .json(&json!({"model": "llama-3.1-8b-instruct", "mode": "STREAMING", "input": {"messages": [{"role": "user", "content": "[cut] one two three"}]}}))
        .send()
        .await
        .unwrap();
    let events = sse_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let resets = names.iter().filter(|name| **name == "reset").count();
    assert_eq!(resets, 2, "each attempt's text is voided: {names:?}");
    let after_last_reset = names.iter().rev().take_while(|name| **name != "reset");
    assert!(
        after_last_reset.clone().all(|name| *name != "delta"),
        "{names:?}"
    );
    // Regression: every retry repeated `status: PROCESSING`; statuses are changes.
    let statuses: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "status")
        .map(|(_, data)| &data["status"])
        .collect();
    assert_eq!(statuses, [&json!("PROCESSING")], "{names:?}");
    let done = &events.last().unwrap().1;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["error"]["code"], "GENERATION_FAILED");
    assert_eq!(emulator.count("/v1/chat/completions"), 2);
    let balance = server.get("/v1/balance").await.body;
    assert_eq!(balance["available"], "100");
    assert_eq!(balance["held"], "0");
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
