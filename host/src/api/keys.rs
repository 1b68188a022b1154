//! `/v1/api-keys` (full scope): create, list, revoke, rotate.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

use super::fields::Fields;
use super::lists::List;
use super::openapi::Errors;
use super::openapi::requests::{CreateKey, ListParams};
use super::{JsonObject, ListQuery, Page, list_body, require};
use crate::App;
use crate::auth::{self, ApiKey, Caller, KeyRefusal, KeyView, MAX_ACTIVE_KEYS, Scope};
use crate::error::{ApiError, Code, DetailCode};

/// The fields of a create (`CreateKey`).
pub(crate) const CREATE_FIELDS: &[&str] = &["scope", "name"];

/// The answer to a rotation: the new secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    pub id: String,
    /// the new secret
    pub new_key: String,
    /// until when the old secret keeps working
    pub previous_key_valid_until: DateTime<Utc>,
}

fn refusal(refusal: KeyRefusal) -> ApiError {
    match refusal {
        KeyRefusal::NotFound => ApiError::not_found(),
        KeyRefusal::TooManyActive => ApiError::new(
            Code::Conflict,
            format!(
                "an organization may have at most {MAX_ACTIVE_KEYS} active keys; revoke one first"
            ),
        ),
    }
}

/// Create an API key
///
/// The answer carries the secret (`key`), shown this once.
#[utoipa::path(
    post, operation_id = "createApiKey", path = "/api-keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, body = KeyView), Errors)
)]
pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Full)?;
    let mut fields = Fields::new(&body, CREATE_FIELDS);
    let scope = match fields.choice("scope", &["full", "execution"]) {
        Some("execution") => Scope::Execution,
        _ => Scope::Full,
    };
    let name = fields.string("name").map(str::to_string);
    if name.as_ref().is_some_and(|name| name.len() > 200) {
        fields.refuse(
            "name",
            DetailCode::OutOfRange,
            "name must be at most 200 characters",
        );
    }
    fields.finish()?;
    let org = caller.org_id.clone();
    let (key, secret) = app
        .store
        .write(move |txn| auth::create_key_checked(txn, &org, scope, name.clone()))
        .await?
        .map_err(refusal)?;
    let view = KeyView {
        key: Some(&secret),
        ..key.view()
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// List API keys, oldest first
///
/// Never with their secrets.
#[utoipa::path(
    get, operation_id = "listApiKeys", path = "/api-keys", tag = "keys", params(ListParams),
    responses((status = 200, body = List<KeyView>), Errors)
)]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    ListQuery(query): ListQuery,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Full)?;
    let page = Page::from_query(&query, &[])?;
    let keys = app.store.read(|txn| auth::keys_of(txn, &caller.org_id))?;
    let (keys, has_more) = page.of(keys, |k| &k.id)?;
    Ok(list_body(keys.iter().map(ApiKey::view).collect(), has_more).into_response())
}

/// Revoke an API key
#[utoipa::path(
    delete, operation_id = "revokeApiKey", path = "/api-keys/{id}", tag = "keys", params(("id" = String, Path, description = "`key_…`")),
    responses((status = 200, body = KeyView), Errors)
)]
pub async fn revoke(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Full)?;
    let org = caller.org_id.clone();
    let key = app
        .store
        .write(move |txn| auth::revoke_key(txn, &org, &key_id))
        .await?
        .map_err(refusal)?;
    Ok(Json(key.view()).into_response())
}

/// Rotate an API key
///
/// The key keeps its id and scope and gets a new secret; the old secret works one
/// more hour.
#[utoipa::path(
    post, operation_id = "rotateApiKey", path = "/api-keys/{id}/rotate", tag = "keys", params(("id" = String, Path, description = "`key_…`")),
    responses((status = 200, body = RotatedKey), Errors)
)]
pub async fn rotate(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(key_id): Path<String>,
) -> Result<Json<RotatedKey>, ApiError> {
    require(&caller, Scope::Full)?;
    let org = caller.org_id.clone();
    let rotated = app
        .store
        .write(move |txn| auth::rotate_key(txn, &org, &key_id))
        .await?
        .map_err(refusal)?;
    Ok(Json(RotatedKey {
        id: rotated.key.id,
        new_key: rotated.secret,
        previous_key_valid_until: rotated.previous_valid_until,
    }))
}
