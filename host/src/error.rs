//! The one place where failures become the contract's error codes (SPEC §5).
//!
//! Every module reports failures in its own terms; handlers convert them into an
//! [`ApiError`], which carries a [`Code`]. The request-id middleware renders the
//! envelope, so every error of every endpoint has the same shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Every code a client can see: the 12 normalized codes plus the API-level ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    InputValidationError,
    ContentModerationRejected,
    FileNotFound,
    FileFormatUnsupported,
    InsufficientBalance,
    RateLimited,
    ModelOverloaded,
    ModelUnavailable,
    GenerationTimeout,
    GenerationFailed,
    ServiceUnavailable,
    InternalError,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
}

impl Code {
    /// The name clients see, as serialized (`RATE_LIMITED`): also the one operators
    /// read in logs and attempt records, never the Rust name.
    pub fn as_str(self) -> &'static str {
        use Code::*;
        match self {
            InputValidationError => "INPUT_VALIDATION_ERROR",
            ContentModerationRejected => "CONTENT_MODERATION_REJECTED",
            FileNotFound => "FILE_NOT_FOUND",
            FileFormatUnsupported => "FILE_FORMAT_UNSUPPORTED",
            InsufficientBalance => "INSUFFICIENT_BALANCE",
            RateLimited => "RATE_LIMITED",
            ModelOverloaded => "MODEL_OVERLOADED",
            ModelUnavailable => "MODEL_UNAVAILABLE",
            GenerationTimeout => "GENERATION_TIMEOUT",
            GenerationFailed => "GENERATION_FAILED",
            ServiceUnavailable => "SERVICE_UNAVAILABLE",
            InternalError => "INTERNAL_ERROR",
            Unauthorized => "UNAUTHORIZED",
            Forbidden => "FORBIDDEN",
            NotFound => "NOT_FOUND",
            Conflict => "CONFLICT",
            PayloadTooLarge => "PAYLOAD_TOO_LARGE",
        }
    }

    pub fn status(self) -> StatusCode {
        use Code::*;
        match self {
            InputValidationError
            | ContentModerationRejected
            | FileNotFound
            | FileFormatUnsupported => StatusCode::BAD_REQUEST,
            InsufficientBalance => StatusCode::PAYMENT_REQUIRED,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ModelOverloaded | ModelUnavailable | ServiceUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GenerationTimeout => StatusCode::GATEWAY_TIMEOUT,
            GenerationFailed | InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            Conflict => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    pub fn retryable(self) -> bool {
        use Code::*;
        matches!(
            self,
            RateLimited
                | ModelOverloaded
                | ModelUnavailable
                | GenerationTimeout
                | GenerationFailed
                | ServiceUnavailable
        )
    }

    /// How much a failure tells the client, to choose one code for an execution whose
    /// attempts failed differently: what the provider itself said about the model or
    /// the input ranks above generic or platform-side conditions.
    pub fn informativeness(self) -> u8 {
        use Code::*;
        match self {
            InternalError => 0,
            ServiceUnavailable => 1,
            ModelUnavailable => 2,
            GenerationFailed => 3,
            RateLimited | ModelOverloaded | GenerationTimeout => 4,
            _ => 5,
        }
    }

    /// The message clients see for a provider-side failure. Provider messages stay in
    /// the operator's logs: they may name the provider or echo its URLs.
    pub fn client_message(self) -> &'static str {
        use Code::*;
        match self {
            InputValidationError => "The model rejected the input.",
            ContentModerationRejected => "The input or output was rejected by content moderation.",
            FileNotFound => "A file referenced by the input was not found.",
            FileFormatUnsupported => "A file referenced by the input has an unsupported format.",
            InsufficientBalance => "The balance does not cover this execution.",
            RateLimited => "The model is rate limited; try again later.",
            ModelOverloaded => "The model is overloaded; try again later.",
            ModelUnavailable => "The model is not available right now.",
            GenerationTimeout => "The generation did not finish in time.",
            GenerationFailed => "The generation failed.",
            ServiceUnavailable => "No provider could run the execution right now.",
            InternalError => "An internal error occurred.",
            Unauthorized => "Missing or invalid API key.",
            Forbidden => "The API key lacks the scope for this request.",
            NotFound => "Not found.",
            Conflict => "The request conflicts with the current state.",
            PayloadTooLarge => "The request body is too large.",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `details` for `INPUT_VALIDATION_ERROR`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Detail {
    pub field: String,
    pub code: DetailCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DetailCode {
    Required,
    OutOfRange,
    InvalidType,
    UnknownField,
    InvalidValue,
}

/// Longest `field` a detail names: a client-chosen key may be any length.
const MAX_FIELD_CHARS: usize = 200;
/// Longest message an error carries. Messages quote client values only through
/// [`quote`]; this bound keeps any other echo from growing an error past a few KiB.
const MAX_MESSAGE_CHARS: usize = 500;
/// How much of a client's value a message quotes.
const QUOTED_CHARS: usize = 40;

impl Detail {
    pub fn new(field: impl Into<String>, code: DetailCode, message: impl Into<String>) -> Self {
        Detail {
            field: shorten(field.into(), MAX_FIELD_CHARS),
            code,
            message: shorten(message.into(), MAX_MESSAGE_CHARS),
        }
    }
}

/// A client's value as a message quotes it: in quotes, at most a short prefix, and
/// its length when it was cut.
pub fn quote(value: &str) -> String {
    let length = value.chars().count();
    if length <= QUOTED_CHARS {
        format!("{value:?}")
    } else {
        let prefix: String = value.chars().take(QUOTED_CHARS).collect();
        format!("{prefix:?}… ({length} characters)")
    }
}

/// `text` cut to at most `max` characters (and an ellipsis).
fn shorten(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text,
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

/// A failure as a client sees it. Rendered by the API layer's `request_id` middleware into
/// `{"error": {code, message, retryable, request_id, details?}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub details: Vec<Detail>,
    /// the object's current status, for a `409` caused by it
    pub status: Option<&'static str>,
    /// extra headers (e.g. `Retry-After`)
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: shorten(message.into(), MAX_MESSAGE_CHARS),
            details: Vec::new(),
            status: None,
            headers: Vec::new(),
        }
    }

    /// `409 CONFLICT` because the object is in `status`, which the envelope also
    /// names in a `status` field for clients to act on.
    pub fn state_conflict(status: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: Some(status),
            ..Self::new(Code::Conflict, message)
        }
    }

    pub fn validation(details: Vec<Detail>) -> Self {
        let message = match details.as_slice() {
            [one] => format!(
                "{}: {}",
                shorten(one.field.clone(), QUOTED_CHARS),
                one.message
            ),
            _ => format!("{} fields are invalid", details.len()),
        };
        ApiError {
            details,
            ..ApiError::new(Code::InputValidationError, message)
        }
    }

    pub fn invalid(field: &str, code: DetailCode, message: impl Into<String>) -> Self {
        Self::validation(vec![Detail::new(field, code, message)])
    }

    pub fn not_found() -> Self {
        Self::new(Code::NotFound, Code::NotFound.client_message())
    }

    pub fn internal() -> Self {
        Self::new(Code::InternalError, Code::InternalError.client_message())
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// Unexpected failures (storage, bugs) are logged in full and shown as
/// `INTERNAL_ERROR` without detail.
impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        tracing::error!(error = format!("{error:#}"), "internal error");
        ApiError::internal()
    }
}

/// The rendered envelope lives in the response extensions until the request-id
/// middleware writes it, so that `request_id` always matches `X-Request-Id`.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.code.status().into_response();
        for (name, value) in &self.headers {
            if let Ok(value) = value.parse() {
                response.headers_mut().insert(*name, value);
            }
        }
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_normalized_code_has_the_contract_status_and_retryability() {
        let table = [
            (Code::InputValidationError, 400, false),
            (Code::ContentModerationRejected, 400, false),
            (Code::FileNotFound, 400, false),
            (Code::FileFormatUnsupported, 400, false),
            (Code::InsufficientBalance, 402, false),
            (Code::RateLimited, 429, true),
            (Code::ModelOverloaded, 503, true),
            (Code::ModelUnavailable, 503, true),
            (Code::GenerationTimeout, 504, true),
            (Code::GenerationFailed, 500, true),
            (Code::ServiceUnavailable, 503, true),
            (Code::InternalError, 500, false),
        ];
        for (code, status, retryable) in table {
            assert_eq!(code.status().as_u16(), status, "{code:?}");
            assert_eq!(code.retryable(), retryable, "{code:?}");
        }
    }

    /// Regression: a 900 KB prompt that failed validation answered a 1.8 MB error,
    /// the value echoed in the detail and again in the message.
    #[test]
    fn errors_quote_at_most_a_short_prefix_of_a_value() {
        let huge = "x".repeat(900_000);
        assert_eq!(quote("short"), "\"short\"");
        let quoted = quote(&huge);
        assert!(quoted.len() < 80, "{quoted}");
        assert!(quoted.ends_with("(900000 characters)"), "{quoted}");
        let error = ApiError::invalid(&huge, DetailCode::InvalidValue, huge.clone());
        let rendered = serde_json::to_string(&error.details).unwrap().len() + error.message.len();
        assert!(rendered < 2_000, "{rendered} bytes");
        assert_eq!(shorten("héllo".into(), 2), "hé…");
    }

    #[test]
    fn codes_serialize_in_screaming_snake_case() {
        assert_eq!(
            serde_json::to_string(&Code::ContentModerationRejected).unwrap(),
            "\"CONTENT_MODERATION_REJECTED\""
        );
    }

    /// Operators read codes in logs and attempt records by the names clients see.
    #[test]
    fn every_code_displays_as_its_serialized_name() {
        use Code::*;
        for code in [
            InputValidationError,
            ContentModerationRejected,
            FileNotFound,
            FileFormatUnsupported,
            InsufficientBalance,
            RateLimited,
            ModelOverloaded,
            ModelUnavailable,
            GenerationTimeout,
            GenerationFailed,
            ServiceUnavailable,
            InternalError,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.to_string());
            assert_eq!(code.as_str(), code.to_string());
        }
        assert_eq!(format!("{}", RateLimited), "RATE_LIMITED");
    }
}
