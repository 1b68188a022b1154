//! `/v1/models`: the catalogue. Descriptions and schemas come from the canonical
//! definitions (see `plugins::catalogue`) or the operator's declarations
//! (`[[models]]`), prices from the adapters serving a model (or the declaration); it never names a provider or an adapter. A model is `available` while a provider serving
//! it can take traffic: its last health probe reached it and its breaker is not open.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use utoipa::ToSchema;

use super::lists::List;
use super::openapi::Errors;
use super::openapi::requests::ListParams;
use super::{ListQuery, Page, list_body};
use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::money::Micros;
use crate::plugins::{catalogue, types};

/// A model of the catalogue.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Model)]
pub struct ModelView {
    #[schema(example = "flux-1.1-pro")]
    pub slug: String,
    /// `image`, `video`, `audio` or `text`
    pub modality: &'static str,
    pub description: String,
    /// a JSON Schema of the canonical input
    #[schema(value_type = Object)]
    pub input_schema: Value,
    pub pricing: Pricing,
    /// whether a healthy provider serves it now
    pub available: bool,
}

/// Unit prices: only the units that are charged.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pricing {
    /// always `USD`
    pub currency: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub per_request: Option<Micros>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub per_image: Option<Micros>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub per_megapixel: Option<Micros>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub per_second: Option<Micros>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub per_million_input_tokens: Option<Micros>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub per_million_output_tokens: Option<Micros>,
}

fn describe(app: &App, slug: &str) -> Option<ModelView> {
    let candidates = app.router.candidates(slug);
    let models: Vec<&types::Model> = candidates.iter().map(|c| &c.model).collect();
    let definition = catalogue::public(slug, &models)?;
    let cheapest = candidates.iter().map(|c| &c.model.price).min_by_key(|p| {
        (
            p.per_request,
            p.per_image,
            p.per_megapixel,
            p.per_second,
            p.per_million_input_tokens,
        )
    })?;
    Some(ModelView {
        slug: slug.to_string(),
        modality: definition.modality,
        description: definition.description,
        input_schema: definition.input_schema,
        pricing: pricing(cheapest),
        available: candidates.iter().any(|c| c.provider.is_available()),
    })
}

fn pricing(price: &types::Price) -> Pricing {
    let charged = |micros: u64| (micros > 0).then_some(Micros(micros));
    Pricing {
        currency: "USD",
        per_request: charged(price.per_request),
        per_image: charged(price.per_image),
        per_megapixel: charged(price.per_megapixel),
        per_second: charged(price.per_second),
        per_million_input_tokens: charged(price.per_million_input_tokens),
        per_million_output_tokens: charged(price.per_million_output_tokens),
    }
}

/// List the catalogue's models, by slug
#[utoipa::path(
    get, operation_id = "listModels", path = "/models", tag = "models", params(ListParams),
    responses((status = 200, body = List<ModelView>), Errors)
)]
pub async fn list(
    State(app): State<Arc<App>>,
    _caller: Caller,
    ListQuery(query): ListQuery,
) -> Result<Json<List<ModelView>>, ApiError> {
    let page = Page::from_query(&query, &[])?;
    let slugs: BTreeSet<String> = app
        .registry
        .all()
        .iter()
        .flat_map(|plugin| plugin.manifest.models.iter().map(|m| m.slug.clone()))
        .chain(app.router.declared_slugs())
        .collect();
    let (slugs, has_more) = page.of(slugs.into_iter().collect(), String::as_str)?;
    let models = slugs
        .iter()
        .filter_map(|slug| describe(&app, slug))
        .collect();
    Ok(list_body(models, has_more))
}

/// Get a model
#[utoipa::path(
    get, operation_id = "getModel", path = "/models/{slug}", tag = "models", params(("slug" = String, Path, example = "flux-1.1-pro")),
    responses((status = 200, body = ModelView), Errors)
)]
pub async fn get(
    State(app): State<Arc<App>>,
    _caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<ModelView>, ApiError> {
    describe(&app, &slug)
        .map(Json)
        .ok_or_else(ApiError::not_found)
}
