//! fal's queue API: `POST /{model…}` → `{request_id, status_url, response_url,
//! cancel_url}`; `GET …/requests/{id}/status`; `GET …/requests/{id}` for the output;
//! `PUT …/requests/{id}/cancel`. The key is `Authorization: Key <key>`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::routing::any;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{
    Common, Dialect, Emulator, body_json, flagged, header, json_response, png, stable_hash,
};

const IMAGE_MODEL: &str = "fal-ai/flux-pro/v1.1";
const VIDEO_MODEL: &str = "fal-ai/kling-video/v1/standard/text-to-video";

pub struct Fal {
    common: Arc<Common>,
    requests: Mutex<HashMap<String, Job>>,
}

struct Job {
    model: String,
    input: Value,
    done: bool,
    cancelled: bool,
}

/// How long a request runs before fal finishes it (and calls its webhook).
const RUN_MS: u64 = 200;

pub(crate) struct FalDialect;

impl Dialect for FalDialect {
    fn error_body(status: u16) -> Value {
        let detail = match status {
            401 => "Unauthorized",
            429 => "Too many requests",
            _ => "Internal server error",
        };
        json!({"detail": detail})
    }

    fn authorized(headers: &HeaderMap, token: &str) -> bool {
        header(headers, "authorization") == Some(format!("Key {token}").as_str())
    }
}

pub async fn spawn(addr: &str, token: &str) -> std::io::Result<Emulator<Fal>> {
    super::serve::<Fal, FalDialect>(addr, token, |common| {
        let state = Arc::new(Fal {
            common,
            requests: Mutex::default(),
        });
        let api = Router::new()
            .route("/{*path}", any(route))
            .with_state(state.clone());
        (state, api)
    })
    .await
}

/// A minimal MP4 (an `ftyp` box and an empty `mdat`): enough to be recognized.
fn mp4() -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&24u32.to_be_bytes());
    bytes.extend_from_slice(b"ftypisom\0\0\x02\0isommp41");
    bytes.extend_from_slice(&8u32.to_be_bytes());
    bytes.extend_from_slice(b"mdat");
    bytes
}

async fn route(
    State(state): State<Arc<Fal>>,
    method: Method,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    match (method, path.split_once("/requests/")) {
        (Method::POST, None) => submit(&state, &path, query.get("fal_webhook").cloned(), &body),
        (Method::GET, Some((_, rest))) => match rest.strip_suffix("/status") {
            Some(id) => status(&state, id),
            None => result(&state, rest),
        },
        (Method::PUT, Some((_, rest))) => cancel(&state, rest.trim_end_matches("/cancel")),
        _ => json_response(StatusCode::NOT_FOUND, json!({"detail": "Not Found"})),
    }
}

fn submit(state: &Arc<Fal>, model: &str, webhook: Option<String>, body: &Bytes) -> Response {
    if model != IMAGE_MODEL && model != VIDEO_MODEL {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"detail": format!("Application '{model}' not found")}),
        );
    }
    let Some(input) = body_json(body).filter(|i| i["prompt"].is_string()) else {
        return json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]}),
        );
    };
    let id = uuid::Uuid::new_v4().to_string();
    // Like fal, the request URLs drop the model's sub-path.
    let app: Vec<&str> = model.split('/').take(2).collect();
    let base = format!(
        "{}/{}/requests/{id}",
        state.common.advertised_url(),
        app.join("/")
    );
    state.requests.lock().unwrap().insert(
        id.clone(),
        Job {
            model: model.to_string(),
            input,
            done: false,
            cancelled: false,
        },
    );
    let (finisher, request_id) = (state.clone(), id.clone());
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(RUN_MS)).await;
        if let Some(job) = finisher.requests.lock().unwrap().get_mut(&request_id) {
            job.done = true;
        }
        if let Some(url) = webhook {
            let payload = json!({"request_id": request_id, "status": "OK", "payload": null});
            let _ = reqwest::Client::new().post(url).json(&payload).send().await;
        }
    });
    json_response(
        StatusCode::OK,
        json!({"request_id": id, "status_url": format!("{base}/status"), "response_url": base, "cancel_url": format!("{base}/cancel")}),
    )
}

fn status(state: &Arc<Fal>, id: &str) -> Response {
    let requests = state.requests.lock().unwrap();
    let Some(job) = requests.get(id) else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"detail": "Request not found"}),
        );
    };
    let status = if job.done || job.cancelled {
        "COMPLETED"
    } else {
        "IN_PROGRESS"
    };
    json_response(StatusCode::OK, json!({"status": status, "logs": []}))
}

fn result(state: &Arc<Fal>, id: &str) -> Response {
    let requests = state.requests.lock().unwrap();
    let Some(job) = requests.get(id) else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"detail": "Request not found"}),
        );
    };
    let prompt = job.input["prompt"].as_str().unwrap_or_default();
    if job.model == VIDEO_MODEL {
        let url = state.common.store_file(format!("{id}.mp4"), mp4());
        return json_response(
            StatusCode::OK,
            json!({"video": {"url": url, "content_type": "video/mp4", "file_name": "output.mp4"}}),
        );
    }
    let size = &job.input["image_size"];
    let (width, height) = (
        size["width"].as_u64().unwrap_or(1024) as u32,
        size["height"].as_u64().unwrap_or(1024) as u32,
    );
    let seed = job.input["seed"]
        .as_u64()
        .unwrap_or_else(|| stable_hash(prompt));
    let url = state
        .common
        .store_file(format!("{id}.png"), png(width, height, seed));
    json_response(
        StatusCode::OK,
        json!({"images": [{"url": url, "width": width, "height": height, "content_type": "image/png"}], "seed": seed, "has_nsfw_concepts": [flagged(prompt)]}),
    )
}

fn cancel(state: &Arc<Fal>, id: &str) -> Response {
    match state.requests.lock().unwrap().get_mut(id) {
        Some(job) => {
            job.cancelled = true;
            json_response(
                StatusCode::ACCEPTED,
                json!({"status": "CANCELLATION_REQUESTED"}),
            )
        }
        None => json_response(
            StatusCode::NOT_FOUND,
            json!({"detail": "Request not found"}),
        ),
    }
}
