//! Replicate's predictions API: `POST /v1/models/{owner}/{name}/predictions`,
//! `GET /v1/predictions/{id}`, `POST /v1/predictions/{id}/cancel`. Outputs are URLs of
//! files the emulator serves (as replicate.delivery would); errors are problem+json.
//!
//! A prediction answers `starting` when created, `processing` on polls, and ends on the
//! poll that reaches `polls_until_done`: `succeeded` with one PNG URL, or `failed` with
//! E005 for a flagged prompt. With a `webhook`, the final prediction is posted to it.
//!
//! Like Replicate's workers, the emulator downloads every input that is an `http(s)`
//! URL (`input_image` of `flux-kontext-pro`) when the prediction is created, before
//! answering; downloads are recorded ([`Replicate::fetched`]). A failed download still
//! creates the prediction, which then ends `failed` ("could not download …").

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use super::{
    Common, Dialect, Emulator, Fetched, aspect_size, body_json, flagged, header, json_response,
    png, png_dimensions, rfc3339_now, stable_hash,
};

const MODELS: [&str; 3] = [
    "black-forest-labs/flux-1.1-pro",
    "black-forest-labs/flux-schnell",
    KONTEXT,
];

/// Image editing: `input_image` (a URL) and an `aspect_ratio`, by default
/// `match_input_image`.
const KONTEXT: &str = "black-forest-labs/flux-kontext-pro";

const ASPECT_RATIOS: [&str; 14] = [
    "match_input_image",
    "1:1",
    "16:9",
    "9:16",
    "4:3",
    "3:4",
    "3:2",
    "2:3",
    "4:5",
    "5:4",
    "21:9",
    "9:21",
    "2:1",
    "1:2",
];

/// Delivers webhooks, for every emulator (a client is costly to build). It keeps no
/// idle connections: emulators may run on different runtimes.
static WEBHOOKS: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client")
});

const MODERATED: &str =
    "E005: The input or output was flagged as sensitive. Please try again with different inputs.";

/// The emulator's predictions and knobs (`Emulator::state`).
pub struct Replicate {
    common: Arc<Common>,
    predictions: Mutex<HashMap<String, Prediction>>,
    polls_until_done: AtomicU32,
    never_finish: AtomicBool,
    background_ms: AtomicU64,
}

struct Prediction {
    model: String,
    input: Value,
    status: &'static str,
    polls: u32,
    output: Option<String>,
    error: Option<String>,
    /// The size of the image it produces.
    size: (u32, u32),
    /// Why an input could not be downloaded: the prediction will fail with it.
    download_error: Option<String>,
    /// Where to post the final prediction (absent when the events filter leaves out
    /// `completed`).
    webhook: Option<String>,
    created_at: String,
    started_at: Option<String>,
    completed_at: Option<String>,
}

impl Prediction {
    fn running(&self) -> bool {
        matches!(self.status, "starting" | "processing")
    }
}

impl Replicate {
    /// The poll that ends a prediction (default 1: the first). The polls before it
    /// answer `processing`; 0 ends predictions as they are created.
    pub fn set_polls_until_done(&self, polls: u32) {
        self.polls_until_done.store(polls, Ordering::SeqCst);
    }

    /// Every input the emulator downloaded, oldest first.
    pub fn fetched(&self) -> Vec<Fetched> {
        self.common.fetched()
    }

    /// Keeps every prediction `processing` (a job that never finishes) until turned off.
    pub fn set_never_finish(&self, never: bool) {
        self.never_finish.store(never, Ordering::SeqCst);
    }

    /// Predictions end by themselves `ms` after creation (and call their webhook);
    /// polls only report. 0 turns this off.
    pub fn complete_in_background(&self, ms: u64) {
        self.background_ms.store(ms, Ordering::SeqCst);
    }

    fn view(&self, id: &str, p: &Prediction) -> Value {
        let base = self.common.advertised_url();
        let metrics = if p.status == "succeeded" {
            json!({"predict_time": 1.23})
        } else {
            json!({})
        };
        json!({
            "id": id,
            "model": p.model,
            "version": "hidden",
            "input": p.input,
            "logs": "",
            "output": p.output,
            "data_removed": false,
            "error": p.error,
            "status": p.status,
            "created_at": p.created_at,
            "started_at": p.started_at,
            "completed_at": p.completed_at,
            "urls": {
                "get": format!("{base}/v1/predictions/{id}"),
                "cancel": format!("{base}/v1/predictions/{id}/cancel"),
            },
            "metrics": metrics,
        })
    }

    /// Ends a running prediction, unless predictions never finish: an image, or a
    /// moderation failure.
    fn finish(&self, id: &str, p: &mut Prediction) {
        if self.never_finish.load(Ordering::SeqCst) {
            p.status = "processing";
            return;
        }
        let prompt = p.input["prompt"].as_str().unwrap_or_default();
        if let Some(error) = p.download_error.clone() {
            p.error = Some(error);
            self.end(id, p, "failed");
        } else if flagged(prompt) {
            p.error = Some(MODERATED.into());
            self.end(id, p, "failed");
        } else {
            let seed = p.input["seed"]
                .as_u64()
                .unwrap_or_else(|| stable_hash(prompt));
            let image = png(p.size.0, p.size.1, seed);
            p.output = Some(self.common.store_file(format!("{id}.png"), image));
            self.end(id, p, "succeeded");
        }
    }

    /// Moves a prediction to a terminal `status` and posts it to its webhook.
    fn end(&self, id: &str, p: &mut Prediction, status: &'static str) {
        let now = rfc3339_now();
        p.started_at.get_or_insert_with(|| now.clone());
        p.completed_at = Some(now);
        p.status = status;
        if let Some(url) = p.webhook.clone() {
            let request = WEBHOOKS.post(&url).json(&self.view(id, p));
            tokio::spawn(async move {
                if let Err(error) = request.send().await {
                    tracing::debug!(%url, %error, "webhook not delivered");
                }
            });
        }
    }
}

pub(crate) struct ReplicateDialect;

impl Dialect for ReplicateDialect {
    const ERROR_CONTENT_TYPE: &'static str = "application/problem+json";

    fn error_body(status: u16) -> Value {
        let (title, detail) = match status {
            401 => (
                "Unauthenticated",
                "You did not pass a valid authentication token",
            ),
            402 => (
                "Insufficient credit",
                "You have insufficient credit to run this model. Go to https://replicate.com/account/billing#billing to purchase credit.",
            ),
            404 => ("Not found", "The requested resource could not be found."),
            422 => ("Input validation failed", "The input is invalid."),
            429 => (
                "Request was throttled.",
                "Request was throttled. Expected available in 1 second.",
            ),
            503 => (
                "Service Unavailable",
                "The service is temporarily unavailable. Please try again later.",
            ),
            _ => (
                "Internal Server Error",
                "An unexpected error occurred. Please try again later.",
            ),
        };
        json!({"title": title, "detail": detail, "status": status})
    }
}

/// Starts a Replicate emulator on `addr` that expects `Authorization: Bearer {token}`.
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
    let body = json!({
        "title": "Input validation failed",
        "detail": format!("- {field}: {description}"),
        "status": 422,
        "invalid_fields": [{"type": kind, "field": field, "description": description}],
    });
    ReplicateDialect::error_with(422, body.to_string())
}

/// The reason `input` is refused, if it is.
fn validate(model: &str, input: &Value) -> Option<Response> {
    if !input.is_object() {
        return Some(invalid("input", "required", "input is required"));
    }
    if !input["prompt"].is_string() {
        return Some(invalid("prompt", "required", "prompt is required"));
    }
    if model == KONTEXT {
        if let Some(image) = input.get("input_image")
            && !image.as_str().is_some_and(is_url)
        {
            return Some(invalid(
                "input_image",
                "format",
                "Does not match format 'uri'",
            ));
        }
        if let Some(ratio) = input.get("aspect_ratio")
            && !ratio.as_str().is_some_and(|r| ASPECT_RATIOS.contains(&r))
        {
            return Some(invalid(
                "aspect_ratio",
                "enum",
                &format!("aspect_ratio must be one of: {}", ASPECT_RATIOS.join(", ")),
            ));
        }
        return None;
    }
    ["width", "height"].into_iter().find_map(|side| {
        let value = input.get(side)?;
        if value.as_u64().is_some_and(|v| (256..=1440).contains(&v)) {
            return None;
        }
        Some(invalid(
            side,
            "number.range",
            &format!("{side} must be an integer from 256 to 1440"),
        ))
    })
}

async fn create(
    State(state): State<Arc<Replicate>>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let model = format!("{owner}/{name}");
    if !MODELS.contains(&model.as_str()) {
        return ReplicateDialect::error(404);
    }
    let body = body_json(&body).unwrap_or_default();
    if let Some(refusal) = validate(&model, &body["input"]) {
        return refusal;
    }
    let input = &body["input"];
    // Replicate's workers download URL inputs before the model runs.
    let mut download_error = None;
    let mut input_image = None;
    let urls = input
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(field, value)| {
            value
                .as_str()
                .filter(|v| is_url(v))
                .map(|url| (field.clone(), url.to_string()))
        });
    for (field, url) in urls.collect::<Vec<_>>() {
        match state.common.download(&url).await {
            Some(bytes) if field == "input_image" => input_image = Some(bytes),
            Some(_) => {}
            None => {
                download_error.get_or_insert_with(|| {
                    format!("Prediction failed: could not download {field} from the given URL")
                });
            }
        }
    }
    let size = if model == KONTEXT {
        match input["aspect_ratio"]
            .as_str()
            .unwrap_or("match_input_image")
        {
            "match_input_image" => input_image
                .as_deref()
                .and_then(png_dimensions)
                .unwrap_or((1024, 1024)),
            ratio => aspect_size(ratio).unwrap_or((1024, 1024)),
        }
    } else {
        let side = |name: &str| input[name].as_u64().unwrap_or(1024) as u32;
        (side("width"), side("height"))
    };
    let wants_completed = body["webhook_events_filter"]
        .as_array()
        .is_none_or(|events| events.iter().any(|e| e == "completed"));
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut prediction = Prediction {
        model,
        input: body["input"].clone(),
        status: "starting",
        polls: 0,
        output: None,
        error: None,
        size,
        download_error,
        webhook: body["webhook"]
            .as_str()
            .filter(|_| wants_completed)
            .map(str::to_string),
        created_at: rfc3339_now(),
        started_at: None,
        completed_at: None,
    };
    // `Prefer: wait` (or `wait=N`) asks for the finished prediction in this answer.
    let wait = header(&headers, "prefer").is_some_and(|p| p.starts_with("wait"));
    if wait || state.polls_until_done.load(Ordering::SeqCst) == 0 {
        state.finish(&id, &mut prediction);
    }
    let view = state.view(&id, &prediction);
    let running = prediction.running();
    state
        .predictions
        .lock()
        .unwrap()
        .insert(id.clone(), prediction);
    let background = state.background_ms.load(Ordering::SeqCst);
    if running && background > 0 {
        let state = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(background)).await;
            let mut predictions = state.predictions.lock().unwrap();
            if let Some(prediction) = predictions.get_mut(&id)
                && prediction.running()
            {
                state.finish(&id, prediction);
            }
        });
    }
    json_response(StatusCode::CREATED, view)
}

/// Whether `value` is a URL the workers would download.
fn is_url(value: &str) -> bool {
    value.starts_with("http://") || value.starts_with("https://")
}

async fn fetch(State(state): State<Arc<Replicate>>, Path(id): Path<String>) -> Response {
    let mut predictions = state.predictions.lock().unwrap();
    let Some(prediction) = predictions.get_mut(&id) else {
        return ReplicateDialect::error(404);
    };
    if prediction.running() {
        prediction.polls += 1;
        // Self-finishing predictions only report on a poll.
        let background = state.background_ms.load(Ordering::SeqCst) > 0;
        if !background && prediction.polls >= state.polls_until_done.load(Ordering::SeqCst) {
            state.finish(&id, prediction);
        } else {
            prediction.status = "processing";
            prediction.started_at.get_or_insert_with(rfc3339_now);
        }
    }
    json_response(StatusCode::OK, state.view(&id, prediction))
}

async fn cancel(State(state): State<Arc<Replicate>>, Path(id): Path<String>) -> Response {
    let mut predictions = state.predictions.lock().unwrap();
    let Some(prediction) = predictions.get_mut(&id) else {
        return ReplicateDialect::error(404);
    };
    if prediction.running() {
        state.end(&id, prediction, "canceled");
    }
    json_response(StatusCode::OK, state.view(&id, prediction))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{download, get, next_webhook, png_size, post, webhook_receiver};
    use super::super::{DEFAULT_TOKEN, Fault};
    use super::*;

    const FLUX: &str = "/v1/models/black-forest-labs/flux-1.1-pro/predictions";

    async fn emulator() -> Emulator<Replicate> {
        spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap()
    }

    async fn create(emulator: &Emulator<Replicate>, body: Value) -> (u16, Value) {
        post(
            &format!("{}{FLUX}", emulator.base_url()),
            DEFAULT_TOKEN,
            body,
        )
        .await
    }

    fn small(prompt: &str) -> Value {
        json!({"input": {"prompt": prompt, "width": 320, "height": 256}})
    }

    async fn poll(prediction: &Value) -> Value {
        let (status, body) = get(prediction["urls"]["get"].as_str().unwrap(), DEFAULT_TOKEN).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    #[tokio::test]
    async fn a_prediction_is_created_polled_to_success_and_its_png_served() {
        let emulator = emulator().await;
        let (status, created) = create(&emulator, small("a cat")).await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap();
        let base = emulator.base_url();
        assert_eq!(created["status"], "starting");
        assert_eq!(created["model"], "black-forest-labs/flux-1.1-pro");
        assert_eq!(created["input"], small("a cat")["input"]);
        assert_eq!(
            (&created["output"], &created["error"]),
            (&Value::Null, &Value::Null)
        );
        assert_eq!(created["logs"], "");
        assert!(created["version"].is_string());
        let created_at = created["created_at"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(created_at).is_ok());
        assert_eq!(
            created["urls"]["get"],
            format!("{base}/v1/predictions/{id}")
        );
        assert_eq!(
            created["urls"]["cancel"],
            format!("{base}/v1/predictions/{id}/cancel")
        );

        let done = poll(&created).await;
        assert_eq!(done["status"], "succeeded");
        assert_eq!(done["output"], format!("{base}/files/{id}.png"));
        assert_eq!(done["metrics"]["predict_time"], 1.23);
        assert!(done["completed_at"].is_string());
        assert_eq!(
            poll(&created).await,
            done,
            "a finished prediction stays as it is"
        );

        // Downloads need no credential and are never faulted.
        emulator.set_always(Some(Fault::Hang));
        let image = download(done["output"].as_str().unwrap()).await;
        assert_eq!(png_size(&image), (320, 256));
        emulator.set_always(None);

        let (_, again) = create(&emulator, small("a cat")).await;
        let again = poll(&again).await;
        assert_eq!(
            download(again["output"].as_str().unwrap()).await,
            image,
            "the same prompt gives the same bytes"
        );
        let sent = &emulator.requests()[0];
        assert_eq!(sent.header("authorization"), Some("Bearer emulator-key"));
    }

    #[tokio::test]
    async fn polls_until_done_sets_how_long_a_prediction_processes() {
        let emulator = emulator().await;
        emulator.state.set_polls_until_done(3);
        let (_, created) = create(&emulator, small("a cat")).await;
        assert_eq!(poll(&created).await["status"], "processing");
        let processing = poll(&created).await;
        assert_eq!(processing["status"], "processing");
        assert!(processing["started_at"].is_string());
        assert_eq!(poll(&created).await["status"], "succeeded");

        emulator.state.set_polls_until_done(0);
        let (status, created) = create(&emulator, small("a cat")).await;
        assert_eq!(
            (status, created["status"].as_str()),
            (201, Some("succeeded"))
        );
    }

    #[tokio::test]
    async fn prefer_wait_answers_the_finished_prediction() {
        let emulator = emulator().await;
        let response = reqwest::Client::new()
            .post(format!("{}{FLUX}", emulator.base_url()))
            .bearer_auth(DEFAULT_TOKEN)
            .header("prefer", "wait=5")
            .json(&small("a cat"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let prediction: Value = response.json().await.unwrap();
        assert_eq!(prediction["status"], "succeeded");
        let image = download(prediction["output"].as_str().unwrap()).await;
        assert_eq!(png_size(&image), (320, 256));
    }

    #[tokio::test]
    async fn invalid_input_and_unknown_models_get_replicates_problems() {
        let emulator = emulator().await;
        let (status, body) = create(&emulator, json!({"input": {"width": 512}})).await;
        assert_eq!(status, 422);
        assert_eq!(body["title"], "Input validation failed");
        assert_eq!(body["status"], 422);
        assert!(body["detail"].as_str().unwrap().contains("prompt"));
        assert_eq!(body["invalid_fields"][0]["type"], "required");
        assert_eq!(body["invalid_fields"][0]["field"], "prompt");

        for (width, height, field) in [
            (json!(100), json!(512), "width"),
            (json!(512), json!("1024"), "height"),
        ] {
            let input = json!({"input": {"prompt": "a cat", "width": width, "height": height}});
            let (status, body) = create(&emulator, input).await;
            assert_eq!(status, 422);
            assert_eq!(body["invalid_fields"][0]["field"], field);
        }
        assert_eq!(create(&emulator, json!({})).await.0, 422);

        let unknown = format!("{}/v1/models/acme/nope/predictions", emulator.base_url());
        let (status, body) = post(&unknown, DEFAULT_TOKEN, small("a cat")).await;
        assert_eq!(status, 404);
        assert_eq!(
            body,
            json!({"title": "Not found", "detail": "The requested resource could not be found.", "status": 404})
        );
        let missing = format!("{}/v1/predictions/nope", emulator.base_url());
        assert_eq!(get(&missing, DEFAULT_TOKEN).await.0, 404);
    }

    const KONTEXT_PATH: &str = "/v1/models/black-forest-labs/flux-kontext-pro/predictions";

    async fn edit(emulator: &Emulator<Replicate>, input: Value) -> (u16, Value) {
        let url = format!("{}{KONTEXT_PATH}", emulator.base_url());
        post(&url, DEFAULT_TOKEN, json!({ "input": input })).await
    }

    #[tokio::test]
    async fn an_edit_downloads_its_input_image_before_answering() {
        let emulator = emulator().await;
        let image = png(48, 32, 5);
        let url = emulator
            .common
            .store_file("input.png".into(), image.clone());
        let (status, created) = edit(
            &emulator,
            json!({"prompt": "make it night", "input_image": url, "output_format": "png"}),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["model"], KONTEXT);
        // Fetched before the answer, once.
        let fetched = emulator.state.fetched();
        assert_eq!(
            fetched,
            vec![Fetched {
                url: url.clone(),
                status: 200,
                sha256: super::super::sha256_hex(&image),
                bytes: image.len(),
            }]
        );
        let done = poll(&created).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        let output = download(done["output"].as_str().unwrap()).await;
        assert_eq!(
            png_size(&output),
            (48, 32),
            "the input image's aspect ratio"
        );

        let (_, wide) = edit(
            &emulator,
            json!({"prompt": "x", "input_image": url, "aspect_ratio": "16:9"}),
        )
        .await;
        let wide = poll(&wide).await;
        let (width, height) = png_size(&download(wide["output"].as_str().unwrap()).await);
        assert!(width > height, "{width}x{height}");
        assert_eq!(emulator.fetched().len(), 2);

        let log: Value = reqwest::get(format!("{}/__emulator/fetched", emulator.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(log[0]["url"], url);
        assert_eq!(log[0]["status"], 200);
        assert_eq!(log[0]["sha256"], super::super::sha256_hex(&image));
        assert_eq!(log[0]["bytes"], image.len());
    }

    #[tokio::test]
    async fn a_failed_input_download_fails_the_prediction() {
        let emulator = emulator().await;
        let missing = format!("{}/files/missing.png", emulator.base_url());
        let (status, created) = edit(
            &emulator,
            json!({"prompt": "make it night", "input_image": missing}),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let fetched = emulator.state.fetched();
        assert_eq!(fetched.len(), 1);
        assert_eq!((fetched[0].status, fetched[0].bytes), (404, 0));
        let failed = poll(&created).await;
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["output"], Value::Null);
        let error = failed["error"].as_str().unwrap();
        assert!(error.contains("could not download input_image"), "{error}");

        // A closed port: no answer at all.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/x.png", listener.local_addr().unwrap())
        };
        let (_, created) = edit(&emulator, json!({"prompt": "x", "input_image": closed})).await;
        assert_eq!(emulator.state.fetched()[1].status, 0);
        assert_eq!(poll(&created).await["status"], "failed");
    }

    #[tokio::test]
    async fn an_edit_input_that_is_no_url_is_refused() {
        let emulator = emulator().await;
        for (input, field) in [
            (
                json!({"prompt": "x", "input_image": "file_abc"}),
                "input_image",
            ),
            (
                json!({"prompt": "x", "input_image": "https://x.invalid/a.png", "aspect_ratio": "7:1"}),
                "aspect_ratio",
            ),
        ] {
            let (status, body) = edit(&emulator, input).await;
            assert_eq!(status, 422, "{body}");
            assert_eq!(body["invalid_fields"][0]["field"], field);
        }
        assert!(
            emulator.state.fetched().is_empty(),
            "nothing was downloaded"
        );
    }

    #[tokio::test]
    async fn a_flagged_prompt_fails_with_e005() {
        let emulator = emulator().await;
        let (status, created) = create(&emulator, small("an NSFW scene")).await;
        assert_eq!(
            (status, created["status"].as_str()),
            (201, Some("starting"))
        );
        let failed = poll(&created).await;
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["error"], MODERATED);
        assert_eq!(failed["output"], Value::Null);
    }

    #[tokio::test]
    async fn a_prediction_that_never_finishes_can_be_canceled() {
        let emulator = emulator().await;
        emulator.state.set_never_finish(true);
        let (hook, mut webhooks) = webhook_receiver().await;
        let mut body = small("a cat");
        body["webhook"] = json!(hook);
        let (_, created) = create(&emulator, body).await;
        for _ in 0..3 {
            assert_eq!(poll(&created).await["status"], "processing");
        }
        let (status, canceled) = post(
            created["urls"]["cancel"].as_str().unwrap(),
            DEFAULT_TOKEN,
            json!({}),
        )
        .await;
        assert_eq!(
            (status, canceled["status"].as_str()),
            (200, Some("canceled"))
        );
        assert_eq!(poll(&created).await["status"], "canceled");
        let delivered = next_webhook(&mut webhooks).await;
        assert_eq!(delivered["id"], created["id"]);
        assert_eq!(delivered["status"], "canceled");
    }

    #[tokio::test]
    async fn the_webhook_gets_the_final_prediction_when_a_poll_ends_it() {
        let emulator = emulator().await;
        let (hook, mut webhooks) = webhook_receiver().await;
        let mut body = small("a cat");
        body["webhook"] = json!(hook);
        body["webhook_events_filter"] = json!(["completed"]);
        let (_, created) = create(&emulator, body).await;
        let done = poll(&created).await;
        assert_eq!(next_webhook(&mut webhooks).await, done);
    }

    #[tokio::test]
    async fn predictions_can_finish_in_the_background_and_call_back() {
        let emulator = emulator().await;
        emulator.state.complete_in_background(10);
        let (hook, mut webhooks) = webhook_receiver().await;
        let mut body = small("a cat");
        body["webhook"] = json!(hook);
        let (_, created) = create(&emulator, body).await;
        let delivered = next_webhook(&mut webhooks).await;
        assert_eq!(delivered["id"], created["id"]);
        assert_eq!(delivered["status"], "succeeded");
        assert_eq!(poll(&created).await, delivered);
        assert_eq!(emulator.count("/v1/predictions/"), 1, "no poll was needed");
    }
}
