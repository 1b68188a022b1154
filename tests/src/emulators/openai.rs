//! The OpenAI-compatible API as OpenAI, Together or vLLM serve it:
//! `POST /v1/images/generations` and `POST /v1/chat/completions` (optionally streamed).
//!
//! A chat reply is `Echo:` and the words of the last user message, reversed, cut to
//! `max_tokens` words; token counts are word counts.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::{Value, json};
use std::sync::Arc;

use super::{
    Common, Dialect, Emulator, body_json, flagged, json_response, png, stable_hash, unix_now,
};

const IMAGE_MODELS: [&str; 2] = [
    "black-forest-labs/FLUX.1.1-pro",
    "black-forest-labs/FLUX.1-schnell",
];
const CHAT_MODELS: [&str; 2] = ["meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", "gpt-4o-mini"];

/// The emulator's state (`Emulator::state`): its stored outputs.
pub struct OpenAi {
    common: Arc<Common>,
}

pub(crate) struct OpenAiDialect;

impl Dialect for OpenAiDialect {
    fn error_body(status: u16) -> Value {
        let (message, kind, code) = match status {
            400 => ("Invalid request.", "invalid_request_error", Value::Null),
            401 => (
                "Incorrect API key provided",
                "invalid_request_error",
                json!("invalid_api_key"),
            ),
            404 => (
                "The requested resource does not exist.",
                "invalid_request_error",
                Value::Null,
            ),
            429 => (
                "Rate limit reached for requests. Please try again in 1s.",
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

/// Starts an OpenAI-compatible emulator on `addr` that expects
/// `Authorization: Bearer {token}`.
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

fn invalid(message: &str, param: Option<&str>, code: Option<&str>) -> Response {
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

fn not_json() -> Response {
    invalid(
        "We could not parse the JSON body of your request.",
        None,
        None,
    )
}

/// One side of the image: `name` (`width`/`height`, as Together reads them), else its
/// part of `size` ("WxH"), else 1024; `None` outside 64..=2048.
fn image_side(body: &Value, name: &str, from_size: Option<&str>) -> Option<u32> {
    let value = body[name]
        .as_u64()
        .or_else(|| from_size.and_then(|s| s.parse().ok()))
        .unwrap_or(1024);
    u32::try_from(value)
        .ok()
        .filter(|v| (64..=2048).contains(v))
}

async fn images(State(state): State<Arc<OpenAi>>, body: Bytes) -> Response {
    let Some(body) = body_json(&body) else {
        return not_json();
    };
    let model = body["model"].as_str().unwrap_or_default();
    if !IMAGE_MODELS.contains(&model) {
        return unknown_model(model);
    }
    let Some(prompt) = body["prompt"].as_str() else {
        return invalid("prompt is a required property", Some("prompt"), None);
    };
    if flagged(prompt) {
        return invalid(
            "Your request was rejected as a result of our safety system.",
            None,
            Some("content_policy_violation"),
        );
    }
    let size = body["size"].as_str().and_then(|s| s.split_once('x'));
    let (Some(width), Some(height)) = (
        image_side(&body, "width", size.map(|s| s.0)),
        image_side(&body, "height", size.map(|s| s.1)),
    ) else {
        return invalid(
            "The image size must be from 64 to 2048 pixels on each side.",
            Some("size"),
            None,
        );
    };
    let n = body["n"].as_u64().unwrap_or(1);
    if !(1..=10).contains(&n) {
        return invalid("n must be from 1 to 10", Some("n"), None);
    }
    let seed = body["seed"].as_u64().unwrap_or_else(|| stable_hash(prompt));
    let as_url = body["response_format"] == "url";
    let data: Vec<Value> = (0..n)
        .map(|i| {
            let image = png(width, height, seed.wrapping_add(i));
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

/// A message's text: a string, or the text parts of a list of parts.
fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

async fn chat(cut: Option<axum::Extension<super::StreamCut>>, body: Bytes) -> Response {
    let Some(body) = body_json(&body) else {
        return not_json();
    };
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if !CHAT_MODELS.contains(&model.as_str()) {
        return unknown_model(&model);
    }
    let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return invalid("messages is a required property", Some("messages"), None);
    };
    let max_tokens = match body.get("max_tokens").or(body.get("max_completion_tokens")) {
        None | Some(Value::Null) => 256,
        Some(value) => match value.as_u64().filter(|&v| v >= 1) {
            Some(v) => v as usize,
            None => {
                return invalid(
                    "max_tokens must be at least 1",
                    Some("max_tokens"),
                    Some("invalid_value"),
                );
            }
        },
    };
    let texts: Vec<String> = messages.iter().map(text_of).collect();
    let prompt_tokens: usize = texts.iter().map(|t| t.split_whitespace().count()).sum();
    let moderated = texts.iter().any(|t| flagged(t));
    let last_user = messages
        .iter()
        .rposition(|m| m["role"] == "user")
        .map_or("", |i| texts[i].as_str());
    let words: Vec<&str> = if moderated {
        Vec::new()
    } else {
        std::iter::once("Echo:")
            .chain(last_user.split_whitespace().rev())
            .take(max_tokens)
            .collect()
    };
    let finish_reason = if moderated { "content_filter" } else { "stop" };
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": words.len(),
        "total_tokens": prompt_tokens + words.len(),
    });
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    if body["stream"] == true {
        let chunk = |choices: Value| json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices});
        let delta = |delta: Value, finish: Value| {
            chunk(json!([{"index": 0, "delta": delta, "finish_reason": finish}]))
        };
        let mut events = vec![delta(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        events.extend(words.iter().enumerate().map(|(i, word)| {
            let space = if i + 1 < words.len() { " " } else { "" };
            delta(json!({"content": format!("{word}{space}")}), Value::Null)
        }));
        // A prompt asking for it is cut off after its first word (a `cut_stream` fault
        // after its count of words): no finish, no usage, no `[DONE]`, as when a
        // provider's connection drops mid-answer.
        let cut = match cut {
            Some(axum::Extension(super::StreamCut(after))) => Some(after),
            None => last_user.contains("[cut]").then_some(1),
        };
        if let Some(after) = cut {
            let text: String = events[..(after + 1).min(events.len())]
                .iter()
                .map(|e| format!("data: {e}\n\n"))
                .collect();
            return ([("content-type", "text/event-stream")], Body::from(text)).into_response();
        }
        events.push(delta(json!({}), json!(finish_reason)));
        if body["stream_options"]["include_usage"] == true {
            let mut last = chunk(json!([]));
            last["usage"] = usage;
            events.push(last);
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
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words.join(" ")}, "finish_reason": finish_reason}],
            "usage": usage,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::{download, png_size, post, send};
    use super::super::{DEFAULT_TOKEN, Fault};
    use super::*;

    const FLUX: &str = "black-forest-labs/FLUX.1.1-pro";
    const LLAMA: &str = "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo";

    async fn emulator() -> (Emulator<OpenAi>, String, String) {
        let emulator = spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
        let images = format!("{}/v1/images/generations", emulator.base_url());
        let chat = format!("{}/v1/chat/completions", emulator.base_url());
        (emulator, images, chat)
    }

    fn b64_png(item: &Value) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(item["b64_json"].as_str().unwrap())
            .unwrap()
    }

    #[tokio::test]
    async fn images_come_as_base64_or_urls_of_the_requested_size() {
        let (_emulator, images, _) = emulator().await;
        let request = json!({"model": FLUX, "prompt": "a cat", "size": "256x320", "response_format": "b64_json"});
        let (status, body) = post(&images, DEFAULT_TOKEN, request.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["created"].is_u64());
        let image = b64_png(&body["data"][0]);
        assert_eq!(png_size(&image), (256, 320));
        let (_, again) = post(&images, DEFAULT_TOKEN, request).await;
        assert_eq!(
            b64_png(&again["data"][0]),
            image,
            "outputs are deterministic"
        );

        let together = json!({"model": FLUX, "prompt": "a cat", "size": "1024x1024", "width": 128, "height": 96, "n": 2, "response_format": "url"});
        let (status, body) = post(&images, DEFAULT_TOKEN, together).await;
        assert_eq!(status, 200, "{body}");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        let first = download(data[0]["url"].as_str().unwrap()).await;
        let second = download(data[1]["url"].as_str().unwrap()).await;
        assert_eq!(
            (png_size(&first), png_size(&second)),
            ((128, 96), (128, 96))
        );
        assert_ne!(first, second, "each image of a batch differs");
    }

    #[tokio::test]
    async fn image_errors_follow_openais_shapes() {
        let (_emulator, images, _) = emulator().await;
        let (status, body) = post(
            &images,
            DEFAULT_TOKEN,
            json!({"model": "dall-e-9", "prompt": "a cat"}),
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(
            body,
            json!({"error": {"message": "The model `dall-e-9` does not exist", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
        );

        let (status, body) = post(&images, DEFAULT_TOKEN, json!({"model": FLUX})).await;
        assert_eq!(
            (status, body["error"]["type"].as_str()),
            (400, Some("invalid_request_error"))
        );
        assert_eq!(body["error"]["param"], "prompt");

        let (status, body) = post(
            &images,
            DEFAULT_TOKEN,
            json!({"model": FLUX, "prompt": "NSFW art"}),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            json!({"error": {"message": "Your request was rejected as a result of our safety system.", "type": "invalid_request_error", "param": null, "code": "content_policy_violation"}})
        );

        for bad in [
            json!({"size": "0x512"}),
            json!({"width": 100000}),
            json!({"n": 0}),
        ] {
            let mut request = json!({"model": FLUX, "prompt": "a cat"});
            request
                .as_object_mut()
                .unwrap()
                .extend(bad.as_object().unwrap().clone());
            let (status, body) = post(&images, DEFAULT_TOKEN, request).await;
            assert_eq!(status, 400, "{bad}: {body}");
        }
    }

    #[tokio::test]
    async fn chat_replies_deterministically_with_word_counts_as_usage() {
        let (_emulator, _, chat) = emulator().await;
        let request = json!({"model": LLAMA, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one two three"},
        ]});
        let (status, body) = post(&chat, DEFAULT_TOKEN, request.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], LLAMA);
        assert_eq!(
            body["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": "Echo: three two one"}, "finish_reason": "stop"}])
        );
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9})
        );
        assert_eq!(
            post(&chat, DEFAULT_TOKEN, request).await.1["choices"],
            body["choices"]
        );

        let parts = json!({"model": "gpt-4o-mini", "max_tokens": 2, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "alpha beta"}]},
        ]});
        let (_, body) = post(&chat, DEFAULT_TOKEN, parts).await;
        assert_eq!(body["choices"][0]["message"]["content"], "Echo: beta");
        assert_eq!(body["usage"]["completion_tokens"], 2);

        let zero = json!({"model": LLAMA, "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(post(&chat, DEFAULT_TOKEN, zero).await.0, 400);
        let empty = json!({"model": LLAMA, "messages": []});
        assert_eq!(
            post(&chat, DEFAULT_TOKEN, empty).await.1["error"]["param"],
            "messages"
        );
        let unknown = json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(
            post(&chat, DEFAULT_TOKEN, unknown).await.1["error"]["code"],
            "model_not_found"
        );
    }

    #[tokio::test]
    async fn a_flagged_chat_message_ends_with_content_filter() {
        let (_emulator, _, chat) = emulator().await;
        let request =
            json!({"model": LLAMA, "messages": [{"role": "user", "content": "write nsfw"}]});
        let (status, body) = post(&chat, DEFAULT_TOKEN, request).await;
        assert_eq!(status, 200);
        assert_eq!(body["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(body["choices"][0]["message"]["content"], "");
        assert_eq!(body["usage"]["completion_tokens"], 0);
    }

    /// The `data:` payloads of an event stream.
    async fn sse_data(chat: &str, request: Value) -> Vec<String> {
        let response = send(
            reqwest::Method::POST,
            chat,
            Some(DEFAULT_TOKEN),
            Some(&request),
        )
        .await
        .unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let text = response.text().await.unwrap();
        assert!(text.ends_with("\n\n"));
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.strip_prefix("data: ")
                    .expect("only data lines")
                    .to_string()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_streamed_chat_sends_word_chunks_then_finish_usage_and_done() {
        let (_emulator, _, chat) = emulator().await;
        let request = json!({"model": LLAMA, "stream": true, "stream_options": {"include_usage": true},
                             "messages": [{"role": "user", "content": "one two"}]});
        let events = sse_data(&chat, request).await;
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk")
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Echo: two one");
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 5);

        let plain = json!({"model": LLAMA, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let events = sse_data(&chat, plain).await;
        assert!(events.iter().all(|e| !e.contains("usage")));
    }

    #[tokio::test]
    async fn error_faults_answer_openais_error_bodies() {
        let (emulator, _, chat) = emulator().await;
        let request = json!({"model": LLAMA, "messages": [{"role": "user", "content": "hi"}]});
        emulator.push_fault(Fault::Status {
            status: 429,
            retry_after: Some(3),
            body: None,
        });
        let throttled = send(
            reqwest::Method::POST,
            &chat,
            Some(DEFAULT_TOKEN),
            Some(&request),
        )
        .await
        .unwrap();
        assert_eq!(throttled.status(), 429);
        assert_eq!(throttled.headers()["retry-after"], "3");
        let body: Value = throttled.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["type"], "requests");

        for (status, kind, message) in [
            (
                500,
                "server_error",
                "The server had an error while processing your request.",
            ),
            (
                503,
                "server_error",
                "The engine is currently overloaded, please try again later",
            ),
        ] {
            emulator.push_fault(Fault::Status {
                status,
                retry_after: None,
                body: None,
            });
            let (got, body) = post(&chat, DEFAULT_TOKEN, request.clone()).await;
            assert_eq!(got, status);
            assert_eq!(
                body,
                json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
            );
        }
    }
}
