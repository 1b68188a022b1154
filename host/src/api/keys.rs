//! `/v1/api-keys` (full scope): create, list, revoke, rotate.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;

use super::fields::Fields;
use super::{JsonObject, ListQuery, Page, list_body, require};
use crate::App;
use crate::auth::{self, Caller, KeyRefusal, MAX_ACTIVE_KEYS, Scope};
use crate::error::{ApiError, Code, DetailCode};

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

/// `POST /v1/api-keys {scope?: "full"|"execution", name?}` → `201` with the secret,
/// shown this once.
pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require(&caller, Scope::Full)?;
    let mut fields = Fields::new(&body, &["scope", "name"]);
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
        .write(move |txn| auth::create_key_checked(txn, &org, scope, name))
        .await?
        .map_err(refusal)?;
    let mut view = key.view();
    view["key"] = json!(secret);
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET /v1/api-keys`, oldest first.
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    ListQuery(query): ListQuery,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Full)?;
    let page = Page::from_query(&query, &[])?;
    let keys = app.store.read(|txn| auth::keys_of(txn, &caller.org_id))?;
    let (keys, has_more) = page.of(keys, |k| &k.id)?;
    Ok(list_body(keys.iter().map(|k| k.view()).collect(), has_more))
}

pub async fn revoke(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(key_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Full)?;
    let org = caller.org_id.clone();
    let key = app
        .store
        .write(move |txn| auth::revoke_key(txn, &org, &key_id))
        .await?
        .map_err(refusal)?;
    Ok(Json(key.view()))
}

/// `→ {id, new_key, previous_key_valid_until}`: the key keeps its id and scope; the
/// old secret works one more hour.
pub async fn rotate(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(key_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Full)?;
    let org = caller.org_id.clone();
    let rotated = app
        .store
        .write(move |txn| auth::rotate_key(txn, &org, &key_id))
        .await?
        .map_err(refusal)?;
    Ok(Json(json!({
        "id": rotated.key.id,
        "new_key": rotated.secret,
        "previous_key_valid_until": rotated.previous_valid_until,
    })))
}
