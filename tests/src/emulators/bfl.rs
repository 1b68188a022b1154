//! Black Forest Labs' API: `POST /v1/{model}` → `{id, polling_url}`;
//! `GET /v1/get_result?id=` → `{id, status, result: {sample}}`. The key is `x-key`.
//!
//! `flux-kontext-pro` edits `input_image`: base64 bytes (invalid base64 is a 422) or a
//! URL the emulator downloads before answering. Either way the image is recorded
//! ([`Bfl::fetched`]; inline bytes as `url: "inline"`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{
    Common, Dialect, Emulator, Fetched, aspect_size, body_json, flagged, header, json_response,
    png, png_dimensions, stable_hash,
};

const MODELS: [&str; 3] = ["flux-pro-1.1", "flux-dev", KONTEXT];

/// Image editing: `input_image` and an optional `aspect_ratio` (by default the input
/// image's).
const KONTEXT: &str = "flux-kontext-pro";

pub struct Bfl {
    common: Arc<Common>,
    tasks: Mutex<HashMap<String, Task>>,
}

struct Task {
    input: Value,
    polls: u32,
    /// The size of the image it produces.
    size: (u32, u32),
    /// The input image could not be downloaded: the task ends in `Error`.
    download_failed: bool,
}

impl Bfl {
    /// Every input image received (downloaded or inline), oldest first.
    pub fn fetched(&self) -> Vec<Fetched> {
        self.common.fetched()
    }
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
    let side = |name: &str| input[name].as_u64().unwrap_or(1024) as u32;
    let mut size = (side("width"), side("height"));
    let mut download_failed = false;
    if model == KONTEXT {
        let ratio = match input.get("aspect_ratio") {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_str().and_then(aspect_size) {
                Some(size) => Some(size),
                None => {
                    return invalid("aspect_ratio", "Aspect ratio must be between 21:9 and 9:21");
                }
            },
        };
        let image = match input.get("input_image") {
            None | Some(Value::Null) => None,
            Some(Value::String(url))
                if url.starts_with("http://") || url.starts_with("https://") =>
            {
                let bytes = state.common.download(url).await;
                download_failed = bytes.is_none();
                bytes
            }
            Some(Value::String(encoded)) => match decode_image(encoded) {
                Some(bytes) => {
                    state.common.record_inline(&bytes);
                    Some(bytes)
                }
                None => return invalid("input_image", "Invalid base64 image"),
            },
            Some(_) => return invalid("input_image", "str type expected"),
        };
        size = ratio
            .or_else(|| image.as_deref().and_then(png_dimensions))
            .unwrap_or((1024, 1024));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let polling_url = format!("{}/v1/get_result?id={id}", state.common.advertised_url());
    state.tasks.lock().unwrap().insert(
        id.clone(),
        Task {
            input,
            polls: 0,
            size,
            download_failed,
        },
    );
    json_response(
        StatusCode::OK,
        json!({"id": id, "polling_url": polling_url}),
    )
}

/// The bytes of a base64 image, bare or as a `data:` URL; `None` if it is not base64
/// or is empty.
fn decode_image(encoded: &str) -> Option<Vec<u8>> {
    let encoded = match encoded.strip_prefix("data:") {
        Some(rest) => rest.split_once(";base64,")?.1,
        None => encoded,
    };
    BASE64
        .decode(encoded.trim())
        .ok()
        .filter(|bytes| !bytes.is_empty())
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
    if task.download_failed {
        return json_response(
            StatusCode::OK,
            json!({"id": id, "status": "Error", "result": null, "details": {"input_image": "could not download the input image"}}),
        );
    }
    if task.polls < 2 {
        return json_response(
            StatusCode::OK,
            json!({"id": id, "status": "Pending", "result": null, "progress": 0.5}),
        );
    }
    let seed = task.input["seed"]
        .as_u64()
        .unwrap_or_else(|| stable_hash(&prompt));
    let sample = state
        .common
        .store_file(format!("{id}.png"), png(task.size.0, task.size.1, seed));
    json_response(
        StatusCode::OK,
        json!({"id": id, "status": "Ready", "result": {"sample": sample, "prompt": prompt}}),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::{download, png_size};
    use super::super::{DEFAULT_TOKEN, sha256_hex};
    use super::*;

    async fn emulator() -> Emulator<Bfl> {
        spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap()
    }

    /// `method url` with the `x-key` credential; the status and the JSON body.
    async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method, url)
            .header("x-key", DEFAULT_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn edit(emulator: &Emulator<Bfl>, body: Value) -> (u16, Value) {
        let url = format!("{}/v1/flux-kontext-pro", emulator.base_url());
        call(reqwest::Method::POST, &url, Some(body)).await
    }

    /// Polls the task until it is no longer pending.
    async fn settle(task: &Value) -> Value {
        let url = task["polling_url"].as_str().unwrap();
        loop {
            let (status, body) = call(reqwest::Method::GET, url, None).await;
            assert_eq!(status, 200);
            if body["status"] != "Pending" {
                return body;
            }
        }
    }

    #[tokio::test]
    async fn an_inline_image_is_decoded_and_recorded() {
        let emulator = emulator().await;
        let image = png(40, 24, 9);
        let (status, task) = edit(
            &emulator,
            json!({"prompt": "make it night", "input_image": BASE64.encode(&image), "output_format": "png"}),
        )
        .await;
        assert_eq!(status, 200, "{task}");
        assert_eq!(
            emulator.state.fetched(),
            vec![Fetched {
                url: "inline".into(),
                status: 200,
                sha256: sha256_hex(&image),
                bytes: image.len(),
            }]
        );
        let done = settle(&task).await;
        assert_eq!(done["status"], "Ready", "{done}");
        let sample = download(done["result"]["sample"].as_str().unwrap()).await;
        assert_eq!(png_size(&sample), (40, 24), "the input image's size");

        let data_url = format!("data:image/png;base64,{}", BASE64.encode(&image));
        let (status, square) = edit(
            &emulator,
            json!({"prompt": "x", "input_image": data_url, "aspect_ratio": "1:1"}),
        )
        .await;
        assert_eq!(status, 200, "{square}");
        let square = settle(&square).await;
        let sample = download(square["result"]["sample"].as_str().unwrap()).await;
        assert_eq!(png_size(&sample), (1024, 1024));
        assert_eq!(emulator.fetched()[1].sha256, sha256_hex(&image));
    }

    #[tokio::test]
    async fn invalid_base64_is_a_422() {
        let emulator = emulator().await;
        for image in [json!("not base64 at all!"), json!(""), json!(42)] {
            let (status, body) =
                edit(&emulator, json!({"prompt": "x", "input_image": image})).await;
            assert_eq!(status, 422, "{body}");
            assert_eq!(body["detail"][0]["loc"], json!(["body", "input_image"]));
            assert_eq!(body["detail"][0]["type"], "value_error");
        }
        let (status, body) = edit(
            &emulator,
            json!({"prompt": "x", "input_image": BASE64.encode(png(8, 8, 1)), "aspect_ratio": "9:1"}),
        )
        .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["detail"][0]["loc"], json!(["body", "aspect_ratio"]));
        assert!(emulator.state.fetched().is_empty());
    }

    #[tokio::test]
    async fn an_image_url_is_downloaded_and_a_failed_download_is_an_error() {
        let emulator = emulator().await;
        let image = png(16, 16, 4);
        let url = emulator.common.store_file("in.png".into(), image.clone());
        let (status, task) = edit(&emulator, json!({"prompt": "x", "input_image": url})).await;
        assert_eq!(status, 200, "{task}");
        let fetched = emulator.state.fetched();
        assert_eq!(
            (fetched[0].url.as_str(), fetched[0].status),
            (url.as_str(), 200)
        );
        assert_eq!(fetched[0].sha256, sha256_hex(&image));
        assert_eq!(settle(&task).await["status"], "Ready");

        let missing = format!("{}/files/nope.png", emulator.base_url());
        let (status, task) = edit(&emulator, json!({"prompt": "x", "input_image": missing})).await;
        assert_eq!(status, 200);
        assert_eq!(emulator.state.fetched()[1].status, 404);
        assert_eq!(settle(&task).await["status"], "Error");
    }
}
