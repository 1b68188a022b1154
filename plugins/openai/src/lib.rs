//! The OpenAI-compatible API (OpenAI, Together, Groq, vLLM, …):
//! `/v1/images/generations` for images and `/v1/chat/completions` for text. Both
//! answer synchronously; chat completions can stream server-sent events.

use base64::Engine;
use modelroute_sdk::canonical;
use modelroute_sdk::*;

#[derive(Default)]
struct OpenAi;

const FLUX: &str = "flux-1.1-pro";
const LLAMA: &str = "llama-3.1-8b-instruct";
const LLAMA_70B: &str = "llama-3.1-70b-instruct";
const DEFAULT_MAX_TOKENS: u64 = 256;
/// The canonical chat input's options, sent under the same names when given.
const CHAT_OPTIONS: [&str; 7] = [
    "temperature",
    "top_p",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
];

/// Whether a call's input is the canonical chat input (else it is a text-to-image
/// one): the host says which preset the model's input follows, for the canonical
/// models and for any the operator declares alike, so no slug is compared here.
fn is_chat(input: &str) -> bool {
    input == canonical::CHAT
}

/// Refuses a preset this adapter does not translate (the host only routes the
/// presets of `declared_inputs` and of the canonical models served here).
fn check_input(input: &str) -> Result<(), Failure> {
    if is_chat(input) || input == canonical::TEXT_TO_IMAGE {
        return Ok(());
    }
    Err(Failure::new(
        ErrorCode::InternalError,
        format!("input preset {input:?} is neither chat nor text-to-image"),
    ))
}

impl Adapter for OpenAi {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "openai".into(),
            version: "0.1.0".into(),
            default_base_url: "https://api.openai.com".into(),
            allowed_hosts: vec!["api.openai.com".into()],
            auth: AuthScheme::Bearer,
            capabilities: Capabilities {
                cancel: false,
                webhooks: false,
                streaming: true,
                inline_files: false,
                idempotent_submit: false,
            },
            declared_inputs: vec![canonical::CHAT.into(), canonical::TEXT_TO_IMAGE.into()],
            models: vec![
                canonical::model(
                    FLUX,
                    "black-forest-labs/FLUX.1.1-pro",
                    Price {
                        per_megapixel: 38_000,
                        ..Price::default()
                    },
                ),
                canonical::model(
                    LLAMA,
                    "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
                    Price {
                        per_million_input_tokens: 180_000,
                        per_million_output_tokens: 180_000,
                        ..Price::default()
                    },
                )
                .accepting_prefill(),
                canonical::model(
                    LLAMA_70B,
                    "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo",
                    Price {
                        per_million_input_tokens: 880_000,
                        per_million_output_tokens: 880_000,
                        ..Price::default()
                    },
                )
                .accepting_prefill(),
            ],
        }
    }

    fn estimate(&self, model: &ModelRef, input: &Value) -> Result<Usage, Failure> {
        check_input(&model.input)?;
        if is_chat(&model.input) {
            let max_tokens = input["max_tokens"].as_u64().unwrap_or(DEFAULT_MAX_TOKENS);
            Ok(Usage::tokens(prompt_tokens(input)?, max_tokens))
        } else {
            Ok(canonical::image_estimate(input))
        }
    }

    fn build_submit(&self, ctx: &CallContext, input: &Value) -> Result<HttpRequest, Failure> {
        check_input(&ctx.input)?;
        if is_chat(&ctx.input) {
            // The canonical chat input is OpenAI's: its messages (every role, text
            // parts, tool calls and results) and options go as they are.
            let mut body = json!({
                "model": ctx.provider_model,
                "messages": messages(input)?,
                "max_tokens": input["max_tokens"].as_u64().unwrap_or(DEFAULT_MAX_TOKENS),
                "stream": ctx.stream,
            });
            for option in CHAT_OPTIONS {
                if let Some(value) = input.get(option) {
                    body[option] = value.clone();
                }
            }
            if ctx.stream {
                body["stream_options"] = json!({"include_usage": true});
            }
            // A continuation: the text so far as the assistant's last message, which
            // the model goes on with (vLLM's parameters; its answer does not repeat it).
            if let Some(prefill) = canonical::prefill(input) {
                let mut messages = messages(input)?.clone();
                messages.push(json!({"role": "assistant", "content": prefill}));
                body["messages"] = Value::Array(messages);
                body["continue_final_message"] = json!(true);
                body["add_generation_prompt"] = json!(false);
            }
            return Ok(HttpRequest::post_json(
                ctx.url("/v1/chat/completions"),
                &body,
            ));
        }
        let Some(prompt) = input["prompt"].as_str() else {
            return Err(Failure::new(
                ErrorCode::InputValidationError,
                "prompt is required",
            ));
        };
        let (width, height) = canonical::image_size(input);
        let mut body = json!({
            "model": ctx.provider_model,
            "prompt": prompt,
            "n": 1,
            "size": format!("{width}x{height}"),
            "width": width,
            "height": height,
            "response_format": "b64_json",
        });
        if let Some(seed) = input.get("seed") {
            body["seed"] = seed.clone();
        }
        Ok(HttpRequest::post_json(
            ctx.url("/v1/images/generations"),
            &body,
        ))
    }

    fn parse_response(
        &self,
        ctx: &CallContext,
        answered: Answered<'_>,
        response: &HttpResponse,
    ) -> Result<Outcome, Failure> {
        if !response.is_success() {
            return Err(api_error(response));
        }
        let body = response.json()?;
        if is_chat(&ctx.input) {
            chat(&body)
        } else {
            // The submit's answer comes with its input: the size asked for is the
            // size of a linked image, which the answer does not state.
            let asked = answered.input().map(canonical::image_size);
            images(&body, asked.unwrap_or((1024, 1024)))
        }
    }

    fn parse_stream_event(&self, _ctx: &CallContext, data: &str) -> Result<StreamEvent, Failure> {
        if data.trim() == "[DONE]" {
            // The end of the stream (its usage, when asked for, came just before).
            return Ok(StreamEvent::Done(stream_end(Usage::default())));
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| {
            Failure::new(
                ErrorCode::GenerationFailed,
                format!("stream chunk is not JSON: {e}"),
            )
        })?;
        if chunk.get("error").is_some() {
            return Err(classify_error(&chunk, None));
        }
        let choice = &chunk["choices"][0];
        let finish_reason = finish_reason(choice)?;
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            return Ok(StreamEvent::Done(
                stream_end(token_usage(usage)).with_finish_reason(finish_reason),
            ));
        }
        let delta = &choice["delta"];
        let tool_calls = match delta["tool_calls"].as_array() {
            Some(fragments) => (0..).zip(fragments).map(tool_call_delta).collect(),
            None => Vec::new(),
        };
        let text = delta["content"].as_str().unwrap_or_default().to_string();
        if text.is_empty() && tool_calls.is_empty() && finish_reason.is_none() {
            return Ok(StreamEvent::Skip);
        }
        Ok(StreamEvent::Delta(StreamDelta {
            text,
            tool_calls,
            finish_reason,
        }))
    }
}

/// The end of a stream: no text of its own (its deltas carried it), and its usage.
fn stream_end(usage: Usage) -> Completion {
    Completion {
        text: None,
        assets: Vec::new(),
        usage,
        finish_reason: None,
        tool_calls: Vec::new(),
    }
}

fn messages(input: &Value) -> Result<&Vec<Value>, Failure> {
    input["messages"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| Failure::new(ErrorCode::InputValidationError, "messages is required"))
}

/// The prompt's tokens, roughly: every message's text (a string or its text parts)
/// and tool calls, and the tool definitions, which the provider puts in the prompt.
fn prompt_tokens(input: &Value) -> Result<u64, Failure> {
    let mut tokens = 0;
    for message in messages(input)? {
        let text = match &message["content"] {
            Value::String(text) => text.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|part| part["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        };
        tokens += approx_tokens(&text);
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            tokens += approx_tokens(&call["function"].to_string());
        }
    }
    for tool in input["tools"].as_array().into_iter().flatten() {
        tokens += approx_tokens(&tool["function"].to_string());
    }
    Ok(tokens)
}

fn token_usage(usage: &Value) -> Usage {
    Usage::tokens(
        usage["prompt_tokens"].as_u64().unwrap_or(0),
        usage["completion_tokens"].as_u64().unwrap_or(0),
    )
}

/// A choice's `finish_reason`; a content filter fails the answer.
fn finish_reason(choice: &Value) -> Result<Option<FinishReason>, Failure> {
    Ok(match choice["finish_reason"].as_str() {
        Some("stop") => Some(FinishReason::Stop),
        Some("length") => Some(FinishReason::Length),
        // `function_call` is the name older servers give a tool call.
        Some("tool_calls" | "function_call") => Some(FinishReason::ToolCalls),
        Some("content_filter") => {
            return Err(Failure::new(
                ErrorCode::ContentModerationRejected,
                "the completion was filtered",
            ));
        }
        _ => None,
    })
}

/// A function's `arguments`: JSON text, as OpenAI sends it; an object (as some
/// compatible servers send it) is written out as its text.
fn arguments(function: &Value) -> String {
    match &function["arguments"] {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// One `delta.tool_calls` fragment; `position` stands in for a missing `index`.
fn tool_call_delta((position, fragment): (u32, &Value)) -> ToolCallDelta {
    let text = |value: &Value| value.as_str().map(str::to_string);
    ToolCallDelta {
        index: fragment["index"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(position),
        id: text(&fragment["id"]),
        name: text(&fragment["function"]["name"]),
        arguments: arguments(&fragment["function"]),
    }
}

/// A message's `tool_calls`, each of which must name its id and function.
fn tool_calls(message: &Value) -> Result<Vec<ToolCall>, Failure> {
    let mut calls = Vec::new();
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let (Some(id), Some(name)) = (call["id"].as_str(), call["function"]["name"].as_str())
        else {
            return Err(Failure::new(
                ErrorCode::GenerationFailed,
                "a tool call has no id or no function name",
            ));
        };
        calls.push(ToolCall {
            id: id.to_string(),
            name: name.to_string(),
            arguments: arguments(&call["function"]),
        });
    }
    Ok(calls)
}

fn chat(body: &Value) -> Result<Outcome, Failure> {
    let choice = &body["choices"][0];
    let finish_reason = finish_reason(choice)?;
    let message = &choice["message"];
    let tool_calls = tool_calls(message)?;
    // A message that only calls tools has no content.
    let text = match message["content"].as_str() {
        Some(text) => text,
        None if !tool_calls.is_empty() => "",
        None => {
            return Err(Failure::new(
                ErrorCode::GenerationFailed,
                "the completion has no message content",
            ));
        }
    };
    let completion =
        Completion::text(text, token_usage(&body["usage"])).with_finish_reason(finish_reason);
    Ok(Outcome::Completed(Completion {
        tool_calls,
        ..completion
    }))
}

/// The images of an answer; `asked` is the size requested, what a linked image is
/// billed as.
fn images(body: &Value, asked: (u64, u64)) -> Result<Outcome, Failure> {
    let Some(data) = body["data"].as_array().filter(|d| !d.is_empty()) else {
        return Err(Failure::new(
            ErrorCode::GenerationFailed,
            "the response has no images",
        ));
    };
    let mut assets = Vec::new();
    let mut megapixels_milli = 0;
    for item in data {
        let source = if let Some(encoded) = item["b64_json"].as_str() {
            match base64::engine::general_purpose::STANDARD.decode(encoded) {
                Ok(bytes) => {
                    let (width, height) = png_size(&bytes).unwrap_or((1024, 1024));
                    megapixels_milli += width * height / 1000;
                    AssetSource::Inline(bytes)
                }
                Err(e) => {
                    return Err(Failure::new(
                        ErrorCode::GenerationFailed,
                        format!("b64_json is not base64: {e}"),
                    ));
                }
            }
        } else if let Some(url) = item["url"].as_str() {
            megapixels_milli += asked.0 * asked.1 / 1000;
            AssetSource::Url(url.to_string())
        } else {
            return Err(Failure::new(
                ErrorCode::GenerationFailed,
                "an image has neither b64_json nor url",
            ));
        };
        assets.push(Asset {
            source,
            modality: Modality::Image,
            duration_ms: None,
        });
    }
    let usage = Usage {
        images: assets.len() as u32,
        megapixels_milli,
        ..Usage::default()
    };
    Ok(Outcome::Completed(Completion {
        text: None,
        assets,
        usage,
        finish_reason: None,
        tool_calls: Vec::new(),
    }))
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> Option<(u64, u64)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" {
        return None;
    }
    let read = |at: usize| -> Option<u64> {
        Some(u32::from_be_bytes(bytes[at..at + 4].try_into().ok()?).into())
    };
    Some((read(16)?, read(20)?))
}

/// `{"error": {"message", "type", "param", "code"}}`, with the HTTP status.
fn api_error(response: &HttpResponse) -> Failure {
    match response.json() {
        Ok(body) if body.get("error").is_some() => classify_error(&body, Some(response)),
        _ => Failure::from_status(response, response.text()),
    }
}

fn classify_error(body: &Value, response: Option<&HttpResponse>) -> Failure {
    let error = &body["error"];
    let message = error["message"]
        .as_str()
        .unwrap_or("provider error")
        .to_string();
    let code = error["code"].as_str().unwrap_or_default();
    let kind = error["type"].as_str().unwrap_or_default();
    let normalized = match (code, kind) {
        ("content_policy_violation" | "moderation_blocked", _) => {
            Some(ErrorCode::ContentModerationRejected)
        }
        // Our account is out of credit: another provider may serve.
        ("insufficient_quota", _) => Some(ErrorCode::ServiceUnavailable),
        ("model_not_found", _) => Some(ErrorCode::ModelUnavailable),
        (_, "overloaded_error" | "server_overloaded") => Some(ErrorCode::ModelOverloaded),
        _ => None,
    };
    let Some(response) = response else {
        return Failure::new(normalized.unwrap_or(ErrorCode::GenerationFailed), message);
    };
    let retry_after_ms = response
        .header("retry-after-ms")
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| response.retry_after_ms());
    let failure = match normalized {
        Some(code) => Failure::new(code, message),
        None if response.status == 500 => Failure::new(ErrorCode::GenerationFailed, message),
        None => Failure::from_status(response, message),
    };
    failure.with_retry_after_ms(retry_after_ms)
}

export_adapter!(OpenAi);

#[cfg(test)]
mod tests {
    use super::*;

    /// The adapter's reading as the host takes it: an `Err` is a failed outcome.
    fn parse(ctx: &CallContext, job: Option<&Job>, response: &HttpResponse) -> Outcome {
        let input = json!({});
        let answered = job.map_or(Answered::Submit(&input), Answered::Poll);
        OpenAi
            .parse_response(ctx, answered, response)
            .unwrap_or_else(Outcome::Failed)
    }

    fn event(ctx: &CallContext, data: &str) -> StreamEvent {
        OpenAi
            .parse_stream_event(ctx, data)
            .unwrap_or_else(StreamEvent::Failed)
    }

    fn ctx(slug: &str) -> CallContext {
        CallContext {
            slug: slug.into(),
            input: if slug == LLAMA {
                canonical::CHAT
            } else {
                canonical::TEXT_TO_IMAGE
            }
            .into(),
            provider_model: "provider/model".into(),
            base_url: "https://api.together.xyz".into(),
            attempt_id: "att_1".into(),
            callback_url: None,
            files: Vec::new(),
            stream: false,
        }
    }

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![("retry-after".into(), "2".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    fn tiny_png(width: u32, height: u32) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&width.to_be_bytes());
        png.extend_from_slice(&height.to_be_bytes());
        png
    }

    #[test]
    fn images_go_to_the_generations_endpoint_and_come_back_inline() {
        let request = OpenAi
            .build_submit(
                &ctx(FLUX),
                &json!({"prompt": "a cat", "width": 512, "height": 256}),
            )
            .unwrap();
        assert_eq!(
            request.url,
            "https://api.together.xyz/v1/images/generations"
        );
        let body: Value = serde_json::from_slice(request.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["size"], "512x256");
        assert_eq!(body["response_format"], "b64_json");

        let encoded = base64::engine::general_purpose::STANDARD.encode(tiny_png(512, 256));
        let answer = json!({"created": 1, "data": [{"b64_json": encoded}]}).to_string();
        let Outcome::Completed(completion) = parse(&ctx(FLUX), None, &response(200, &answer))
        else {
            panic!("expected a completion");
        };
        assert_eq!(completion.usage.images, 1);
        assert_eq!(completion.usage.megapixels_milli, 512 * 256 / 1000);
        assert!(
            matches!(&completion.assets[0].source, AssetSource::Inline(bytes) if bytes.starts_with(b"\x89PNG"))
        );
    }

    #[test]
    fn chat_completions_carry_text_and_token_usage() {
        let input =
            json!({"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16});
        let request = OpenAi.build_submit(&ctx(LLAMA), &input).unwrap();
        assert_eq!(request.url, "https://api.together.xyz/v1/chat/completions");
        let usage = OpenAi
            .estimate(
                &ModelRef {
                    slug: LLAMA.into(),
                    input: canonical::CHAT.into(),
                    provider_model: String::new(),
                },
                &input,
            )
            .unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (3, 16));

        let answer = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;
        let Outcome::Completed(completion) = parse(&ctx(LLAMA), None, &response(200, answer))
        else {
            panic!("expected a completion");
        };
        assert_eq!(completion.text.as_deref(), Some("Hello!"));
        assert_eq!(
            (
                completion.usage.input_tokens,
                completion.usage.output_tokens
            ),
            (9, 2)
        );
    }

    #[test]
    fn errors_are_classified() {
        let error = |code: &str, kind: &str| {
            format!(r#"{{"error":{{"message":"m","type":"{kind}","param":null,"code":"{code}"}}}}"#)
        };
        let cases = [
            (
                400,
                error("content_policy_violation", "invalid_request_error"),
                ErrorCode::ContentModerationRejected,
            ),
            (
                400,
                error("invalid_value", "invalid_request_error"),
                ErrorCode::InputValidationError,
            ),
            (
                429,
                error("rate_limit_exceeded", "requests"),
                ErrorCode::RateLimited,
            ),
            (
                429,
                error("insufficient_quota", "insufficient_quota"),
                ErrorCode::ServiceUnavailable,
            ),
            (
                401,
                error("invalid_api_key", "invalid_request_error"),
                ErrorCode::ServiceUnavailable,
            ),
            (
                404,
                error("model_not_found", "invalid_request_error"),
                ErrorCode::ModelUnavailable,
            ),
            (500, error("", "server_error"), ErrorCode::GenerationFailed),
            (503, error("", "server_error"), ErrorCode::ModelOverloaded),
            (
                504,
                "gateway timeout".to_string(),
                ErrorCode::GenerationTimeout,
            ),
            (200, "{truncated".to_string(), ErrorCode::GenerationFailed),
        ];
        for (status, body, code) in cases {
            let Outcome::Failed(failure) = parse(&ctx(FLUX), None, &response(status, &body)) else {
                panic!("{status} {body}");
            };
            assert_eq!(failure.code, code, "{status} {body}");
        }
        let throttled = error("rate_limit_exceeded", "requests");
        let Outcome::Failed(failure) = parse(&ctx(FLUX), None, &response(429, &throttled)) else {
            panic!()
        };
        assert_eq!(failure.retry_after_ms, Some(2000));

        let filtered = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"content_filter"}],"usage":{}}"#;
        let Outcome::Failed(failure) = parse(&ctx(LLAMA), None, &response(200, filtered)) else {
            panic!()
        };
        assert_eq!(failure.code, ErrorCode::ContentModerationRejected);
    }

    #[test]
    fn stream_events_become_deltas_then_usage() {
        let c = ctx(LLAMA);
        let delta = r#"{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#;
        assert!(
            matches!(event(&c, delta), StreamEvent::Delta(d) if d.text == "Hel" && d.finish_reason.is_none())
        );
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        assert!(matches!(event(&c, role), StreamEvent::Skip));
        let finish = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#;
        assert!(matches!(
            event(&c, finish),
            StreamEvent::Delta(d) if d.text.is_empty() && d.finish_reason == Some(FinishReason::Length)
        ));
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
        assert!(
            matches!(event(&c, usage), StreamEvent::Done(done) if done.usage.output_tokens == 2 && done.text.is_none())
        );
        assert!(matches!(
            event(&c, "[DONE]"),
            StreamEvent::Done(done) if done.text.is_none() && done.usage.output_tokens == 0
        ));
        assert!(matches!(event(&c, "{oops"), StreamEvent::Failed(_)));
        let filtered = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"content_filter"}]}"#;
        assert!(matches!(
            event(&c, filtered),
            StreamEvent::Failed(f) if f.code == ErrorCode::ContentModerationRejected
        ));
    }

    /// The body `build_submit` sends for `input`.
    fn chat_body(input: &Value, stream: bool) -> Value {
        let ctx = CallContext {
            stream,
            ..ctx(LLAMA)
        };
        let request = OpenAi.build_submit(&ctx, input).unwrap();
        serde_json::from_slice(request.body.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn a_continuation_sends_the_prefill_as_the_assistants_last_message() {
        let input = json!({"messages": [{"role": "user", "content": "hi"}], "prefill": "Echo:"});
        let body = chat_body(&input, true);
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Echo:"}])
        );
        assert_eq!(body["continue_final_message"], true);
        assert_eq!(body["add_generation_prompt"], false);
        assert!(body.get("prefill").is_none());
        let fresh = chat_body(
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
            true,
        );
        assert!(fresh.get("continue_final_message").is_none());
        let models = OpenAi.manifest().models;
        let accepts = |slug: &str| {
            models
                .iter()
                .find(|m| m.slug == slug)
                .unwrap()
                .accepts_prefill
        };
        assert!(accepts(LLAMA) && accepts(LLAMA_70B) && !accepts(FLUX));
    }

    #[test]
    fn every_chat_field_is_sent_in_openais_wire_format() {
        let messages = json!([
            {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": "Weather in Paris?", "name": "ana"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        ]);
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}, "strict": true}}]);
        let input = json!({
            "messages": messages,
            "max_tokens": 64,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["END"],
            "seed": 42,
            "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_object"},
        });
        let body = chat_body(&input, false);
        assert_eq!(
            body,
            json!({
                "model": "provider/model",
                "messages": messages,
                "max_tokens": 64,
                "stream": false,
                "temperature": 0.5,
                "top_p": 0.9,
                "stop": ["END"],
                "seed": 42,
                "tools": tools,
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "response_format": {"type": "json_object"},
            })
        );
        // Options left out are not sent; a stream asks for its usage.
        let plain = json!({"messages": [{"role": "user", "content": "hi"}], "stop": "END", "tool_choice": "none"});
        let body = chat_body(&plain, true);
        let sent: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            sent,
            [
                "max_tokens",
                "messages",
                "model",
                "stop",
                "stream",
                "stream_options",
                "tool_choice"
            ]
        );
        assert_eq!(
            (body["stop"].as_str(), body["tool_choice"].as_str()),
            (Some("END"), Some("none"))
        );
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn the_estimate_counts_text_parts_tool_calls_and_tool_definitions() {
        let estimate = |input: Value| {
            let model = ModelRef {
                slug: LLAMA.into(),
                input: canonical::CHAT.into(),
                provider_model: String::new(),
            };
            OpenAi.estimate(&model, &input).unwrap()
        };
        let parts = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "0123456789abcdef"},
            {"type": "text", "text": "0123456789abcdef"},
        ]}]});
        // 33 characters (the parts joined by a space): 9 tokens.
        assert_eq!(estimate(parts).input_tokens, 9);
        let asked = json!({"messages": [{"role": "user", "content": "hi"}]});
        let function = json!({"name": "get_weather", "description": "the weather in a city, by name", "parameters": {"type": "object"}});
        let with_tools = json!({
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": function}],
        });
        let definition = approx_tokens(&function.to_string());
        assert_eq!(
            estimate(with_tools).input_tokens,
            estimate(asked).input_tokens + definition
        );
        let called = json!({"messages": [
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
        ]});
        // An empty content counts a token, the call's function its text.
        let call = approx_tokens(&json!({"name": "f", "arguments": "{\"a\":1}"}).to_string());
        assert_eq!(estimate(called).input_tokens, 1 + call);
    }

    #[test]
    fn answers_carry_tool_calls_and_why_they_finished() {
        let called = r#"{"id":"chatcmpl-2","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[
            {"id":"call_a","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
            {"id":"call_b","type":"function","function":{"name":"get_time","arguments":{"zone":"CET"}}}
        ]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":20,"completion_tokens":12}}"#;
        let Outcome::Completed(completion) = parse(&ctx(LLAMA), None, &response(200, called))
        else {
            panic!("expected a completion");
        };
        assert_eq!(completion.text.as_deref(), Some(""));
        assert_eq!(completion.finish_reason, Some(FinishReason::ToolCalls));
        let calls: Vec<(&str, &str, &str)> = completion
            .tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("call_a", "get_weather", r#"{"city":"Paris"}"#),
                ("call_b", "get_time", r#"{"zone":"CET"}"#)
            ]
        );

        let cut = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hel"},"finish_reason":"length"}],"usage":{"prompt_tokens":2,"completion_tokens":1}}"#;
        let Outcome::Completed(completion) = parse(&ctx(LLAMA), None, &response(200, cut)) else {
            panic!("expected a completion");
        };
        assert_eq!(completion.finish_reason, Some(FinishReason::Length));
        assert!(completion.tool_calls.is_empty());

        let nameless = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#;
        let Outcome::Failed(failure) = parse(&ctx(LLAMA), None, &response(200, nameless)) else {
            panic!("a tool call without a name is a failure");
        };
        assert_eq!(failure.code, ErrorCode::GenerationFailed);
    }

    #[test]
    fn streamed_tool_calls_arrive_as_fragments_by_index() {
        let c = ctx(LLAMA);
        let chunks = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{}"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        ];
        let mut fragments = Vec::new();
        let mut finish = None;
        for chunk in chunks {
            let StreamEvent::Delta(delta) = event(&c, chunk) else {
                panic!("{chunk} is a delta");
            };
            assert_eq!(delta.text, "");
            fragments.extend(delta.tool_calls);
            finish = finish.or(delta.finish_reason);
        }
        assert_eq!(finish, Some(FinishReason::ToolCalls));
        let fragments: Vec<(u32, Option<&str>, Option<&str>, &str)> = fragments
            .iter()
            .map(|f| {
                (
                    f.index,
                    f.id.as_deref(),
                    f.name.as_deref(),
                    f.arguments.as_str(),
                )
            })
            .collect();
        assert_eq!(
            fragments,
            [
                (0, Some("call_a"), Some("get_weather"), ""),
                (0, None, None, r#"{"city":"#),
                (0, None, None, r#""Paris"}"#),
                (1, Some("call_b"), Some("get_time"), "{}"),
            ]
        );
        // Joined by index, as the host does, the fragments are the calls.
        let joined: String = fragments.iter().filter(|f| f.0 == 0).map(|f| f.3).collect();
        assert_eq!(joined, r#"{"city":"Paris"}"#);
    }

    /// An operator-declared slug is served by its input preset, never by its name:
    /// the same unknown slug goes to chat completions or to image generations as
    /// the host says, with the operator's provider model.
    #[test]
    fn declared_models_are_translated_by_their_input_preset() {
        let manifest = OpenAi.manifest();
        assert_eq!(
            manifest.declared_inputs,
            [canonical::CHAT, canonical::TEXT_TO_IMAGE]
        );
        let declared = |input: &str| CallContext {
            slug: "qwen-2.5-72b-instruct".into(),
            input: input.into(),
            provider_model: "Qwen/Qwen2.5-72B-Instruct".into(),
            ..ctx(LLAMA)
        };
        let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8});
        let request = OpenAi
            .build_submit(&declared(canonical::CHAT), &chat)
            .unwrap();
        assert_eq!(request.url, "https://api.together.xyz/v1/chat/completions");
        let body: Value = serde_json::from_slice(request.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["model"], "Qwen/Qwen2.5-72B-Instruct");
        let model = |input: &str| ModelRef {
            slug: "qwen-2.5-72b-instruct".into(),
            provider_model: "Qwen/Qwen2.5-72B-Instruct".into(),
            input: input.into(),
        };
        let usage = OpenAi.estimate(&model(canonical::CHAT), &chat).unwrap();
        assert_eq!(usage.output_tokens, 8);
        let answer = r#"{"choices":[{"message":{"content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let Outcome::Completed(completion) =
            parse(&declared(canonical::CHAT), None, &response(200, answer))
        else {
            panic!("expected a completion");
        };
        assert_eq!(completion.text.as_deref(), Some("Hello"));

        let image = json!({"prompt": "a cat", "width": 512, "height": 512});
        let request = OpenAi
            .build_submit(&declared(canonical::TEXT_TO_IMAGE), &image)
            .unwrap();
        assert_eq!(
            request.url,
            "https://api.together.xyz/v1/images/generations"
        );
        let usage = OpenAi
            .estimate(&model(canonical::TEXT_TO_IMAGE), &image)
            .unwrap();
        assert_eq!(usage.images, 1);

        // A preset it does not translate is refused rather than guessed at.
        let edit = OpenAi
            .build_submit(&declared("image-edit"), &image)
            .unwrap_err();
        assert_eq!(edit.code, ErrorCode::InternalError);
        assert!(OpenAi.estimate(&model(""), &image).is_err());
    }
}
