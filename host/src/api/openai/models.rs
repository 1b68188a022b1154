//! `GET /openai/v1/models` and `/models/{id}`: the catalogue's models this door
//! can serve, in OpenAI's shape. Chat models (text models whose input takes
//! `messages`) and image models whose input needs nothing but a `prompt`.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use super::schema::{Model, ModelList};
use crate::App;
use crate::api::openapi::OpenAiErrors;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::plugins::{catalogue, types};

/// `created` of every model: when this server process began serving the catalogue
/// (the catalogue keeps no dates, and OpenAI's clients require the field).
static STARTED: LazyLock<i64> = LazyLock::new(|| chrono::Utc::now().timestamp());

/// Whether the door serves `slug`, served by the active adapters.
fn servable(app: &App, slug: &str) -> bool {
    let candidates = app.router.candidates(slug);
    let models: Vec<&types::Model> = candidates.iter().map(|c| &c.model).collect();
    let Some(definition) = catalogue::public(slug, &models) else {
        return false;
    };
    let schema = &definition.input_schema;
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match definition.modality {
        "text" => schema["properties"].get("messages").is_some(),
        "image" => schema["properties"].get("prompt").is_some() && required == ["prompt"],
        _ => false,
    }
}

fn model(slug: &str) -> Model {
    Model {
        id: slug.to_string(),
        object: "model",
        created: *STARTED,
        owned_by: "modelroute",
    }
}

/// List the models the door serves
#[utoipa::path(
    get, operation_id = "listOpenAiModels", path = "/models", tag = "openai",
    responses((status = 200, body = ModelList), OpenAiErrors)
)]
pub async fn list(State(app): State<Arc<App>>, _caller: Caller) -> Json<ModelList> {
    let slugs: BTreeSet<String> = app
        .registry
        .all()
        .iter()
        .flat_map(|plugin| plugin.manifest.models.iter().map(|m| m.slug.clone()))
        .collect();
    let data = slugs
        .iter()
        .filter(|slug| servable(&app, slug))
        .map(|slug| model(slug))
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

/// Get a model the door serves
#[utoipa::path(
    get, operation_id = "getOpenAiModel", path = "/models/{id}", tag = "openai", params(("id" = String, Path, description = "the model's slug")),
    responses((status = 200, body = Model), OpenAiErrors)
)]
pub async fn get(
    State(app): State<Arc<App>>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Model>, ApiError> {
    if servable(&app, &id) {
        Ok(Json(model(&id)))
    } else {
        Err(ApiError::new(
            crate::error::Code::NotFound,
            format!(
                "The model {} does not exist or cannot be served here.",
                crate::error::quote(&id)
            ),
        ))
    }
}
