//! HTTP API: thin handlers that parse, authorize, call a service and render.

mod admin;
mod body;
mod envelope;
mod execution_events;
mod executions;
mod fields;
mod files;
mod gate;
mod keys;
mod lists;
pub mod metrics;
mod models;
mod openai;
pub mod openapi;
mod webhook_fields;
mod webhooks;

pub use body::{JsonObject, body_refused, known_fields, unknown_fields};
use envelope::request_id;
use gate::{bearer, gate};
pub use lists::{ListQuery, Page, list_body};

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::response::IntoResponse;
use axum::{Json, Router};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::App;
use crate::auth::{Caller, Scope};
use crate::error::{ApiError, Code};
use crate::readiness::ReadinessReport;

/// Largest JSON body accepted by any endpoint.
pub const MAX_JSON_BODY: usize = 1024 * 1024;
/// Largest plugin an operator may install.
pub const MAX_PLUGIN_BYTES: usize = 50 * 1024 * 1024;

/// Every route, each registered with its handler's `#[utoipa::path]`, so that the
/// API document (`GET /openapi.json`) is the router's own description.
pub fn router(app: Arc<App>) -> Router {
    let (routes, document) = routes().split_for_parts();
    routes
        .merge(openapi::router(document))
        .fallback(|| async {
            ApiError::new(
                Code::NotFound,
                "There is no such endpoint; GET /openapi.json lists them all.",
            )
        })
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

/// The API document of every route.
pub fn document() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

fn routes() -> OpenApiRouter<Arc<App>> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(executions::create, executions::list))
        .routes(routes!(executions::get))
        .routes(routes!(executions::result))
        .routes(routes!(executions::cancel))
        .routes(routes!(executions::ledger))
        .routes(routes!(executions::balance))
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::revoke))
        .routes(routes!(keys::rotate))
        .routes(routes!(files::list))
        .routes(routes!(files::create_upload))
        .routes(routes!(files::confirm))
        .routes(routes!(files::get, files::delete))
        .routes(routes!(files::download))
        .routes(routes!(files::url))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::test))
        .routes(routes!(webhooks::default_secret))
        .routes(routes!(models::list))
        .routes(routes!(models::get))
        // Providers, not clients, call this one: no API key, no client rate limit
        // (the gate lets it through; its URL carries its own token).
        .routes(routes!(executions::provider_callback))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY));
    let plugin_uploads = OpenApiRouter::new()
        .routes(routes!(admin::plugins::install_plugin))
        .layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES));
    let admin = OpenApiRouter::new()
        .routes(routes!(admin::organizations::create_organization))
        .routes(routes!(admin::organizations::update_organization))
        .routes(routes!(admin::organizations::credit))
        .routes(routes!(admin::plugins::plugins))
        .routes(routes!(admin::verify_ledger))
        .routes(routes!(admin::webhook_outbox))
        .routes(routes!(admin::execution))
        .routes(routes!(admin::file_audit))
        .routes(routes!(admin::advance_clock))
        .routes(routes!(admin::plugins::rollback_plugin))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .merge(plugin_uploads);
    // Signed URLs carry their own authorization (no API key, no key rate limit).
    let signed = OpenApiRouter::new()
        .routes(routes!(files::signed_download))
        .routes(routes!(files::grant))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(files::receive_upload))
                .layer(DefaultBodyLimit::disable()),
        );
    let mut routes = OpenApiRouter::with_openapi(openapi::contract())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics::scrape))
        .nest("/files", signed)
        .nest("/v1", v1)
        .nest(
            openai::BASE,
            openai::routes().layer(DefaultBodyLimit::max(MAX_JSON_BODY)),
        )
        .nest("/admin/v1", admin);
    openapi::complete(routes.get_openapi_mut());
    routes
}

/// Whether the process answers
#[utoipa::path(get, operation_id = "getHealth", path = "/healthz", tag = "operations",
    responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `{"status": "ok"}`: the process answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
}

/// Whether this host can serve
///
/// `200` when the store answers, every configured adapter is loaded and the
/// dispatcher runs; `503` otherwise. Both say why.
#[utoipa::path(get, operation_id = "getReadiness", path = "/readyz", tag = "operations",
    responses((status = 200, body = ReadinessReport), (status = 503, body = ReadinessReport)))]
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
