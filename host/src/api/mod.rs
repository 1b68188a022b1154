//! HTTP API: thin handlers that parse, authorize, call a service and render.

mod admin;
mod body;
mod envelope;
mod executions;
mod fields;
mod files;
mod gate;
mod keys;
mod lists;
pub mod metrics;
mod models;
mod openai;
mod webhooks;

pub use body::{JsonObject, body_refused, known_fields, unknown_fields};
use envelope::request_id;
use gate::{bearer, gate};
pub use lists::{ListQuery, Page, list_body};

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

use crate::App;
use crate::auth::{Caller, Scope};
use crate::error::{ApiError, Code};

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
        .route("/webhooks/outbox", get(admin::webhook_outbox))
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
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::scrape))
        .nest("/files", signed)
        .nest("/v1", v1)
        .nest(
            openai::BASE,
            openai::router().layer(DefaultBodyLimit::max(MAX_JSON_BODY)),
        )
        .nest("/admin/v1", admin)
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(Code::NotFound, "This endpoint does not accept that method.")
        })
        .layer(middleware::from_fn_with_state(app.clone(), gate))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| ApiError::internal().into_response(),
        ))
        .layer(middleware::from_fn(metrics::track_http))
        .layer(middleware::from_fn(request_id))
        .with_state(app)
}

/// `GET /readyz`: `200` when this host can serve, else `503`; both say why.
async fn readyz(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
) -> axum::response::Response {
    let readiness = crate::readiness::Readiness::of(&app);
    let status = if readiness.ready() {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness.body())).into_response()
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
