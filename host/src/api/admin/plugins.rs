//! `/admin/v1/plugins`: install, replace and roll back adapters at runtime.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

use super::Operator;
use crate::App;
use crate::api::lists::List;
use crate::api::openapi::Errors;
use crate::error::{ApiError, Code, DetailCode};
use crate::plugins::LoadedPlugin;

/// An installed adapter, as operators see it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Plugin)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    /// the contract version it was built against
    pub api_version: String,
    /// of the component's bytes
    pub sha256: String,
    /// `active`, or `previous` (what a rollback restores)
    pub state: &'static str,
    pub loaded_at: DateTime<Utc>,
    /// the model slugs it serves
    pub models: Vec<String>,
    /// adapter calls since it was loaded
    pub calls: u64,
    /// of those, how many trapped
    pub traps: u64,
}

/// An install: the version now active, and the one it replaced.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstalledPlugin {
    #[serde(flatten)]
    pub active: PluginView,
    /// kept for a rollback; `null` on a first install
    pub replaced: Option<PluginView>,
}

fn plugin_view(plugin: &LoadedPlugin, state: &'static str) -> PluginView {
    PluginView {
        name: plugin.name.clone(),
        version: plugin.version.clone(),
        api_version: plugin.api_version.clone(),
        sha256: plugin.sha256.clone(),
        state,
        loaded_at: plugin.loaded_at,
        models: plugin
            .manifest
            .models
            .iter()
            .map(|m| m.slug.clone())
            .collect(),
        calls: plugin.calls(),
        traps: plugin.traps(),
    }
}

/// List installed adapters
///
/// The active version of each plugin, and the version a rollback would restore.
#[utoipa::path(
    get, operation_id = "listPlugins", path = "/plugins", tag = "admin",
    responses((status = 200, body = List<PluginView>), Errors)
)]
pub async fn plugins(State(app): State<Arc<App>>, _: Operator) -> Json<List<PluginView>> {
    let mut plugins = Vec::new();
    for plugin in app.registry.all() {
        plugins.push(plugin_view(&plugin, "active"));
        if let Some(previous) = app.registry.previous(&plugin.name) {
            plugins.push(plugin_view(&previous, "previous"));
        }
    }
    Json(List {
        data: plugins,
        has_more: false,
    })
}

/// Install or replace an adapter
///
/// The body is the component's bytes: compiled off the request path, validated (contract version, manifest, a smoke call per model),
/// written to the data directory (so a restart keeps it), then swapped in
/// atomically. Attempts in flight finish on the version they started with; the
/// replaced version is kept for rollback. An invalid plugin changes nothing.
#[utoipa::path(
    put, operation_id = "installPlugin", path = "/plugins/{name}", tag = "admin", params(("name" = String, Path, description = "the plugin's name, as its manifest says")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "a WebAssembly component"),
    responses((status = 200, body = InstalledPlugin), Errors)
)]
pub async fn install_plugin(
    State(app): State<Arc<App>>,
    _: Operator,
    Path(name): Path<String>,
    wasm: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<InstalledPlugin>, ApiError> {
    let wasm = wasm
        .map_err(|rejection| crate::api::body_refused(rejection, crate::api::MAX_PLUGIN_BYTES))?;
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
    Ok(Json(InstalledPlugin {
        active: plugin_view(&plugin, "active"),
        replaced: replaced.map(|p| plugin_view(&p, "previous")),
    }))
}

/// Roll an adapter back
///
/// Restores the version the last swap replaced, and writes that down like an install.
#[utoipa::path(
    post, operation_id = "rollbackPlugin", path = "/plugins/{name}/rollback", tag = "admin", params(("name" = String, Path)),
    responses((status = 200, body = PluginView), Errors)
)]
pub async fn rollback_plugin(
    State(app): State<Arc<App>>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<Json<PluginView>, ApiError> {
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
