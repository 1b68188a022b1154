//! Provider emulators: real HTTP servers on loopback that speak each provider's
//! documented wire format, with deterministic outputs and injectable faults.
//!
//! Each provider module has `spawn(addr, token)`, which binds `addr` (`127.0.0.1:0` for
//! an ephemeral port) and answers `Emulator<State>`: its URL, its [`Faults`], the log of
//! the requests it received, and the provider's own knobs in `state`. Every emulator
//! also serves, without credential or faults:
//! * `GET /files/{name}`: the outputs it produced (as a provider's CDN would);
//! * `POST /__emulator/faults` (a [`Fault`] as JSON) queues a fault,
//!   `PUT /__emulator/faults/always` (a fault or `null`) sets or clears the sticky one,
//!   `DELETE /__emulator/faults` clears both;
//! * `GET /__emulator/requests`: the request log;
//! * `GET /__emulator/fetched`: the input files the provider downloaded or was sent
//!   inline ([`Fetched`]).
//!
//! [`Emulator::open_second_host`] serves an emulator on a second port too, as a
//! provider's status or CDN host, and makes the URLs it hands out name that host.

pub mod bfl;
pub mod fal;
pub mod openai;
pub mod replicate;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The credential every emulator expects unless told otherwise.
pub const DEFAULT_TOKEN: &str = "emulator-key";

/// A fault applied to one incoming API request (output downloads are never faulted).
/// As JSON: `{"kind": "status", "status": 503, "retry_after": 2}`, `{"kind": "delay",
/// "ms": 100}`, `{"kind": "hang"}`, `{"kind": "reset"}`, `{"kind": "malformed"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer `status` with `body`, by default the provider's own error body for it,
    /// and a `Retry-After` header when `retry_after` (seconds) is set.
    Status {
        status: u16,
        #[serde(default)]
        retry_after: Option<u32>,
        #[serde(default)]
        body: Option<String>,
    },
    /// Wait, then answer normally.
    Delay { ms: u64 },
    /// Never answer: the connection stays open until the client gives up.
    Hang,
    /// Close the connection without an HTTP response.
    Reset,
    /// `200` with a truncated JSON body.
    Malformed,
}

/// The faults of one emulator: a queue consumed one per API request, in order, then
/// an optional sticky fault for every request until cleared. Clones share the plan.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<FaultPlan>>);

#[derive(Default)]
struct FaultPlan {
    queued: VecDeque<Fault>,
    always: Option<Fault>,
}

impl Faults {
    /// Queues a fault for the next API request without one.
    pub fn push(&self, fault: Fault) {
        self.0.lock().unwrap().queued.push_back(fault);
    }

    /// A fault for every request once the queue is empty (`None` clears it).
    pub fn set_always(&self, fault: Option<Fault>) {
        self.0.lock().unwrap().always = fault;
    }

    /// Empties the queue and clears the sticky fault.
    pub fn clear(&self) {
        *self.0.lock().unwrap() = FaultPlan::default();
    }

    fn next(&self) -> Option<Fault> {
        let mut plan = self.0.lock().unwrap();
        plan.queued.pop_front().or_else(|| plan.always.clone())
    }
}

/// A request the emulator received (API requests only, faulted or not).
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    /// The `host` the request was sent to (`127.0.0.1:port`).
    pub fn host(&self) -> Option<&str> {
        self.header("host")
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An input file the provider got: downloaded from a URL in the input (as the
/// provider's workers would) or decoded from inline base64 (`url` is `"inline"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fetched {
    pub url: String,
    /// the HTTP status of the download (200 for inline bytes; 0 when no answer came)
    pub status: u16,
    /// hex SHA-256 of the bytes received
    pub sha256: String,
    pub bytes: usize,
}

impl Fetched {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Downloads input files, for every emulator. No idle connections: emulators may run
/// on different runtimes.
static DOWNLOADS: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client")
});

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// State every emulator shares: credential, faults, request log, stored outputs.
pub(crate) struct Common {
    base_url: String,
    /// `host:port` of the second host, once opened: the URLs handed out name it,
    /// and requests to it need no credential.
    second_host: Mutex<Option<String>>,
    token: String,
    faults: Faults,
    requests: Mutex<Vec<Recorded>>,
    fetched: Mutex<Vec<Fetched>>,
    files: Mutex<HashMap<String, Vec<u8>>>,
    /// API requests being answered now, and the most there ever were at once.
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    /// Output files answer a redirect to themselves instead of their bytes.
    redirect_files: std::sync::atomic::AtomicBool,
    /// Turns `true` once the emulator is shut down.
    stopped: watch::Sender<bool>,
}

impl Common {
    /// The base of the URLs the emulator hands out (poll, cancel and output URLs):
    /// its own, or its second host's once opened.
    pub(crate) fn advertised_url(&self) -> String {
        match &*self.second_host.lock().unwrap() {
            Some(host) => format!("http://{host}"),
            None => self.base_url.clone(),
        }
    }

    /// Whether `headers` name the second host as the request's `host`.
    fn to_second_host(&self, headers: &HeaderMap) -> bool {
        let second = self.second_host.lock().unwrap();
        second.is_some() && header(headers, "host") == second.as_deref()
    }

    /// Keeps `bytes` as `/files/{name}` and answers its URL.
    pub(crate) fn store_file(&self, name: String, bytes: Vec<u8>) -> String {
        let url = format!("{}/files/{name}", self.advertised_url());
        self.files.lock().unwrap().insert(name, bytes);
        url
    }

    /// Downloads `url` (10 s at most), records it and answers the bytes, or `None`
    /// when the download failed (an error or a status other than 2xx).
    pub(crate) async fn download(&self, url: &str) -> Option<Vec<u8>> {
        let (status, body) = match DOWNLOADS.get(url).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(bytes) => (status, Some(bytes.to_vec())),
                    Err(error) => {
                        tracing::debug!(%url, %error, "input download cut short");
                        (status, None)
                    }
                }
            }
            Err(error) => {
                tracing::debug!(%url, %error, "input download failed");
                (error.status().map_or(0, |s| s.as_u16()), None)
            }
        };
        let complete = body.is_some();
        let bytes = body.unwrap_or_default();
        let fetched = Fetched {
            url: url.to_string(),
            status,
            sha256: sha256_hex(&bytes),
            bytes: bytes.len(),
        };
        let ok = complete && fetched.ok();
        tracing::info!(%url, status, bytes = bytes.len(), "input fetched");
        self.fetched.lock().unwrap().push(fetched);
        ok.then_some(bytes)
    }

    /// Records input bytes the provider was sent inline.
    pub(crate) fn record_inline(&self, bytes: &[u8]) {
        self.fetched.lock().unwrap().push(Fetched {
            url: "inline".into(),
            status: 200,
            sha256: sha256_hex(bytes),
            bytes: bytes.len(),
        });
    }

    /// Every input file received so far, oldest first.
    pub(crate) fn fetched(&self) -> Vec<Fetched> {
        self.fetched.lock().unwrap().clone()
    }

    /// Resolves once the emulator is shut down.
    async fn stopped(&self) {
        let _ = self.stopped.subscribe().wait_for(|stopped| *stopped).await;
    }
}

/// What differs between providers: their error bodies and where the key goes.
pub(crate) trait Dialect: Send + Sync + 'static {
    /// The `Content-Type` of error answers.
    const ERROR_CONTENT_TYPE: &'static str = "application/json";

    /// The provider's error body for `status`.
    fn error_body(status: u16) -> serde_json::Value;

    /// Whether the request carries the expected credential (`Authorization: Bearer`).
    fn authorized(headers: &HeaderMap, token: &str) -> bool {
        header(headers, "authorization") == Some(format!("Bearer {token}").as_str())
    }

    /// An error answer with the given body.
    fn error_with(status: u16, body: String) -> Response {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, [("content-type", Self::ERROR_CONTENT_TYPE)], body).into_response()
    }

    /// The provider's error answer for `status`.
    fn error(status: u16) -> Response {
        Self::error_with(status, Self::error_body(status).to_string())
    }
}

/// A running emulator. Shuts down when dropped.
pub struct Emulator<S> {
    /// The provider-specific state and knobs.
    pub state: Arc<S>,
    common: Arc<Common>,
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// What it serves, kept to serve it on a second host too.
    app: Router,
}

impl<S> Emulator<S> {
    /// `http://127.0.0.1:{port}`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The emulator's faults (a handle that can be cloned and kept).
    pub fn faults(&self) -> Faults {
        self.common.faults.clone()
    }

    /// Serves this emulator on a second port as well, as a provider's status or
    /// CDN host that needs no credential, and names that host in every URL it
    /// hands out from now on (poll, cancel and output URLs). Requests to it are
    /// logged with the others ([`Recorded::host`] tells them apart). Answers its
    /// base URL (`http://127.0.0.1:{port}`).
    pub async fn open_second_host(&self) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let host = listener.local_addr()?.to_string();
        *self.common.second_host.lock().unwrap() = Some(host.clone());
        let app = self.app.clone();
        let stopped = self.common.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.stopped().await })
                .await;
        });
        Ok(format!("http://{host}"))
    }

    /// Shorthand for `faults().push(fault)`.
    pub fn push_fault(&self, fault: Fault) {
        self.common.faults.push(fault);
    }

    /// Shorthand for `faults().set_always(fault)`.
    pub fn set_always(&self, fault: Option<Fault>) {
        self.common.faults.set_always(fault);
    }

    /// Every API request received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.common.requests.lock().unwrap().clone()
    }

    /// Every input file the provider downloaded or was sent inline, oldest first.
    pub fn fetched(&self) -> Vec<Fetched> {
        self.common.fetched()
    }

    /// How many API requests had a path starting with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.common
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .count()
    }

    /// Output file URLs answer `302` to the same file (`?direct`), as a CDN in
    /// front of storage might: a client that follows redirects gets the bytes.
    pub fn redirect_files(&self, on: bool) {
        self.common.redirect_files.store(on, Ordering::SeqCst);
    }

    /// The API requests this emulator is answering now.
    pub fn in_flight(&self) -> usize {
        self.common.in_flight.load(Ordering::SeqCst)
    }

    /// The most API requests this emulator was answering at the same time.
    pub fn peak_in_flight(&self) -> usize {
        self.common.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Stops accepting connections, closes idle ones and drops those held by `Hang`
    /// or `Delay`; returns when answers in progress are done and the port is free.
    pub async fn shutdown(mut self) {
        self.common.stopped.send_replace(true);
        let _ = (&mut self.task).await;
    }
}

impl<S> Drop for Emulator<S> {
    fn drop(&mut self) {
        self.common.stopped.send_replace(true);
    }
}

/// Binds `addr` and serves `api` behind the shared middleware (request log, faults,
/// credential), plus the routes every emulator has.
async fn serve<S: Send + Sync + 'static, D: Dialect>(
    addr: &str,
    token: &str,
    make: impl FnOnce(Arc<Common>) -> (Arc<S>, Router),
) -> std::io::Result<Emulator<S>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let common = Arc::new(Common {
        base_url: format!("http://{addr}"),
        second_host: Mutex::default(),
        token: token.to_string(),
        faults: Faults::default(),
        requests: Mutex::default(),
        fetched: Mutex::default(),
        files: Mutex::default(),
        in_flight: AtomicUsize::new(0),
        peak_in_flight: AtomicUsize::new(0),
        redirect_files: std::sync::atomic::AtomicBool::new(false),
        stopped: watch::Sender::new(false),
    });
    let (state, api) = make(common.clone());
    let control = Router::new()
        .route("/files/{name}", get(file))
        .route("/__emulator/faults", post(push_fault).delete(clear_faults))
        .route("/__emulator/faults/always", put(set_always))
        .route("/__emulator/requests", get(requests))
        .route("/__emulator/fetched", get(fetched))
        .with_state(common.clone());
    let app = api
        .layer(middleware::from_fn_with_state(common.clone(), guard::<D>))
        .merge(control);
    let stopped = common.clone();
    let served = app.clone();
    let task = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, served)
            .with_graceful_shutdown(async move { stopped.stopped().await })
            .await;
    });
    Ok(Emulator {
        state,
        common,
        addr,
        task,
        app,
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
    let _in_flight = InFlight::enter(common.clone());
    let fault = common.faults.next();
    tracing::info!(method = %parts.method, path = %parts.uri.path(), ?fault, "request");
    match fault {
        Some(Fault::Status {
            status,
            retry_after,
            body,
        }) => {
            let body = body.unwrap_or_else(|| D::error_body(status).to_string());
            let mut response = D::error_with(status, body);
            if let Some(seconds) = retry_after {
                response.headers_mut().insert("retry-after", seconds.into());
            }
            return response;
        }
        Some(Fault::Delay { ms }) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = common.stopped() => reset(),
            }
        }
        Some(Fault::Hang) => {
            common.stopped().await;
            reset();
        }
        Some(Fault::Reset) => reset(),
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
    if !common.to_second_host(&parts.headers) && !D::authorized(&parts.headers, &common.token) {
        return D::error(401);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Counts one request in flight until dropped (also when a fault unwinds).
struct InFlight(Arc<Common>);

impl InFlight {
    fn enter(common: Arc<Common>) -> InFlight {
        let now = common.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        common.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(common)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Drops the connection with no response: unwinding ends the connection's task, which
/// closes the socket. `resume_unwind` skips the panic hook, so nothing is printed.
fn reset() -> ! {
    std::panic::resume_unwind(Box::new("emulated connection reset"))
}

async fn file(
    State(common): State<Arc<Common>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if common.redirect_files.load(Ordering::SeqCst) && query.as_deref() != Some("direct") {
        let location = format!("{}/files/{name}?direct", common.advertised_url());
        return (StatusCode::FOUND, [("location", location)]).into_response();
    }
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
    common.faults.push(fault);
    StatusCode::NO_CONTENT
}

async fn set_always(
    State(common): State<Arc<Common>>,
    axum::Json(fault): axum::Json<Option<Fault>>,
) -> StatusCode {
    common.faults.set_always(fault);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(common): State<Arc<Common>>) -> StatusCode {
    common.faults.clear();
    StatusCode::NO_CONTENT
}

async fn requests(State(common): State<Arc<Common>>) -> axum::Json<Vec<Recorded>> {
    axum::Json(common.requests.lock().unwrap().clone())
}

async fn fetched(State(common): State<Arc<Common>>) -> axum::Json<Vec<Fetched>> {
    axum::Json(common.fetched())
}

/// The width and height in a PNG's header, if `bytes` starts like a PNG.
pub fn png_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    Some((word(16), word(20)))
}

/// The size of an image of about a megapixel with aspect ratio `ratio` (`"16:9"`),
/// sides multiples of 16; `None` if `ratio` is not `W:H` with W/H within 1:4..4:1.
pub fn aspect_size(ratio: &str) -> Option<(u32, u32)> {
    let (w, h) = ratio.split_once(':')?;
    let (w, h): (f64, f64) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    if !(w > 0.0 && h > 0.0 && (0.25..=4.0).contains(&(w / h))) {
        return None;
    }
    let scale = (1024.0 * 1024.0 / (w * h)).sqrt();
    let side = |x: f64| (((x * scale) / 16.0).round() as u32).max(1) * 16;
    Some((side(w), side(h)))
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

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Helpers for the emulators' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use serde_json::Value;
    use std::sync::LazyLock;
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// A client that gives up after `timeout`.
    pub fn client(timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder().timeout(timeout).build().unwrap()
    }

    /// `method url` with an optional bearer token and JSON body.
    pub async fn send(
        method: reqwest::Method,
        url: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::Result<reqwest::Response> {
        // One client for every test (building one costs tens of ms); without idle
        // connections, as each test has its own runtime.
        static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap()
        });
        let mut request = CLIENT.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await
    }

    /// POSTs `body` with `token`; answers the status and the JSON body (`null` if none).
    pub async fn post(url: &str, token: &str, body: Value) -> (u16, Value) {
        let response = send(reqwest::Method::POST, url, Some(token), Some(&body))
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// GETs `url` with `token`; answers the status and the JSON body.
    pub async fn get(url: &str, token: &str) -> (u16, Value) {
        let response = send(reqwest::Method::GET, url, Some(token), None)
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// The bytes at `url`, fetched without a credential.
    pub async fn download(url: &str) -> Vec<u8> {
        let response = send(reqwest::Method::GET, url, None, None).await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        response.bytes().await.unwrap().to_vec()
    }

    /// The dimensions of a PNG (decoding all of it).
    pub fn png_size(bytes: &[u8]) -> (u32, u32) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut pixels).unwrap();
        (frame.width, frame.height)
    }

    /// A webhook receiver on loopback: its URL and the JSON bodies posted to it.
    pub async fn webhook_receiver() -> (String, mpsc::UnboundedReceiver<Value>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| async move {
                let _ = sender.send(body);
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, receiver)
    }

    /// The next webhook body, or a panic after a few seconds.
    pub async fn next_webhook(receiver: &mut mpsc::UnboundedReceiver<Value>) -> Value {
        tokio::time::timeout(Duration::from_secs(5), receiver.recv())
            .await
            .expect("a webhook within 5 s")
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{client, png_size, post, send};
    use super::*;
    use serde_json::{Value, json};
    use std::time::Instant;

    const FLUX: &str = "/v1/models/black-forest-labs/flux-1.1-pro/predictions";

    fn prompt() -> Value {
        json!({"input": {"prompt": "a cat", "width": 256, "height": 256}})
    }

    async fn replicate() -> (Emulator<replicate::Replicate>, String) {
        let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
            .await
            .unwrap();
        let url = format!("{}{FLUX}", emulator.base_url());
        (emulator, url)
    }

    #[tokio::test]
    async fn queued_faults_apply_one_per_request_in_order() {
        let (emulator, url) = replicate().await;
        let faults = emulator.faults();
        faults.push(Fault::Status {
            status: 429,
            retry_after: Some(2),
            body: None,
        });
        faults.push(Fault::Status {
            status: 503,
            retry_after: None,
            body: Some("upstream down".into()),
        });
        faults.push(Fault::Malformed);
        faults.push(Fault::Delay { ms: 30 });

        let throttled = send(
            reqwest::Method::POST,
            &url,
            Some(DEFAULT_TOKEN),
            Some(&prompt()),
        )
        .await
        .unwrap();
        assert_eq!(throttled.status(), 429);
        assert_eq!(throttled.headers()["retry-after"], "2");
        assert_eq!(
            throttled.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(
            throttled.json::<Value>().await.unwrap(),
            json!({"title": "Request was throttled.", "detail": "Request was throttled. Expected available in 1 second.", "status": 429})
        );

        let custom = send(
            reqwest::Method::POST,
            &url,
            Some(DEFAULT_TOKEN),
            Some(&prompt()),
        )
        .await
        .unwrap();
        assert_eq!(custom.status(), 503);
        assert!(custom.headers().get("retry-after").is_none());
        assert_eq!(custom.text().await.unwrap(), "upstream down");

        let malformed = send(
            reqwest::Method::POST,
            &url,
            Some(DEFAULT_TOKEN),
            Some(&prompt()),
        )
        .await
        .unwrap();
        assert_eq!(malformed.status(), 200);
        assert!(malformed.json::<Value>().await.is_err());

        let started = Instant::now();
        let (status, _) = post(&url, DEFAULT_TOKEN, prompt()).await;
        assert_eq!(status, 201, "a delayed request is then answered normally");
        assert!(started.elapsed() >= Duration::from_millis(30));

        assert_eq!(post(&url, DEFAULT_TOKEN, prompt()).await.0, 201);
        assert_eq!(
            emulator.count("/v1/models/"),
            5,
            "faulted requests are logged"
        );
    }

    #[tokio::test]
    async fn reset_is_a_connection_error_and_hang_times_the_client_out() {
        let (emulator, url) = replicate().await;
        emulator.push_fault(Fault::Reset);
        emulator.push_fault(Fault::Hang);
        let patient = client(Duration::from_secs(10));
        let impatient = client(Duration::from_millis(200));
        let attempt = |client: &reqwest::Client| {
            client
                .post(&url)
                .bearer_auth(DEFAULT_TOKEN)
                .json(&prompt())
                .send()
        };

        let reset = attempt(&patient).await.unwrap_err();
        assert!(!reset.is_timeout() && reset.is_request(), "{reset:?}");
        assert!(
            format!("{reset:?}").contains("IncompleteMessage"),
            "the connection closed without a response: {reset:?}"
        );

        let hang = attempt(&impatient).await.unwrap_err();
        assert!(hang.is_timeout(), "{hang:?}");

        assert_eq!(attempt(&patient).await.unwrap().status(), 201);
    }

    #[tokio::test]
    async fn a_sticky_fault_follows_the_queue_until_cleared() {
        let (emulator, url) = replicate().await;
        let storm = Fault::Status {
            status: 503,
            retry_after: None,
            body: None,
        };
        emulator.set_always(Some(storm));
        emulator.push_fault(Fault::Status {
            status: 500,
            retry_after: None,
            body: None,
        });
        let (status, body) = post(&url, DEFAULT_TOKEN, prompt()).await;
        assert_eq!(
            (status, body["title"].as_str()),
            (500, Some("Internal Server Error"))
        );
        for _ in 0..3 {
            assert_eq!(post(&url, DEFAULT_TOKEN, prompt()).await.0, 503);
        }
        emulator.set_always(None);
        assert_eq!(post(&url, DEFAULT_TOKEN, prompt()).await.0, 201);
    }

    #[tokio::test]
    async fn faults_and_the_request_log_are_controlled_over_http() {
        let (emulator, url) = replicate().await;
        let base = emulator.base_url();
        let control = |method, path: &str, body: Option<Value>| {
            let url = format!("{base}{path}");
            async move { send(method, &url, None, body.as_ref()).await.unwrap() }
        };
        let queued = control(
            reqwest::Method::POST,
            "/__emulator/faults",
            Some(json!({"kind": "status", "status": 429, "retry_after": 1})),
        )
        .await;
        assert_eq!(queued.status(), 204);
        let sticky = json!({"kind": "status", "status": 503});
        let set = control(
            reqwest::Method::PUT,
            "/__emulator/faults/always",
            Some(sticky),
        )
        .await;
        assert_eq!(set.status(), 204);

        assert_eq!(post(&url, DEFAULT_TOKEN, prompt()).await.0, 429);
        assert_eq!(post(&url, DEFAULT_TOKEN, prompt()).await.0, 503);
        control(reqwest::Method::DELETE, "/__emulator/faults", None).await;
        assert_eq!(post(&url, DEFAULT_TOKEN, prompt()).await.0, 201);

        let log: Value = control(reqwest::Method::GET, "/__emulator/requests", None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            log.as_array().unwrap().len(),
            3,
            "control calls are not logged"
        );
        assert_eq!(log[2]["method"], "POST");
        assert_eq!(log[2]["path"], FLUX);
        assert_eq!(
            serde_json::from_str::<Value>(log[2]["body"].as_str().unwrap()).unwrap(),
            prompt()
        );
        let recorded = &emulator.requests()[2];
        assert_eq!(
            recorded.header("Authorization"),
            Some("Bearer emulator-key")
        );
    }

    #[tokio::test]
    async fn requests_without_the_token_get_the_providers_401() {
        let (emulator, url) = replicate().await;
        let missing = send(reqwest::Method::POST, &url, None, Some(&prompt()))
            .await
            .unwrap();
        assert_eq!(missing.status(), 401);
        assert_eq!(
            missing.json::<Value>().await.unwrap(),
            json!({"title": "Unauthenticated", "detail": "You did not pass a valid authentication token", "status": 401})
        );
        assert_eq!(post(&url, "wrong", prompt()).await.0, 401);
        assert_eq!(
            emulator.requests()[1].header("authorization"),
            Some("Bearer wrong")
        );

        let openai = openai::spawn("127.0.0.1:0", "other-key").await.unwrap();
        let chat = format!("{}/v1/chat/completions", openai.base_url());
        let (status, body) = post(&chat, DEFAULT_TOKEN, json!({})).await;
        assert_eq!(status, 401);
        assert_eq!(
            body,
            json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})
        );
    }

    #[tokio::test]
    async fn shutdown_drops_hanging_connections_and_frees_the_port() {
        let (emulator, url) = replicate().await;
        let addr = emulator
            .base_url()
            .trim_start_matches("http://")
            .to_string();
        emulator.set_always(Some(Fault::Hang));
        let client = client(Duration::from_secs(10));
        let hanging = tokio::spawn({
            let request = client.post(&url).bearer_auth(DEFAULT_TOKEN).json(&prompt());
            async move { request.send().await }
        });
        while emulator.count("/v1/") == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let started = Instant::now();
        emulator.shutdown().await;
        let error = hanging.await.unwrap().unwrap_err();
        assert!(!error.is_timeout(), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn pngs_are_deterministic_and_keyed_by_the_seed() {
        assert_eq!(png(16, 8, 7), png(16, 8, 7));
        assert_ne!(png(16, 8, 7), png(16, 8, 8));
        assert_eq!(png_size(&png(16, 8, 7)), (16, 8));
        assert_eq!(stable_hash("a cat"), stable_hash("a cat"));
        assert!(flagged("an NSFW scene") && !flagged("a cat"));
    }
}
