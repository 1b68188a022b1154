//! The OpenAI-compatible door with the richer chat input and model fallbacks:
//! tools go through and tool calls come back (whole and streamed), and
//! `models: [primary, …]` falls back to the next model, which the answer names.

use reqwest::StatusCode;
use serde_json::{Value, json};

use modelroute_tests::emulators::{DEFAULT_TOKEN, Emulator, Fault, openai};

use crate::support::{Options, ProviderSpec, Server, openai_provider};

const CHAT: &str = "/openai/v1/chat/completions";
const SMALL: &str = "llama-3.1-8b-instruct";
const LARGE: &str = "llama-3.1-70b-instruct";

async fn emulator() -> Emulator<openai::OpenAi> {
    openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap()
}

fn weather_tools() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }])
}

#[tokio::test]
async fn tools_go_through_the_door_and_tool_calls_come_back() {
    let emulator = emulator().await;
    let server = Server::start(&[openai_provider(&emulator)]).await;
    let asked = json!({
        "model": SMALL,
        "messages": [
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "get_weather for Paris"}]},
        ],
        "tools": weather_tools(),
        "tool_choice": "auto",
    });
    let reply = server.post(CHAT, asked.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let choice = &reply.body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{}", reply.body);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()));
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
        .expect("arguments are JSON text");
    assert!(arguments.is_object(), "{arguments}");

    // The tool's answer goes back as a `tool` message; the model answers in words.
    let answered = json!({
        "model": SMALL,
        "messages": [
            {"role": "user", "content": "get_weather for Paris"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
            {"role": "user", "content": "and so?"},
        ],
        "tools": weather_tools(),
        "tool_choice": "none",
    });
    let reply = server.post(CHAT, answered).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["choices"][0]["finish_reason"], "stop");
    assert!(reply.body["choices"][0]["message"]["content"].is_string());

    // Streamed: the call arrives in the chunks, and the last says why it ended.
    let mut streamed = asked;
    streamed["stream"] = json!(true);
    let response = reqwest::Client::new()
        .post(format!("{}{CHAT}", server.url))
        .bearer_auth(&server.api_key)
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let names: Vec<&str> = chunks
        .iter()
        .flat_map(|c| {
            c["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter_map(|call| call["function"]["name"].as_str())
        .collect();
    assert_eq!(names, ["get_weather"], "{text}");
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|finish| !finish.is_null())
        .collect();
    assert_eq!(finishes, [&json!("tool_calls")], "{text}");
}

#[tokio::test]
async fn models_fall_back_to_the_next_and_the_answer_names_the_one_that_served() {
    let small = emulator().await;
    let large = emulator().await;
    small.set_always(Some(Fault::Status {
        status: 503,
        retry_after: None,
        body: None,
    }));
    let server = Server::start_with(
        &[
            ProviderSpec {
                name: "small-host",
                adapter: "openai",
                base_url: small.base_url(),
                models: &[SMALL],
            },
            ProviderSpec {
                name: "large-host",
                adapter: "openai",
                base_url: large.base_url(),
                models: &[LARGE],
            },
        ],
        Options::default(),
    )
    .await;
    let messages = json!([{"role": "user", "content": "hello there"}]);
    let reply = server
        .post(
            CHAT,
            json!({"models": [SMALL, LARGE], "messages": messages}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["model"], LARGE, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap();
    let execution = server.get(&format!("/v1/executions/{id}")).await.body;
    assert_eq!(execution["model"], LARGE);
    assert_eq!(execution["fallback_models"], json!([LARGE]));

    // Without fallbacks the small model's failure is the answer.
    let alone = server
        .post(CHAT, json!({"models": [SMALL], "messages": messages}))
        .await;
    assert_eq!(
        alone.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        alone.body
    );
    assert_eq!(alone.body["error"]["code"], "MODEL_OVERLOADED");

    // A fallback the platform refuses is named as the client sent it.
    let refused = server
        .post(
            CHAT,
            json!({"models": [SMALL, "no-such-model"], "messages": messages}),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        refused.body
    );
    assert_eq!(
        refused.body["error"]["param"], "models[1]",
        "{}",
        refused.body
    );
    assert_eq!(refused.body["error"]["type"], "invalid_request_error");
}
