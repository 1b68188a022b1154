//! `/admin/v1`: the operator's API, guarded by the operator token.

pub mod organizations;
pub mod plugins;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use utoipa::ToSchema;

use super::lists::List;
use super::openapi::Errors;
use super::openapi::requests::AdvanceClock;
use super::{JsonObject, bearer};
use crate::App;
use crate::error::{ApiError, Code, DetailCode};
use crate::executions::LedgerReport;
use crate::files::audit::AuditEntry;
use crate::webhooks::delivery::Backlog;

/// The service clock after a move.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClockNow {
    pub now: DateTime<Utc>,
}

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

/// Verify the ledger
///
/// Balances rebuilt from the entries, compared with the accounts.
#[utoipa::path(
    get, operation_id = "verifyLedger", path = "/ledger/verify", tag = "admin",
    responses((status = 200, body = LedgerReport), Errors)
)]
pub async fn verify_ledger(
    State(app): State<Arc<App>>,
    _: Operator,
) -> Result<Json<LedgerReport>, ApiError> {
    Ok(Json(app.executions.verify_ledger()?))
}

/// Inspect the webhook outbox
///
/// Pending deliveries, how many are due now and
/// in flight, and when the next one is due.
#[utoipa::path(
    get, operation_id = "getWebhookOutbox", path = "/webhooks/outbox", tag = "admin",
    responses((status = 200, body = Backlog), Errors)
)]
pub async fn webhook_outbox(
    State(app): State<Arc<App>>,
    _: Operator,
) -> Result<Json<Backlog>, ApiError> {
    Ok(Json(app.webhooks.backlog()?))
}

/// Inspect an execution
///
/// The whole record, with every attempt (provider,
/// plugin version, provider job, outcome). For operators only.
#[utoipa::path(
    get, operation_id = "inspectExecution", path = "/executions/{id}", tag = "admin", params(("id" = String, Path, description = "`exec_…`")),
    responses((status = 200, description = "The stored record (its shape may change between versions)", body = Object), Errors)
)]
pub async fn execution(
    State(app): State<Arc<App>>,
    _: Operator,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let execution = app
        .executions
        .store_get(&id)?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(
        serde_json::to_value(execution).map_err(anyhow::Error::from)?,
    ))
}

/// A file's audit trail
///
/// Every upload, download, grant and delete of
/// a file, oldest first (kept after the file is gone). `404` when the id names no
/// file, past or present.
#[utoipa::path(
    get, operation_id = "getFileAudit", path = "/files/{id}/audit", tag = "admin", params(("id" = String, Path, description = "`file_…`")),
    responses((status = 200, body = List<AuditEntry>), Errors)
)]
pub async fn file_audit(
    State(app): State<Arc<App>>,
    _: Operator,
    Path(id): Path<String>,
) -> Result<Json<List<AuditEntry>>, ApiError> {
    let entries = crate::files::audit::trail(&app.store, &id)?.ok_or_else(ApiError::not_found)?;
    Ok(Json(List {
        data: entries,
        has_more: false,
    }))
}

/// Move the service clock forward
///
/// For tests of schedules in minutes and days. Only with `[testing] clock_control`.
#[utoipa::path(
    post, operation_id = "advanceClock", path = "/clock/advance", tag = "admin", request_body = AdvanceClock,
    responses((status = 200, body = ClockNow), Errors)
)]
pub async fn advance_clock(
    State(app): State<Arc<App>>,
    _: Operator,
    JsonObject(body): JsonObject,
) -> Result<Json<ClockNow>, ApiError> {
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
    Ok(Json(ClockNow {
        now: crate::clock::now(),
    }))
}
