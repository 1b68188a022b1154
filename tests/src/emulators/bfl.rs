//! Black Forest Labs' API: `POST /v1/{model}` → `{id, polling_url}`;
//! `GET /v1/get_result?id=` → `{id, status, result: {sample}}`. The key is `x-key`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{
    Common, Dialect, Emulator, body_json, flagged, header, json_response, png, stable_hash,
};

const MODELS: [&str; 2] = ["flux-pro-1.1", "flux-dev"];

pub struct Bfl {
    common: Arc<Common>,
    tasks: Mutex<HashMap<String, Task>>,
}

struct Task {
    input: Value,
    polls: u32,
}

pub(crate) struct BflDialect;

impl Dialect for BflDialect {
    fn error_body(status: u16) -> Value {
        let detail = match status {
            401 | 403 => "Not authenticated - Invalid Authentication",
            402 => "Insufficient credits",
            429 => "You have exceeded the number of active tasks.",
            _ => "Internal Server Error",
        };
        json!({"detail": detail})
    }

    fn authorized(headers: &HeaderMap, token: &str) -> bool {
        header(headers, "x-key") == Some(token)
    }
}

pub async fn spawn(addr: &str, token: &str) -> std::io::Result<Emulator<Bfl>> {
    super::serve::<Bfl, BflDialect>(addr, token, |common| {
        let state = Arc::new(Bfl {
            common,
            tasks: Mutex::default(),
        });
        let api = Router::new()
            .route("/v1/get_result", get(result))
            .route("/v1/{model}", post(submit))
            .with_state(state.clone());
        (state, api)
    })
    .await
}

fn invalid(field: &str, message: &str) -> Response {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]}),
    )
}

async fn submit(State(state): State<Arc<Bfl>>, Path(model): Path<String>, body: Bytes) -> Response {
    if !MODELS.contains(&model.as_str()) {
        return json_response(StatusCode::NOT_FOUND, json!({"detail": "Not Found"}));
    }
    let Some(input) = body_json(&body) else {
        return invalid("body", "invalid JSON");
    };
    if !input["prompt"].is_string() {
        return invalid("prompt", "field required");
    }
    for side in ["width", "height"] {
        if let Some(value) = input.get(side)
            && !value.as_u64().is_some_and(|v| (256..=1440).contains(&v))
        {
            return invalid(side, "ensure this value is between 256 and 1440");
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let polling_url = format!("{}/v1/get_result?id={id}", state.common.base_url);
    state
        .tasks
        .lock()
        .unwrap()
        .insert(id.clone(), Task { input, polls: 0 });
    json_response(
        StatusCode::OK,
        json!({"id": id, "polling_url": polling_url}),
    )
}

async fn result(
    State(state): State<Arc<Bfl>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let id = query.get("id").cloned().unwrap_or_default();
    let mut tasks = state.tasks.lock().unwrap();
    let Some(task) = tasks.get_mut(&id) else {
        return json_response(
            StatusCode::OK,
            json!({"id": id, "status": "Task not found", "result": null}),
        );
    };
    task.polls += 1;
    let prompt = task.input["prompt"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if flagged(&prompt) {
        return json_response(
            StatusCode::OK,
            json!({"id": id, "status": "Request Moderated", "result": null}),
        );
    }
    if task.polls < 2 {
        return json_response(
            StatusCode::OK,
            json!({"id": id, "status": "Pending", "result": null, "progress": 0.5}),
        );
    }
    let side = |name: &str| task.input[name].as_u64().unwrap_or(1024) as u32;
    let seed = task.input["seed"]
        .as_u64()
        .unwrap_or_else(|| stable_hash(&prompt));
    let sample = state.common.store_file(
        format!("{id}.png"),
        png(side("width"), side("height"), seed),
    );
    json_response(
        StatusCode::OK,
        json!({"id": id, "status": "Ready", "result": {"sample": sample, "prompt": prompt}}),
    )
}
