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
mod faults;
mod media;
pub mod openai;
pub mod replicate;
#[cfg(test)]
pub(crate) mod testing;

pub use faults::{Fault, Faults};
pub use media::{aspect_size, flagged, png, png_dimensions, sha256_hex, stable_hash};

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The credential every emulator expects unless told otherwise.
pub const DEFAULT_TOKEN: &str = "emulator-key";

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
    let (mut parts, body) = request.into_parts();
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
        // Applied by the handler, which knows where its stream's text is.
        Some(Fault::CutStream { after }) => {
            parts.extensions.insert(StreamFault::Cut { after });
        }
        Some(Fault::StallStream { after }) => {
            parts.extensions.insert(StreamFault::Stall { after });
        }
        Some(Fault::MalformedStream { after }) => {
            parts.extensions.insert(StreamFault::Malformed { after });
        }
        Some(Fault::NoDone) => {
            parts.extensions.insert(StreamFault::NoDone);
        }
        None => {}
    }
    if !common.to_second_host(&parts.headers) && !D::authorized(&parts.headers, &common.token) {
        return D::error(401);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A stream's fault ([`Fault::CutStream`], [`Fault::StallStream`],
/// [`Fault::MalformedStream`], [`Fault::NoDone`]) as a streaming handler applies it,
/// with the pieces of text it sends before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFault {
    /// the body ends
    Cut { after: usize },
    /// nothing more comes, on an open connection
    Stall { after: usize },
    /// a chunk that is not JSON, then the body ends
    Malformed { after: usize },
    /// everything up to the finish, then the body ends
    NoDone,
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

#[cfg(test)]
mod tests;
