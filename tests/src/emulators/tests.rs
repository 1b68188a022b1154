//! The emulators' shared behaviour: credentials, faults, the request log, files.

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
