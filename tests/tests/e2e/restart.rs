//! Durability: `kill -9` of the server at awkward moments, then a restart. Every
//! acknowledged execution must still end in a terminal state, with its money right.

use axum::http::HeaderMap;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelroute_tests::emulators::{DEFAULT_TOKEN, Fault, replicate};

use crate::executions::wait_status;
use rust_decimal::Decimal;

use crate::support::{
    Options, ProviderSpec, Server, assert_no_attempt_submitted_twice, decimal, flux_input,
    replicate_provider, wait_until,
};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_job_running_at_the_provider_is_polled_again_after_kill_9() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    emulator.state.set_never_finish(true);
    let mut server = Server::start(&[replicate_provider(&emulator)]).await;
    let reply = server
        .post(
            "/v1/executions",
            json!({"model": "flux-1.1-pro", "input": flux_input()}),
        )
        .await;
    let id = reply.body["id"].as_str().unwrap().to_string();
    wait_status(&server, &id, "AWAITING_WEBHOOK").await;

    server.kill();
    emulator.state.set_never_finish(false);
    server.restart().await;

    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(
        emulator.count("/v1/models/"),
        1,
        "the provider job was resumed, not submitted again"
    );
    let balance = server.get("/v1/balance").await.body;
    assert_eq!(
        balance,
        json!({"available": "99.96", "held": "0", "currency": "USD"})
    );
}

/// A deadline that passes while the server is down is enforced at start-up: the
/// execution ends `EXPIRED` with its hold released, and its job is stopped.
#[tokio::test]
async fn an_execution_whose_deadline_passed_while_the_server_was_down_expires() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    emulator.state.set_never_finish(true);
    let mut server = Server::start_with(
        &[replicate_provider(&emulator)],
        Options {
            executions: "[executions.models.\"flux-1.1-pro\"]\nexpiry_seconds = 3",
            ..Options::default()
        },
    )
    .await;
    let reply = server
        .post(
            "/v1/executions",
            json!({"model": "flux-1.1-pro", "input": flux_input()}),
        )
        .await;
    let id = reply.body["id"].as_str().unwrap().to_string();
    let expires_at: chrono::DateTime<chrono::Utc> =
        reply.body["expires_at"].as_str().unwrap().parse().unwrap();
    wait_status(&server, &id, "AWAITING_WEBHOOK").await;
    server.kill();
    while chrono::Utc::now() <= expires_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.restart().await;

    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "EXPIRED", "{execution}");
    assert_eq!(server.get("/v1/balance").await.body["held"], "0");
    wait_until("the job is stopped", WAIT, || async {
        emulator
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/cancel"))
    })
    .await;
}

/// The SDK template's example API: `POST /v1/generate` de-duplicates by
/// `Idempotency-Key`. Its first job never answers (the server is killed while it
/// waits); a repeat of a key answers that key's job without running another.
#[derive(Default)]
struct ExampleApi {
    /// the `Idempotency-Key` of every request, in order
    keys: Mutex<Vec<String>>,
    /// jobs run, by key
    jobs: Mutex<HashMap<String, Value>>,
}

impl ExampleApi {
    async fn spawn() -> (Arc<ExampleApi>, String) {
        let api = Arc::new(ExampleApi::default());
        let state = api.clone();
        let app = axum::Router::new().route(
            "/v1/generate",
            axum::routing::post(move |headers: HeaderMap| {
                let api = state.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    api.keys.lock().unwrap().push(key.clone());
                    let (answer, first_job) = {
                        let mut jobs = api.jobs.lock().unwrap();
                        let first_job = jobs.is_empty();
                        let answer = jobs
                            .entry(key)
                            .or_insert_with(|| {
                                json!({"text": "hello back", "usage": {"input_tokens": 3, "output_tokens": 2}})
                            })
                            .clone();
                        (answer, first_job)
                    };
                    if first_job {
                        std::future::pending::<()>().await;
                    }
                    axum::Json(answer)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (api, url)
    }

    fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }
}

/// A submit cut by `kill -9` before its answer was recorded: where the adapter
/// declares that its provider de-duplicates submits (`idempotent-submit`), the
/// restart sends it again under the same attempt id, so the provider runs one job.
#[tokio::test]
async fn a_cut_submit_is_sent_again_under_its_attempt_id_where_the_provider_dedupes() {
    let (api, url) = ExampleApi::spawn().await;
    let mut server = Server::start_with(
        &[ProviderSpec {
            name: "example",
            adapter: "template",
            base_url: url,
            models: &["template-text"],
        }],
        Options {
            extra_plugins: &["template"],
            ..Options::default()
        },
    )
    .await;
    let reply = server
        .post(
            "/v1/executions",
            json!({"model": "template-text", "input": {"prompt": "hello there"}}),
        )
        .await;
    let id = reply.body["id"].as_str().unwrap().to_string();
    wait_until("a submit arrives", WAIT, || async {
        !api.keys().is_empty()
    })
    .await;
    server.kill();
    server.restart().await;

    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["result"]["output"]["text"], "hello back");
    let keys = api.keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], keys[1], "the same idempotency key both times");
    assert_eq!(api.jobs.lock().unwrap().len(), 1, "one job at the provider");
    let record = server
        .call(
            reqwest::Method::GET,
            &format!("/admin/v1/executions/{id}"),
            Some(&server.admin_token),
            None,
            &[],
        )
        .await
        .body;
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{record}");
    assert_eq!(attempts[0]["id"], keys[0].as_str());
}

#[tokio::test]
async fn executions_cut_at_any_point_all_finish_after_kill_9() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    // Slow submits, so the kill lands on executions in every state: queued,
    // mid-submit, waiting for the provider, finished.
    emulator.set_always(Some(Fault::Delay { ms: 150 }));
    let mut server = Server::start(&[replicate_provider(&emulator)]).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let reply = server
            .post(
                "/v1/executions",
                json!({"model": "flux-1.1-pro", "input": {"prompt": format!("picture {i}")}}),
            )
            .await;
        assert_eq!(
            reply.status,
            reqwest::StatusCode::ACCEPTED,
            "{:?}",
            reply.body
        );
        ids.push(reply.body["id"].as_str().unwrap().to_string());
    }
    server.kill();
    emulator.set_always(None);
    server.restart().await;

    let mut spent = Decimal::ZERO;
    for id in &ids {
        // The provider never fails: a restart is not a failed attempt, so every
        // execution completes (regression: cut attempts spent the attempt budget,
        // and executions cut by a few restarts ended FAILED).
        let execution = server.wait_terminal(id, WAIT).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        spent += execution["cost"].as_str().map_or(Decimal::ZERO, decimal);
    }
    server.assert_spent(spent).await;
}

/// Several hundred executions, the server killed three times at random moments,
/// while clients are still creating (they retry with the same `Idempotency-Key`
/// when a create gets no answer, as SPEC §6 intends). Every execution ends; no
/// provider job is counted twice; no attempt's submit is sent twice (the callback
/// URL in each submit names its attempt); the ledger rebuilds to the balances
/// with no hold left.
#[tokio::test]
async fn random_kills_during_hundreds_of_executions_lose_nothing_and_repeat_nothing() {
    use futures_util::StreamExt;
    use rand::Rng;
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    emulator.set_always(Some(Fault::Delay { ms: 20 }));
    let mut server = Server::start(&[replicate_provider(&emulator)]).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for round in 0..3 {
        let (url, key) = (server.url.clone(), server.api_key.clone());
        let client = client.clone();
        // Eight clients at a time, each retrying its create until it is answered.
        let creating = tokio::spawn(async move {
            futures_util::stream::iter(0..100)
                .map(|i| {
                    let (client, url, key) = (client.clone(), url.clone(), key.clone());
                    async move {
                        let prompt = format!("run {round}-{i}");
                        let input = json!({"prompt": prompt, "width": 256, "height": 256});
                        loop {
                            let sent = client
                                .post(format!("{url}/v1/executions"))
                                .bearer_auth(&key)
                                .header("Idempotency-Key", &prompt)
                                .json(&json!({"model": "flux-1.1-pro", "input": input}))
                                .send()
                                .await;
                            if let Ok(response) = sent
                                && let Ok(body) = response.json::<Value>().await
                            {
                                let id = body["id"].as_str().expect("an execution id");
                                return (id.to_string(), prompt);
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await
        });
        let pause = rand::rng().random_range(0..600);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.kill();
        server.restart().await;
        ids.extend(creating.await.unwrap());
    }
    assert_eq!(ids.len(), 300);
    emulator.set_always(None);

    let creates = emulator.requests();
    for (id, prompt) in &ids {
        // The provider never fails: a restart is not a failed attempt, so every
        // execution completes (regression: cut attempts spent the attempt budget,
        // and executions cut by a few restarts ended FAILED).
        let execution = server.wait_terminal(id, WAIT).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        let record = server
            .call(
                reqwest::Method::GET,
                &format!("/admin/v1/executions/{id}"),
                Some(&server.admin_token),
                None,
                &[],
            )
            .await
            .body;
        let attempts = record["attempts"].as_array().unwrap();
        let submits: Vec<&str> = creates
            .iter()
            .filter(|r| {
                r.path.ends_with("/predictions") && r.body.contains(&format!("\"{prompt}\""))
            })
            .map(|r| r.body.as_str())
            .collect();
        assert_no_attempt_submitted_twice(id, attempts, &submits);
        let jobs: Vec<&str> = attempts
            .iter()
            .filter_map(|a| a["job"]["id"].as_str())
            .collect();
        let unique: std::collections::HashSet<&&str> = jobs.iter().collect();
        assert_eq!(
            unique.len(),
            jobs.len(),
            "{id}: a provider job recorded twice"
        );
        assert!(attempts.iter().all(|a| a["plugin_version"] == "0.1.0"));
    }
    let verified = server
        .call(
            reqwest::Method::GET,
            "/admin/v1/ledger/verify",
            Some(&server.admin_token),
            None,
            &[],
        )
        .await
        .body;
    assert_eq!(verified["consistent"], true, "{verified}");
    assert_eq!(server.get("/v1/balance").await.body["held"], "0");
}

/// Regression: a restart turned a driven clock (`[testing] clock_control`) back to
/// real time, so what was written on the advanced clock lay in the future: negative
/// latencies, and retries and expiries scheduled days ahead.
#[tokio::test]
async fn a_driven_clock_keeps_its_offset_across_kill_9() {
    let mut server = Server::start_with(
        &[],
        Options {
            config: "\n[testing]\nclock_control = true\n",
            ..Options::default()
        },
    )
    .await;
    server.advance_clock(2 * 86_400).await;
    let advanced = read_clock(&server).await;
    server.restart().await;
    let after = read_clock(&server).await;
    assert!(
        after >= advanced,
        "the clock went back from {advanced} to {after}"
    );
}

/// The service clock, read by advancing it by nothing.
async fn read_clock(server: &Server) -> chrono::DateTime<chrono::FixedOffset> {
    let reply = server
        .call(
            reqwest::Method::POST,
            "/admin/v1/clock/advance",
            Some(&server.admin_token),
            Some(json!({"seconds": 0})),
            &[],
        )
        .await;
    let now = reply.body["now"].as_str().expect("now");
    chrono::DateTime::parse_from_rfc3339(now).expect("RFC 3339")
}
