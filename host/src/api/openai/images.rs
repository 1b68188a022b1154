//! `POST /openai/v1/images/generations`: `{model, prompt, n, size, response_format,
//! user}` as an execution of the model's canonical image input, answered with
//! signed one-hour download URLs of the stored outputs or their bytes in base64.

use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::TryStreamExt;
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

use super::schema::{Image, ImagesResponse};
use super::{RequestId, errors, finished, with_execution_headers};
use crate::App;
use crate::api::executions::idempotency_key;
use crate::api::fields::Fields;
use crate::api::openapi::OpenAiErrors;
use crate::api::openapi::requests::ImageRequest as ImageRequestBody;
use crate::api::{JsonObject, require};
use crate::auth::{Caller, Scope};
use crate::error::{ApiError, DetailCode, quote};
use crate::executions::{CreateRequest, Mode, request_hash};
use crate::files::Origin;
use crate::plugins::{catalogue, types};

const PATH: &str = "/openai/v1/images/generations";

const PARAMS: &[&str] = &["model", "prompt", "n", "size", "response_format", "user"];

/// Input properties by which a model's schema takes a number of images.
const COUNT_PROPERTIES: &[&str] = &["n", "num_images"];

/// An image request, read.
#[derive(Debug)]
struct ImageRequest {
    create: CreateRequest,
    n: u64,
    b64: bool,
}

/// Create images
///
/// An ordinary execution of the model's canonical image input, answered with signed
/// one-hour download URLs of the stored images, or their bytes in base64.
#[utoipa::path(
    post, operation_id = "createImage", path = "/images/generations", tag = "openai",
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII characters")),
    request_body = ImageRequestBody,
    responses((status = 200, body = ImagesResponse), OpenAiErrors)
)]
pub async fn create(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    caller: Caller,
    Extension(_request_id): Extension<RequestId>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Execution)?;
    let key = idempotency_key(&headers)?;
    let mut request = parse(&body)?;
    count(&app, &mut request)?;
    let idempotency = key.map(|key| {
        let mut canonical = body.clone();
        canonical.retain(|_, value| !value.is_null());
        (key, request_hash("POST", PATH, &Value::Object(canonical)))
    });
    let keyed = idempotency.is_some();
    let renames = [("width", "size"), ("height", "size")];
    let created = app
        .executions
        .create(&caller, request.create, idempotency)
        .await
        .map_err(|error| errors::renamed(error, &renames))?;
    let replayed = created.replayed;
    let execution = finished(&app, &caller, created.execution, keyed).await?;
    let origin = || Origin::caller(&caller, Some(address));
    let mut data = Vec::new();
    let images = execution
        .output
        .as_ref()
        .and_then(|output| output["images"].as_array())
        .cloned()
        .unwrap_or_default();
    for image in &images {
        let file_id = image["file_id"].as_str().unwrap_or_default();
        if request.b64 {
            let (_, bytes) = app.files.download(&caller, file_id, origin()).await?;
            let bytes: Vec<u8> = bytes
                .map_ok(|chunk| chunk.to_vec())
                .try_concat()
                .await
                .map_err(|error| ApiError::from(anyhow::Error::from(error)))?;
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            data.push(Image {
                url: None,
                b64_json: Some(encoded),
            });
        } else {
            let (_, url, _) = app.files.download_url(&caller, file_id, origin()).await?;
            data.push(Image {
                url: Some(url),
                b64_json: None,
            });
        }
    }
    let body = ImagesResponse {
        created: execution.created_at.timestamp(),
        data,
    };
    let response = axum::Json(body).into_response();
    Ok(with_execution_headers(response, &execution, replayed))
}

/// Reads the request into the canonical image input (`size` "WxH" → `width` and
/// `height`), reporting every problem at once.
fn parse(body: &Map<String, Value>) -> Result<ImageRequest, ApiError> {
    super::refuse_unknown(body, PARAMS)?;
    let mut fields = Fields::new(body, PARAMS);
    let model = fields.required_string("model");
    let mut input = Map::new();
    if let Some(prompt) = fields.present("prompt") {
        input.insert("prompt".into(), prompt.clone());
    } else {
        fields.refuse("prompt", DetailCode::Required, "prompt is required");
    }
    let n = fields.integer("n", 1..=10).unwrap_or(1);
    match fields.string("size") {
        None | Some("auto") => {}
        Some(size) => match size
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse::<u64>().ok()?, h.parse::<u64>().ok()?)))
        {
            Some((width, height)) => {
                input.insert("width".into(), json!(width));
                input.insert("height".into(), json!(height));
            }
            None => fields.refuse(
                "size",
                DetailCode::InvalidValue,
                format!(
                    "size must be \"WIDTHxHEIGHT\" in pixels, not {}",
                    quote(size)
                ),
            ),
        },
    }
    let b64 = fields.choice("response_format", &["url", "b64_json"]) == Some("b64_json");
    let mut metadata = Map::new();
    if let Some(user) = fields.string("user") {
        metadata.insert("user".into(), json!(user));
    }
    fields.finish()?;
    Ok(ImageRequest {
        create: CreateRequest {
            model: model.unwrap_or_default().to_string(),
            input: Value::Object(input),
            metadata: Value::Object(metadata),
            mode: Mode::Sync,
            webhook_url: None,
            fallback_models: None,
        },
        n,
        b64,
    })
}

/// Passes `n` to a model whose input takes a number of images; a model that makes
/// one image per execution takes only `n = 1`. An unknown model is left for the
/// create to refuse.
fn count(app: &App, request: &mut ImageRequest) -> Result<(), ApiError> {
    let candidates = app.router.candidates(&request.create.model);
    let models: Vec<&types::Model> = candidates.iter().map(|c| &c.model).collect();
    let Some(definition) = catalogue::public(&request.create.model, &models) else {
        return Ok(());
    };
    let property = COUNT_PROPERTIES
        .iter()
        .find(|name| definition.input_schema["properties"].get(**name).is_some());
    match property {
        Some(name) => {
            if let Value::Object(input) = &mut request.create.input {
                input.insert((*name).to_string(), json!(request.n));
            }
            Ok(())
        }
        None if request.n == 1 => Ok(()),
        None => Err(ApiError::invalid(
            "n",
            DetailCode::OutOfRange,
            format!(
                "{} makes one image per request: n must be 1",
                quote(&request.create.model)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: Value) -> Result<ImageRequest, ApiError> {
        parse(body.as_object().unwrap())
    }

    #[test]
    fn size_becomes_width_and_height() {
        let request = read(json!({"model": "flux", "prompt": "a cat", "size": "512x384", "response_format": "b64_json", "user": "u"})).unwrap();
        assert_eq!(
            request.create.input,
            json!({"prompt": "a cat", "width": 512, "height": 384})
        );
        assert!(request.b64);
        assert_eq!(request.n, 1);
        assert_eq!(request.create.metadata, json!({"user": "u"}));
        let auto =
            read(json!({"model": "flux", "prompt": "a cat", "size": "auto", "n": 2})).unwrap();
        assert_eq!(auto.create.input, json!({"prompt": "a cat"}));
        assert!(!auto.b64);
        assert_eq!(auto.n, 2);
    }

    #[test]
    fn bad_and_unknown_parameters_are_named() {
        for (body, param) in [
            (json!({"model": "m", "prompt": "p", "size": "big"}), "size"),
            (
                json!({"model": "m", "prompt": "p", "quality": "hd"}),
                "quality",
            ),
            (
                json!({"model": "m", "prompt": "p", "response_format": "png"}),
                "response_format",
            ),
            (json!({"model": "m"}), "prompt"),
            (json!({"model": "m", "prompt": "p", "n": 0}), "n"),
        ] {
            let error = read(body.clone()).unwrap_err();
            assert_eq!(error.details[0].field, param, "{body}");
        }
    }
}
