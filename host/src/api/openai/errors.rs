//! The door's errors in OpenAI's shape: the one mapping from the platform's
//! [`ApiError`] (already one of the contract's codes) to OpenAI's error families.
//! The request-id middleware calls [`envelope`] for every error on `/openai/v1`
//! (handlers', the gate's `401` and `429`, unknown routes, malformed JSON, `413`),
//! and a stream's in-band error event uses the same body.

use serde_json::{Value, json};

use crate::api::openapi::{OpenAiErrorEnvelope, OpenAiErrorObject};
use crate::error::{ApiError, Code};

/// OpenAI's `type` for a contract code (SPEC §12).
pub fn family(code: Code) -> &'static str {
    use Code::*;
    match code {
        InputValidationError
        | ContentModerationRejected
        | FileNotFound
        | FileFormatUnsupported
        | Conflict
        | PayloadTooLarge => "invalid_request_error",
        Unauthorized => "authentication_error",
        Forbidden => "permission_error",
        NotFound => "not_found_error",
        InsufficientBalance => "insufficient_quota",
        RateLimited => "rate_limit_error",
        ModelOverloaded | ModelUnavailable | GenerationTimeout | GenerationFailed
        | ServiceUnavailable | InternalError => "api_error",
    }
}

/// `{"error": {message, type, param, code, retryable, request_id}}` for `error`, and
/// whether a client may retry it (the `x-should-retry` header OpenAI's SDKs read).
pub fn envelope(error: &ApiError, request_id: &str) -> (Value, bool) {
    let retryable = error.code.retryable();
    let first = error.details.first();
    let param = first.and_then(|detail| param(&detail.field));
    // A message that starts with the native field names the request's parameter.
    let message = match (first, &param) {
        (Some(detail), Some(param)) if error.message.starts_with(&detail.field) => {
            format!("{param}{}", &error.message[detail.field.len()..])
        }
        _ => error.message.clone(),
    };
    let body = OpenAiErrorEnvelope {
        error: OpenAiErrorObject {
            message: &message,
            kind: family(error.code),
            param: param.as_deref(),
            code: error.code,
            retryable,
            request_id,
        },
    };
    (json!(body), retryable)
}

/// The OpenAI parameter a native detail's field names: the canonical input's
/// fields are the request's own (`input.messages.0.role` → `messages[0].role`);
/// headers and the body as a whole name no parameter.
pub fn param(field: &str) -> Option<String> {
    if matches!(
        field,
        "body" | "request" | "Content-Type" | "Idempotency-Key"
    ) {
        return None;
    }
    let field = field.strip_prefix("input.").unwrap_or(field);
    let mut param = String::new();
    for segment in field.split('.') {
        if !param.is_empty() && !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            param.push_str(&format!("[{segment}]"));
        } else {
            if !param.is_empty() {
                param.push('.');
            }
            param.push_str(segment);
        }
    }
    Some(param)
}

/// `error` with its details' fields renamed where the door's parameter differs from
/// the canonical input's (`max_completion_tokens` for `max_tokens`, `size` for
/// `width` and `height`), so that `param` names what the client sent.
pub fn renamed(mut error: ApiError, renames: &[(&str, &str)]) -> ApiError {
    for detail in &mut error.details {
        for (canonical, sent) in renames {
            let canonical = format!("input.{canonical}");
            if detail.field == canonical || detail.field.starts_with(&format!("{canonical}.")) {
                let field = format!("{sent}{}", &detail.field[canonical.len()..]);
                error.message = error.message.replacen(&detail.field, &field, 1);
                detail.field = field;
            }
        }
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DetailCode;

    #[test]
    fn native_fields_become_openai_params() {
        assert_eq!(
            param("input.messages.0.role").as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param("input.messages.12.content.0.text").as_deref(),
            Some("messages[12].content[0].text")
        );
        assert_eq!(param("model").as_deref(), Some("model"));
        assert_eq!(param("input.max_tokens").as_deref(), Some("max_tokens"));
        assert_eq!(param("body"), None);
        assert_eq!(param("Idempotency-Key"), None);
    }

    #[test]
    fn every_code_has_its_family_and_the_envelope_its_fields() {
        for (code, family_name) in [
            (Code::InputValidationError, "invalid_request_error"),
            (Code::Unauthorized, "authentication_error"),
            (Code::Forbidden, "permission_error"),
            (Code::NotFound, "not_found_error"),
            (Code::InsufficientBalance, "insufficient_quota"),
            (Code::RateLimited, "rate_limit_error"),
            (Code::GenerationTimeout, "api_error"),
            (Code::InternalError, "api_error"),
        ] {
            assert_eq!(family(code), family_name, "{code}");
        }
        let error = ApiError::invalid("input.messages.0.role", DetailCode::InvalidValue, "bad");
        let (body, retry) = envelope(&error, "req_1");
        assert!(!retry);
        assert_eq!(body["error"]["param"], "messages[0].role");
        assert_eq!(body["error"]["message"], "messages[0].role: bad");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "INPUT_VALIDATION_ERROR");
        assert_eq!(body["error"]["request_id"], "req_1");
        let (body, retry) = envelope(&ApiError::new(Code::RateLimited, "slow down"), "req_2");
        assert!(retry);
        assert_eq!(body["error"]["param"], Value::Null);
    }

    #[test]
    fn renamed_details_name_what_the_client_sent() {
        let error = ApiError::invalid("input.width", DetailCode::OutOfRange, "too wide");
        let error = renamed(error, &[("width", "size"), ("height", "size")]);
        assert_eq!(error.details[0].field, "size");
        let error = ApiError::invalid("input.max_tokens", DetailCode::OutOfRange, "too many");
        let error = renamed(error, &[("max_tokens", "max_completion_tokens")]);
        assert_eq!(error.details[0].field, "max_completion_tokens");
        let error = ApiError::invalid("input.max_tokens_x", DetailCode::OutOfRange, "x");
        let error = renamed(error, &[("max_tokens", "max_completion_tokens")]);
        assert_eq!(error.details[0].field, "input.max_tokens_x");
    }
}
