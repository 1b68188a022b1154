//! Helpers for the emulators' unit tests.

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
