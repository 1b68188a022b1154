//! The fixture file format: one recorded exchange and what the adapter must make of it.

use serde::Deserialize;
use serde_json::Value;

use crate::plugins::types::FinishReason;

/// One recorded exchange and what the adapter must make of it: the request it must
/// build (`request`), how it must classify the provider's answer (`response` and
/// `expect`), or both. Which call the exchange is follows from `job`: without it the
/// exchange is the submit of `input`, with it a poll of that job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub name: String,
    pub model: String,
    /// the canonical input the submit carries (defaults to the model's example
    /// input); only for a submit, so never with `job`
    #[serde(default)]
    pub input: Option<Value>,
    /// the provider job being polled, if the exchange is a poll
    #[serde(default)]
    pub job: Option<FixtureJob>,
    /// what `build-submit` (or, with `job`, `build-poll`) must send
    #[serde(default)]
    pub request: Option<ExpectRequest>,
    /// the provider's answer, handed to `parse-response`
    #[serde(default)]
    pub response: Option<FixtureResponse>,
    /// what `parse-response` must make of `response`
    #[serde(default)]
    pub expect: Option<Expect>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureJob {
    pub id: String,
    #[serde(default)]
    pub state: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureResponse {
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// a JSON value (sent as its text) or a string (sent as is)
    pub body: Value,
}

/// The request an adapter must build; each field given is compared, those left out
/// are not.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRequest {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE` (any case)
    #[serde(default)]
    pub method: Option<String>,
    /// the whole URL, compared exactly
    #[serde(default)]
    pub url: Option<String>,
    /// headers the request must carry among others: names in any case, values exact
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// the JSON body, matched by [`body_mismatches`]' rule; a string also matches a
    /// body that is not JSON and is exactly that text
    #[serde(default)]
    pub body: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `completed`, `pending` or `failed`
    pub outcome: String,
    /// for `failed`: the normalized code, e.g. `RATE_LIMITED`
    #[serde(default)]
    pub code: Option<String>,
    /// for `failed`: whether it must be retryable
    #[serde(default)]
    pub retryable: Option<bool>,
    /// for `failed`: the wait the adapter read off the response, in milliseconds
    #[serde(default)]
    pub retry_after_ms: Option<u32>,
    /// for `completed`: the text output
    #[serde(default)]
    pub text: Option<String>,
    /// for `completed`: how many assets
    #[serde(default)]
    pub assets: Option<usize>,
    /// for `completed`: why a text model stopped, as the canonical output says it
    /// (`stop`, `length`, `tool_calls`, `content_filter`)
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
    /// for `completed`: the tool calls, exactly, in the canonical output's shape
    /// (`[{"id", "type": "function", "function": {"name", "arguments"}}]`; `[]` for
    /// none)
    #[serde(default)]
    pub tool_calls: Option<Vec<Value>>,
}
