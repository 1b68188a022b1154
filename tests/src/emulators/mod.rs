//! Provider emulators: real HTTP servers on loopback that speak each provider's
//! documented wire format, with deterministic outputs and injectable faults.

pub mod bfl;
pub mod fal;
pub mod openai;
pub mod replicate;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// The credential every emulator expects unless told otherwise.
pub const DEFAULT_TOKEN: &str = "emulator-key";

/// A fault applied to one incoming API request (asset downloads are never faulted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer `status` with the provider's own error body (or `body`).
    Status {
        status: u16,
        #[serde(default)]
        retry_after: Option<u32>,
        #[serde(default)]
        body: Option<String>,
    },
    /// Wait, then answer normally.
    Delay { ms: u64 },
    /// Never answer.
    Hang,
    /// Drop the connection without an HTTP response.
    Reset,
    /// `200` with a body that is not valid JSON.
    Malformed,
}

/// A request the emulator received.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// State every emulator shares: credential, faults, request log, stored files.
pub struct Common {
    pub base_url: String,
    token: String,
    queued: Mutex<VecDeque<Fault>>,
    always: Mutex<Option<Fault>>,
    requests: Mutex<Vec<Recorded>>,
    files: Mutex<HashMap<String, Vec<u8>>>,
}

impl Common {
    fn next_fault(&self) -> Option<Fault> {
        if let Some(fault) = self.queued.lock().unwrap().pop_front() {
            return Some(fault);
        }
        self.always.lock().unwrap().clone()
    }

    pub fn store_file(&self, name: String, bytes: Vec<u8>) -> String {
        let url = format!("{}/files/{name}", self.base_url);
        self.files.lock().unwrap().insert(name, bytes);
        url
    }
}

/// What differs between providers: their error bodies and where the key goes.
pub trait Dialect: Send + Sync + 'static {
    fn error_body(status: u16) -> serde_json::Value;

    /// Whether the request carries the expected credential (`Authorization: Bearer`).
    fn authorized(headers: &HeaderMap, token: &str) -> bool {
        header(headers, "authorization") == Some(format!("Bearer {token}").as_str())
    }
}

/// A running emulator. Stops when dropped.
pub struct Emulator<S> {
    pub state: Arc<S>,
    common: Arc<Common>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl<S> Emulator<S> {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Faults for the next requests, one each, in order.
    pub fn push_fault(&self, fault: Fault) {
        self.common.queued.lock().unwrap().push_back(fault);
    }

    /// A fault for every request (after the queued ones) until cleared with `None`.
    pub fn set_always(&self, fault: Option<Fault>) {
        *self.common.always.lock().unwrap() = fault;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.common.requests.lock().unwrap().clone()
    }

    /// API requests whose path starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .count()
    }
}

impl<S> Drop for Emulator<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` (port 0 for any) and serves `api` with the shared middleware:
/// request log, faults, bearer check; plus `/files/*` and `/__emulator/*`.
async fn serve<S: Send + Sync + 'static, D: Dialect>(
    addr: &str,
    token: &str,
    make: impl FnOnce(Arc<Common>) -> (Arc<S>, Router),
) -> std::io::Result<Emulator<S>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let common = Arc::new(Common {
        base_url: format!("http://{addr}"),
        token: token.to_string(),
        queued: Mutex::default(),
        always: Mutex::default(),
        requests: Mutex::default(),
        files: Mutex::default(),
    });
    let (state, api) = make(common.clone());
    let control = Router::new()
        .route("/files/{name}", axum::routing::get(file))
        .route(
            "/__emulator/faults",
            axum::routing::post(push_fault).delete(clear_faults),
        )
        .route("/__emulator/requests", axum::routing::get(requests))
        .with_state(common.clone());
    let app = api
        .layer(middleware::from_fn_with_state(common.clone(), guard::<D>))
        .merge(control);
    let task = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, app).await;
    });
    Ok(Emulator {
        state,
        common,
        addr,
        task,
    })
}

/// Records the request, applies the next fault, then checks the credential.
async fn guard<D: Dialect>(
    State(common): State<Arc<Common>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, 64 * 1024 * 1024).await.unwrap_or_default();
    common.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    });
    match common.next_fault() {
        Some(Fault::Status {
            status,
            retry_after,
            body,
        }) => {
            let body = body.unwrap_or_else(|| D::error_body(status).to_string());
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            )
                .into_response();
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(seconds));
            }
            return response;
        }
        Some(Fault::Delay { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Some(Fault::Hang) => std::future::pending::<()>().await,
        // Unwinding the connection's task drops the socket with no response;
        // `resume_unwind` skips the panic hook, so nothing is printed.
        Some(Fault::Reset) => std::panic::resume_unwind(Box::new("emulated connection reset")),
        Some(Fault::Malformed) => {
            return (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"id\": \"trunc",
            )
                .into_response();
        }
        None => {}
    }
    if !D::authorized(&parts.headers, &common.token) {
        return (StatusCode::UNAUTHORIZED, axum::Json(D::error_body(401))).into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn file(
    State(common): State<Arc<Common>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    match common.files.lock().unwrap().get(&name) {
        Some(bytes) => {
            let kind = if name.ends_with(".mp4") {
                "video/mp4"
            } else {
                "image/png"
            };
            ([("content-type", kind)], bytes.clone()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn push_fault(
    State(common): State<Arc<Common>>,
    axum::Json(fault): axum::Json<Fault>,
) -> StatusCode {
    common.queued.lock().unwrap().push_back(fault);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(common): State<Arc<Common>>) -> StatusCode {
    common.queued.lock().unwrap().clear();
    *common.always.lock().unwrap() = None;
    StatusCode::NO_CONTENT
}

async fn requests(State(common): State<Arc<Common>>) -> axum::Json<Vec<Recorded>> {
    axum::Json(common.requests.lock().unwrap().clone())
}

/// Whether a prompt should be refused as unsafe (the emulators' moderation rule).
pub fn flagged(text: &str) -> bool {
    text.to_ascii_lowercase().contains("nsfw")
}

/// A deterministic PNG of `width`×`height`: a gradient keyed by `seed`.
pub fn png(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().expect("png header");
        let [r, g, b, ..] = seed.to_le_bytes();
        let mut pixels = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                pixels.extend_from_slice(&[
                    r.wrapping_add((x * 255 / width.max(1)) as u8),
                    g.wrapping_add((y * 255 / height.max(1)) as u8),
                    b,
                ]);
            }
        }
        writer.write_image_data(&pixels).expect("png data");
    }
    out
}

/// FNV-1a: a stable seed from a prompt.
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn body_json(bytes: &Bytes) -> Option<serde_json::Value> {
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn post(
        emulator_url: &str,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> reqwest::Result<reqwest::Response> {
        reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()?
            .post(format!("{emulator_url}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
    }

    #[tokio::test]
    async fn faults_apply_in_order_and_reset_and_hang_fail_the_client() {
        let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
            .await
            .unwrap();
        let url = emulator.base_url();
        let path = "/v1/models/black-forest-labs/flux-1.1-pro/predictions";
        let body = json!({"input": {"prompt": "x"}});
        emulator.push_fault(Fault::Status {
            status: 429,
            retry_after: Some(2),
            body: None,
        });
        emulator.push_fault(Fault::Reset);
        emulator.push_fault(Fault::Hang);
        emulator.push_fault(Fault::Malformed);

        let throttled = post(&url, path, DEFAULT_TOKEN, body.clone()).await.unwrap();
        assert_eq!(throttled.status(), 429);
        assert_eq!(throttled.headers()["retry-after"], "2");
        assert_eq!(
            throttled.json::<serde_json::Value>().await.unwrap()["status"],
            429
        );

        let reset = post(&url, path, DEFAULT_TOKEN, body.clone())
            .await
            .unwrap_err();
        assert!(
            !reset.is_timeout(),
            "a reset is a connection error: {reset}"
        );
        let hang = post(&url, path, DEFAULT_TOKEN, body.clone())
            .await
            .unwrap_err();
        assert!(hang.is_timeout(), "{hang}");
        let malformed = post(&url, path, DEFAULT_TOKEN, body.clone()).await.unwrap();
        assert!(malformed.json::<serde_json::Value>().await.is_err());

        let created = post(&url, path, DEFAULT_TOKEN, body.clone()).await.unwrap();
        assert_eq!(created.status(), 201);
        let unauthorized = post(&url, path, "wrong", body).await.unwrap();
        assert_eq!(unauthorized.status(), 401);
        assert_eq!(emulator.count("/v1/models/"), 6);
    }

    #[tokio::test]
    async fn replicate_predictions_progress_to_a_png_of_the_requested_size() {
        let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
            .await
            .unwrap();
        let url = emulator.base_url();
        let created: serde_json::Value = post(
            &url,
            "/v1/models/black-forest-labs/flux-1.1-pro/predictions",
            DEFAULT_TOKEN,
            json!({"input": {"prompt": "a cat", "width": 320, "height": 256}}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        assert_eq!(created["status"], "starting");
        let client = reqwest::Client::new();
        let polled: serde_json::Value = client
            .get(created["urls"]["get"].as_str().unwrap())
            .bearer_auth(DEFAULT_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(polled["status"], "succeeded");
        let image = client
            .get(polled["output"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(image.to_vec()));
        let info = decoder.read_info().unwrap().info().clone();
        assert_eq!((info.width, info.height), (320, 256));
        assert_eq!(png(8, 8, 1), png(8, 8, 1), "outputs are deterministic");
    }

    #[tokio::test]
    async fn openai_images_and_chat_follow_the_documented_shapes() {
        let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
        let url = emulator.base_url();
        let images: serde_json::Value = post(
            &url,
            "/v1/images/generations",
            DEFAULT_TOKEN,
            json!({"model": "black-forest-labs/FLUX.1.1-pro", "prompt": "a cat", "size": "256x320", "response_format": "b64_json"}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(images["data"][0]["b64_json"].as_str().unwrap())
            .unwrap();
        let info = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap()
            .info()
            .clone();
        assert_eq!((info.width, info.height), (256, 320));

        let moderated = post(
            &url,
            "/v1/images/generations",
            DEFAULT_TOKEN,
            json!({"model": "black-forest-labs/FLUX.1.1-pro", "prompt": "nsfw"}),
        )
        .await
        .unwrap();
        assert_eq!(moderated.status(), 400);
        assert_eq!(
            moderated.json::<serde_json::Value>().await.unwrap()["error"]["code"],
            "content_policy_violation"
        );

        let stream = post(
            &url,
            "/v1/chat/completions",
            DEFAULT_TOKEN,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two"}], "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        assert!(stream.contains("\"content\":\"Echo: \""));
        assert!(stream.contains("\"usage\""));
        assert!(stream.ends_with("data: [DONE]\n\n"));

        let missing = post(
            &url,
            "/v1/chat/completions",
            DEFAULT_TOKEN,
            json!({"model": "nope", "messages": []}),
        )
        .await
        .unwrap();
        assert_eq!(missing.status(), 404);
    }
}
