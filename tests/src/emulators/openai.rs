//! The OpenAI-compatible API as Together or vLLM serve it:
//! `POST /v1/images/generations` and `POST /v1/chat/completions` (optionally streamed).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::{Value, json};
use std::sync::Arc;

use super::{Common, Dialect, Emulator, body_json, flagged, json_response, png, stable_hash};

const IMAGE_MODELS: [&str; 2] = [
    "black-forest-labs/FLUX.1.1-pro",
    "black-forest-labs/FLUX.1-schnell",
];
const CHAT_MODELS: [&str; 2] = ["meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", "gpt-4o-mini"];

pub struct OpenAi {
    common: Arc<Common>,
}

pub struct OpenAiDialect;

impl Dialect for OpenAiDialect {
    fn error_body(status: u16) -> Value {
        let (message, kind, code) = match status {
            401 => (
                "Incorrect API key provided",
                "invalid_request_error",
                json!("invalid_api_key"),
            ),
            429 => (
                "Rate limit reached for requests",
                "requests",
                json!("rate_limit_exceeded"),
            ),
            503 => (
                "The engine is currently overloaded, please try again later",
                "server_error",
                Value::Null,
            ),
            _ => (
                "The server had an error while processing your request.",
                "server_error",
                Value::Null,
            ),
        };
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
    }
}

pub async fn spawn(addr: &str, token: &str) -> std::io::Result<Emulator<OpenAi>> {
    super::serve::<OpenAi, OpenAiDialect>(addr, token, |common| {
        let state = Arc::new(OpenAi { common });
        let api = Router::new()
            .route("/v1/images/generations", post(images))
            .route("/v1/chat/completions", post(chat))
            .with_state(state.clone());
        (state, api)
    })
    .await
}

fn invalid(message: &str, param: &str, code: Value) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}),
    )
}

fn unknown_model(model: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": {"message": format!("The model `{model}` does not exist"), "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}),
    )
}

async fn images(State(state): State<Arc<OpenAi>>, body: Bytes) -> Response {
    let Some(body) = body_json(&body) else {
        return invalid(
            "We could not parse the JSON body of your request.",
            "body",
            Value::Null,
        );
    };
    let model = body["model"].as_str().unwrap_or_default();
    if !IMAGE_MODELS.contains(&model) {
        return unknown_model(model);
    }
    let Some(prompt) = body["prompt"].as_str() else {
        return invalid("prompt is required", "prompt", Value::Null);
    };
    if flagged(prompt) {
        return invalid(
            "Your request was rejected as a result of our safety system.",
            "prompt",
            json!("content_policy_violation"),
        );
    }
    let size = body["size"].as_str().and_then(|s| s.split_once('x'));
    let side = |name: &str, from_size: Option<&str>| {
        body[name]
            .as_u64()
            .or_else(|| from_size.and_then(|s| s.parse().ok()))
            .unwrap_or(1024) as u32
    };
    let (width, height) = (
        side("width", size.map(|s| s.0)),
        side("height", size.map(|s| s.1)),
    );
    let seed = body["seed"].as_u64().unwrap_or_else(|| stable_hash(prompt));
    let as_url = body["response_format"] == "url";
    let data: Vec<Value> = (0..body["n"].as_u64().unwrap_or(1))
        .map(|i| {
            let image = png(width, height, seed + i);
            if as_url {
                let name = format!("{}.png", uuid::Uuid::new_v4().simple());
                json!({"url": state.common.store_file(name, image)})
            } else {
                json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(image)})
            }
        })
        .collect();
    json_response(StatusCode::OK, json!({"created": unix_now(), "data": data}))
}

async fn chat(State(_state): State<Arc<OpenAi>>, body: Bytes) -> Response {
    let Some(body) = body_json(&body) else {
        return invalid(
            "We could not parse the JSON body of your request.",
            "body",
            Value::Null,
        );
    };
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if !CHAT_MODELS.contains(&model.as_str()) {
        return unknown_model(&model);
    }
    let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return invalid("messages is required", "messages", Value::Null);
    };
    let prompt_tokens: usize = messages
        .iter()
        .map(|m| {
            m["content"]
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .count()
        })
        .sum();
    let last = messages
        .last()
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let moderated = flagged(last);
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(256) as usize;
    // Deterministic: the last message's words, reversed, prefixed by "Echo:".
    let words: Vec<String> = std::iter::once("Echo:".to_string())
        .chain(last.split_whitespace().rev().map(str::to_string))
        .take(max_tokens)
        .collect();
    let content = if moderated {
        String::new()
    } else {
        words.join(" ")
    };
    let completion_tokens = if moderated { 0 } else { words.len() };
    let finish_reason = if moderated { "content_filter" } else { "stop" };
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    if body["stream"] == true {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": unix_now(), "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        if !moderated {
            events.extend(words.iter().enumerate().map(|(i, word)| {
                let text = if i + 1 < words.len() {
                    format!("{word} ")
                } else {
                    word.clone()
                };
                chunk(json!({"content": text}), Value::Null)
            }));
        }
        events.push(chunk(json!({}), json!(finish_reason)));
        if body["stream_options"]["include_usage"] == true {
            events.push(
                json!({"id": id, "object": "chat.completion.chunk", "choices": [], "usage": usage}),
            );
        }
        let mut text: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        text.push_str("data: [DONE]\n\n");
        return ([("content-type", "text/event-stream")], Body::from(text)).into_response();
    }
    json_response(
        StatusCode::OK,
        json!({
            "id": id,
            "object": "chat.completion",
            "created": unix_now(),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
            "usage": usage,
        }),
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
