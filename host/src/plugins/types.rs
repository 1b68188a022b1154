//! The adapter contract's values as the rest of the host uses them: plain Rust types
//! the host owns, converted at the boundary (`convert.rs`), so the generated bindings stay inside
//! `plugins/` and a contract change is felt here, not in every module.
//!
//! Field names follow the WIT (`sdk/wit/adapter.wit`), where each is documented.

use serde::{Deserialize, Serialize};

use crate::error::Code;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modality {
    Image,
    Video,
    Audio,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderAuth {
    pub name: String,
    pub prefix: String,
}

/// Where the host puts the provider credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthScheme {
    None,
    Bearer,
    Header(HeaderAuth),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub cancel: bool,
    pub webhooks: bool,
    pub streaming: bool,
    pub inline_files: bool,
    pub idempotent_submit: bool,
}

/// Unit prices in micro-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    pub per_request: u64,
    pub per_image: u64,
    pub per_megapixel: u64,
    pub per_second: u64,
    pub per_million_input_tokens: u64,
    pub per_million_output_tokens: u64,
}

/// What a call consumed, or is estimated to consume (an execution stores its
/// estimate in this shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub requests: u32,
    pub images: u32,
    pub megapixels_milli: u64,
    pub seconds_milli: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub slug: String,
    pub provider_model: String,
    pub modality: Modality,
    pub description: String,
    pub input_schema: String,
    pub example_input: String,
    pub price: Price,
    /// it continues an assistant prefill (the chat input's `prefill`): the manifest's
    /// word, which a provider's `accepts_prefill` in the config may override
    pub accepts_prefill: bool,
    /// the canonical input preset the model's input follows (`chat`, …), or empty
    /// for an adapter's own schema: not in the WIT's `model`, the host knows it (the
    /// canonical definition of the slug, or the operator's declaration) and tells
    /// the adapter with every call (`model-ref.input`, `call-context.input`)
    pub input: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub default_base_url: String,
    pub allowed_hosts: Vec<String>,
    pub auth: AuthScheme,
    pub capabilities: Capabilities,
    pub models: Vec<Model>,
    /// the input presets the adapter serves for operator-declared models
    pub declared_inputs: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct FileGrant {
    pub file_id: String,
    pub url: String,
    pub content_type: String,
    pub bytes: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct CallContext {
    pub slug: String,
    pub provider_model: String,
    pub input: String,
    pub base_url: String,
    pub attempt_id: String,
    pub callback_url: Option<String>,
    pub files: Vec<FileGrant>,
    pub stream: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub state: String,
}

/// What a response answers: the submit (built from this canonical input) or a poll.
#[derive(Debug, Clone)]
pub enum Answered {
    Submit(String),
    Poll(Job),
}

#[derive(Debug, Clone)]
pub struct Pending {
    pub job: Job,
    pub poll_after_ms: u32,
}

#[derive(Debug, Clone)]
pub enum AssetSource {
    Url(String),
    Inline(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Asset {
    pub source: AssetSource,
    pub modality: Modality,
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub text: Option<String>,
    pub assets: Vec<Asset>,
    pub usage: Usage,
    pub finish_reason: Option<FinishReason>,
    pub tool_calls: Vec<ToolCall>,
}

impl Completion {
    /// Why a text answer stopped, as the canonical output reports it: what the
    /// adapter said, else `tool_calls` when the model called tools, else `stop`.
    pub fn finish_reason(&self) -> FinishReason {
        self.finish_reason.unwrap_or(if self.tool_calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        })
    }
}

/// Why a text model stopped; serialized as the canonical output's `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl ToolCall {
    /// The call as the canonical text output carries it (OpenAI's shape):
    /// `{"id", "type": "function", "function": {"name", "arguments"}}`.
    pub fn canonical(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }
}

/// A fragment of a streamed tool call (see the WIT's `tool-call-delta`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// What one streamed event adds to the answer (see the WIT's `stream-delta`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDelta {
    pub text: String,
    pub tool_calls: Vec<ToolCallDelta>,
    pub finish_reason: Option<FinishReason>,
}

/// An adapter's classification of a failure, its code one of the 12.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: Code,
    pub message: String,
    pub retryable: bool,
    pub retry_after_ms: Option<u32>,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Completed(Completion),
    Pending(Pending),
    Failed(Failure),
}

#[derive(Debug, Clone)]
pub enum StreamEvent {
    Delta(StreamDelta),
    Done(Completion),
    Failed(Failure),
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackVerdict {
    PollNow,
    KeepWaiting,
}

// From the guest.
