//! `GET /metrics`: after a scripted run (completions, a failover, an adapter trap, a
//! webhook retry) the counts are exact; the endpoint takes the operator token on the
//! main address and none on the operator-only `server.metrics_listen`; the Grafana
//! dashboard asks only for series the server exports.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

use modelroute_tests::emulators::{DEFAULT_TOKEN, Fault, openai, replicate};

use crate::receiver::Receiver;
use crate::support::{
    Options, ProviderSpec, Server, flux_input, openai_provider, replicate_provider,
};

const WAIT: Duration = Duration::from_secs(60);

/// The value of the sample `series` (a name with its labels, as the server writes
/// them) in the exposition `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
}

/// The families a scrape names (`# TYPE name kind`), with a counter's `_total`.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| {
            let mut words = line.split(' ');
            let name = words.next()?;
            Some(match words.next()? {
                "counter" => format!("{name}_total"),
                _ => name.to_string(),
            })
        })
        .collect()
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn run(server: &Server, body: Value) -> Value {
    let reply = server.post("/v1/executions", body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    server
        .wait_terminal(reply.body["id"].as_str().unwrap(), WAIT)
        .await
}

async fn scrape(server: &Server, token: Option<&str>) -> (StatusCode, String, Value) {
    let mut request = reqwest::Client::new().get(format!("{}/metrics", server.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, text, body)
}

#[tokio::test]
async fn a_scripted_run_is_counted_exactly() {
    // The OpenAI-format provider is cheaper for this size, so it goes first; its
    // first request fails and the execution fails over to the other.
    let cheaper = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    cheaper.push_fault(Fault::Status {
        status: 500,
        retry_after: None,
        body: None,
    });
    let other = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let hostile_upstream = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let metrics_port = free_port();
    let config = format!(
        "\n[server]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\n[testing]\nclock_control = true\n\n[rate_limits.failed_auth]\nper_minute = 1\nburst = 3\n"
    );
    let server = Server::start_with(
        &[
            replicate_provider(&other),
            openai_provider(&cheaper),
            ProviderSpec {
                name: "hostile-provider",
                adapter: "hostile",
                base_url: hostile_upstream.base_url(),
                models: &["hostile-test"],
            },
        ],
        Options {
            extra_plugins: &["hostile"],
            config: &config,
            ..Options::default()
        },
    )
    .await;

    let flux = json!({"model": "flux-1.1-pro", "input": flux_input()});
    for _ in 0..2 {
        let execution = run(&server, flux.clone()).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
    }
    let trapped = run(
        &server,
        json!({"model": "hostile-test", "input": {"prompt": "panic"}}),
    )
    .await;
    assert_eq!(trapped["status"], "FAILED", "{trapped}");

    // A completion whose webhook fails once and is delivered on its retry.
    let receiver = Receiver::start().await;
    receiver.answer_with(500);
    let endpoint = server
        .post(
            "/v1/webhooks/endpoints",
            json!({"url": receiver.url, "events": ["execution.completed"]}),
        )
        .await;
    assert_eq!(endpoint.status, StatusCode::CREATED, "{:?}", endpoint.body);
    let execution = run(&server, flux.clone()).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    receiver.wait_for(1, WAIT).await;
    crate::support::wait_until("the failed delivery is recorded", WAIT, || async {
        server.admin_get("/admin/v1/webhooks/outbox").await.body["next_attempt_at"].is_string()
    })
    .await;
    receiver.answer_with(200);
    server.advance_clock(120).await;
    receiver.wait_for(2, WAIT).await;
    crate::support::wait_until("the delivery is recorded", WAIT, || async {
        server.admin_get("/admin/v1/webhooks/outbox").await.body["pending"] == json!(0)
    })
    .await;

    // The operator token is required on the main address, in the usual envelope.
    let (status, _, body) = scrape(&server, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{body}");
    let (status, _, _) = scrape(&server, Some(&server.api_key)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an API key is not the operator"
    );
    let (status, text, _) = scrape(&server, Some(&server.admin_token)).await;
    assert_eq!(status, StatusCode::OK, "{text}");

    let expect = [
        (
            r#"modelroute_http_requests_total{route="/v1/executions",method="POST",status="202"}"#,
            4.0,
        ),
        (
            r#"modelroute_http_requests_total{route="/metrics",method="GET",status="401"}"#,
            2.0,
        ),
        (
            r#"modelroute_http_requests_total{route="/v1/webhooks/endpoints",method="POST",status="201"}"#,
            1.0,
        ),
        (
            r#"modelroute_executions_finished_total{model="flux-1.1-pro",status="COMPLETED"}"#,
            3.0,
        ),
        (
            r#"modelroute_executions_finished_total{model="hostile-test",status="FAILED"}"#,
            1.0,
        ),
        // The failover: one failed attempt at the cheaper provider (its 500 is
        // normalized to GENERATION_FAILED), the execution completed at the other;
        // then the cheaper one served the rest.
        (
            r#"modelroute_attempts_total{provider="openai-emulator",outcome="failed",code="GENERATION_FAILED"}"#,
            1.0,
        ),
        (
            r#"modelroute_attempts_total{provider="replicate-emulator",outcome="completed",code=""}"#,
            1.0,
        ),
        (
            r#"modelroute_attempts_total{provider="openai-emulator",outcome="completed",code=""}"#,
            2.0,
        ),
        // The trapping adapter is tried max_attempts (4) times.
        (
            r#"modelroute_attempts_total{provider="hostile-provider",outcome="failed",code="INTERNAL_ERROR"}"#,
            4.0,
        ),
        (
            r#"modelroute_provider_attempt_duration_seconds_count{provider="openai-emulator"}"#,
            3.0,
        ),
        (
            r#"modelroute_webhook_deliveries_total{outcome="failed"}"#,
            1.0,
        ),
        (
            r#"modelroute_webhook_deliveries_total{outcome="delivered"}"#,
            1.0,
        ),
        (r#"modelroute_webhook_outbox{state="pending"}"#, 0.0),
        ("modelroute_executions_in_flight", 0.0),
        ("modelroute_money_held_usd", 0.0),
        (
            r#"modelroute_provider_breaker_state{provider="openai-emulator"}"#,
            0.0,
        ),
        (
            r#"modelroute_provider_bulkhead_in_use{provider="replicate-emulator"}"#,
            0.0,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    // The hostile adapter trapped once an attempt; its calls are counted by plugin
    // and version.
    assert_eq!(
        sample(
            &text,
            r#"modelroute_adapter_calls_total{plugin="hostile",version="0.0.1",outcome="trap"}"#
        ),
        Some(4.0),
        "{text}"
    );
    assert!(
        !text.contains(r#"plugin="""#),
        "every call is named: {text}"
    );
    assert!(
        sample(&text, "modelroute_store_commit_batch_size_count").is_some_and(|n| n > 0.0),
        "{text}"
    );
    // Never an id as a label: a request's path appears only as its template.
    assert!(!text.contains("exec_"), "{text}");

    // The operator-only address answers without a token, and nothing else.
    let tokenless = |path: &str| reqwest::get(format!("http://127.0.0.1:{metrics_port}{path}"));
    assert_eq!(
        tokenless("/v1/balance").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    // An address past its failed-authentication budget (3 here) is refused once.
    for _ in 0..10 {
        if scrape(&server, None).await.0 == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
    }
    let scraped = tokenless("/metrics").await.unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    let text = scraped.text().await.unwrap();
    for (series, value) in [
        (
            r#"modelroute_executions_finished_total{model="flux-1.1-pro",status="COMPLETED"}"#,
            3.0,
        ),
        (r#"modelroute_rate_limited_total{kind="address"}"#, 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }

    // Every series the dashboard asks for is one the server exports.
    let exported = families(&text);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/grafana/modelroute.json"),
        )
        .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut asked = BTreeSet::new();
    collect_series(&dashboard, &mut asked);
    assert!(!asked.is_empty());
    let missing: Vec<&String> = asked.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard asks for {missing:?}; exported: {exported:?}"
    );
}

/// The series names in every `expr` of the dashboard, without a histogram's
/// `_bucket`, `_sum` or `_count`.
fn collect_series(value: &Value, into: &mut BTreeSet<String>) {
    match value {
        Value::Object(object) => {
            for (key, value) in object {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => {
                        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                            if word.starts_with("modelroute_") {
                                let name = ["_bucket", "_sum", "_count"]
                                    .iter()
                                    .find_map(|suffix| word.strip_suffix(suffix))
                                    .unwrap_or(word);
                                into.insert(name.to_string());
                            }
                        }
                    }
                    _ => collect_series(value, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_series(item, into)),
        _ => {}
    }
}

#[tokio::test]
async fn a_bad_metrics_address_stops_the_start_naming_the_field() {
    let printed = Server::refused(
        &[],
        Options {
            config: "\n[server]\nmetrics_listen = \"localhost\"\n",
            ..Options::default()
        },
    );
    assert!(printed.contains("server.metrics_listen"), "{printed}");
}

/// Writes the store has committed (the sum of its commit batches' sizes).
async fn store_writes(server: &Server) -> f64 {
    let (_, text, _) = scrape(server, Some(&server.admin_token)).await;
    text.lines()
        .find_map(|line| line.strip_prefix("modelroute_store_commit_batch_size_sum "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the store's batch sizes")
}

/// A synchronous request costs two store writes (#18): its accept, with its hold
/// and its first attempt's start, and its completion, with its settlement.
#[tokio::test]
async fn a_synchronous_execution_is_two_store_writes() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = Server::start(&[openai_provider(&emulator)]).await;
    let body = json!({"model": "llama-3.1-8b-instruct", "mode": "SYNC", "input": {"messages": [{"role": "user", "content": "hello"}]}});
    // The first run also writes what is made once (signing keys and the like).
    for round in 0..3 {
        let before = store_writes(&server).await;
        let reply = server.post("/v1/executions", body.clone()).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["status"], "COMPLETED");
        let writes = store_writes(&server).await - before;
        if round > 0 {
            assert_eq!(writes, 2.0, "round {round}");
        }
    }
}
