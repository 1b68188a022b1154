//! `/admin/v1/organizations`: create them, change their file settings, credit them.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use utoipa::ToSchema;

use super::Operator;
use crate::App;
use crate::api::JsonObject;
use crate::api::openapi::Errors;
use crate::api::openapi::requests::{CreateOrganization, Credit, UpdateOrganization};
use crate::auth::{self, Scope};
use crate::billing::{self, BalanceView};
use crate::error::{ApiError, DetailCode};
use crate::files::quota::{self, QuotaView};
use crate::money::Micros;

/// A new organization, with its first API key's secret (shown this once).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedOrganization {
    pub organization_id: String,
    pub name: String,
    /// a full-scope key's secret
    pub api_key: String,
    pub api_key_id: String,
    pub balance: OpeningBalance,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpeningBalance {
    pub available: Micros,
    /// always `USD`
    pub currency: &'static str,
}

/// An organization's file settings (`null`: the server's default) and usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationSettings {
    pub organization_id: String,
    pub name: String,
    pub file_ttl_days: Option<u32>,
    pub file_quota_bytes: Option<u64>,
    pub file_quota_files: Option<u64>,
    /// the effective quota and what is used of it
    pub files: QuotaView,
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

/// Create an organization
///
/// With a full-scope API key (its secret shown this once) and, optionally, an
/// opening balance.
#[utoipa::path(
    post, operation_id = "createOrganization", path = "/organizations", tag = "admin", request_body = CreateOrganization,
    responses((status = 201, body = CreatedOrganization), Errors)
)]
pub async fn create_organization(
    State(app): State<Arc<App>>,
    _: Operator,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<CreatedOrganization>), ApiError> {
    crate::api::known_fields(&body, &["name", "credit_usd"])?;
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
        Json(CreatedOrganization {
            organization_id: org.id,
            name: org.name,
            api_key: secret,
            api_key_id: key.id,
            balance: OpeningBalance {
                available: credit,
                currency: "USD",
            },
        }),
    ))
}

/// Change an organization's file settings
///
/// How long the organization's files live when an upload does
/// not say (1–365), and its storage quota (bytes, files); `null` goes back to the
/// server's default, an absent field stays as it is. Files already stored keep their
/// expiry; a quota lowered below the usage refuses new uploads, deletes nothing.
/// Answers the settings with the organization's usage (`files`).
#[utoipa::path(
    patch, operation_id = "updateOrganization", path = "/organizations/{id}", tag = "admin", params(("id" = String, Path, description = "`org_…`")),
    request_body = UpdateOrganization,
    responses((status = 200, body = OrganizationSettings), Errors)
)]
pub async fn update_organization(
    State(app): State<Arc<App>>,
    _: Operator,
    Path(org_id): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Json<OrganizationSettings>, ApiError> {
    const FIELDS: [&str; 3] = ["file_ttl_days", "file_quota_bytes", "file_quota_files"];
    crate::api::known_fields(&body, &FIELDS)?;
    if FIELDS.iter().all(|field| !body.contains_key(*field)) {
        return Err(ApiError::invalid(
            "body",
            DetailCode::Required,
            "name at least one of file_ttl_days, file_quota_bytes, file_quota_files",
        ));
    }
    let ttl = setting(&body, "file_ttl_days", 1..=365)?.map(|days| days.map(|d| d as u32));
    let quota_bytes = setting(&body, "file_quota_bytes", 0..=i64::MAX as u64)?;
    let quota_files = setting(&body, "file_quota_files", 0..=i64::MAX as u64)?;
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
    Ok(Json(OrganizationSettings {
        files: files.view(app.files.settings()),
        organization_id: org.id,
        name: org.name,
        file_ttl_days: org.file_ttl_days,
        file_quota_bytes: files.quota_bytes,
        file_quota_files: files.quota_files,
    }))
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

/// Credit an organization's balance
#[utoipa::path(
    post, operation_id = "creditOrganization", path = "/organizations/{id}/credit", tag = "admin", params(("id" = String, Path, description = "`org_…`")),
    request_body = Credit,
    responses((status = 200, body = BalanceView), Errors)
)]
pub async fn credit(
    State(app): State<Arc<App>>,
    _: Operator,
    Path(org_id): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Json<BalanceView>, ApiError> {
    crate::api::known_fields(&body, &["amount_usd", "memo"])?;
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
    Ok(Json(account.view()))
}
