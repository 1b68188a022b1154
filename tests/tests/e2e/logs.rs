//! Structured logs and traces (SPEC §13, issue #16 item 4): with `--log-format json`
//! every line is one JSON object, the lines of an execution's work carry its id (the
//! `execution` span) and a request's its request id and the execution it created;
//! with `--otlp-endpoint` the spans (execution, a child per attempt, a child per
//! adapter call; requests) reach an OTLP/HTTP collector.

use serde_json::{Value, json};
use std::time::Duration;

use modelroute_tests::emulators::{DEFAULT_TOKEN, Emulator, Fault, openai};

use crate::support::{Options, Reply, Server, openai_provider, wait_until};

/// A server with `env` whose chat provider (returned with it) fails once with a 503,
/// and the `SYNC` execution that went on to a second attempt and completed.
async fn one_failover(env: &[(&str, &str)]) -> (Server, Emulator<openai::OpenAi>, Reply) {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = Server::start_with(
        &[openai_provider(&emulator)],
        Options {
            env,
            ..Options::default()
        },
    )
    .await;
    emulator.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
        body: None,
    });
    let reply = server.sync_chat().await;
    (server, emulator, reply)
}

/// The spans of a JSON log line, by name.
fn span<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|span| span["name"] == name)
}

#[tokio::test]
async fn json_logs_carry_the_request_execution_and_attempt_on_every_line_of_their_work() {
    let (server, _emulator, reply) = one_failover(&[
        ("MODELROUTE_LOG_FORMAT", "json"),
        ("RUST_LOG", "info,modelroute=debug"),
    ])
    .await;
    let id = reply.body["id"].as_str().unwrap().to_string();
    let request_id = reply.header("x-request-id").unwrap().to_string();
    wait_until(
        "the request's access line",
        Duration::from_secs(10),
        || async { server.log().contains(&request_id) },
    )
    .await;

    let log = server.log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    // The failed attempt, within its execution's span, naming the attempt.
    let failed = lines
        .iter()
        .find(|line| line["fields"]["message"] == "attempt failed")
        .expect("the failed attempt is logged");
    assert_eq!(
        span(failed, "execution").unwrap()["execution_id"],
        id.as_str()
    );
    assert!(
        failed["fields"]["attempt"]
            .as_str()
            .unwrap()
            .starts_with("att_"),
        "{failed}"
    );
    assert_eq!(failed["fields"]["provider"], "openai-emulator");
    // Every line logged inside the execution's span names it.
    for line in lines
        .iter()
        .filter(|line| span(line, "execution").is_some())
    {
        assert_eq!(
            span(line, "execution").unwrap()["execution_id"],
            id.as_str(),
            "{line}"
        );
    }
    // The request's access line names the request and the execution it created.
    let answered = lines
        .iter()
        .find(|line| {
            line["fields"]["message"] == "request answered"
                && span(line, "request").is_some_and(|s| s["request_id"] == request_id.as_str())
        })
        .expect("the request's access line");
    let request = span(answered, "request").unwrap();
    assert_eq!(request["execution_id"], id.as_str());
    assert_eq!(request["path"], "/v1/executions");
    assert_eq!(answered["fields"]["status"], 200);
}

/// The spans an OTLP/HTTP (JSON) collector on loopback received, flattened.
#[derive(Clone, Default)]
struct Collector(std::sync::Arc<std::sync::Mutex<Vec<Value>>>);

impl Collector {
    async fn spawn() -> (Collector, String) {
        let collector = Collector::default();
        let received = collector.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    let export: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                    let spans = export["resourceSpans"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|r| r["scopeSpans"].as_array().into_iter().flatten())
                        .flat_map(|s| s["spans"].as_array().into_iter().flatten())
                        .cloned();
                    received.0.lock().unwrap().extend(spans);
                    axum::Json(json!({}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (collector, url)
    }

    fn spans(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }
}

/// A span's string attribute.
fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
}

#[tokio::test]
async fn spans_are_exported_to_an_otlp_collector_an_execution_with_its_attempts_and_adapter_calls()
{
    let (collector, endpoint) = Collector::spawn().await;
    let (_server, _emulator, reply) = one_failover(&[
        ("MODELROUTE_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    let id = reply.body["id"].as_str().unwrap().to_string();
    // The execution's span ends with it; its children end before.
    let execution = || {
        collector.spans().into_iter().find(|span| {
            span["name"] == "execution" && attribute(span, "execution_id") == Some(id.as_str())
        })
    };
    // The request has its own span, naming the execution it created. It ends after
    // the response is written, so it can be exported in a later batch than the
    // execution's span: wait for both.
    let request = || {
        collector.spans().into_iter().find(|span| {
            span["name"] == "request" && attribute(span, "execution_id") == Some(id.as_str())
        })
    };
    wait_until(
        "the execution's and the request's spans are exported",
        Duration::from_secs(20),
        || async { execution().is_some() && request().is_some() },
    )
    .await;
    let execution = execution().unwrap();
    let spans = collector.spans();
    let children = |parent: &Value, name: &str| -> Vec<Value> {
        spans
            .iter()
            .filter(|s| s["name"] == name && s["parentSpanId"] == parent["spanId"])
            .cloned()
            .collect()
    };
    let attempts = children(&execution, "attempt");
    assert_eq!(
        attempts.len(),
        2,
        "a failed attempt and the one that answered"
    );
    for attempt in &attempts {
        assert_eq!(attribute(attempt, "provider"), Some("openai-emulator"));
        assert_eq!(attempt["traceId"], execution["traceId"]);
        let calls = children(attempt, "adapter_call");
        let functions: Vec<&str> = calls
            .iter()
            .filter_map(|c| attribute(c, "function"))
            .collect();
        assert!(functions.contains(&"build-submit"), "{functions:?}");
    }
}
