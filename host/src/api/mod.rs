//! HTTP API: thin handlers that parse, authorize, call a service and render.

mod admin;
mod executions;
mod fields;
mod files;
mod keys;
mod models;
mod webhooks;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::App;
use crate::auth::{self, Caller, Scope};
use crate::error::{ApiError, Code, Detail, DetailCode, quote};
use crate::ids::new_short_id;
use crate::ratelimit::Decision;

/// Largest JSON body accepted by any endpoint.
pub const MAX_JSON_BODY: usize = 1024 * 1024;
/// Largest plugin an operator may install.
pub const MAX_PLUGIN_BYTES: usize = 50 * 1024 * 1024;

pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route(
            "/executions",
            post(executions::create).get(executions::list),
        )
        .route("/executions/{id}", get(executions::get))
        .route("/executions/{id}/result", get(executions::result))
        .route("/executions/{id}/cancel", post(executions::cancel))
        .route("/ledger", get(executions::ledger))
        .route("/api-keys", post(keys::create).get(keys::list))
        .route("/api-keys/{id}", axum::routing::delete(keys::revoke))
        .route("/api-keys/{id}/rotate", post(keys::rotate))
        .route("/files", get(files::list))
        .route("/files/upload", post(files::create_upload))
        .route("/files/confirm", post(files::confirm))
        .route("/files/{id}", get(files::get).delete(files::delete))
        .route("/files/{id}/download", get(files::download))
        .route("/files/{id}/url", get(files::url))
        .route(
            "/webhooks/endpoints",
            post(webhooks::create).get(webhooks::list),
        )
        .route(
            "/webhooks/endpoints/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/webhooks/endpoints/{id}/test", post(webhooks::test))
        .route("/webhooks/default-secret", get(webhooks::default_secret))
        .route("/models", get(models::list))
        .route("/models/{slug}", get(models::get))
        .route("/balance", get(executions::balance))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        // Providers, not clients, call this one: no API key, no client rate limit
        // (the gate lets it through; its URL carries its own token).
        .route(
            "/provider-webhooks/{provider}/{token}",
            post(executions::provider_callback).layer(DefaultBodyLimit::max(MAX_JSON_BODY)),
        );
    let admin = Router::new()
        .route("/organizations", post(admin::create_organization))
        .route(
            "/organizations/{id}",
            axum::routing::patch(admin::update_organization),
        )
        .route("/organizations/{id}/credit", post(admin::credit))
        .route("/plugins", get(admin::plugins))
        .route("/ledger/verify", get(admin::verify_ledger))
        .route("/executions/{id}", get(admin::execution))
        .route("/files/{id}/audit", get(admin::file_audit))
        .route("/clock/advance", post(admin::advance_clock))
        .route(
            "/plugins/{name}",
            axum::routing::put(admin::install_plugin)
                .layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES)),
        )
        .route("/plugins/{name}/rollback", post(admin::rollback_plugin))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY));
    // Signed URLs carry their own authorization (no API key, no key rate limit).
    let signed = Router::new()
        .route(
            "/upload/{id}",
            axum::routing::put(files::receive_upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/download/{id}", get(files::signed_download))
        .route("/grant/{id}", get(files::grant));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .nest("/files", signed)
        .nest("/v1", v1)
        .nest("/admin/v1", admin)
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(Code::NotFound, "This endpoint does not accept that method.")
        })
        .layer(middleware::from_fn_with_state(app.clone(), gate))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| ApiError::internal().into_response(),
        ))
        .layer(middleware::from_fn(request_id))
        .with_state(app)
}

/// Gives every response an `X-Request-Id` and renders any [`ApiError`] into the
/// contract's envelope with that same id. An error answered by the HTTP framework
/// rather than by a handler (an extractor's plain-text rejection, say a path
/// segment that is not UTF-8) is put in the envelope too.
async fn request_id(request: Request, next: Next) -> Response {
    let id = new_short_id("req");
    let mut response = next.run(request).await;
    let error = match response.extensions_mut().remove::<ApiError>() {
        Some(error) => Some(error),
        None if is_bare_error(&response) => {
            let error = bare_error(&mut response).await;
            *response.status_mut() = error.code.status();
            Some(error)
        }
        None => None,
    };
    if let Some(error) = error {
        let mut body = json!({
            "code": error.code,
            "message": error.message,
            "retryable": error.code.retryable(),
            "request_id": id,
        });
        if !error.details.is_empty() {
            body["details"] = json!(error.details);
        }
        if let Some(status) = error.status {
            body["status"] = json!(status);
        }
        *response.body_mut() = Body::from(json!({ "error": body }).to_string());
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

/// Where the gate looks for a credential.
#[derive(Clone, Copy)]
enum Guarded {
    /// `/v1`: an API key
    Api,
    /// `/admin/v1`: the operator token
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
        } else if under("/v1") {
            Some(Guarded::Api)
        } else if under("/admin/v1") {
            Some(Guarded::Admin)
        } else {
            None
        }
    }
}

/// Authenticates and rate limits every `/v1` and `/admin/v1` request before it is
/// routed, so that neither an unknown path nor an unknown method is a way around
/// them. A valid API key is counted in its own bucket, and its [`Caller`] goes on
/// to the handler. A request without a valid credential is counted against its
/// client address; an address that has used up that budget is refused before its
/// credential is looked at, valid or not, so guessing is slowed by address.
async fn gate(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let Some(guarded) = Guarded::of(request.uri().path()) else {
        return next.run(request).await;
    };
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    if let Some(refused) = app.limits.address_refused(address) {
        let message = "Too many failed authentications from this address; try again later.";
        return with_rate_headers(too_many(refused, message), refused);
    }
    match guarded {
        Guarded::Api => {
            let caller = match bearer(request.headers()) {
                Some(secret) => {
                    let now = crate::clock::now();
                    match app.store.read(|txn| auth::authenticate(txn, secret, now)) {
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
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, credential) = value.to_str().ok()?.split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

/// Requires `scope` of the caller.
fn require(caller: &Caller, scope: Scope) -> Result<(), ApiError> {
    if caller.has(scope) {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::Forbidden,
            Code::Forbidden.client_message(),
        ))
    }
}

/// A JSON object body sent as `application/json`; every failure to read one is an
/// error in the envelope. An object that names a key twice is refused: which of the
/// two a parser keeps is not something a client should have to guess.
pub struct JsonObject(pub serde_json::Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .is_some_and(|essence| {
                essence == "application/json"
                    || (essence.starts_with("application/") && essence.ends_with("+json"))
            });
        if !json {
            return Err(ApiError::invalid(
                "Content-Type",
                DetailCode::InvalidValue,
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| body_refused(rejection, MAX_JSON_BODY))?;
        if bytes.is_empty() {
            return Err(ApiError::invalid(
                "body",
                DetailCode::Required,
                "a JSON object body is required",
            ));
        }
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => {
                serde_json::from_slice::<UniqueKeys>(&bytes).map_err(|error| {
                    ApiError::invalid("body", DetailCode::InvalidValue, error.to_string())
                })?;
                Ok(JsonObject(map))
            }
            Ok(_) => Err(ApiError::invalid(
                "body",
                DetailCode::InvalidType,
                "the body must be a JSON object",
            )),
            Err(error) => Err(ApiError::invalid(
                "body",
                DetailCode::InvalidType,
                format!("malformed JSON: {error}"),
            )),
        }
    }
}

/// A body that could not be read, in the envelope; `limit` is the route's.
pub fn body_refused(rejection: axum::extract::rejection::BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            Code::PayloadTooLarge,
            format!("this endpoint takes bodies of at most {limit} bytes"),
        )
    } else {
        ApiError::invalid("body", DetailCode::InvalidValue, rejection.body_text())
    }
}

/// Reads a JSON document only to refuse an object that names a key twice.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<UniqueKeys>()?;
            if !keys.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "the key {} appears twice in one object",
                    quote(&key)
                )));
            }
        }
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
}

/// A `details` entry for every field of `body` not in `known`.
pub fn unknown_fields(body: &serde_json::Map<String, Value>, known: &[&str]) -> Vec<Detail> {
    body.keys()
        .filter(|field| !known.contains(&field.as_str()))
        .map(|field| {
            Detail::new(
                field,
                DetailCode::UnknownField,
                format!("unknown field {}", quote(field)),
            )
        })
        .collect()
}

/// Refuses a body with fields outside `known`.
pub fn known_fields(body: &serde_json::Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    let details = unknown_fields(body, known);
    if details.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(details))
    }
}

/// The query parameters of a list request, each at most once: which of two
/// values wins is not something a client should have to guess.
pub struct ListQuery(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(pairs) =
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).map_err(
                |rejection| {
                    ApiError::invalid("query", DetailCode::InvalidValue, rejection.body_text())
                },
            )?;
        let mut query = HashMap::new();
        for (name, value) in pairs {
            if query.contains_key(&name) {
                return Err(ApiError::invalid(
                    &name,
                    DetailCode::InvalidValue,
                    format!("the query parameter {name} is given more than once"),
                ));
            }
            query.insert(name, value);
        }
        Ok(ListQuery(query))
    }
}

/// `limit` (1–100, default 20) and `starting_after` of a list request.
pub struct Page {
    pub limit: usize,
    pub starting_after: Option<String>,
}

impl Page {
    /// Reads the page from `query`, which may also hold the list's `filters`; any
    /// other parameter is refused rather than ignored (a misspelt filter would
    /// otherwise answer everything).
    pub fn from_query(query: &HashMap<String, String>, filters: &[&str]) -> Result<Page, ApiError> {
        let mut details: Vec<Detail> = query
            .keys()
            .filter(|name| !["limit", "starting_after"].contains(&name.as_str()))
            .filter(|name| !filters.contains(&name.as_str()))
            .map(|name| {
                Detail::new(
                    name,
                    DetailCode::UnknownField,
                    format!("unknown query parameter {name}"),
                )
            })
            .collect();
        let limit = match query.get("limit").map(|text| text.parse::<i64>()) {
            None => 20,
            Some(Ok(limit @ 1..=100)) => limit as usize,
            Some(Ok(_)) => {
                details.push(Detail::new(
                    "limit",
                    DetailCode::OutOfRange,
                    "limit must be between 1 and 100",
                ));
                20
            }
            Some(Err(_)) => {
                details.push(Detail::new(
                    "limit",
                    DetailCode::InvalidType,
                    "limit must be an integer",
                ));
                20
            }
        };
        if !details.is_empty() {
            return Err(ApiError::validation(details));
        }
        Ok(Page {
            limit,
            starting_after: query.get("starting_after").cloned(),
        })
    }

    /// This page of a short list held whole, in its order; `id` names an item as
    /// `starting_after` does.
    pub fn of<T>(
        &self,
        items: Vec<T>,
        id: impl Fn(&T) -> &str,
    ) -> Result<(Vec<T>, bool), ApiError> {
        let start = match &self.starting_after {
            None => 0,
            Some(after) => {
                items
                    .iter()
                    .position(|item| id(item) == after)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "starting_after",
                            DetailCode::InvalidValue,
                            format!("{} is not in this list", quote(after)),
                        )
                    })?
                    + 1
            }
        };
        let mut page: Vec<T> = items.into_iter().skip(start).collect();
        let has_more = page.len() > self.limit;
        page.truncate(self.limit);
        Ok((page, has_more))
    }
}

/// `{"data": [...], "has_more": bool}`
pub fn list_body(data: Vec<Value>, has_more: bool) -> Json<Value> {
    Json(json!({ "data": data, "has_more": has_more }))
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
        assert_eq!(gated("/files/upload/file_x"), None);
        assert_eq!(gated("/healthz"), None);
    }
}
