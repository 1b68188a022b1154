//! A webhook receiver on loopback: records every delivery and answers with a
//! status the test sets.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Received {
    pub timestamp: i64,
    pub signature: String,
    pub user_agent: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    /// Whether `X-Signature` is `hex(HMAC-SHA256(secret, "{timestamp}.{body}"))`.
    pub fn signed_by(&self, secret: &str) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(format!("{}.{}", self.timestamp, self.body).as_bytes());
        let Ok(signature) = hex::decode(&self.signature) else {
            return false;
        };
        mac.verify_slice(&signature).is_ok()
    }
}

#[derive(Default)]
struct Inbox {
    received: Mutex<Vec<Received>>,
    status: AtomicU16,
    /// record deliveries but never answer them
    silent: AtomicBool,
}

pub struct Receiver {
    pub url: String,
    inbox: Arc<Inbox>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A receiver answering `200` at `http://127.0.0.1:{port}/hook`.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let inbox = Arc::new(Inbox {
            status: AtomicU16::new(200),
            ..Inbox::default()
        });
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(inbox.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("receiver");
        });
        Receiver { url, inbox, task }
    }

    pub fn answer_with(&self, status: u16) {
        self.inbox.status.store(status, Ordering::SeqCst);
    }

    /// From now on, deliveries are recorded and never answered.
    pub fn fall_silent(&self, silent: bool) {
        self.inbox.silent.store(silent, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inbox.received.lock().unwrap().clone()
    }

    /// Waits until at least `count` deliveries arrived.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let what = format!("{count} deliveries arrive");
        crate::support::eventually(&what, timeout, || async {
            let received = self.received();
            if received.len() >= count {
                Ok(received)
            } else {
                Err(format!("{} arrived", received.len()))
            }
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    inbox.received.lock().unwrap().push(Received {
        timestamp: header("x-signature-timestamp").parse().unwrap_or(0),
        signature: header("x-signature"),
        user_agent: header("user-agent"),
        headers: headers.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    if inbox.silent.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    StatusCode::from_u16(inbox.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK)
}
