//! Retries and failover: classification, breakers, `Retry-After`, latency and
//! operator ranking, the bulkhead, timeouts and the code a failed failover reports.

use super::*;

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
    // Operators read the failed attempt's code by its API name, not the Rust one.
    let id = execution["id"].as_str().unwrap();
    let record = server
        .admin_get(&format!("/admin/v1/executions/{id}"))
        .await
        .body;
    let limited_attempt = &record["attempts"][0];
    assert_eq!(limited_attempt["failure"], "RATE_LIMITED", "{record}");
    let outcome = limited_attempt["outcome"].as_str().unwrap();
    assert!(outcome.starts_with("RATE_LIMITED: "), "{outcome}");
    assert_eq!(record["attempts"][1]["outcome"], "completed", "{record}");
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
    // The dispatcher says when it defers an execution instead of failing it.
    wait_until("the retry waits for the breaker", WAIT, || async {
        server
            .log()
            .lines()
            .any(|line| line.contains("execution waits") && line.contains(&id))
    })
    .await;
    let waiting = server.get(&format!("/v1/executions/{id}")).await.body;
    assert_eq!(waiting["status"], "PROCESSING", "{waiting}");
    assert_eq!(emulator.count("/v1/chat/completions"), 5);

    // Recovered, and past the cool-down: the probe is the retry, and it succeeds.
    emulator.set_always(None);
    server.advance_clock(11).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(emulator.count("/v1/chat/completions"), 6);

    // The operator sees why it waited, and each breaker transition once.
    let log = server.log();
    let lines = |text: &str| log.lines().filter(|l| l.contains(text)).count();
    assert_eq!(lines("circuit breaker opened: 5 of the last 5"), 1, "{log}");
    assert_eq!(lines("circuit breaker half-open"), 1, "{log}");
    assert_eq!(lines("circuit breaker closed"), 1, "{log}");
    let waits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("execution waits") && l.contains(&id))
        .collect();
    assert_eq!(waits.len(), 1, "logged once, not every look: {log}");
    assert!(
        waits[0].contains("its circuit breaker is open for"),
        "{}",
        waits[0]
    );
    assert!(
        log.lines()
            .any(|l| l.contains("execution stopped waiting") && l.contains(&id)),
        "{log}"
    );
    assert!(!log.contains("ModelOverloaded"), "{log}");
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
