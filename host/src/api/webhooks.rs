//! `/v1/webhooks` (full scope): endpoints, their test event, and the organization's
//! default secret.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use utoipa::ToSchema;

use super::fields::Fields;
use super::lists::List;
use super::openapi::Errors;
use super::openapi::requests::{CreateEndpoint, ListParams, UpdateEndpoint};
use super::webhook_fields::{busy, checked_url, description, events, headers};
use super::{JsonObject, ListQuery, Page, known_fields, list_body, require};
use crate::App;
use crate::auth::{Caller, Scope};
use crate::clock;
use crate::error::{ApiError, Code, DetailCode};
use crate::ids::new_id;
use crate::netguard::Refusal;
use crate::webhooks::delivery::SendResult;
use crate::webhooks::endpoints::{self, Changes};
use crate::webhooks::{self, Endpoint, EndpointView};

/// The answer to a delete.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedEndpoint {
    pub id: String,
    /// always `webhook_endpoint`
    pub object: &'static str,
    pub deleted: bool,
}

/// What the receiver of a test event answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestDelivery {
    /// the test event's id (`evt_…`)
    pub id: String,
    /// always `test`
    pub event_type: &'static str,
    /// whether the receiver answered 2xx
    pub delivered: bool,
    /// the receiver's HTTP status, if it answered
    pub response_status: Option<u16>,
    /// why the delivery failed, if it did
    pub error: Option<String>,
}

/// The organization's default signing secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct DefaultSecret {
    /// `whsec_…`
    pub secret: String,
}

/// Create a webhook endpoint
///
/// The answer carries its signing `secret` and its headers' values, shown this once.
#[utoipa::path(
    post, operation_id = "createWebhookEndpoint", path = "/webhooks/endpoints", tag = "webhooks", request_body = CreateEndpoint,
    responses((status = 201, body = EndpointView), Errors)
)]
pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
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
    Ok((StatusCode::CREATED, Json(endpoint.view(true))).into_response())
}

/// List webhook endpoints, oldest first
#[utoipa::path(
    get, operation_id = "listWebhookEndpoints", path = "/webhooks/endpoints", tag = "webhooks", params(ListParams),
    responses((status = 200, body = List<EndpointView>), Errors)
)]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    ListQuery(query): ListQuery,
) -> Result<Response, ApiError> {
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
    Ok(list_body(listed.iter().map(|e| e.view(false)).collect(), has_more).into_response())
}

/// Get a webhook endpoint
#[utoipa::path(
    get, operation_id = "getWebhookEndpoint", path = "/webhooks/endpoints/{id}", tag = "webhooks", params(("id" = String, Path, description = "`wh_…`")),
    responses((status = 200, body = EndpointView), Errors)
)]
pub async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Full)?;
    Ok(Json(find(&app, &caller, &id)?.view(false)).into_response())
}

/// Update a webhook endpoint
///
/// Reactivating an endpoint clears its failure count.
#[utoipa::path(
    patch, operation_id = "updateWebhookEndpoint", path = "/webhooks/endpoints/{id}", tag = "webhooks", params(("id" = String, Path, description = "`wh_…`")),
    request_body = UpdateEndpoint,
    responses((status = 200, body = EndpointView), Errors)
)]
pub async fn update(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
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
    Ok(Json(updated.view(false)).into_response())
}

/// Delete a webhook endpoint
///
/// Its undelivered events are dropped.
#[utoipa::path(
    delete, operation_id = "deleteWebhookEndpoint", path = "/webhooks/endpoints/{id}", tag = "webhooks", params(("id" = String, Path, description = "`wh_…`")),
    responses((status = 200, body = DeletedEndpoint), Errors)
)]
pub async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeletedEndpoint>, ApiError> {
    require(&caller, Scope::Full)?;
    let removed = endpoints::delete(&app.store, &caller.org_id, &id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(DeletedEndpoint {
        id: removed.id,
        object: "webhook_endpoint",
        deleted: true,
    }))
}

/// Send a test event
///
/// Sends a signed `test` event now and reports what the receiver answered. Test sends are not retried and do not count
/// toward deactivation. The URL is checked first as at registration (within the
/// organization's share of the resolver), so a flood of test sends to a name that
/// no longer resolves is bounded like a flood of creates.
#[utoipa::path(
    post, operation_id = "testWebhookEndpoint", path = "/webhooks/endpoints/{id}/test", tag = "webhooks", params(("id" = String, Path, description = "`wh_…`")),
    responses((status = 200, body = TestDelivery), Errors)
)]
pub async fn test(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TestDelivery>, ApiError> {
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
    Ok(Json(TestDelivery {
        delivered: result.succeeded(),
        id: event_id,
        event_type: "test",
        response_status: result.status,
        error: result.error,
    }))
}

/// Get the default signing secret
///
/// What signs deliveries to per-execution `webhook_url`s. An `execution`-scope key may read it: it may set
/// `webhook_url`, so it must be able to verify what arrives there.
#[utoipa::path(
    get, operation_id = "getDefaultWebhookSecret", path = "/webhooks/default-secret", tag = "webhooks",
    responses((status = 200, body = DefaultSecret), Errors)
)]
pub async fn default_secret(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<DefaultSecret>, ApiError> {
    require(&caller, Scope::Execution)?;
    let secret = endpoints::organization_secret(&app.store, &caller.org_id).await?;
    Ok(Json(DefaultSecret { secret }))
}

fn find(app: &App, caller: &Caller, id: &str) -> Result<Endpoint, ApiError> {
    endpoints::get(&app.store, &caller.org_id, id)?.ok_or_else(ApiError::not_found)
}
