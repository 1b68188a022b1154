//! The chat input with OpenAI's fields (issue #15): tools called and answered
//! through `POST /v1/executions`, `finish_reason` and `tool_calls` in the output,
//! whole and streamed, and per-role rules refused with the field named.

use reqwest::StatusCode;
use serde_json::{Value, json};

use modelroute_tests::emulators::{DEFAULT_TOKEN, openai};

use crate::support::{Server, openai_provider};

const CHAT: &str = "llama-3.1-8b-instruct";

fn tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }}])
}

/// Runs `input` in `SYNC` mode and answers the completed execution's output.
async fn output(server: &Server, input: Value) -> Value {
    let reply = server
        .post(
            "/v1/executions",
            json!({"model": CHAT, "mode": "SYNC", "input": input}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["status"], "COMPLETED", "{}", reply.body);
    reply.body["result"]["output"].clone()
}

#[tokio::test]
async fn a_tool_call_comes_back_and_its_result_is_answered_in_words() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = Server::start(&[openai_provider(&emulator)]).await;
    let asked =
        json!({"role": "user", "content": [{"type": "text", "text": "Paris? use get_weather"}]});
    let called = output(
        &server,
        json!({"messages": [{"role": "developer", "content": "Use tools."}, asked], "tools": tools(), "tool_choice": "auto", "seed": 1}),
    )
    .await;
    assert_eq!(called["finish_reason"], "tool_calls", "{called}");
    assert_eq!(called["text"], "");
    let calls = called["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(
        (call["type"].as_str(), &call["function"]),
        (
            Some("function"),
            &json!({"name": "get_weather", "arguments": r#"{"city":"Paris? use get_weather"}"#})
        )
    );
    assert!(called["usage"]["output_tokens"].as_u64().unwrap() > 0);
    // The provider got the tools, the choice and the seed in its own format.
    let sent = emulator
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/chat/completions")
        .unwrap();
    let sent: Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(
        (&sent["tools"], &sent["tool_choice"], &sent["seed"]),
        (&tools(), &json!("auto"), &json!(1))
    );
    assert_eq!(sent["messages"][0]["role"], "developer");

    // The next turn carries the call and its result; the model answers in words.
    let answered = output(
        &server,
        json!({"tools": tools(), "messages": [
            asked,
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "18 C"},
        ]}),
    )
    .await;
    assert_eq!(
        answered,
        json!({
            "text": "Echo: get_weather use Paris?",
            "usage": {"input_tokens": 5, "output_tokens": 4},
            "finish_reason": "stop",
        })
    );

    let cut = output(
        &server,
        json!({"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 2}),
    )
    .await;
    assert_eq!(
        (cut["text"].as_str(), cut["finish_reason"].as_str()),
        (Some("Echo: three"), Some("length"))
    );
}

#[tokio::test]
async fn a_streamed_tool_call_is_assembled_from_its_fragments() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = Server::start(&[openai_provider(&emulator)]).await;
    let body = json!({"model": CHAT, "mode": "STREAMING", "input": {
        "messages": [{"role": "user", "content": "the weather in Paris, please"}],
        "tools": tools(),
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }});
    let response = reqwest::Client::new()
        .post(format!("{}/v1/executions", server.url))
        .bearer_auth(&server.api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let done = text
        .split("\n\n")
        .find(|event| event.starts_with("event: done"))
        .and_then(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .unwrap_or_else(|| panic!("no done event in {text}"));
    let done: Value = serde_json::from_str(done).unwrap();
    let output = &done["result"]["output"];
    assert_eq!(output["finish_reason"], "tool_calls", "{done}");
    assert_eq!(output["text"], "");
    assert_eq!(
        output["tool_calls"][0]["function"],
        json!({"name": "get_weather", "arguments": r#"{"city":"the weather in Paris, please"}"#})
    );
    assert!(
        emulator.requests()[0].body.contains("\"stream\":true"),
        "the provider streamed"
    );
}

#[tokio::test]
async fn a_tool_message_without_its_call_id_is_refused_with_the_field_named() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = Server::start(&[openai_provider(&emulator)]).await;
    for (input, field, code) in [
        (
            json!({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "18 C"}]}),
            "input.messages[1].tool_call_id",
            "REQUIRED",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "tools": tools(), "tool_choice": "sometimes"}),
            "input.tool_choice",
            "INVALID_VALUE",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "logprobs": true}),
            "input.logprobs",
            "UNKNOWN_FIELD",
        ),
    ] {
        let reply = server
            .post(
                "/v1/executions",
                json!({"model": CHAT, "mode": "SYNC", "input": input}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{input}");
        assert_eq!(reply.error_code(), "INPUT_VALIDATION_ERROR");
        let details = &reply.body["error"]["details"];
        assert_eq!(
            (details[0]["field"].as_str(), details[0]["code"].as_str()),
            (Some(field), Some(code)),
            "{input}: {details}"
        );
    }
    assert!(
        emulator.requests().is_empty(),
        "nothing reached the provider"
    );
}

/// Tool parameters with `levels` objects inside each other's `properties`.
fn nested_tools(levels: usize) -> Value {
    let mut parameters = json!({"type": "string"});
    for _ in 0..levels {
        parameters = json!({"type": "object", "properties": {"a": parameters}});
    }
    json!([{"type": "function", "function": {"name": "f", "parameters": parameters}}])
}

/// Regression: an input nested close to the JSON parser's limit (128 levels) was
/// accepted and stored, but its record, a few levels deeper, could not be read
/// back: the client got `INTERNAL_ERROR` and the execution was dispatched again
/// every minute, never to run. Inputs nest at most 64 levels; deeper ones are
/// refused at once, and one at the limit runs.
#[tokio::test]
async fn an_input_nested_too_deep_is_refused_and_one_at_the_limit_runs() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = Server::start(&[openai_provider(&emulator)]).await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    // The input, its tools, the tool and its `function` are four levels, the
    // parameters two a nesting (`properties` too) and one more: 65, then 63.
    // 125 levels: the body parses, and this one was once stored unreadable.
    for levels in [30, 60] {
        let deep = json!({"messages": messages, "tools": nested_tools(levels)});
        let reply = server
            .post(
                "/v1/executions",
                json!({"model": CHAT, "mode": "SYNC", "input": deep}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
        assert_eq!(reply.error_code(), "INPUT_VALIDATION_ERROR");
        assert_eq!(reply.body["error"]["details"][0]["field"], "input");
    }
    assert!(
        emulator.requests().is_empty(),
        "nothing reached the provider"
    );

    let at_limit = json!({"messages": messages, "tools": nested_tools(29)});
    let output = output(&server, at_limit).await;
    assert!(output["text"].is_string(), "{output}");
}
