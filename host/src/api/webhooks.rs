//! `/v1/webhooks` (full scope): endpoints, their test event, and the organization's
//! default secret.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::fields::Fields;
use super::{JsonObject, ListQuery, Page, known_fields, list_body, require};
use crate::App;
use crate::auth::{Caller, Scope};
use crate::clock;
use crate::error::{ApiError, Code, DetailCode};
use crate::ids::new_id;
use crate::netguard::Refusal;
use crate::webhooks::delivery::SendResult;
use crate::webhooks::endpoints::{self, Changes};
use crate::webhooks::{self, EVENT_TYPES, Endpoint, RESERVED_HEADERS};

/// Most custom headers an endpoint may carry.
const MAX_HEADERS: usize = 20;
/// Longest custom header name and value, in characters.
const MAX_HEADER_NAME: usize = 256;
const MAX_HEADER_VALUE: usize = 1024;
/// Longest URL a delivery may go to, in characters (also an execution's
/// `webhook_url`).
pub const MAX_URL_CHARS: usize = 2048;
/// Longest description, in characters.
const MAX_DESCRIPTION: usize = 500;

/// `POST /v1/webhooks/endpoints {url, description?, events?, headers?}` → `201`
/// with the secret, shown this once.
pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require(&caller, Scope::Full)?;
    known_fields(&body, &["url", "description", "events", "headers"])?;
    let Some(url) = body.get("url") else {
        return Err(ApiError::invalid(
            "url",
            DetailCode::Required,
            "url is required",
        ));
    };
    let endpoint = Endpoint {
        id: new_id("wh"),
        organization_id: caller.org_id.clone(),
        url: checked_url(&app, &caller.org_id, "url", url).await?,
        description: description(body.get("description"))?,
        events: events(body.get("events"))?,
        headers: headers(body.get("headers"))?,
        secret: webhooks::new_secret(),
        is_active: true,
        created_at: clock::now(),
        failure_count: 0,
        last_success: None,
        last_failure: None,
    };
    let endpoint =
        endpoints::create(&app.store, endpoint)
            .await?
            .map_err(|endpoints::AtLimit| {
                ApiError::new(
                    Code::Conflict,
                    format!(
                        "an organization may have at most {} webhook endpoints; delete one first",
                        webhooks::MAX_ENDPOINTS
                    ),
                )
            })?;
    Ok((StatusCode::CREATED, Json(endpoint.view(true))))
}

pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    ListQuery(query): ListQuery,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Full)?;
    let page = Page::from_query(&query, &[])?;
    let after = match &page.starting_after {
        Some(id) => Some(find(&app, &caller, id).map_err(|_| {
            ApiError::invalid(
                "starting_after",
                DetailCode::InvalidValue,
                "no such webhook endpoint",
            )
        })?),
        None => None,
    };
    let (listed, has_more) =
        endpoints::list(&app.store, &caller.org_id, page.limit, after.as_ref())?;
    Ok(list_body(
        listed.iter().map(|e| e.view(false)).collect(),
        has_more,
    ))
}

pub async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Full)?;
    Ok(Json(find(&app, &caller, &id)?.view(false)))
}

/// `PATCH /v1/webhooks/endpoints/{id} {url?, description?, events?, headers?,
/// is_active?}`. Reactivating an endpoint clears its failure count.
pub async fn update(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Full)?;
    let mut fields = Fields::new(
        &body,
        &["url", "description", "events", "headers", "is_active"],
    );
    let is_active = fields.boolean("is_active");
    if body.get("is_active").is_some_and(Value::is_null) {
        fields.refuse(
            "is_active",
            DetailCode::InvalidType,
            "is_active must be a boolean",
        );
    }
    fields.finish()?;
    find(&app, &caller, &id)?;
    let url = match body.get("url") {
        Some(url) => Some(checked_url(&app, &caller.org_id, "url", url).await?),
        None => None,
    };
    let description = body
        .contains_key("description")
        .then(|| description(body.get("description")))
        .transpose()?;
    let events = body
        .contains_key("events")
        .then(|| events(body.get("events")))
        .transpose()?;
    let headers = body
        .contains_key("headers")
        .then(|| headers(body.get("headers")))
        .transpose()?;

    let changes = Changes {
        url,
        description,
        events,
        headers,
        is_active,
    };
    let updated = endpoints::update(&app.store, &caller.org_id, &id, changes)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(updated.view(false)))
}

/// `DELETE /v1/webhooks/endpoints/{id}`; its undelivered events are dropped.
pub async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Full)?;
    let removed = endpoints::delete(&app.store, &caller.org_id, &id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(
        json!({"id": removed.id, "object": "webhook_endpoint", "deleted": true}),
    ))
}

/// `POST /v1/webhooks/endpoints/{id}/test`: sends a signed `test` event now and
/// reports what the receiver answered. Test sends are not retried and do not count
/// toward deactivation. The URL is checked first as at registration (within the
/// organization's share of the resolver), so a flood of test sends to a name that
/// no longer resolves is bounded like a flood of creates.
pub async fn test(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Full)?;
    let endpoint = find(&app, &caller, &id)?;
    let event_id = new_id("evt");
    let body = json!({
        "id": event_id,
        "event_type": "test",
        "timestamp": clock::now(),
        "version": "1.0",
        "organization_id": caller.org_id,
        "execution_id": null,
        "data": {"message": "A test event from ModelRoute."},
    })
    .to_string();
    let result = match app
        .webhooks
        .guard()
        .check(&caller.org_id, &endpoint.url)
        .await
    {
        Ok(_) => {
            app.webhooks
                .send(&endpoint.url, &endpoint.secret, &endpoint.headers, &body)
                .await
        }
        Err(refusal @ (Refusal::TooManyLookups | Refusal::ResolverBusy)) => {
            return Err(busy(&app, refusal));
        }
        Err(refusal) => SendResult {
            status: None,
            error: Some(format!("refused: {refusal}")),
        },
    };
    Ok(Json(json!({
        "id": event_id,
        "event_type": "test",
        "delivered": result.succeeded(),
        "response_status": result.status,
        "error": result.error,
    })))
}

/// `GET /v1/webhooks/default-secret` → `{secret}`: what signs deliveries to
/// per-execution `webhook_url`s. An `execution`-scope key may read it: it may set
/// `webhook_url`, so it must be able to verify what arrives there.
pub async fn default_secret(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Execution)?;
    let secret = endpoints::organization_secret(&app.store, &caller.org_id).await?;
    Ok(Json(json!({ "secret": secret })))
}

fn find(app: &App, caller: &Caller, id: &str) -> Result<Endpoint, ApiError> {
    endpoints::get(&app.store, &caller.org_id, id)?.ok_or_else(ApiError::not_found)
}

/// A URL deliveries may go to under the operator's policy (scheme, and every
/// address it resolves to), checked for `organization`. A host that does not
/// resolve within the resolver's timeout is invalid; one that found no place among
/// the lookups in flight is refused as busy ([`busy`]).
pub async fn checked_url(
    app: &App,
    organization: &str,
    field: &str,
    url: &Value,
) -> Result<String, ApiError> {
    let Some(url) = url.as_str() else {
        return Err(ApiError::invalid(
            field,
            DetailCode::InvalidType,
            format!("{field} must be a string"),
        ));
    };
    if url.chars().count() > MAX_URL_CHARS {
        return Err(ApiError::invalid(
            field,
            DetailCode::OutOfRange,
            format!("{field} may be at most {MAX_URL_CHARS} characters"),
        ));
    }
    match app.webhooks.guard().check(organization, url).await {
        Ok(parsed) => Ok(parsed.to_string()),
        Err(refusal @ (Refusal::TooManyLookups | Refusal::ResolverBusy)) => Err(busy(app, refusal)),
        Err(refusal) => Err(ApiError::invalid(
            field,
            DetailCode::InvalidValue,
            refusal.to_string(),
        )),
    }
}

/// A lookup that found no place: `429 RATE_LIMITED` when the organization has as
/// many in flight as it may, `503 SERVICE_UNAVAILABLE` when the server has; both
/// retryable after about one lookup timeout.
fn busy(app: &App, refusal: Refusal) -> ApiError {
    let code = match refusal {
        Refusal::TooManyLookups => Code::RateLimited,
        _ => Code::ServiceUnavailable,
    };
    let retry_after = app
        .webhooks
        .guard()
        .dns_timeout()
        .as_millis()
        .div_ceil(1000)
        .max(1);
    ApiError::new(code, format!("{refusal}; try again shortly"))
        .with_header("retry-after", retry_after.to_string())
}

fn description(value: Option<&Value>) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.chars().count() <= MAX_DESCRIPTION => {
            Ok(Some(text.clone()))
        }
        Some(Value::String(_)) => Err(ApiError::invalid(
            "description",
            DetailCode::OutOfRange,
            format!("description may be at most {MAX_DESCRIPTION} characters"),
        )),
        Some(_) => Err(ApiError::invalid(
            "description",
            DetailCode::InvalidType,
            "description must be a string",
        )),
    }
}

fn events(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::invalid(
                "events",
                DetailCode::InvalidType,
                "events must be an array of event types",
            ));
        }
    };
    let mut events = Vec::new();
    for item in items {
        match item.as_str() {
            Some(event) if EVENT_TYPES.contains(&event) => {
                if !events.iter().any(|e| e == event) {
                    events.push(event.to_string());
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    "events",
                    DetailCode::InvalidValue,
                    format!(
                        "unknown event type {item}; one of {}",
                        EVENT_TYPES.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(events)
}

fn headers(value: Option<&Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::invalid(
                "headers",
                DetailCode::InvalidType,
                "headers must be an object of header names to string values",
            ));
        }
    };
    if map.len() > MAX_HEADERS {
        return Err(ApiError::invalid(
            "headers",
            DetailCode::OutOfRange,
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let mut headers = BTreeMap::new();
    for (name, value) in map {
        if name.chars().count() > MAX_HEADER_NAME {
            return Err(ApiError::invalid(
                "headers",
                DetailCode::OutOfRange,
                format!("header names may be at most {MAX_HEADER_NAME} characters"),
            ));
        }
        let field = format!("headers.{name}");
        let lower = name.to_ascii_lowercase();
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || RESERVED_HEADERS.contains(&lower.as_str())
        {
            return Err(ApiError::invalid(
                &field,
                DetailCode::InvalidValue,
                format!("{name:?} is not a header an endpoint may set"),
            ));
        }
        match value.as_str() {
            Some(text) if text.chars().count() > MAX_HEADER_VALUE => {
                return Err(ApiError::invalid(
                    &field,
                    DetailCode::OutOfRange,
                    format!("header values may be at most {MAX_HEADER_VALUE} characters"),
                ));
            }
            Some(text) if axum::http::HeaderValue::from_str(text).is_ok() => {
                headers.insert(name.clone(), text.to_string());
            }
            _ => {
                return Err(ApiError::invalid(
                    &field,
                    DetailCode::InvalidValue,
                    "header values must be strings of visible ASCII",
                ));
            }
        }
    }
    Ok(headers)
}
