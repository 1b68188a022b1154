//! Structured logs (SPEC §13, issue #16 item 4): with `--log-format json` every line
//! is one JSON object, and the lines of an execution's work carry its id (the
//! `execution` span) and those of an attempt its attempt, provider and model (a
//! child `attempt` span, with `adapter_call` spans below it); a request's lines carry
//! its request id and the execution it created.

use serde_json::{Value, json};
use std::time::Duration;

use modelroute_tests::emulators::{DEFAULT_TOKEN, Fault, openai};

use crate::support::{Options, Server, openai_provider, wait_until};

/// The spans of a JSON log line, by name.
fn span<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|span| span["name"] == name)
}

#[tokio::test]
async fn json_logs_carry_the_request_execution_and_attempt_on_every_line_of_their_work() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = Server::start_with(
        &[openai_provider(&emulator)],
        Options {
            env: &[
                ("MODELROUTE_LOG_FORMAT", "json"),
                ("RUST_LOG", "info,modelroute=debug"),
            ],
            ..Options::default()
        },
    )
    .await;
    emulator.push_fault(Fault::Status {
        status: 503,
        retry_after: None,
        body: None,
    });
    let reply = server
        .post(
            "/v1/executions",
            json!({"model": "llama-3.1-8b-instruct", "mode": "SYNC",
                   "input": {"messages": [{"role": "user", "content": "hi"}]}}),
        )
        .await;
    assert_eq!(reply.body["status"], "COMPLETED", "{:?}", reply.body);
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
    // The failed attempt, within its execution's span and its own.
    let failed = lines
        .iter()
        .find(|line| line["fields"]["message"] == "attempt failed")
        .expect("the failed attempt is logged");
    assert_eq!(
        span(failed, "execution").unwrap()["execution_id"],
        id.as_str()
    );
    let attempt = span(failed, "attempt").unwrap();
    assert!(
        attempt["attempt_id"].as_str().unwrap().starts_with("att_"),
        "{failed}"
    );
    assert_eq!(attempt["provider"], "openai-emulator");
    assert_eq!(attempt["model"], "llama-3.1-8b-instruct");
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
