//! The gate every `/v1`, `/openai/v1` and `/admin/v1` request passes before routing:
//! authentication and rate limits, and the caller it resolves for handlers.

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::App;
use crate::auth::{self, Caller};
use crate::error::{ApiError, Code};
use crate::metrics::{Refusal, metrics};
use crate::ratelimit::Decision;

/// Where the gate looks for a credential.
#[derive(Clone, Copy)]
enum Guarded {
    /// `/v1` and `/openai/v1`: an API key
    Api,
    /// `/admin/v1` and `/metrics`: the operator token
    Admin,
}

impl Guarded {
    fn of(path: &str) -> Option<Guarded> {
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if under("/v1/provider-webhooks") {
            // Providers call back without an API key; the URL carries its own token.
            None
        } else if under("/v1") || under("/openai/v1") {
            Some(Guarded::Api)
        } else if under("/admin/v1") || path == "/metrics" {
            Some(Guarded::Admin)
        } else {
            None
        }
    }
}

/// The credential the gate asks of `path`, by its security scheme's name in the
/// API document.
pub(super) fn credential_of(path: &str) -> Option<&'static str> {
    Guarded::of(path).map(|guarded| match guarded {
        Guarded::Api => "api_key",
        Guarded::Admin => "operator_token",
    })
}

/// Authenticates and rate limits every `/v1` and `/admin/v1` request before it is
/// routed, so that neither an unknown path nor an unknown method is a way around
/// them. A valid API key is counted in its own bucket, and its [`Caller`] goes on
/// to the handler. A request without a valid credential is counted against its
/// client address; an address that has used up that budget is refused before its
/// credential is looked at, valid or not, so guessing is slowed by address.
pub(super) async fn gate(
    State(app): State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(guarded) = Guarded::of(request.uri().path()) else {
        return next.run(request).await;
    };
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    if let Some(refused) = app.limits.address_refused(address) {
        metrics().rate_limited(Refusal::Address);
        let message = "Too many failed authentications from this address; try again later.";
        return with_rate_headers(too_many(refused, message), refused);
    }
    match guarded {
        Guarded::Api => {
            let caller = match bearer(request.headers()) {
                Some(secret) => {
                    let now = crate::clock::now();
                    match app
                        .store
                        .read_latest(|txn| auth::authenticate(txn, secret, now))
                    {
                        Ok(caller) => caller,
                        Err(error) => return ApiError::from(error).into_response(),
                    }
                }
                None => None,
            };
            let Some(caller) = caller else {
                return failed_authentication(&app, address, Code::Unauthorized.client_message());
            };
            let decision = app.limits.check_key(&caller.key_id);
            let response = if decision.retry_after.is_some() {
                metrics().rate_limited(Refusal::Key);
                too_many(decision, "Too many requests for this API key.")
            } else {
                request.extensions_mut().insert(caller);
                next.run(request).await
            };
            with_rate_headers(response, decision)
        }
        Guarded::Admin => {
            let operator =
                bearer(request.headers()).is_some_and(|token| app.operator_token.matches(token));
            if !operator {
                return failed_authentication(&app, address, "Missing or invalid operator token.");
            }
            next.run(request).await
        }
    }
}

/// `401` for a request without a valid credential, counted against its address
/// (`429` once the address has used up its budget).
fn failed_authentication(app: &App, address: IpAddr, message: &str) -> Response {
    let decision = app.limits.record_failure(address);
    let response = if decision.retry_after.is_some() {
        metrics().rate_limited(Refusal::Address);
        too_many(
            decision,
            "Too many failed authentications from this address; try again later.",
        )
    } else {
        ApiError::new(Code::Unauthorized, message).into_response()
    };
    with_rate_headers(response, decision)
}

/// `429 RATE_LIMITED` with `Retry-After` (whole seconds, at least one).
fn too_many(decision: Decision, message: &str) -> Response {
    let wait = decision.retry_after.unwrap_or_default();
    ApiError::new(Code::RateLimited, message)
        .with_header(
            "retry-after",
            wait.as_secs_f64().ceil().max(1.0).to_string(),
        )
        .into_response()
}

/// The `X-RateLimit-*` headers: the state of the bucket the request was counted in.
fn with_rate_headers(mut response: Response, decision: Decision) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-ratelimit-limit", decision.limit.to_string()),
        ("x-ratelimit-remaining", decision.remaining.to_string()),
        ("x-ratelimit-reset", decision.reset.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

/// The authenticated caller of a `/v1` request, as the gate resolved it.
impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<App>) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::new(Code::Unauthorized, Code::Unauthorized.client_message()))
    }
}

/// The credential of the one `Authorization: Bearer` header (the scheme is
/// case-insensitive); `None` when there is none, more than one, or an empty one
/// (HTTP/2 carries `Bearer ` with its trailing space as it is).
pub(super) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, credential) = value.to_str().ok()?.split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        for value in values {
            headers.append(header::AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn an_empty_bearer_credential_is_no_credential() {
        for empty in ["Bearer ", "Bearer    ", "bearer \t", "Bearer", ""] {
            assert_eq!(bearer(&headers(&[empty])), None, "{empty:?}");
        }
        assert_eq!(bearer(&headers(&["Bearer  sk_x "])), Some("sk_x"));
        assert_eq!(bearer(&headers(&["Basic sk_x"])), None);
        assert_eq!(bearer(&headers(&["Bearer a", "Bearer a"])), None);
    }

    #[test]
    fn only_v1_and_admin_paths_are_gated_and_provider_callbacks_are_not() {
        let gated = |path| Guarded::of(path).map(|g| matches!(g, Guarded::Api));
        assert_eq!(gated("/v1"), Some(true));
        assert_eq!(gated("/v1/nothing/at/all"), Some(true));
        assert_eq!(gated("/admin/v1/x"), Some(false));
        assert_eq!(gated("/v1/provider-webhooks/p/t"), None);
        assert_eq!(gated("/v1x"), None);
        assert_eq!(gated("/openai/v1/chat/completions"), Some(true));
        assert_eq!(gated("/openai/v1"), Some(true));
        assert_eq!(gated("/openai/v1x"), None);
        assert_eq!(gated("/files/upload/file_x"), None);
        assert_eq!(gated("/healthz"), None);
        // The operator's scrape takes the operator token; nothing below it exists.
        assert_eq!(gated("/metrics"), Some(false));
        assert_eq!(gated("/metrics/x"), None);
    }
}
