//! `POST /openai/v1/chat/completions`: OpenAI's request read into an ordinary
//! execution of the canonical chat input, and the execution rendered as a
//! `chat.completion` (streams: `stream.rs`).

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;

use super::schema::{AssistantMessage, ChatCompletion, Choice, Usage};
use super::{RequestId, errors, finished, with_execution_headers};
use crate::App;
use crate::api::executions::idempotency_key;
use crate::api::fields::Fields;
use crate::api::openapi::OpenAiErrors;
use crate::api::openapi::requests::ChatCompletionRequest;
use crate::api::{JsonObject, require};
use crate::auth::{Caller, Scope};
use crate::error::{ApiError, DetailCode, quote};
use crate::executions::input::canonical_numbers;
use crate::executions::{CreateRequest, Execution, MAX_FALLBACK_MODELS, Mode, request_hash};

pub const PATH: &str = "/openai/v1/chat/completions";

/// Every parameter the door reads; any other is refused, naming it.
const PARAMS: &[&str] = &[
    "model",
    "models",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "n",
];

/// Parameters that go to the canonical input as they are (OpenAI's names are the
/// canonical ones); its schema validates them.
const PASSED: &[&str] = &[
    "temperature",
    "top_p",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
];

/// A chat request, read.
#[derive(Debug)]
pub struct ChatRequest {
    pub create: CreateRequest,
    pub stream: bool,
    pub include_usage: bool,
    /// canonical input fields the client named otherwise
    pub renames: Vec<(&'static str, &'static str)>,
}

/// Create a chat completion
///
/// An ordinary execution of the canonical chat input, answered as a
/// `chat.completion`, or with `stream` as `chat.completion.chunk` server-sent events
/// ending with `data: [DONE]`. Headers: `X-ModelRoute-Execution-Id`,
/// `X-ModelRoute-Cost`, and `Idempotent-Replayed` on a replay.
#[utoipa::path(
    post, operation_id = "createChatCompletion", path = "/chat/completions", tag = "openai",
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII characters")),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion, or its chunks when `stream` is set",
            content((ChatCompletion = "application/json"), (String = "text/event-stream"))),
        OpenAiErrors,
    )
)]
pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Execution)?;
    let key = idempotency_key(&headers)?;
    let chat = parse(&body)?;
    let idempotency = key.map(|key| (key, request_hash("POST", PATH, &canonical(body))));
    let keyed = idempotency.is_some();
    let renames = chat.renames.clone();
    let created = app
        .executions
        .create(&caller, chat.create, idempotency)
        .await
        .map_err(|error| fallbacks_as_models(errors::renamed(error, &renames)))?;
    if chat.stream {
        return super::stream::respond(app, caller, request_id, created, chat.include_usage, keyed)
            .await;
    }
    let replayed = created.replayed;
    let execution = finished(&app, &caller, created.execution, keyed).await?;
    let response = axum::Json(completion(&execution)).into_response();
    Ok(with_execution_headers(response, &execution, replayed))
}

/// Reads an OpenAI chat request into an execution of the canonical chat input,
/// reporting every problem at once.
pub fn parse(body: &Map<String, Value>) -> Result<ChatRequest, ApiError> {
    super::refuse_unknown(body, PARAMS)?;
    let mut fields = Fields::new(body, PARAMS);
    let (model, fallback_models) = models(&mut fields);
    let messages = match fields.present("messages") {
        None => {
            fields.refuse("messages", DetailCode::Required, "messages is required");
            None
        }
        Some(Value::Array(messages)) => Some(messages),
        Some(_) => {
            fields.refuse(
                "messages",
                DetailCode::InvalidType,
                "messages must be an array",
            );
            None
        }
    };
    let n = fields.present("n");
    if n.is_some_and(|n| n.as_f64() != Some(1.0)) {
        fields.refuse(
            "n",
            DetailCode::OutOfRange,
            "only n = 1 is supported: one choice per request",
        );
    }
    let stream = fields.boolean("stream").unwrap_or(false);
    let mut include_usage = false;
    if let Some(options) = fields.object("stream_options") {
        if !stream {
            fields.refuse(
                "stream_options",
                DetailCode::InvalidValue,
                "stream_options is only allowed when stream is true",
            );
        }
        for (name, value) in options {
            match (name.as_str(), value) {
                ("include_usage", Value::Bool(flag)) => include_usage = *flag,
                ("include_usage", Value::Null) => {}
                ("include_usage", _) => fields.refuse(
                    "stream_options.include_usage",
                    DetailCode::InvalidType,
                    "stream_options.include_usage must be a boolean",
                ),
                (other, _) => fields.refuse(
                    &format!("stream_options.{other}"),
                    DetailCode::UnknownField,
                    format!("Unrecognized request argument supplied: stream_options.{other}"),
                ),
            }
        }
    }
    let mut input = Map::new();
    if let Some(messages) = messages {
        input.insert("messages".into(), Value::Array(messages.clone()));
    }
    let mut renames = Vec::new();
    match (
        fields.present("max_tokens"),
        fields.present("max_completion_tokens"),
    ) {
        (Some(tokens), None) => {
            input.insert("max_tokens".into(), tokens.clone());
        }
        (None, Some(tokens)) => {
            input.insert("max_tokens".into(), tokens.clone());
            renames.push(("max_tokens", "max_completion_tokens"));
        }
        (Some(a), Some(b)) if a == b => {
            input.insert("max_tokens".into(), a.clone());
        }
        (Some(_), Some(_)) => fields.refuse(
            "max_completion_tokens",
            DetailCode::InvalidValue,
            "give max_tokens or max_completion_tokens, not both",
        ),
        (None, None) => {}
    }
    for name in PASSED {
        if let Some(value) = fields.present(name) {
            input.insert((*name).into(), value.clone());
        }
    }
    let metadata = metadata(&mut fields);
    fields.finish()?;
    Ok(ChatRequest {
        create: CreateRequest {
            model: model.unwrap_or_default(),
            input: Value::Object(input),
            metadata: Value::Object(metadata),
            mode: if stream { Mode::Streaming } else { Mode::Sync },
            webhook_url: None,
            fallback_models,
        },
        stream,
        include_usage,
        renames,
    })
}

/// `model`, or `models: [primary, fallback, …]` (OpenRouter's convention): the
/// primary and, when `models` is given, the fallbacks it names (`[]` for one).
fn models(fields: &mut Fields<'_>) -> (Option<String>, Option<Vec<String>>) {
    let Some(models) = fields.present("models") else {
        let model = fields.required_string("model").map(str::to_string);
        return (model, None);
    };
    let names: Option<Vec<&str>> = models
        .as_array()
        .filter(|list| !list.is_empty())
        .and_then(|list| list.iter().map(Value::as_str).collect());
    let Some(names) = names.filter(|names| names.iter().all(|name| !name.is_empty())) else {
        fields.refuse(
            "models",
            DetailCode::InvalidType,
            "models must be a non-empty array of model slugs",
        );
        return (None, None);
    };
    if names.len() > 1 + MAX_FALLBACK_MODELS {
        fields.refuse(
            "models",
            DetailCode::OutOfRange,
            format!("models may name at most {} models", 1 + MAX_FALLBACK_MODELS),
        );
        return (None, None);
    }
    let primary = names[0];
    if let Some(model) = fields.string("model").filter(|model| *model != primary) {
        fields.refuse(
            "model",
            DetailCode::InvalidValue,
            format!(
                "model {} differs from models[0] {}",
                quote(model),
                quote(primary)
            ),
        );
        return (None, None);
    }
    let fallbacks = names[1..].iter().map(|name| name.to_string()).collect();
    (Some(primary.to_string()), Some(fallbacks))
}

/// `error` with its `fallback_models[i]` details named as the client sent them,
/// `models[i + 1]`.
fn fallbacks_as_models(mut error: ApiError) -> ApiError {
    for detail in &mut error.details {
        let Some(index) = detail
            .field
            .strip_prefix("fallback_models[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|index| index.parse::<usize>().ok())
        else {
            continue;
        };
        let field = format!("models[{}]", index + 1);
        error.message = error.message.replacen(&detail.field, &field, 1);
        detail.field = field;
    }
    error
}

/// The execution's metadata: OpenAI's `metadata` as sent, and `user` under `user`,
/// within the native limits (50 keys, 16 KiB).
fn metadata(fields: &mut Fields<'_>) -> Map<String, Value> {
    let mut metadata = fields.object("metadata").cloned().unwrap_or_default();
    if let Some(user) = fields.string("user") {
        match metadata.get("user") {
            Some(Value::String(same)) if same == user => {}
            Some(_) => fields.refuse(
                "user",
                DetailCode::InvalidValue,
                "user and metadata.user differ; the execution's metadata keeps user under \"user\"",
            ),
            None => {
                metadata.insert("user".into(), json!(user));
            }
        }
    }
    let size = serde_json::to_string(&metadata).map_or(0, |text| text.len());
    if metadata.len() > 50 || size > 16 * 1024 {
        fields.refuse(
            "metadata",
            DetailCode::OutOfRange,
            "metadata (with user) is limited to 50 keys and 16 KiB",
        );
    }
    metadata
}

/// The body as the idempotency check compares it: nulls dropped, numbers canonical
/// (keys sort, so their order never matters).
pub fn canonical(mut body: Map<String, Value>) -> Value {
    body.retain(|_, value| !value.is_null());
    canonical_numbers(Value::Object(body))
}

/// The canonical text output's `finish_reason` (`stop` when the adapter gave none).
pub fn finish_reason(output: &Value) -> &str {
    output["finish_reason"].as_str().unwrap_or("stop")
}

/// The canonical output's tool calls, when there are any.
pub fn tool_calls(output: &Value) -> Option<&Vec<Value>> {
    output["tool_calls"]
        .as_array()
        .filter(|calls| !calls.is_empty())
}

/// OpenAI's `usage` of a canonical text output.
pub fn usage(output: &Value) -> Usage {
    let prompt = output["usage"]["input_tokens"].as_u64().unwrap_or(0);
    let completion = output["usage"]["output_tokens"].as_u64().unwrap_or(0);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
    }
}

/// A completed execution as a `chat.completion`.
pub fn completion(execution: &Execution) -> ChatCompletion<'_> {
    static NO_OUTPUT: Value = Value::Null;
    let output = execution.output.as_ref().unwrap_or(&NO_OUTPUT);
    let text = output["text"].as_str().unwrap_or_default();
    let tool_calls = tool_calls(output);
    ChatCompletion {
        id: &execution.id,
        object: "chat.completion",
        created: execution.created_at.timestamp(),
        model: &execution.model,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: (tool_calls.is_none() || !text.is_empty()).then_some(text),
                tool_calls,
            },
            logprobs: None,
            finish_reason: finish_reason(output),
        }],
        usage: usage(output),
    }
}

#[cfg(test)]
#[path = "chat_tests.rs"]
mod tests;
