//! The door's answers in OpenAI's shapes, rendered from these types (its requests
//! are in `api::openapi::requests`).

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// A finished chat execution as a `chat.completion`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion<'a> {
    /// the execution's id
    pub id: &'a str,
    /// always `chat.completion`
    pub object: &'static str,
    pub created: i64,
    /// the model that served (a fallback's, when it went on with one)
    pub model: &'a str,
    pub choices: Vec<Choice<'a>>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Choice<'a> {
    pub index: u32,
    pub message: AssistantMessage<'a>,
    /// always `null`
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    /// `stop`, `length`, `tool_calls` or `content_filter`
    pub finish_reason: &'a str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage<'a> {
    /// always `assistant`
    pub role: &'static str,
    /// `null` when the answer is only tool calls
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>, required = false, nullable = false)]
    pub tool_calls: Option<&'a Vec<Value>>,
}

/// Token counts, as the provider reported them (or estimated where it did not).
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// The images of a finished image execution.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImagesResponse {
    pub created: i64,
    pub data: Vec<Image>,
}

/// One image: a signed URL or its bytes in base64, as asked.
#[derive(Debug, Serialize, ToSchema)]
pub struct Image {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub b64_json: Option<String>,
}

/// A model the door can serve.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OpenAiModel)]
pub struct Model {
    /// the slug
    pub id: String,
    /// always `model`
    pub object: &'static str,
    /// when this server began serving the catalogue (unix seconds)
    pub created: i64,
    /// always `modelroute`
    pub owned_by: &'static str,
}

/// `GET /openai/v1/models`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OpenAiModelList)]
pub struct ModelList {
    /// always `list`
    pub object: &'static str,
    pub data: Vec<Model>,
}
