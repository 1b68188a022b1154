//! Replicate's predictions API: `POST /v1/models/{owner}/{name}/predictions`,
//! `GET /v1/predictions/{id}`, `POST /v1/predictions/{id}/cancel`; outputs are URLs
//! of files the emulator serves (as replicate.delivery would).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{
    Common, Dialect, Emulator, body_json, flagged, header, json_response, png, stable_hash,
};

const MODELS: [&str; 2] = [
    "black-forest-labs/flux-1.1-pro",
    "black-forest-labs/flux-schnell",
];

pub struct Replicate {
    common: Arc<Common>,
    predictions: Mutex<HashMap<String, Prediction>>,
    /// polls a prediction answers `processing` before it succeeds
    polls_until_done: AtomicU32,
    /// keep every prediction processing (a job that never finishes)
    never_finish: AtomicBool,
    /// when non-zero, predictions finish on their own this many ms after creation
    /// (and call their webhook); polls only report
    background_ms: AtomicU64,
}

struct Prediction {
    model: String,
    input: Value,
    status: &'static str,
    polls: u32,
    output: Option<String>,
    error: Option<String>,
    webhook: Option<String>,
    created_at: String,
}

impl Replicate {
    pub fn set_polls_until_done(&self, polls: u32) {
        self.polls_until_done.store(polls, Ordering::SeqCst);
    }

    pub fn set_never_finish(&self, never: bool) {
        self.never_finish.store(never, Ordering::SeqCst);
    }

    /// Predictions finish by themselves `ms` after creation and call their webhook.
    pub fn complete_in_background(&self, ms: u64) {
        self.background_ms.store(ms, Ordering::SeqCst);
    }

    fn view(&self, id: &str, p: &Prediction) -> Value {
        let base = &self.common.base_url;
        json!({
            "id": id,
            "model": p.model,
            "version": "hidden",
            "input": p.input,
            "logs": "",
            "output": p.output,
            "error": p.error,
            "status": p.status,
            "created_at": p.created_at,
            "urls": {
                "get": format!("{base}/v1/predictions/{id}"),
                "cancel": format!("{base}/v1/predictions/{id}/cancel"),
            },
            "metrics": if p.status == "succeeded" { json!({"predict_time": 1.23}) } else { json!({}) },
        })
    }

    /// Runs the prediction to its end: an image, or a moderation failure.
    fn finish(&self, id: &str, p: &mut Prediction) {
        let prompt = p.input["prompt"].as_str().unwrap_or_default();
        if flagged(prompt) {
            p.status = "failed";
            p.error = Some("E005: The input or output was flagged as sensitive. Please try again with different inputs.".into());
        } else {
            let side = |name: &str| p.input[name].as_u64().unwrap_or(1024) as u32;
            let seed = p.input["seed"]
                .as_u64()
                .unwrap_or_else(|| stable_hash(prompt));
            let image = png(side("width"), side("height"), seed);
            p.output = Some(self.common.store_file(format!("{id}.png"), image));
            p.status = "succeeded";
        }
    }

    fn deliver_webhook(&self, id: &str, p: &Prediction) {
        if let Some(url) = p.webhook.clone() {
            let body = self.view(id, p);
            tokio::spawn(async move {
                let _ = reqwest::Client::new().post(url).json(&body).send().await;
            });
        }
    }
}

pub struct ReplicateDialect;

impl Dialect for ReplicateDialect {
    fn error_body(status: u16) -> Value {
        let (title, detail) = match status {
            401 => (
                "Unauthenticated",
                "You did not pass a valid authentication token",
            ),
            404 => ("Not found", "The requested resource could not be found."),
            422 => ("Input validation failed", "The input is invalid."),
            429 => (
                "Request was throttled.",
                "Request was throttled. Expected available in 1 second.",
            ),
            _ => ("Internal Server Error", "An unexpected error occurred."),
        };
        json!({"title": title, "detail": detail, "status": status})
    }
}

pub async fn spawn(addr: &str, token: &str) -> std::io::Result<Emulator<Replicate>> {
    super::serve::<Replicate, ReplicateDialect>(addr, token, |common| {
        let state = Arc::new(Replicate {
            common,
            predictions: Mutex::default(),
            polls_until_done: AtomicU32::new(1),
            never_finish: AtomicBool::new(false),
            background_ms: AtomicU64::new(0),
        });
        let api = Router::new()
            .route("/v1/models/{owner}/{name}/predictions", post(create))
            .route("/v1/predictions/{id}", get(fetch))
            .route("/v1/predictions/{id}/cancel", post(cancel))
            .with_state(state.clone());
        (state, api)
    })
    .await
}

fn invalid(field: &str, kind: &str, description: &str) -> Response {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({
            "title": "Input validation failed",
            "detail": format!("- input: {description}"),
            "status": 422,
            "invalid_fields": [{"type": kind, "field": field, "description": description}],
        }),
    )
}

async fn create(
    State(state): State<Arc<Replicate>>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let model = format!("{owner}/{name}");
    if !MODELS.contains(&model.as_str()) {
        return json_response(StatusCode::NOT_FOUND, ReplicateDialect::error_body(404));
    }
    let Some(body) = body_json(&body) else {
        return invalid("input", "invalid", "the body is not JSON");
    };
    let input = body["input"].clone();
    if !input["prompt"].is_string() {
        return invalid("prompt", "required", "prompt is required");
    }
    for side in ["width", "height"] {
        if let Some(value) = input.get(side)
            && !value.as_u64().is_some_and(|v| (256..=1440).contains(&v))
        {
            return invalid(
                side,
                "number.range",
                &format!("{side} must be between 256 and 1440"),
            );
        }
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut prediction = Prediction {
        model,
        input,
        status: "starting",
        polls: 0,
        output: None,
        error: None,
        webhook: body["webhook"].as_str().map(str::to_string),
        created_at: rfc3339_now(),
    };
    // `Prefer: wait` asks for the finished prediction in this answer.
    if header(&headers, "prefer").is_some_and(|p| p.starts_with("wait"))
        && !state.never_finish.load(Ordering::SeqCst)
    {
        state.finish(&id, &mut prediction);
    }
    let view = state.view(&id, &prediction);
    state
        .predictions
        .lock()
        .unwrap()
        .insert(id.clone(), prediction);
    let background = state.background_ms.load(Ordering::SeqCst);
    if background > 0 {
        let state = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(background)).await;
            let mut predictions = state.predictions.lock().unwrap();
            if let Some(prediction) = predictions.get_mut(&id)
                && matches!(prediction.status, "starting" | "processing")
            {
                state.finish(&id, prediction);
                state.deliver_webhook(&id, prediction);
            }
        });
    }
    json_response(StatusCode::CREATED, view)
}

async fn fetch(State(state): State<Arc<Replicate>>, Path(id): Path<String>) -> Response {
    let mut predictions = state.predictions.lock().unwrap();
    let Some(prediction) = predictions.get_mut(&id) else {
        return json_response(StatusCode::NOT_FOUND, ReplicateDialect::error_body(404));
    };
    if matches!(prediction.status, "starting" | "processing") {
        // Never-finishing and self-finishing predictions only report on a poll.
        let passive = state.never_finish.load(Ordering::SeqCst)
            || state.background_ms.load(Ordering::SeqCst) > 0;
        prediction.polls += 1;
        if !passive && prediction.polls >= state.polls_until_done.load(Ordering::SeqCst) {
            state.finish(&id, prediction);
            state.deliver_webhook(&id, prediction);
        } else {
            prediction.status = "processing";
        }
    }
    json_response(StatusCode::OK, state.view(&id, prediction))
}

async fn cancel(State(state): State<Arc<Replicate>>, Path(id): Path<String>) -> Response {
    let mut predictions = state.predictions.lock().unwrap();
    let Some(prediction) = predictions.get_mut(&id) else {
        return json_response(StatusCode::NOT_FOUND, ReplicateDialect::error_body(404));
    };
    if matches!(prediction.status, "starting" | "processing") {
        prediction.status = "canceled";
    }
    json_response(StatusCode::OK, state.view(&id, prediction))
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
