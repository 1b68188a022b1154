//! Conveniences on the contract's types: building requests, reading responses,
//! classifying HTTP failures, counting usage.

use crate::{
    Asset, AssetSource, CallContext, Completion, ErrorCode, Failure, FileGrant, FinishReason,
    HttpRequest, HttpResponse, Job, Method, Modality, Outcome, Pending, Price, StreamDelta,
    StreamEvent, Usage,
};
use serde_json::Value;

impl ErrorCode {
    /// Whether the code is retryable by default (the contract's table).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::ModelOverloaded
                | ErrorCode::ModelUnavailable
                | ErrorCode::GenerationTimeout
                | ErrorCode::GenerationFailed
                | ErrorCode::ServiceUnavailable
        )
    }
}

impl Failure {
    /// A failure whose retryability follows the code's default.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            retryable: code.is_retryable(),
            retry_after_ms: None,
        }
    }

    pub fn with_retry_after_ms(mut self, retry_after_ms: Option<u32>) -> Self {
        self.retry_after_ms = retry_after_ms;
        self
    }

    /// The usual reading of an HTTP error status. Provider-specific bodies (moderation
    /// flags, overload messages) should be checked before falling back to this.
    ///
    /// Authentication failures (401/403) are the operator's credentials, not the
    /// client's fault: they are `SERVICE_UNAVAILABLE` so the host fails over.
    pub fn from_status(response: &HttpResponse, message: impl Into<String>) -> Self {
        let code = match response.status {
            400 | 413 | 422 => ErrorCode::InputValidationError,
            401 | 403 => ErrorCode::ServiceUnavailable,
            404 | 410 => ErrorCode::ModelUnavailable,
            408 | 504 => ErrorCode::GenerationTimeout,
            429 => ErrorCode::RateLimited,
            503 | 529 => ErrorCode::ModelOverloaded,
            500..=599 => ErrorCode::ServiceUnavailable,
            _ => ErrorCode::GenerationFailed,
        };
        Failure::new(
            code,
            format!("HTTP {}: {}", response.status, message.into()),
        )
        .with_retry_after_ms(response.retry_after_ms())
    }
}

impl Outcome {
    pub fn failed(code: ErrorCode, message: impl Into<String>) -> Self {
        Outcome::Failed(Failure::new(code, message))
    }

    pub fn pending(id: impl Into<String>, state: impl Into<String>, poll_after_ms: u32) -> Self {
        Outcome::Pending(Pending {
            job: Job {
                id: id.into(),
                state: state.into(),
            },
            poll_after_ms,
        })
    }
}

impl HttpRequest {
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        HttpRequest {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout_ms: None,
        }
    }

    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::Get, url)
    }

    pub fn post_json(url: impl Into<String>, body: &Value) -> Self {
        Self::new(Method::Post, url).json(body)
    }

    /// Sets a JSON body and its content type.
    pub fn json(mut self, body: &Value) -> Self {
        self.body = Some(body.to_string().into_bytes());
        self.header("content-type", "application/json")
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn timeout_ms(mut self, timeout_ms: u32) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }
}

impl HttpResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Retry-After` in milliseconds, when given as seconds.
    pub fn retry_after_ms(&self) -> Option<u32> {
        let seconds: f64 = self.header("retry-after")?.trim().parse().ok()?;
        (seconds >= 0.0).then(|| (seconds * 1000.0).min(u32::MAX as f64) as u32)
    }

    /// The body as JSON. A body that is not JSON is a provider fault, so retryable.
    pub fn json(&self) -> Result<Value, Failure> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Failure::new(
                ErrorCode::GenerationFailed,
                format!("HTTP {}: body is not JSON: {e}", self.status),
            )
        })
    }

    /// The body as text, lossily, for error messages.
    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(500).collect()
    }
}

impl CallContext {
    /// `base_url` joined with `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url.trim_end_matches('/'), path)
    }

    /// The grant the host gave this attempt for `file_id`, if any.
    pub fn grant(&self, file_id: &str) -> Option<&FileGrant> {
        self.files.iter().find(|g| g.file_id == file_id)
    }

    /// The grant for `file_id`, which the input names in a file property (one marked
    /// with [`crate::canonical::FILE_TYPES_KEYWORD`]). The host grants every file it accepted
    /// (and placeholders for a model's example input when it checks a plugin), so a
    /// missing grant means the file went away since: `FILE_NOT_FOUND`, not retryable.
    pub fn file_grant(&self, file_id: &str) -> Result<&FileGrant, Failure> {
        self.grant(file_id).ok_or_else(|| {
            Failure::new(
                ErrorCode::FileNotFound,
                format!("no grant for input file {file_id:?}"),
            )
        })
    }

    /// Replaces every string in `input` that is a granted `file_…` id by its grant URL.
    pub fn resolve_files(&self, input: &mut Value) {
        match input {
            Value::String(s) => {
                if let Some(grant) = self.files.iter().find(|g| g.file_id == *s) {
                    *s = grant.url.clone();
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.resolve_files(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.resolve_files(v)),
            _ => {}
        }
    }
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            requests: 1,
            images: 0,
            megapixels_milli: 0,
            seconds_milli: 0,
            input_tokens: 0,
            output_tokens: 0,
        }
    }
}

impl Usage {
    /// `count` images of `width`×`height` pixels.
    pub fn images(count: u32, width: u64, height: u64) -> Self {
        Usage {
            images: count,
            megapixels_milli: count as u64 * width * height / 1000,
            ..Usage::default()
        }
    }

    pub fn seconds(seconds: f64) -> Self {
        Usage {
            seconds_milli: (seconds * 1000.0).max(0.0) as u64,
            ..Usage::default()
        }
    }

    pub fn tokens(input_tokens: u64, output_tokens: u64) -> Self {
        Usage {
            input_tokens,
            output_tokens,
            ..Usage::default()
        }
    }
}

impl Price {
    /// A price of `micros` micro-dollars per image and nothing else.
    pub const fn per_image(micros: u64) -> Price {
        Price {
            per_request: 0,
            per_image: micros,
            per_megapixel: 0,
            per_second: 0,
            per_million_input_tokens: 0,
            per_million_output_tokens: 0,
        }
    }
}

// A derive is impossible here: the type is generated by wit-bindgen.
#[allow(clippy::derivable_impls)]
impl Default for Price {
    fn default() -> Self {
        Price {
            per_request: 0,
            per_image: 0,
            per_megapixel: 0,
            per_second: 0,
            per_million_input_tokens: 0,
            per_million_output_tokens: 0,
        }
    }
}

impl Completion {
    /// Assets at `urls`, to be fetched and stored by the host.
    pub fn assets(
        modality: Modality,
        urls: impl IntoIterator<Item = String>,
        usage: Usage,
    ) -> Self {
        Completion {
            text: None,
            assets: urls
                .into_iter()
                .map(|url| Asset {
                    source: AssetSource::Url(url),
                    modality,
                    duration_ms: None,
                })
                .collect(),
            usage,
            finish_reason: None,
            tool_calls: Vec::new(),
        }
    }

    /// A text answer. Set `finish_reason` (and `tool_calls`) when the provider says
    /// why it stopped; left `None`, the host reports `stop`.
    pub fn text(text: impl Into<String>, usage: Usage) -> Self {
        Completion {
            text: Some(text.into()),
            assets: Vec::new(),
            usage,
            finish_reason: None,
            tool_calls: Vec::new(),
        }
    }

    /// The completion with why the model stopped, when the provider said.
    pub fn with_finish_reason(mut self, finish_reason: Option<FinishReason>) -> Self {
        self.finish_reason = finish_reason;
        self
    }
}

impl StreamEvent {
    /// A piece of streamed text, and nothing else.
    pub fn text(text: impl Into<String>) -> Self {
        StreamEvent::Delta(StreamDelta {
            text: text.into(),
            tool_calls: Vec::new(),
            finish_reason: None,
        })
    }
}

/// Rough token count of a text (four characters a token), for estimates.
pub fn approx_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}
