//! Executions end to end against the provider emulators, one file per topic; the
//! helpers here are shared by them.

mod failover;
mod fallbacks;
mod formats;
mod lifecycle;
mod requests;
mod rescue;
mod stalls;

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

/// Creates a `STREAMING` execution from `body`; answers its events.
async fn streamed_execution(server: &Server, body: Value) -> Vec<(String, Value)> {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/executions", server.url))
        .bearer_auth(&server.api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    sse_events(&response.text().await.unwrap())
}

/// The text of a stream's `delta` events, joined.
fn delta_text(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(name, _)| name == "delta")
        .map(|(_, data)| data["text"].as_str().unwrap())
        .collect()
}

/// A chat streamed through the OpenAI door, as its client received it.
struct StreamedChat {
    /// the text of every chunk, joined
    text: String,
    /// `[DONE]` ended it
    done: bool,
    /// the execution's id
    id: String,
    /// the events' JSON (`[DONE]` left out)
    chunks: Vec<Value>,
}

/// Streams a chat of `llama-3.1-8b-instruct` through the OpenAI door, asking for
/// the usage chunk.
async fn streamed_chat(server: &Server, prompt: &str) -> StreamedChat {
    let response = reqwest::Client::new()
        .post(format!("{}/openai/v1/chat/completions", server.url))
        .bearer_auth(&server.api_key)
        .json(&json!({
            "model": "llama-3.1-8b-instruct",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": prompt}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let id = response
        .headers()
        .get("x-modelroute-execution-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let body = tokio::time::timeout(WAIT, response.text())
        .await
        .expect("the stream ends")
        .unwrap();
    let chunks: Vec<Value> = body
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).expect("every event is JSON"))
        .collect();
    let text = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    StreamedChat {
        text,
        done: body.ends_with("data: [DONE]\n\n"),
        id,
        chunks,
    }
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
