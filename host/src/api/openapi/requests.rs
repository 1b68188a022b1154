//! The request bodies and query parameters as the API document describes them.
//!
//! The handlers read bodies field by field (`api::fields`), to report every problem
//! at once in the contract's `details`; these types are what they accept, and the
//! tests below keep each type's fields and the handler's list of known fields the
//! same.

use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Scope;
use crate::executions::Mode;

/// `POST /v1/executions`.
#[derive(ToSchema)]
#[schema(example = json!({"model": "flux-1.1-pro", "input": {"prompt": "a lighthouse at dusk"}}))]
pub struct CreateExecution {
    /// the model's slug (`GET /v1/models`)
    #[schema(min_length = 1)]
    pub model: String,
    /// the canonical input, checked against the model's `input_schema`
    #[schema(value_type = Object)]
    pub input: Value,
    /// receives this execution's events, signed with the default secret
    #[schema(format = "uri")]
    pub webhook_url: Option<String>,
    /// up to 50 keys and 16 KiB, returned as sent
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `ASYNC` (default), `SYNC` (wait for the end) or `STREAMING` (server-sent events)
    pub mode: Option<Mode>,
    /// how long a `SYNC` request waits (default 60)
    #[schema(minimum = 1, maximum = 300)]
    pub wait_seconds: Option<u64>,
    /// models of the same modality to go on with when every provider of `model` failed
    #[schema(max_items = 5)]
    pub fallback_models: Option<Vec<String>>,
}

/// `POST /v1/api-keys`.
#[derive(ToSchema)]
pub struct CreateKey {
    /// `full` (default) or `execution` (executions and files only)
    pub scope: Option<Scope>,
    #[schema(max_length = 200)]
    pub name: Option<String>,
}

/// `POST /v1/files/upload`.
#[derive(ToSchema)]
pub struct CreateUpload {
    #[schema(pattern = "^(INPUT|UPLOAD)$")]
    pub purpose: String,
    /// how long the file lives once confirmed (default: the organization's)
    #[schema(minimum = 1, maximum = 365)]
    pub ttl_days: Option<u32>,
    /// from older clients: accepted, never stored
    pub filename: Option<String>,
    /// from older clients: accepted, never trusted (the bytes tell)
    pub content_type: Option<String>,
    /// from older clients: a size over the cap is refused at once
    pub size_bytes: Option<u64>,
}

/// `POST /v1/files/confirm`.
#[derive(ToSchema)]
pub struct ConfirmUpload {
    pub file_id: String,
}

/// `POST /v1/webhooks/endpoints`.
#[derive(ToSchema)]
pub struct CreateEndpoint {
    /// `https` (plain `http` only where the operator allows it)
    #[schema(format = "uri")]
    pub url: String,
    pub description: Option<String>,
    /// `execution.started`, `execution.completed`, `execution.failed`,
    /// `execution.cancelled`, `execution.expired`; none: all
    pub events: Option<Vec<String>>,
    /// sent with each delivery
    pub headers: Option<BTreeMap<String, String>>,
}

/// `PATCH /v1/webhooks/endpoints/{id}`: what changes.
#[derive(ToSchema)]
pub struct UpdateEndpoint {
    #[schema(format = "uri")]
    pub url: Option<String>,
    pub description: Option<String>,
    pub events: Option<Vec<String>>,
    pub headers: Option<BTreeMap<String, String>>,
    /// `true` reactivates it and clears its failure count
    #[schema(nullable = false)]
    pub is_active: Option<bool>,
}

/// `POST /admin/v1/organizations`.
#[derive(ToSchema)]
pub struct CreateOrganization {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// an opening balance, US dollars as a decimal string
    #[schema(value_type = Option<crate::money::Micros>)]
    pub credit_usd: Option<String>,
}

/// `PATCH /admin/v1/organizations/{id}`: at least one field; `null` restores the
/// server's default.
#[derive(ToSchema)]
pub struct UpdateOrganization {
    #[schema(minimum = 1, maximum = 365)]
    pub file_ttl_days: Option<u32>,
    pub file_quota_bytes: Option<u64>,
    pub file_quota_files: Option<u64>,
}

/// `POST /admin/v1/organizations/{id}/credit`.
#[derive(ToSchema)]
pub struct Credit {
    #[schema(value_type = crate::money::Micros)]
    pub amount_usd: String,
    /// who and why, kept on the ledger entry
    pub memo: Option<String>,
}

/// `POST /admin/v1/clock/advance` (only with `[testing] clock_control`).
#[derive(ToSchema)]
pub struct AdvanceClock {
    #[schema(minimum = 1)]
    pub seconds: u64,
}

/// A page of a list, newest or oldest first as the list says.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// items on the page (default 20)
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// the id of the last item of the previous page
    pub starting_after: Option<String>,
}

/// A page of `GET /v1/executions`, filtered.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecutionListParams {
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    pub starting_after: Option<String>,
    /// only executions in this status
    #[param(value_type = Option<crate::executions::Status>)]
    pub status: Option<String>,
    /// only executions of this model
    pub model: Option<String>,
}

/// `POST /openai/v1/chat/completions`.
#[derive(ToSchema)]
#[schema(example = json!({"model": "llama-3.1-8b-instruct", "messages": [{"role": "user", "content": "Hello"}]}))]
pub struct ChatCompletionRequest {
    /// the model's slug (or name the candidates with `models`)
    pub model: Option<String>,
    /// `[primary, fallback, …]` (OpenRouter's convention)
    pub models: Option<Vec<String>>,
    /// `system`, `developer`, `user`, `assistant` and `tool` messages; content a
    /// string or an array of text parts
    #[schema(value_type = Vec<Object>, min_items = 1)]
    pub messages: Vec<Value>,
    #[schema(minimum = 1)]
    pub max_tokens: Option<u64>,
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u64>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// a string or up to 4 strings
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    pub seed: Option<i64>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `none`, `auto`, `required` or a named function
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// `{"type": "text" | "json_object" | "json_schema", …}`
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// answer `chat.completion.chunk` server-sent events
    pub stream: Option<bool>,
    /// `{"include_usage": true}` adds a final usage chunk
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<Value>,
    pub user: Option<String>,
    /// kept on the execution
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// only 1
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<u32>,
}

/// `POST /openai/v1/images/generations`.
#[derive(ToSchema)]
#[schema(example = json!({"model": "flux-1.1-pro", "prompt": "a lighthouse at dusk"}))]
pub struct ImageRequest {
    pub model: String,
    #[schema(min_length = 1)]
    pub prompt: String,
    /// images to make (as many as the model allows)
    #[schema(minimum = 1)]
    pub n: Option<u32>,
    /// `WxH` or `auto`
    #[schema(example = "1024x1024")]
    pub size: Option<String>,
    /// `url` (a signed download URL, valid one hour) or `b64_json`
    #[schema(pattern = "^(url|b64_json)$")]
    pub response_format: Option<String>,
    pub user: Option<String>,
}
