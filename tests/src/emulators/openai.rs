//! The OpenAI-compatible API as OpenAI, Together or vLLM serve it:
//! `POST /v1/images/generations` and `POST /v1/chat/completions` (optionally streamed).
//!
//! A chat reply is `Echo:` and the words of the last user message, reversed, cut at
//! the first `stop` sequence (`finish_reason` `stop`) or to `max_tokens` words
//! (`length`); token counts are word counts.
//!
//! Tool calls are scripted by the request: given `tools` and a last message from the
//! user, the model calls the function `tool_choice` names, or with `"required"` the
//! first tool the message names as a word (else the first tool), or with `"auto"` (the
//! default) the first tool the message names, if any; `"none"` never calls. The
//! call's arguments give every property of the tool's `parameters` the message's
//! text; its id is `call_` and a hash of both. The answer then has no content and
//! `finish_reason` `tool_calls`; streamed, each call comes as OpenAI sends it, its
//! arguments in 8-character fragments. A request with a parameter OpenAI does not
//! know is refused as OpenAI refuses it.
//!
//! The open-weights models (not `gpt-4o-mini`) also take vLLM's
//! `continue_final_message` (with `add_generation_prompt: false`): the last message,
//! the assistant's, is continued. The answer is then the part of the echo that
//! follows that text (the whole echo when the text is not its beginning).

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
    Common, Dialect, Emulator, StreamFault, body_json, flagged, json_response, png, stable_hash,
    unix_now,
};

const IMAGE_MODELS: [&str; 2] = [
    "black-forest-labs/FLUX.1.1-pro",
    "black-forest-labs/FLUX.1-schnell",
];
/// The chat models it serves; `Qwen/Qwen2.5-72B-Instruct-Turbo` stands for a model
/// an operator declares (no adapter names it).
const CHAT_MODELS: [&str; 4] = [
    "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
    "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo",
    "gpt-4o-mini",
    "Qwen/Qwen2.5-72B-Instruct-Turbo",
];

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

/// The request parameters of OpenAI's chat completions this emulator knows.
const CHAT_PARAMETERS: [&str; 22] = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
];

/// vLLM's parameters for continuing the assistant's last message, which OpenAI's own
/// models do not know.
const CONTINUATION_PARAMETERS: [&str; 2] = ["continue_final_message", "add_generation_prompt"];

/// The assistant text a request asks the model to continue, if it does.
fn continued(body: &Value, messages: &[Value]) -> Option<String> {
    if body["continue_final_message"] != true {
        return None;
    }
    let last = messages.last().filter(|m| m["role"] == "assistant")?;
    Some(text_of(last))
}

/// What a chat request asks beyond its messages, checked as OpenAI checks it.
fn chat_refusal(body: &Value, messages: &[Value]) -> Option<Response> {
    let object = body.as_object()?;
    let continues = body["model"] != "gpt-4o-mini";
    let known = |name: &str| {
        CHAT_PARAMETERS.contains(&name) || (continues && CONTINUATION_PARAMETERS.contains(&name))
    };
    if let Some(unknown) = object.keys().find(|k| !known(k)) {
        return Some(invalid(
            &format!("Unrecognized request argument supplied: {unknown}"),
            None,
            None,
        ));
    }
    let roles = ["system", "developer", "user", "assistant", "tool"];
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        let param = format!("messages.[{i}]");
        if !roles.contains(&role) {
            return Some(invalid(
                &format!("Invalid value: '{role}'."),
                Some(&param),
                Some("invalid_value"),
            ));
        }
        if role == "tool" && !message["tool_call_id"].is_string() {
            let message = "Missing parameter 'tool_call_id': messages with role 'tool' must have a 'tool_call_id'.";
            return Some(invalid(
                message,
                Some(&param),
                Some("missing_required_parameter"),
            ));
        }
    }
    let range = |name: &str, max: f64| {
        body.get(name)
            .is_some_and(|v| !v.as_f64().is_some_and(|v| (0.0..=max).contains(&v)))
            .then(|| {
                invalid(
                    &format!("Invalid '{name}'."),
                    Some(name),
                    Some("invalid_value"),
                )
            })
    };
    if let Some(refused) = range("temperature", 2.0).or_else(|| range("top_p", 1.0)) {
        return Some(refused);
    }
    let stops = match body.get("stop") {
        None | Some(Value::Null | Value::String(_)) => true,
        Some(Value::Array(items)) => items.len() <= 4 && items.iter().all(Value::is_string),
        Some(_) => false,
    };
    if !stops {
        return Some(invalid(
            "Invalid 'stop'.",
            Some("stop"),
            Some("invalid_value"),
        ));
    }
    let tools = tool_names(body);
    if body.get("tools").is_some() && tools.is_none() {
        return Some(invalid(
            "Invalid 'tools'.",
            Some("tools"),
            Some("invalid_value"),
        ));
    }
    let tools = tools.unwrap_or_default();
    let choice_ok = match &body["tool_choice"] {
        Value::Null => true,
        Value::String(choice) => {
            choice == "none"
                || (["auto", "required"].contains(&choice.as_str()) && !tools.is_empty())
        }
        named => named["function"]["name"]
            .as_str()
            .is_some_and(|n| tools.contains(&n)),
    };
    if !choice_ok {
        return Some(invalid(
            "Invalid 'tool_choice'.",
            Some("tool_choice"),
            Some("invalid_value"),
        ));
    }
    let format = body["response_format"]["type"].as_str();
    if body.get("response_format").is_some()
        && !matches!(format, Some("text" | "json_object" | "json_schema"))
    {
        return Some(invalid(
            "Invalid 'response_format'.",
            Some("response_format"),
            Some("invalid_value"),
        ));
    }
    None
}

/// Server-sent events, one `data:` line each.
fn sse(events: &[Value]) -> String {
    events.iter().map(|e| format!("data: {e}\n\n")).collect()
}

/// The names of the request's function tools; `None` when one is malformed.
fn tool_names(body: &Value) -> Option<Vec<&str>> {
    body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|tool| {
            (tool["type"] == "function")
                .then(|| tool["function"]["name"].as_str())
                .flatten()
        })
        .collect()
}

/// The tool the request's script calls for a last user message `text` (see the
/// module's documentation).
fn called_tool<'a>(body: &'a Value, text: &str) -> Option<&'a Value> {
    let tools = body["tools"].as_array()?;
    let name = |tool: &Value| {
        tool["function"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let named_in_text = || {
        tools.iter().find(|tool| {
            text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                .any(|w| w == name(tool))
        })
    };
    match &body["tool_choice"] {
        Value::String(choice) if choice == "none" => None,
        Value::String(choice) if choice == "required" => named_in_text().or(tools.first()),
        Value::Null | Value::String(_) => named_in_text(),
        named => tools
            .iter()
            .find(|tool| name(tool) == named["function"]["name"].as_str().unwrap_or_default()),
    }
}

/// A call of `tool` for the user's `text`: `(id, name, arguments)`.
fn tool_call(tool: &Value, text: &str) -> (String, String, String) {
    let name = tool["function"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let arguments: serde_json::Map<String, Value> = tool["function"]["parameters"]["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(property, _)| (property.clone(), json!(text)))
        .collect();
    let arguments = Value::Object(arguments).to_string();
    let id = format!("call_{:016x}", stable_hash(&format!("{name}\n{arguments}")));
    (id, name, arguments)
}

/// The reply's text cut before the first of `stop` sequences, if any occurs.
fn cut_at_stop(text: &str, stop: &Value) -> Option<String> {
    let stops: Vec<&str> = match stop {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s))
        .min()
        .map(|at| text[..at].to_string())
}

async fn chat(fault: Option<axum::Extension<super::StreamFault>>, body: Bytes) -> Response {
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
    if let Some(refused) = chat_refusal(&body, messages) {
        return refused;
    }
    let prefill = continued(&body, messages);
    if body["continue_final_message"] == true && prefill.is_none() {
        return invalid(
            "continue_final_message is set but the last message is not the assistant's",
            Some("messages"),
            None,
        );
    }
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
    let asked_of_user = messages.last().is_some_and(|m| m["role"] == "user");
    let call = asked_of_user
        .then(|| called_tool(&body, last_user))
        .flatten()
        .filter(|_| !moderated)
        .map(|tool| tool_call(tool, last_user));
    let echo: String = std::iter::once("Echo:")
        .chain(last_user.split_whitespace().rev())
        .collect::<Vec<_>>()
        .join(" ");
    let stopped = cut_at_stop(&echo, &body["stop"]);
    let all_words: Vec<&str> = match (&stopped, moderated || call.is_some()) {
        (_, true) => Vec::new(),
        (Some(cut), false) => cut.split_whitespace().collect(),
        (None, false) => echo.split_whitespace().collect(),
    };
    let words: Vec<&str> = all_words.iter().copied().take(max_tokens).collect();
    let finish_reason = if moderated {
        "content_filter"
    } else if call.is_some() {
        "tool_calls"
    } else if words.len() < all_words.len() {
        "length"
    } else {
        "stop"
    };
    // The answer's text in the pieces it streams in, each word with the space after
    // it; a continuation's is what follows the prefill.
    let full = words.join(" ");
    let answer = match prefill.as_deref() {
        Some(prefill) => full.strip_prefix(prefill).unwrap_or(&full),
        None => &full,
    };
    let pieces: Vec<&str> = answer.split_inclusive(' ').collect();
    let completion_tokens = match &call {
        Some((_, _, arguments)) => arguments.split_whitespace().count().max(1),
        None => pieces.len(),
    };
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    if body["stream"] == true {
        let chunk = |choices: Value| json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices});
        let delta = |delta: Value, finish: Value| {
            chunk(json!([{"index": 0, "delta": delta, "finish_reason": finish}]))
        };
        let mut events = Vec::new();
        if let Some((call_id, name, arguments)) = &call {
            events.push(delta(
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
                ]}),
                Value::Null,
            ));
            let characters: Vec<char> = arguments.chars().collect();
            events.extend(characters.chunks(8).map(|piece| {
                let piece: String = piece.iter().collect();
                delta(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    Value::Null,
                )
            }));
        } else {
            events.push(delta(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ));
        }
        events.extend(
            pieces
                .iter()
                .map(|piece| delta(json!({ "content": piece }), Value::Null)),
        );
        // A prompt asking for it is cut off after its first word (a `cut_stream` fault
        // after its count of words): no finish, no usage, no `[DONE]`, as when a
        // provider's connection drops mid-answer.
        let fault = match fault {
            Some(axum::Extension(fault)) => Some(fault),
            None => last_user
                .contains("[cut]")
                .then_some(StreamFault::Cut { after: 1 }),
        };
        // The role chunk and `after` pieces.
        let sent = |events: &[Value], after: usize| sse(&events[..(after + 1).min(events.len())]);
        let faulty = match fault {
            Some(StreamFault::Cut { after }) => Some(Body::from(sent(&events, after))),
            Some(StreamFault::Stall { after }) => {
                // What was sent, then silence on an open connection.
                let text = sent(&events, after);
                let sent = futures_util::stream::once(async move {
                    Ok::<_, std::convert::Infallible>(Bytes::from(text))
                });
                Some(Body::from_stream(futures_util::StreamExt::chain(
                    sent,
                    futures_util::stream::pending(),
                )))
            }
            Some(StreamFault::Malformed { after }) => Some(Body::from(
                sent(&events, after) + "data: {\"choices\": [{\"delta\n\n",
            )),
            Some(StreamFault::NoDone) => {
                events.push(delta(json!({}), json!(finish_reason)));
                Some(Body::from(sse(&events)))
            }
            None => None,
        };
        if let Some(body) = faulty {
            return ([("content-type", "text/event-stream")], body).into_response();
        }
        events.push(delta(json!({}), json!(finish_reason)));
        if body["stream_options"]["include_usage"] == true {
            let mut last = chunk(json!([]));
            last["usage"] = usage;
            events.push(last);
        }
        let mut text = sse(&events);
        text.push_str("data: [DONE]\n\n");
        return ([("content-type", "text/event-stream")], Body::from(text)).into_response();
    }
    let message = match &call {
        Some((call_id, name, arguments)) => {
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            ]})
        }
        None => json!({"role": "assistant", "content": answer}),
    };
    json_response(
        StatusCode::OK,
        json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
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
    async fn open_weights_models_continue_the_assistants_last_message_and_gpt_refuses_to() {
        let (_emulator, _, chat) = emulator().await;
        let continued = |model: &str, prefill: &str, stream: bool| {
            json!({"model": model, "stream": stream, "continue_final_message": true, "add_generation_prompt": false,
                   "messages": [{"role": "user", "content": "one two three"},
                                {"role": "assistant", "content": prefill}]})
        };
        let (status, body) = post(
            &chat,
            DEFAULT_TOKEN,
            continued(LLAMA, "Echo: three tw", false),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], "o one");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        let events = sse_data(&chat, continued(LLAMA, "Echo: ", true)).await;
        let text: String = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(String::from)
            })
            .collect();
        assert_eq!(text, "three two one");
        let (status, body) = post(
            &chat,
            DEFAULT_TOKEN,
            continued("gpt-4o-mini", "Echo: ", false),
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Unrecognized request argument supplied"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn stream_faults_garble_a_chunk_or_leave_out_the_end() {
        let (emulator, _, chat) = emulator().await;
        let request = json!({"model": LLAMA, "stream": true, "stream_options": {"include_usage": true},
                             "messages": [{"role": "user", "content": "one two three"}]});
        emulator.push_fault(Fault::MalformedStream { after: 1 });
        let events = sse_data(&chat, request.clone()).await;
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(serde_json::from_str::<Value>(&events[2]).is_err());
        emulator.push_fault(Fault::NoDone);
        let events = sse_data(&chat, request).await;
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert!(events.iter().all(|e| e != "[DONE]" && !e.contains("usage")));
    }

    fn weather() -> Value {
        json!([
            {"type": "function", "function": {"name": "get_time"}},
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        ])
    }

    #[tokio::test]
    async fn tools_are_called_as_the_request_scripts_it() {
        let (_emulator, _, chat) = emulator().await;
        let ask = |content: &str, choice: Value| {
            json!({"model": LLAMA, "tools": weather(), "tool_choice": choice,
                   "messages": [{"role": "user", "content": content}]})
        };
        let (status, body) = post(
            &chat,
            DEFAULT_TOKEN,
            ask("use get_weather for Paris", Value::Null),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        let call = &choice["message"]["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(call["type"], "function");
        assert_eq!(
            call["function"],
            json!({"name": "get_weather", "arguments": "{\"city\":\"use get_weather for Paris\"}"})
        );
        let again = post(
            &chat,
            DEFAULT_TOKEN,
            ask("use get_weather for Paris", Value::Null),
        )
        .await
        .1;
        assert_eq!(
            again["choices"][0]["message"]["tool_calls"][0], *call,
            "deterministic"
        );

        let called = |content: &str, choice: Value| {
            let request = ask(content, choice);
            let chat = chat.clone();
            async move {
                let body = post(&chat, DEFAULT_TOKEN, request).await.1;
                body["choices"][0]["message"]["tool_calls"][0]["function"]["name"]
                    .as_str()
                    .map(str::to_string)
            }
        };
        assert_eq!(called("hello there", json!("auto")).await, None);
        assert_eq!(called("get_weather now", json!("none")).await, None);
        assert_eq!(
            called("hello there", json!("required")).await.as_deref(),
            Some("get_time")
        );
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        assert_eq!(
            called("hello there", named).await.as_deref(),
            Some("get_weather")
        );

        // A tool's result is answered in words.
        let answered = json!({"model": LLAMA, "tools": weather(), "messages": [
            {"role": "user", "content": "use get_weather"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
        ]});
        let body = post(&chat, DEFAULT_TOKEN, answered).await.1;
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "Echo: get_weather use"
        );
    }

    #[tokio::test]
    async fn a_streamed_tool_call_comes_in_fragments_by_index() {
        let (_emulator, _, chat) = emulator().await;
        let request = json!({"model": LLAMA, "stream": true, "tools": weather(), "tool_choice": "required",
                             "messages": [{"role": "user", "content": "get_weather in Paris"}]});
        let events = sse_data(&chat, request).await;
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let first = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(first["index"], 0);
        assert_eq!(first["function"]["name"], "get_weather");
        let arguments: String = chunks
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(arguments, r#"{"city":"get_weather in Paris"}"#);
        assert!(chunks.len() > 4, "the arguments come in pieces");
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[tokio::test]
    async fn max_tokens_cuts_with_length_and_a_stop_sequence_stops() {
        let (_emulator, _, chat) = emulator().await;
        let ask = |extra: Value| {
            let mut request =
                json!({"model": LLAMA, "messages": [{"role": "user", "content": "one two three"}]});
            request
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            request
        };
        let body = post(&chat, DEFAULT_TOKEN, ask(json!({"max_tokens": 2})))
            .await
            .1;
        assert_eq!(body["choices"][0]["message"]["content"], "Echo: three");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        let body = post(
            &chat,
            DEFAULT_TOKEN,
            ask(json!({"stop": ["two", "zzz"], "seed": 3, "top_p": 0.5})),
        )
        .await
        .1;
        assert_eq!(body["choices"][0]["message"]["content"], "Echo: three");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        let events = sse_data(&chat, ask(json!({"max_tokens": 1, "stream": true}))).await;
        assert!(events[events.len() - 2].contains(r#""finish_reason":"length""#));
    }

    #[tokio::test]
    async fn unknown_and_malformed_chat_parameters_are_refused_as_openai_does() {
        let (_emulator, _, chat) = emulator().await;
        let user = json!([{"role": "user", "content": "hi"}]);
        for (extra, param) in [
            (json!({"temprature": 1}), Value::Null),
            (json!({"top_p": 2}), json!("top_p")),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), json!("stop")),
            (json!({"tools": [{"type": "code"}]}), json!("tools")),
            (json!({"tool_choice": "required"}), json!("tool_choice")),
            (
                json!({"tools": weather(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                json!("tool_choice"),
            ),
            (
                json!({"response_format": {"type": "xml"}}),
                json!("response_format"),
            ),
            (
                json!({"messages": [{"role": "tool", "content": "18 C"}]}),
                json!("messages.[0]"),
            ),
        ] {
            let mut request = json!({"model": LLAMA, "messages": user});
            request
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let (status, body) = post(&chat, DEFAULT_TOKEN, request).await;
            assert_eq!(status, 400, "{extra}: {body}");
            assert_eq!(body["error"]["type"], "invalid_request_error", "{extra}");
            assert_eq!(body["error"]["param"], param, "{extra}");
        }
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
