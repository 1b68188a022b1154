//! `/v1/models`: the catalogue. Descriptions and schemas come from the canonical
//! definitions (see `plugins::catalogue`) or the operator's declarations
//! (`[[models]]`), prices from the adapters serving a model (or the declaration); it never names a provider or an adapter. A model is `available` while a provider serving
//! it can take traffic: its last health probe reached it and its breaker is not open.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

use super::{ListQuery, Page, list_body};
use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::money::Micros;
use crate::plugins::{catalogue, types};

fn describe(app: &App, slug: &str) -> Option<Value> {
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
    Some(json!({
        "slug": slug,
        "modality": definition.modality,
        "description": definition.description,
        "input_schema": definition.input_schema,
        "pricing": pricing(cheapest),
        "available": candidates.iter().any(|c| c.provider.is_available()),
    }))
}

/// Unit prices as decimal strings, only the units that are charged.
fn pricing(price: &types::Price) -> Value {
    let mut pricing = serde_json::Map::new();
    pricing.insert("currency".into(), json!("USD"));
    for (name, value) in [
        ("per_request", price.per_request),
        ("per_image", price.per_image),
        ("per_megapixel", price.per_megapixel),
        ("per_second", price.per_second),
        ("per_million_input_tokens", price.per_million_input_tokens),
        ("per_million_output_tokens", price.per_million_output_tokens),
    ] {
        if value > 0 {
            pricing.insert(name.into(), json!(Micros(value)));
        }
    }
    Value::Object(pricing)
}

/// `GET /v1/models`, by slug.
pub async fn list(
    State(app): State<Arc<App>>,
    _caller: Caller,
    ListQuery(query): ListQuery,
) -> Result<Json<Value>, ApiError> {
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

pub async fn get(
    State(app): State<Arc<App>>,
    _caller: Caller,
    Path(slug): Path<String>,
) -> Result<Json<Value>, ApiError> {
    describe(&app, &slug)
        .map(Json)
        .ok_or_else(ApiError::not_found)
}
