//! `/admin/v1`: the operator's API, guarded by the operator token.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde_json::{Map, Value, json};
use std::sync::Arc;

use super::{JsonObject, bearer};
use crate::App;
use crate::auth::{self, Scope};
use crate::billing;
use crate::error::{ApiError, Code, DetailCode};
use crate::files::quota;
use crate::money::Micros;
use crate::plugins::LoadedPlugin;

/// Proof that the request carries the operator token.
pub struct Operator;

impl FromRequestParts<Arc<App>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        match bearer(&parts.headers) {
            Some(token) if app.operator_token.matches(token) => Ok(Operator),
            _ => Err(ApiError::new(
                Code::Unauthorized,
                "Missing or invalid operator token.",
            )),
        }
    }
}

/// A USD amount given as a decimal string (`"100.00"`), never a JSON number (a
/// float to most parsers), at most [`billing::MAX_DEPOSITS`].
fn amount(body: &Map<String, Value>, field: &str) -> Result<Micros, ApiError> {
    let text = match body.get(field) {
        Some(Value::String(text)) => text.clone(),
        None => {
            return Err(ApiError::invalid(
                field,
                DetailCode::Required,
                format!("{field} is required"),
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                field,
                DetailCode::InvalidType,
                format!("{field} must be a decimal string"),
            ));
        }
    };
    let amount = Micros::parse(&text).ok_or_else(|| {
        ApiError::invalid(
            field,
            DetailCode::InvalidValue,
            format!("{field} must be a non-negative decimal with at most 6 decimals"),
        )
    })?;
    if amount > billing::MAX_DEPOSITS {
        return Err(over_limit(field));
    }
    Ok(amount)
}

fn over_limit(field: &str) -> ApiError {
    ApiError::invalid(
        field,
        DetailCode::OutOfRange,
        format!(
            "an organization may be credited at most {} USD in all",
            billing::MAX_DEPOSITS
        ),
    )
}

/// `POST /admin/v1/organizations {name, credit_usd?}` → `201 {organization_id, api_key}`
pub async fn create_organization(
    State(app): State<Arc<App>>,
    _: Operator,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    super::known_fields(&body, &["name", "credit_usd"])?;
    let name = match body.get("name") {
        Some(Value::String(name)) if !name.trim().is_empty() && name.len() <= 200 => name.clone(),
        Some(Value::String(_)) | None => {
            return Err(ApiError::invalid(
                "name",
                DetailCode::Required,
                "name is required (at most 200 characters)",
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "name",
                DetailCode::InvalidType,
                "name must be a string",
            ));
        }
    };
    let credit = match body.get("credit_usd") {
        None | Some(Value::Null) => Micros::ZERO,
        Some(_) => amount(&body, "credit_usd")?,
    };
    let (org, key, secret) = app
        .store
        .write(move |txn| {
            let org = auth::create_organization(txn, &name)?;
            let (key, secret) = auth::create_key(txn, &org.id, Scope::Full)?;
            // A new organization has no deposits, and `amount` is within the limit.
            if credit > Micros::ZERO {
                anyhow::ensure!(
                    billing::deposit(txn, &org.id, credit, "operator: initial credit")?
                        == billing::Deposit::Made,
                    "an initial credit within the limit was refused"
                );
            }
            Ok((org, key, secret))
        })
        .await?;
    tracing::info!(organization = %org.id, %credit, "organization created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "organization_id": org.id,
            "name": org.name,
            "api_key": secret,
            "api_key_id": key.id,
            "balance": { "available": credit, "currency": "USD" },
        })),
    ))
}

/// `PATCH /admin/v1/organizations/{id} {file_ttl_days?, file_quota_bytes?,
/// file_quota_files?}`: how long the organization's files live when an upload does
/// not say (1–365), and its storage quota (bytes, files); `null` goes back to the
/// server's default, an absent field stays as it is. Files already stored keep their
/// expiry; a quota lowered below the usage refuses new uploads, deletes nothing.
/// Answers the settings with the organization's usage (`files`).
pub async fn update_organization(
    State(app): State<Arc<App>>,
    _: Operator,
    Path(org_id): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    const FIELDS: [&str; 3] = ["file_ttl_days", "file_quota_bytes", "file_quota_files"];
    super::known_fields(&body, &FIELDS)?;
    if FIELDS.iter().all(|field| !body.contains_key(*field)) {
        return Err(ApiError::invalid(
            "body",
            DetailCode::Required,
            "name at least one of file_ttl_days, file_quota_bytes, file_quota_files",
        ));
    }
    let ttl = setting(&body, "file_ttl_days", 1..=365)?.map(|days| days.map(|d| d as u32));
    let quota_bytes = setting(&body, "file_quota_bytes", 0..=u64::MAX)?;
    let quota_files = setting(&body, "file_quota_files", 0..=u64::MAX)?;
    let (org, files) = app
        .store
        .write(move |txn| {
            let Some(org) = auth::set_file_ttl(txn, &org_id, ttl)? else {
                return Ok(None);
            };
            let files = quota::set_quota(txn, &org.id, quota_bytes, quota_files)?;
            Ok(Some((org, files)))
        })
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(json!({
        "organization_id": org.id,
        "name": org.name,
        "file_ttl_days": org.file_ttl_days,
        "file_quota_bytes": files.quota_bytes,
        "file_quota_files": files.quota_files,
        "files": files.view(app.files.settings()),
    })))
}

/// An optional whole-number setting: absent (`None`), `null` (`Some(None)`, the
/// server's default) or a value within `range`.
fn setting(
    body: &Map<String, Value>,
    field: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<Option<u64>>, ApiError> {
    match body.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(value) => match value.as_u64() {
            Some(n) if range.contains(&n) => Ok(Some(Some(n))),
            _ => Err(ApiError::invalid(
                field,
                DetailCode::OutOfRange,
                format!(
                    "{field} must be an integer between {} and {}, or null",
                    range.start(),
                    range.end()
                ),
            )),
        },
    }
}

/// `POST /admin/v1/organizations/{id}/credit {amount_usd, memo?}`
pub async fn credit(
    State(app): State<Arc<App>>,
    _: Operator,
    Path(org_id): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    super::known_fields(&body, &["amount_usd", "memo"])?;
    let amount = amount(&body, "amount_usd")?;
    if amount == Micros::ZERO {
        return Err(ApiError::invalid(
            "amount_usd",
            DetailCode::OutOfRange,
            "amount_usd must be positive",
        ));
    }
    let memo = match body.get("memo") {
        Some(Value::String(memo)) => format!("operator: {memo}"),
        _ => "operator credit".to_string(),
    };
    let account = match billing::credit(&app.store, &org_id, amount, memo).await? {
        billing::Credit::Made(account) => account,
        billing::Credit::NoSuchOrganization => return Err(ApiError::not_found()),
        billing::Credit::OverLimit => return Err(over_limit("amount_usd")),
    };
    Ok(Json(json!({
        "available": account.available,
        "held": account.held,
        "currency": "USD",
    })))
}

/// `GET /admin/v1/ledger/verify`: balances rebuilt from the entries, compared.
pub async fn verify_ledger(
    State(app): State<Arc<App>>,
    _: Operator,
) -> Result<Json<Value>, ApiError> {
    let report = app.executions.verify_ledger()?;
    Ok(Json(json!(report)))
}

/// `GET /admin/v1/webhooks/outbox`: pending deliveries, how many are due now and
/// in flight, and when the next one is due.
pub async fn webhook_outbox(
    State(app): State<Arc<App>>,
    _: Operator,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(app.webhooks.backlog()?)))
}

/// `GET /admin/v1/executions/{id}`: the whole record, with every attempt (provider,
/// plugin version, provider job, outcome). For operators only.
pub async fn execution(
    State(app): State<Arc<App>>,
    _: Operator,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let execution = app
        .executions
        .store_get(&id)?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(json!(execution)))
}

/// `GET /admin/v1/files/{id}/audit`: every upload, download, grant and delete of
/// a file, oldest first (kept after the file is gone). `404` when the id names no
/// file, past or present.
pub async fn file_audit(
    State(app): State<Arc<App>>,
    _: Operator,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entries = crate::files::audit::trail(&app.store, &id)?.ok_or_else(ApiError::not_found)?;
    Ok(Json(json!({ "data": entries, "has_more": false })))
}

/// `POST /admin/v1/clock/advance {seconds}`: moves the service clock forward, for
/// tests of schedules in minutes and days. Only with `[testing] clock_control`.
pub async fn advance_clock(
    State(app): State<Arc<App>>,
    _: Operator,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    if !app.config.testing.clock_control {
        return Err(ApiError::not_found());
    }
    super::known_fields(&body, &["seconds"])?;
    let seconds = match body.get("seconds").map(|v| (v.as_u64(), v.as_i64())) {
        Some((Some(seconds), _)) => seconds,
        Some((None, Some(_))) => {
            return Err(ApiError::invalid(
                "seconds",
                DetailCode::OutOfRange,
                "the clock only moves forward: seconds must not be negative",
            ));
        }
        Some((None, None)) => {
            return Err(ApiError::invalid(
                "seconds",
                DetailCode::InvalidType,
                "seconds must be a whole number",
            ));
        }
        None => {
            return Err(ApiError::invalid(
                "seconds",
                DetailCode::Required,
                "seconds is required",
            ));
        }
    };
    crate::clock::advance(chrono::Duration::seconds(
        seconds.min(10 * 365 * 86_400) as i64
    ));
    crate::clock::save(&crate::clock::offset_file(&app.config.data_dir))
        .map_err(anyhow::Error::from)?;
    Ok(Json(json!({ "now": crate::clock::now() })))
}

fn plugin_view(plugin: &LoadedPlugin, state: &str) -> Value {
    json!({
        "name": plugin.name,
        "version": plugin.version,
        "api_version": plugin.api_version,
        "sha256": plugin.sha256,
        "state": state,
        "loaded_at": plugin.loaded_at,
        "models": plugin.manifest.models.iter().map(|m| &m.slug).collect::<Vec<_>>(),
        "calls": plugin.calls(),
        "traps": plugin.traps(),
    })
}

/// `GET /admin/v1/plugins`: the active version of each plugin, and the version a
/// rollback would restore.
pub async fn plugins(State(app): State<Arc<App>>, _: Operator) -> Json<Value> {
    let mut plugins = Vec::new();
    for plugin in app.registry.all() {
        plugins.push(plugin_view(&plugin, "active"));
        if let Some(previous) = app.registry.previous(&plugin.name) {
            plugins.push(plugin_view(&previous, "previous"));
        }
    }
    Json(json!({ "data": plugins, "has_more": false }))
}

/// `PUT /admin/v1/plugins/{name}` with the component's bytes: compiled off the
/// request path, validated (contract version, manifest, a smoke call per model),
/// written to the data directory (so a restart keeps it), then swapped in
/// atomically. Attempts in flight finish on the version they started with; the
/// replaced version is kept for rollback. An invalid plugin changes nothing.
pub async fn install_plugin(
    State(app): State<Arc<App>>,
    _: Operator,
    Path(name): Path<String>,
    wasm: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let wasm = wasm.map_err(|rejection| super::body_refused(rejection, super::MAX_PLUGIN_BYTES))?;
    let runtime = app.runtime.clone();
    let started = std::time::Instant::now();
    let loaded = tokio::task::spawn_blocking(move || runtime.load_validated(&wasm))
        .await
        .map_err(anyhow::Error::from)?;
    let plugin = loaded.map_err(|error| {
        ApiError::invalid(
            "plugin",
            DetailCode::InvalidValue,
            format!("the plugin was refused: {error:#}"),
        )
    })?;
    if plugin.name != name {
        return Err(ApiError::invalid(
            "plugin",
            DetailCode::InvalidValue,
            format!("the plugin calls itself {:?}, not {name:?}", plugin.name),
        ));
    }
    // Checked here to answer 400 with the reason; `activate` checks again under
    // its lock, against an install that raced this one.
    app.registry.check_agreement(&plugin).map_err(|error| {
        ApiError::invalid(
            "plugin",
            DetailCode::InvalidValue,
            format!("the plugin was refused: {error:#}"),
        )
    })?;
    // The swap is written to the data directory before it takes effect.
    let registry = app.registry.clone();
    let swapped = plugin.clone();
    let replaced = tokio::task::spawn_blocking(move || registry.activate(swapped))
        .await
        .map_err(anyhow::Error::from)??;
    tracing::info!(plugin = %name, version = %plugin.version, sha256 = %plugin.sha256, elapsed_ms = started.elapsed().as_millis() as u64, "plugin installed");
    let mut view = plugin_view(&plugin, "active");
    view["replaced"] = replaced.map_or(Value::Null, |p| plugin_view(&p, "previous"));
    Ok(Json(view))
}

/// `POST /admin/v1/plugins/{name}/rollback`: restores the version the last swap
/// replaced, and writes that down like an install.
pub async fn rollback_plugin(
    State(app): State<Arc<App>>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if app.registry.get(&name).is_none() {
        return Err(ApiError::not_found());
    }
    if let Some(previous) = app.registry.previous(&name)
        && let Err(error) = app.registry.check_agreement(&previous)
    {
        return Err(ApiError::new(
            Code::Conflict,
            format!("the previous version of {name:?} cannot come back: {error:#}"),
        ));
    }
    let registry = app.registry.clone();
    let rolling = name.clone();
    let restored = tokio::task::spawn_blocking(move || registry.rollback(&rolling))
        .await
        .map_err(anyhow::Error::from)??
        .ok_or_else(|| {
            ApiError::new(
                Code::Conflict,
                format!("plugin {name:?} has no previous version to roll back to"),
            )
        })?;
    tracing::info!(plugin = %name, version = %restored.version, sha256 = %restored.sha256, "plugin rolled back");
    Ok(Json(plugin_view(&restored, "active")))
}
