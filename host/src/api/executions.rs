//! `/v1/executions` and `/v1/balance`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

use super::{JsonObject, ListQuery, Page, list_body, require};
use crate::App;
use crate::auth::{Caller, Scope};
use crate::billing;
use crate::error::{ApiError, Detail, DetailCode, quote};
use crate::executions::input::canonical_numbers;
use crate::executions::{CreateRequest, Execution, Mode, Status, StreamMessage, request_hash};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::StreamExt;
use tokio::sync::broadcast;

/// Longest a `SYNC` request may wait.
const MAX_WAIT_SECONDS: u64 = 300;
const DEFAULT_WAIT_SECONDS: u64 = 60;

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
            super::webhooks::checked_url(&app, &caller.org_id, "webhook_url", &json!(url)).await?;
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
        return Ok(stream(app, caller.org_id, created.execution, events).into_response());
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
pub async fn provider_callback(
    State(app): State<Arc<App>>,
    Path((provider, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
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
        Ok(Json(json!({ "received": true })))
    } else {
        Err(ApiError::not_found())
    }
}

/// A `STREAMING` answer: server-sent events `execution` (the accepted execution),
/// `status` (each change), `delta` (output text as the provider produces it),
/// `reset` (the text so far is void: its attempt failed, a retry streams anew) and
/// finally `done` (the terminal execution object), after which the stream ends.
fn stream(
    app: Arc<App>,
    org_id: String,
    execution: Execution,
    events: broadcast::Receiver<StreamMessage>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let first = Event::default()
        .event("execution")
        .data(execution.accepted_view().to_string());
    let id = execution.id.clone();
    let start = Some((events, execution.status));
    let rest = futures_util::stream::unfold(start, move |state| {
        let (app, org_id, id) = (app.clone(), org_id.clone(), id.clone());
        async move {
            let (mut events, mut shown) = state?;
            loop {
                match events.recv().await {
                    Ok(StreamMessage::Delta(text)) => {
                        let event = Event::default()
                            .event("delta")
                            .data(json!({ "text": text }).to_string());
                        return Some((Ok(event), Some((events, shown))));
                    }
                    Ok(StreamMessage::Reset) => {
                        let event = Event::default()
                            .event("reset")
                            .data(json!({ "id": id }).to_string());
                        return Some((Ok(event), Some((events, shown))));
                    }
                    Ok(StreamMessage::Status(status)) if status.is_terminal() => break,
                    // Retries and attempt records notify too; the client sees changes.
                    Ok(StreamMessage::Status(status)) if status == shown => continue,
                    Ok(StreamMessage::Status(status)) => {
                        shown = status;
                        let event = Event::default()
                            .event("status")
                            .data(json!({ "id": id, "status": status }).to_string());
                        return Some((Ok(event), Some((events, shown))));
                    }
                    // A slow reader missed some deltas; the final object has the text.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            let done = match app.executions.get(&org_id, &id) {
                Ok(Some(execution)) => execution.view(),
                _ => json!({ "id": id }),
            };
            Some((
                Ok(Event::default().event("done").data(done.to_string())),
                None,
            ))
        }
    });
    Sse::new(futures_util::stream::once(async move { Ok(first) }).chain(rest))
        .keep_alive(KeepAlive::default())
}

/// `Idempotency-Key`: 1–255 printable ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
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

/// Reads `{model, input, webhook_url?, metadata?, mode?, wait_seconds?}`, reporting
/// every problem at once.
fn parse_create(body: &Map<String, Value>) -> Result<(CreateRequest, Duration), ApiError> {
    let mut details = super::unknown_fields(
        body,
        &[
            "model",
            "input",
            "webhook_url",
            "metadata",
            "mode",
            "wait_seconds",
        ],
    );
    let model = match body.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        Some(Value::String(_)) | None => {
            details.push(Detail::new(
                "model",
                DetailCode::Required,
                "model is required",
            ));
            String::new()
        }
        Some(_) => {
            details.push(Detail::new(
                "model",
                DetailCode::InvalidType,
                "model must be a string",
            ));
            String::new()
        }
    };
    let input = match body.get("input") {
        Some(input @ Value::Object(_)) => input.clone(),
        None => {
            details.push(Detail::new(
                "input",
                DetailCode::Required,
                "input is required",
            ));
            Value::Null
        }
        Some(_) => {
            details.push(Detail::new(
                "input",
                DetailCode::InvalidType,
                "input must be an object",
            ));
            Value::Null
        }
    };
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(metadata @ Value::Object(map))
            if map.len() <= 50 && metadata.to_string().len() <= 16 * 1024 =>
        {
            metadata.clone()
        }
        Some(Value::Object(_)) => {
            details.push(Detail::new(
                "metadata",
                DetailCode::OutOfRange,
                "metadata is limited to 50 keys and 16 KiB",
            ));
            Value::Null
        }
        Some(_) => {
            details.push(Detail::new(
                "metadata",
                DetailCode::InvalidType,
                "metadata must be an object",
            ));
            Value::Null
        }
    };
    let mode = match body.get("mode") {
        None | Some(Value::Null) => Mode::Async,
        Some(Value::String(mode)) if mode == "ASYNC" => Mode::Async,
        Some(Value::String(mode)) if mode == "SYNC" => Mode::Sync,
        Some(Value::String(mode)) if mode == "STREAMING" => Mode::Streaming,
        Some(_) => {
            details.push(Detail::new(
                "mode",
                DetailCode::InvalidValue,
                "mode must be ASYNC, SYNC or STREAMING",
            ));
            Mode::Async
        }
    };
    let wait = match body.get("wait_seconds") {
        None | Some(Value::Null) => DEFAULT_WAIT_SECONDS,
        Some(Value::Number(n)) if n.is_f64() => {
            details.push(Detail::new(
                "wait_seconds",
                DetailCode::InvalidType,
                "wait_seconds must be an integer",
            ));
            DEFAULT_WAIT_SECONDS
        }
        Some(Value::Number(n)) => match n.as_u64() {
            Some(seconds @ 1..=MAX_WAIT_SECONDS) => seconds,
            _ => {
                details.push(Detail::new(
                    "wait_seconds",
                    DetailCode::OutOfRange,
                    format!("wait_seconds must be 1 to {MAX_WAIT_SECONDS}"),
                ));
                DEFAULT_WAIT_SECONDS
            }
        },
        Some(_) => {
            details.push(Detail::new(
                "wait_seconds",
                DetailCode::InvalidType,
                "wait_seconds must be an integer",
            ));
            DEFAULT_WAIT_SECONDS
        }
    };
    let webhook_url = match body.get("webhook_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) => match url::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "https" | "http") => Some(url.clone()),
            _ => {
                details.push(Detail::new(
                    "webhook_url",
                    DetailCode::InvalidValue,
                    "webhook_url must be an http(s) URL",
                ));
                None
            }
        },
        Some(_) => {
            details.push(Detail::new(
                "webhook_url",
                DetailCode::InvalidType,
                "webhook_url must be a string",
            ));
            None
        }
    };
    if !details.is_empty() {
        return Err(ApiError::validation(details));
    }
    Ok((
        CreateRequest {
            model,
            input,
            metadata,
            mode,
            webhook_url,
        },
        Duration::from_secs(wait),
    ))
}

pub async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Execution)?;
    let execution = app
        .executions
        .get(&caller.org_id, &id)?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(execution.view()))
}

pub async fn result(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "execution_id": execution.id,
        "status": execution.status,
        "output": execution.output,
        "cost": execution.cost,
        "latency_ms": execution.latency_ms(),
    })))
}

pub async fn cancel(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Execution)?;
    match app.dispatcher.cancel(&caller.org_id, &id).await? {
        None => Err(ApiError::not_found()),
        Some(Ok(execution)) => Ok(Json(execution.view())),
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

pub async fn ledger(
    State(app): State<Arc<App>>,
    caller: Caller,
    ListQuery(query): ListQuery,
) -> Result<Json<Value>, ApiError> {
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
    Ok(list_body(
        entries.iter().map(|e| json!(e)).collect(),
        has_more,
    ))
}

pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    ListQuery(query): ListQuery,
) -> Result<Json<Value>, ApiError> {
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
    Ok(list_body(
        executions.iter().map(|e| e.view()).collect(),
        has_more,
    ))
}

pub async fn balance(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Full)?;
    let account = app
        .store
        .read(|txn| billing::account(txn, &caller.org_id))?;
    Ok(Json(json!({
        "available": account.available,
        "held": account.held,
        "currency": "USD",
    })))
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
