//! The error envelope: every response gets an `X-Request-Id`, and every error,
//! a handler's or the framework's, the contract's `{"error": …}` with that id.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::openapi::{ErrorEnvelope, ErrorObject};
use crate::error::{ApiError, Code, DetailCode};
use crate::ids::new_short_id;

/// A request path as logs may show it: a provider callback's token (its path's
/// last segment, a capability) is left out.
fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    const CALLBACKS: &str = "/v1/provider-webhooks/";
    match path
        .strip_prefix(CALLBACKS)
        .and_then(|rest| rest.split_once('/'))
    {
        Some((provider, _token)) => format!("{CALLBACKS}{provider}/…").into(),
        None => path.into(),
    }
}

/// Gives every response an `X-Request-Id` and renders any [`ApiError`] into the
/// contract's envelope with that same id. An error answered by the HTTP framework
/// rather than by a handler (an extractor's plain-text rejection, say a path
/// segment that is not UTF-8) is put in the envelope too.
pub(super) async fn request_id(mut request: Request, next: Next) -> Response {
    let id = new_short_id("req");
    request
        .extensions_mut()
        .insert(super::openai::RequestId(id.clone()));
    // The OpenAI-compatible door answers its errors in OpenAI's shape.
    let openai = super::openai::serves(request.uri().path());
    // Every line the request's work logs carries its id.
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %loggable_path(request.uri().path()),
        execution_id = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let mut response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    // An access line, for operators who turn on debug logs (off by default: a line
    // per request costs more than the rest of a fast request).
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            latency_us = started.elapsed().as_micros() as u64,
            "request answered"
        );
    });
    let error = match response.extensions_mut().remove::<ApiError>() {
        Some(error) => Some(error),
        None if is_bare_error(&response) => {
            let error = bare_error(&mut response).await;
            *response.status_mut() = error.code.status();
            Some(error)
        }
        None => None,
    };
    if let Some(error) = error.as_ref().filter(|_| openai) {
        let (body, retry) = super::openai::errors::envelope(error, &id);
        *response.body_mut() = Body::from(body.to_string());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response.headers_mut().remove(header::CONTENT_LENGTH);
        response.headers_mut().insert(
            "x-should-retry",
            HeaderValue::from_static(if retry { "true" } else { "false" }),
        );
    } else if let Some(error) = error {
        let body = ErrorEnvelope {
            error: ErrorObject {
                code: error.code,
                message: &error.message,
                retryable: error.code.retryable(),
                request_id: &id,
                details: (!error.details.is_empty()).then_some(error.details.as_slice()),
                status: error.status,
            },
        };
        *response.body_mut() = Body::from(serde_json::to_vec(&body).unwrap_or_default());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// An error status whose body is not JSON: not one of ours.
fn is_bare_error(response: &Response) -> bool {
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    (status.is_client_error() || status.is_server_error()) && !json
}

/// The envelope's error for a framework's error response, its text as the message
/// (never for a server error, whose text could tell internals).
async fn bare_error(response: &mut Response) -> ApiError {
    let status = response.status();
    let body = std::mem::take(response.body_mut());
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty());
    let code = match status {
        StatusCode::UNAUTHORIZED => Code::Unauthorized,
        StatusCode::FORBIDDEN => Code::Forbidden,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Code::NotFound,
        StatusCode::CONFLICT => Code::Conflict,
        StatusCode::PAYLOAD_TOO_LARGE => Code::PayloadTooLarge,
        StatusCode::TOO_MANY_REQUESTS => Code::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => Code::ServiceUnavailable,
        status if status.is_client_error() => Code::InputValidationError,
        _ => Code::InternalError,
    };
    match (code, text) {
        (Code::InputValidationError, text) => ApiError::invalid(
            "request",
            DetailCode::InvalidValue,
            text.unwrap_or_else(|| status.to_string()),
        ),
        (Code::InternalError | Code::ServiceUnavailable, _) | (_, None) => {
            ApiError::new(code, code.client_message())
        }
        (_, Some(text)) => ApiError::new(code, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_token_never_reaches_the_logs() {
        assert_eq!(
            loggable_path("/v1/provider-webhooks/replicate/exec_1.att_2.c2VjcmV0"),
            "/v1/provider-webhooks/replicate/…"
        );
        assert_eq!(
            loggable_path("/v1/executions/exec_1"),
            "/v1/executions/exec_1"
        );
    }
}
