//! `/v1/executions` and `/v1/balance`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

use super::fields::Fields;
use super::lists::List;
use super::openapi::requests::{CreateExecution, ExecutionListParams, ListParams};
use super::openapi::{Errors, ExecutionErrors};
use super::{JsonObject, ListQuery, Page, list_body, require};
use crate::App;
use crate::auth::{Caller, Scope};
use crate::billing::{self, BalanceView, Entry};
use crate::error::{ApiError, DetailCode, quote};
use crate::executions::input::canonical_numbers;
use crate::executions::{
    AcceptedView, CreateRequest, Execution, ExecutionView, MAX_FALLBACK_MODELS, Mode, ResultView,
    Status, request_hash,
};

/// Longest a `SYNC` request may wait.
const MAX_WAIT_SECONDS: u64 = 300;
const DEFAULT_WAIT_SECONDS: u64 = 60;

/// Create an execution
///
/// Validates the input, places the hold and queues the execution. `ASYNC` answers
/// `202` at once; `SYNC` waits up to `wait_seconds` for the end (`200`, or `202` if
/// it is still running); `STREAMING` answers server-sent events: `execution`,
/// `status`, `delta`, `reset` and finally `done` with the execution object.
#[utoipa::path(
    post, operation_id = "createExecution", path = "/executions", tag = "executions",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1-255 printable ASCII characters; the same key and request answer the same execution for 24 hours")),
    request_body = CreateExecution,
    responses(
        (status = 202, description = "Accepted (and, for `SYNC`, still running)", body = AcceptedView),
        (status = 200, description = "`SYNC`: the finished execution; `STREAMING`: its events",
            content((ExecutionView = "application/json"), (String = "text/event-stream"))),
        ExecutionErrors,
    )
)]
pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Execution)?;
    let idempotency_key = idempotency_key(&headers)?;
    let (mut request, wait) = parse_create(&body)?;
    if let Some(url) = request.webhook_url.take() {
        let url =
            super::webhook_fields::checked_url(&app, &caller.org_id, "webhook_url", &json!(url))
                .await?;
        request.webhook_url = Some(url);
    }
    let idempotency = idempotency_key.map(|key| {
        (
            key,
            request_hash("POST", "/v1/executions", &canonical_create(body)),
        )
    });
    let created = app.executions.create(&caller, request, idempotency).await?;
    if let Some(events) = created.events {
        return Ok(
            super::execution_events::stream(app, caller.org_id, created.execution, events)
                .into_response(),
        );
    }
    let mut execution = created.execution;
    // A replay waits too: it is a client retrying a call that timed out.
    if execution.mode == Mode::Sync {
        execution = app
            .executions
            .wait_terminal(&caller.org_id, &execution.id, wait)
            .await?
            .unwrap_or(execution);
    }
    // SYNC answers the finished execution, and so does a replayed STREAMING
    // create, whose events have passed.
    let finished = execution.status.is_terminal()
        && match execution.mode {
            Mode::Sync => true,
            Mode::Streaming => created.replayed,
            Mode::Async => false,
        };
    let mut response = if finished {
        (StatusCode::OK, Json(execution.view())).into_response()
    } else {
        (StatusCode::ACCEPTED, Json(execution.accepted_view())).into_response()
    };
    if created.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `POST /v1/provider-webhooks/{provider}/{token}`: a provider's callback. Answers
/// `200` once verified (even when it arrives too late to matter), `404` otherwise.
#[utoipa::path(
    post, operation_id = "receiveProviderCallback", path = "/provider-webhooks/{provider}/{token}", tag = "providers",
    params(("provider" = String, Path), ("token" = String, Path, description = "the callback's capability, minted for one attempt")),
    request_body(content = Object, description = "the provider's own payload"),
    responses((status = 200, body = CallbackReceived), Errors)
)]
pub async fn provider_callback(
    State(app): State<Arc<App>>,
    Path((provider, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<CallbackReceived>, ApiError> {
    let body = body.map_err(|rejection| super::body_refused(rejection, super::MAX_JSON_BODY))?;
    let headers = headers
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    if app
        .dispatcher
        .provider_callback(&provider, &token, headers, body.to_vec())
        .await?
    {
        Ok(Json(CallbackReceived { received: true }))
    } else {
        Err(ApiError::not_found())
    }
}

/// The answer to a provider's verified callback.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackReceived {
    pub received: bool,
}

/// `Idempotency-Key`: 1–255 printable ASCII characters.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            DetailCode::InvalidValue,
            "send one Idempotency-Key header, not several",
        ));
    }
    let key = value.to_str().unwrap_or_default();
    let printable = key.bytes().all(|b| (0x20..0x7f).contains(&b));
    if key.is_empty() || key.len() > 255 || !printable || value.as_bytes().len() != key.len() {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            DetailCode::InvalidValue,
            "must be 1 to 255 printable ASCII characters",
        ));
    }
    Ok(Some(key.to_string()))
}

/// Reads `{model, input, webhook_url?, metadata?, mode?, wait_seconds?,
/// fallback_models?}`, reporting
/// every problem at once.
fn parse_create(body: &Map<String, Value>) -> Result<(CreateRequest, Duration), ApiError> {
    let mut fields = Fields::new(
        body,
        &[
            "model",
            "input",
            "webhook_url",
            "metadata",
            "mode",
            "wait_seconds",
            "fallback_models",
        ],
    );
    let model = fields.required_string("model");
    let input = match fields.present("input") {
        None => {
            fields.refuse("input", DetailCode::Required, "input is required");
            None
        }
        Some(_) => fields.object("input"),
    };
    let metadata = fields.object("metadata");
    if metadata.is_some_and(|map| {
        map.len() > 50 || serde_json::to_string(map).map_or(0, |text| text.len()) > 16 * 1024
    }) {
        fields.refuse(
            "metadata",
            DetailCode::OutOfRange,
            "metadata is limited to 50 keys and 16 KiB",
        );
    }
    let mode = match fields.choice("mode", &["ASYNC", "SYNC", "STREAMING"]) {
        Some("SYNC") => Mode::Sync,
        Some("STREAMING") => Mode::Streaming,
        _ => Mode::Async,
    };
    let wait = fields
        .integer("wait_seconds", 1..=MAX_WAIT_SECONDS)
        .unwrap_or(DEFAULT_WAIT_SECONDS);
    let fallback_models = fields.strings("fallback_models", MAX_FALLBACK_MODELS);
    let webhook_url = fields.string("webhook_url");
    if webhook_url.is_some_and(|url| {
        !url::Url::parse(url).is_ok_and(|parsed| matches!(parsed.scheme(), "https" | "http"))
    }) {
        fields.refuse(
            "webhook_url",
            DetailCode::InvalidValue,
            "webhook_url must be an http(s) URL",
        );
    }
    fields.finish()?;
    Ok((
        CreateRequest {
            model: model.unwrap_or_default().to_string(),
            input: Value::Object(input.cloned().unwrap_or_default()),
            metadata: Value::Object(metadata.cloned().unwrap_or_default()),
            mode,
            webhook_url: webhook_url.map(str::to_string),
            fallback_models: fallback_models
                .map(|models| models.into_iter().map(str::to_string).collect()),
        },
        Duration::from_secs(wait),
    ))
}

/// Get an execution
#[utoipa::path(
    get, operation_id = "getExecution", path = "/executions/{id}", tag = "executions",
    params(("id" = String, Path, description = "`exec_…`")),
    responses((status = 200, body = ExecutionView), Errors)
)]
pub async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Execution)?;
    let execution = app
        .executions
        .get(&caller.org_id, &id)?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(execution.view()).into_response())
}

/// Get a completed execution's output
///
/// `409` with the current `status` when the execution is not `COMPLETED`.
#[utoipa::path(
    get, operation_id = "getExecutionResult", path = "/executions/{id}/result", tag = "executions",
    params(("id" = String, Path, description = "`exec_…`")),
    responses((status = 200, body = ResultView), Errors)
)]
pub async fn result(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Execution)?;
    let execution = app
        .executions
        .get(&caller.org_id, &id)?
        .ok_or_else(ApiError::not_found)?;
    if execution.status != Status::Completed {
        let status = execution.status.as_str();
        return Err(ApiError::state_conflict(
            status,
            format!("the execution is {status}, not COMPLETED"),
        ));
    }
    Ok(Json(execution.result_view()).into_response())
}

/// Cancel an execution
///
/// From `PENDING`, `PROCESSING` or `AWAITING_WEBHOOK`: the hold is released. A
/// terminal execution is a `409` with its status; cancelling twice is harmless.
#[utoipa::path(
    post, operation_id = "cancelExecution", path = "/executions/{id}/cancel", tag = "executions",
    params(("id" = String, Path, description = "`exec_…`")),
    responses((status = 200, body = ExecutionView), Errors)
)]
pub async fn cancel(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Execution)?;
    match app.dispatcher.cancel(&caller.org_id, &id).await? {
        None => Err(ApiError::not_found()),
        Some(Ok(execution)) => Ok(Json(execution.view()).into_response()),
        Some(Err(status)) => {
            let status = status.as_str();
            Err(ApiError::state_conflict(
                status,
                format!("the execution is already {status}"),
            ))
        }
    }
}

/// A create body as the idempotency check compares it: explicit nulls and
/// `wait_seconds` dropped, defaults written out and the input's numbers canonical,
/// so `"mode": "ASYNC"` and no `mode`, or `256.0` and `256`, are the same request
/// (keys sort, so their order never matters).
fn canonical_create(mut body: serde_json::Map<String, Value>) -> Value {
    body.retain(|_, value| !value.is_null());
    // How long this call waits is not part of what the execution is.
    body.remove("wait_seconds");
    if let Some(input) = body.remove("input") {
        body.insert("input".into(), canonical_numbers(input));
    }
    body.entry("mode").or_insert_with(|| json!("ASYNC"));
    body.entry("metadata").or_insert_with(|| json!({}));
    Value::Object(body)
}

/// List the organization's ledger entries, oldest first
#[utoipa::path(
    get, operation_id = "listLedgerEntries", path = "/ledger", tag = "billing", params(ListParams),
    responses((status = 200, body = List<Entry>), Errors)
)]
pub async fn ledger(
    State(app): State<Arc<App>>,
    caller: Caller,
    ListQuery(query): ListQuery,
) -> Result<Json<List<Entry>>, ApiError> {
    require(&caller, Scope::Full)?;
    let page = Page::from_query(&query, &[])?;
    let (entries, has_more) = app
        .store
        .read(|txn| {
            billing::entries(
                txn,
                &caller.org_id,
                page.limit,
                page.starting_after.as_deref(),
            )
        })?
        .ok_or_else(|| {
            ApiError::invalid(
                "starting_after",
                DetailCode::InvalidValue,
                "no such ledger entry",
            )
        })?;
    Ok(list_body(entries, has_more))
}

/// List executions, newest first
#[utoipa::path(
    get, operation_id = "listExecutions", path = "/executions", tag = "executions", params(ExecutionListParams),
    responses((status = 200, body = List<ExecutionView>), Errors)
)]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    ListQuery(query): ListQuery,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Execution)?;
    let page = Page::from_query(&query, &["status", "model"])?;
    let status = match query.get("status") {
        None => None,
        Some(text) => Some(Status::parse(text).ok_or_else(|| {
            ApiError::invalid(
                "status",
                DetailCode::InvalidValue,
                format!("unknown status {}", quote(text)),
            )
        })?),
    };
    let (executions, has_more) = app.executions.list(
        &caller.org_id,
        page.limit,
        page.starting_after.as_deref(),
        status,
        query.get("model").map(String::as_str),
    )?;
    Ok(list_body(executions.iter().map(Execution::view).collect(), has_more).into_response())
}

/// Get the organization's balance
#[utoipa::path(
    get, operation_id = "getBalance", path = "/balance", tag = "billing",
    responses((status = 200, body = BalanceView), Errors)
)]
pub async fn balance(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<BalanceView>, ApiError> {
    require(&caller, Scope::Full)?;
    let account = app
        .store
        .read(|txn| billing::account(txn, &caller.org_id))?;
    Ok(Json(account.view()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_nulls_do_not_make_another_request() {
        let object = |value: Value| value.as_object().unwrap().clone();
        let bare = canonical_create(object(json!({"model": "m", "input": {"a": 1}})));
        for same in [
            json!({"input": {"a": 1}, "model": "m", "mode": "ASYNC"}),
            json!({"model": "m", "input": {"a": 1}, "metadata": {}, "webhook_url": null}),
        ] {
            assert_eq!(canonical_create(object(same)), bare);
        }
        let other = canonical_create(object(
            json!({"model": "m", "input": {"a": 1}, "mode": "SYNC"}),
        ));
        assert_ne!(other, bare);
        let float: Value = serde_json::from_str(r#"{"model": "m", "input": {"a": 1.0}}"#).unwrap();
        assert_eq!(canonical_create(object(float)), bare);
    }

    /// Regression: a `SYNC` create replayed with a longer `wait_seconds` was a `409`;
    /// how long a call waits is not what the execution is.
    #[test]
    fn wait_seconds_is_not_part_of_the_idempotency_fingerprint() {
        let object = |value: Value| value.as_object().unwrap().clone();
        let sync = |wait: Value| {
            canonical_create(object(
                json!({"model": "m", "mode": "SYNC", "input": {}, "wait_seconds": wait}),
            ))
        };
        assert_eq!(sync(json!(5)), sync(json!(120)));
        assert_eq!(sync(json!(5)), sync(Value::Null));
    }
}
