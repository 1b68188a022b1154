//! The API's conventions: authentication, the error envelope, validation, balance
//! checks and organization isolation. No provider is reached here.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Options, ProviderSpec, Server, flux_input, wait_until};

/// A server whose providers point at a port nobody listens on: nothing here runs.
async fn server() -> Server {
    Server::start(&[ProviderSpec {
        name: "nowhere",
        adapter: "replicate",
        base_url: "http://127.0.0.1:9".into(),
        models: &["flux-1.1-pro"],
    }])
    .await
}

#[tokio::test]
async fn health_answers_and_every_response_has_a_request_id() {
    let server = server().await;
    let health = server.call(Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(health.header("x-request-id").unwrap().starts_with("req_"));
    // Readiness says what it checked, without a key.
    let ready = server.call(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
    assert_eq!(ready.body["status"], "ready");
    for check in ["store", "adapters", "dispatcher"] {
        assert_eq!(ready.body["checks"][check]["ok"], true, "{}", ready.body);
    }
    assert_eq!(ready.body["checks"]["dispatcher"]["detail"], "running");
    // The start message is the server's own readiness answer.
    wait_until(
        "the start message",
        std::time::Duration::from_secs(10),
        || async {
            server
                .log()
                .contains("ModelRoute is ready (GET /readyz answers 200)")
        },
    )
    .await;
}

#[tokio::test]
async fn missing_malformed_wrong_crc_and_unknown_keys_are_unauthorized() {
    let server = server().await;
    let valid = server.api_key.clone();
    let mut wrong_crc = valid.clone();
    let last = if wrong_crc.ends_with('0') { "1" } else { "0" };
    wrong_crc.replace_range(75..76, last);
    // Well formed (CRC matches) but never issued.
    let body = "0".repeat(64);
    let unknown = format!("sk_{body}_{:08x}", crc32(&body));
    for key in [
        None,
        Some("sk_short"),
        Some(&valid[..75]),
        Some(wrong_crc.as_str()),
        Some(unknown.as_str()),
    ] {
        let reply = server
            .call(Method::GET, "/v1/executions", key, None, &[])
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(reply.error_code(), "UNAUTHORIZED");
    }
    let reply = server.get("/v1/executions").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);

    // The scheme is case-insensitive (RFC 9110); two credentials are one too many.
    let lower = format!("bearer {valid}");
    let reply = server
        .call(
            Method::GET,
            "/v1/executions",
            None,
            None,
            &[("authorization", &lower)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let reply = server
        .call(
            Method::GET,
            "/v1/executions",
            Some(&valid),
            None,
            &[("authorization", &lower)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

fn crc32(text: &str) -> u32 {
    // The IEEE polynomial, bit by bit: enough for one 64-byte string.
    let mut crc = !0u32;
    for byte in text.bytes() {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn bad_bodies_get_validation_errors_with_details_and_nothing_is_stored() {
    let server = server().await;
    let before = server.get("/v1/balance").await.body;

    let raw = reqwest::Client::new()
        .post(format!("{}/v1/executions", server.url))
        .bearer_auth(&server.api_key)
        .header("content-type", "application/json")
        .body("{\"model\": \"flux-1.1-pro\", \"input\": {")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INPUT_VALIDATION_ERROR");
    assert_eq!(body["error"]["details"][0]["field"], "body");

    let cases = [
        (
            json!({"model": "no-such-model", "input": flux_input()}),
            "model",
            "INVALID_VALUE",
        ),
        (json!({"input": flux_input()}), "model", "REQUIRED"),
        (
            json!({"model": "flux-1.1-pro", "input": "text"}),
            "input",
            "INVALID_TYPE",
        ),
        (
            json!({"model": "flux-1.1-pro", "input": {"width": 512}}),
            "input.prompt",
            "REQUIRED",
        ),
        (
            json!({"model": "flux-1.1-pro", "input": {"prompt": "x", "width": "wide"}}),
            "input.width",
            "INVALID_TYPE",
        ),
        (
            json!({"model": "flux-1.1-pro", "input": {"prompt": "x", "width": 100000}}),
            "input.width",
            "OUT_OF_RANGE",
        ),
        (
            json!({"model": "flux-1.1-pro", "input": {"prompt": "x", "style": "noir"}}),
            "input.style",
            "UNKNOWN_FIELD",
        ),
        (
            json!({"model": "flux-1.1-pro", "input": flux_input(), "colour": 1}),
            "colour",
            "UNKNOWN_FIELD",
        ),
        (
            json!({"model": "flux-1.1-pro", "input": flux_input(), "mode": "LATER"}),
            "mode",
            "INVALID_VALUE",
        ),
    ];
    for (body, field, code) in cases {
        let reply = server.post("/v1/executions", body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.error_code(), "INPUT_VALIDATION_ERROR");
        let details = reply.body["error"]["details"].as_array().expect("details");
        assert!(
            details
                .iter()
                .any(|d| d["field"] == field && d["code"] == code),
            "{body} → {details:?}"
        );
    }

    let listed = server.get("/v1/executions").await;
    assert_eq!(listed.body["data"], json!([]));
    assert_eq!(server.get("/v1/balance").await.body, before);
}

/// Regression: a body without `Content-Type: application/json` was read as JSON
/// anyway, an object naming a key twice was accepted with the last value winning
/// (another model than the client may have meant), and a second `Idempotency-Key`
/// header was ignored. Each is refused now, and none claims anything.
#[tokio::test]
async fn ambiguous_requests_are_refused_and_create_nothing() {
    let server = server().await;
    let send = |content_type: Option<&'static str>, body: String, keys: &[&'static str]| {
        let mut request = reqwest::Client::new()
            .post(format!("{}/v1/executions", server.url))
            .bearer_auth(&server.api_key)
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        for key in keys {
            request = request.header("idempotency-key", *key);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body)
        }
    };
    let valid = json!({"model": "flux-1.1-pro", "input": flux_input()}).to_string();
    let prompt = json!(flux_input()["prompt"]);
    let cases = [
        (Some("text/plain"), valid.clone(), vec![], "Content-Type"),
        (None, valid.clone(), vec![], "Content-Type"),
        (
            Some("application/json"),
            format!(
                r#"{{"model": "flux-1.1-pro", "model": "kling-video", "input": {{"prompt": {prompt}}}}}"#
            ),
            vec![],
            "body",
        ),
        (
            Some("application/json"),
            format!(
                r#"{{"model": "flux-1.1-pro", "input": {{"prompt": {prompt}, "prompt": "other"}}}}"#
            ),
            vec![],
            "body",
        ),
        (
            Some("application/json"),
            valid.clone(),
            vec!["one", "two"],
            "Idempotency-Key",
        ),
    ];
    for (content_type, body, keys, field) in cases {
        let (status, reply) = send(content_type, body.clone(), &keys).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert_eq!(reply["error"]["code"], "INPUT_VALIDATION_ERROR", "{reply}");
        assert_eq!(reply["error"]["details"][0]["field"], field, "{reply}");
    }
    assert_eq!(server.get("/v1/executions").await.body["data"], json!([]));
    assert_eq!(server.get("/v1/balance").await.body["held"], "0");
    // The key of a refused request is still free, and a charset is fine.
    let (status, _) = send(Some("application/json"), valid.clone(), &["one"]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, reply) = send(Some("application/json; charset=utf-8"), valid, &["one"]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    assert_eq!(
        server.get("/v1/executions").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Regression: a misspelt or unsupported list filter (`?purpose=INPUT`) was ignored
/// and the whole list answered, and `limit=-1` was called the wrong type.
#[tokio::test]
async fn list_queries_refuse_unknown_parameters_and_bad_limits() {
    let server = server().await;
    for (path, field, code) in [
        ("/v1/files?purpose=INPUT", "purpose", "UNKNOWN_FIELD"),
        ("/v1/executions?state=FAILED", "state", "UNKNOWN_FIELD"),
        ("/v1/ledger?kind=hold", "kind", "UNKNOWN_FIELD"),
        (
            "/v1/webhooks/endpoints?active=true",
            "active",
            "UNKNOWN_FIELD",
        ),
        ("/v1/executions?limit=-1", "limit", "OUT_OF_RANGE"),
        ("/v1/files?limit=101", "limit", "OUT_OF_RANGE"),
        ("/v1/executions?limit=ten", "limit", "INVALID_TYPE"),
        // Regression: a repeated parameter was last-wins, and the key and model
        // lists ignored their query altogether.
        ("/v1/executions?limit=1&limit=2", "limit", "INVALID_VALUE"),
        (
            "/v1/executions?status=FAILED&status=CANCELLED",
            "status",
            "INVALID_VALUE",
        ),
        ("/v1/api-keys?x=1", "x", "UNKNOWN_FIELD"),
        ("/v1/api-keys?limit=-1", "limit", "OUT_OF_RANGE"),
        ("/v1/models?x=1", "x", "UNKNOWN_FIELD"),
        (
            "/v1/models?starting_after=no-such-model",
            "starting_after",
            "INVALID_VALUE",
        ),
    ] {
        let reply = server.get(path).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{path}: {:?}",
            reply.body
        );
        assert_eq!(reply.error_code(), "INPUT_VALIDATION_ERROR");
        assert_eq!(reply.body["error"]["details"][0]["field"], field, "{path}");
        assert_eq!(reply.body["error"]["details"][0]["code"], code, "{path}");
    }
    let filtered = server
        .get("/v1/executions?status=COMPLETED&model=flux-1.1-pro&limit=5")
        .await;
    assert_eq!(filtered.status, StatusCode::OK, "{:?}", filtered.body);
    let models = server.get("/v1/models?limit=1").await.body;
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["has_more"], true);
    let slug = models["data"][0]["slug"].as_str().unwrap();
    let rest = server
        .get(&format!("/v1/models?starting_after={slug}"))
        .await
        .body;
    assert_ne!(rest["data"][0]["slug"], slug);
}

/// Regression: a provider callback over the body limit was answered in plain text,
/// not in the error envelope.
#[tokio::test]
async fn an_oversized_provider_callback_is_refused_in_the_envelope() {
    let server = server().await;
    let reply = reqwest::Client::new()
        .post(format!("{}/v1/provider-webhooks/nowhere/token", server.url))
        .header("content-type", "application/json")
        .body(vec![b' '; 3 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE", "{body}");
}

#[tokio::test]
async fn unknown_routes_and_ids_are_not_found_in_the_envelope() {
    let server = server().await;
    for path in [
        "/v1/nothing",
        "/v1/executions/exec_00000000-0000-4000-8000-000000000000",
        "/v1/files/file_x",
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.error_code(), "NOT_FOUND");
    }
}

#[tokio::test]
async fn a_hold_beyond_the_balance_is_refused_and_creates_nothing() {
    let server = server().await;
    let poor = server.new_organization("0.01").await;
    let reply = server
        .call(
            Method::POST,
            "/v1/executions",
            Some(&poor),
            Some(json!({"model": "flux-1.1-pro", "input": flux_input()})),
            &[("Idempotency-Key", "k1")],
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYMENT_REQUIRED,
        "{:?}",
        reply.body
    );
    assert_eq!(reply.error_code(), "INSUFFICIENT_BALANCE");
    let balance = server
        .call(Method::GET, "/v1/balance", Some(&poor), None, &[])
        .await;
    assert_eq!(
        balance.body,
        json!({"available": "0.01", "held": "0", "currency": "USD"})
    );
    let listed = server
        .call(Method::GET, "/v1/executions", Some(&poor), None, &[])
        .await;
    assert_eq!(listed.body["data"], json!([]));
}

#[tokio::test]
async fn the_operator_api_needs_the_operator_token() {
    let server = server().await;
    for token in [None, Some("op_wrong"), Some(server.api_key.as_str())] {
        let reply = server
            .call(
                Method::POST,
                "/admin/v1/organizations",
                token,
                Some(json!({"name": "x", "credit_usd": "1"})),
                &[],
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.error_code(), "UNAUTHORIZED");
    }
    let reply = server
        .call(
            Method::POST,
            "/admin/v1/organizations",
            Some(&server.admin_token),
            Some(json!({"name": "", "credit_usd": "1"})),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_catalogue_lists_models_without_naming_providers() {
    let server = server().await;
    let models = server.get("/v1/models").await;
    assert_eq!(models.status, StatusCode::OK);
    let text = models.body.to_string();
    assert!(text.contains("flux-1.1-pro"));
    assert!(!text.to_lowercase().contains("replicate"), "{text}");
    assert!(!text.contains("nowhere"));
    let flux = server.get("/v1/models/flux-1.1-pro").await;
    assert_eq!(flux.body["modality"], "image");
    assert_eq!(flux.body["pricing"]["per_image"], "0.04");
    assert!(flux.body["input_schema"]["properties"]["prompt"].is_object());
}

#[tokio::test]
async fn each_key_is_rate_limited_with_headers_and_retry_after() {
    let server = Server::start_with(
        &[],
        Options {
            rate_limit: (1, 3),
            ..Options::default()
        },
    )
    .await;
    for remaining in ["2", "1", "0"] {
        let reply = server.get("/v1/executions").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(reply.header("x-ratelimit-remaining"), Some(remaining));
        let reset: u64 = reply.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!(
            reset
                >= std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
        );
    }
    let limited = server.get("/v1/executions").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.error_code(), "RATE_LIMITED");
    assert_eq!(limited.body["error"]["retryable"], true);
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");

    // Another key has its own budget.
    let other = server.new_organization("1").await;
    let reply = server
        .call(Method::GET, "/v1/executions", Some(&other), None, &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// Regression: an oversized plugin upload was refused in plain text, not in the
/// envelope, and rolling back a plugin that does not exist was a `409`.
///
/// The answer is read while the body is still being written, and a write cut off
/// by the server's refusal is expected: with a client that reads only after its
/// last byte went out, the test failed on a broken pipe whenever the server
/// answered and closed first.
#[tokio::test]
async fn operator_refusals_are_in_the_envelope() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = server().await;
    let address = server.url.trim_start_matches("http://");
    let connection = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut reader, mut writer) = connection.into_split();
    let head = format!(
        "PUT /admin/v1/plugins/huge HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        server.admin_token,
        51 * 1024 * 1024
    );
    tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![0u8; 1024 * 1024];
        for _ in 0..51 {
            writer.write_all(&chunk).await?;
        }
        std::io::Result::Ok(())
    });
    // The whole answer: its head, then as many bytes as its Content-Length says.
    let mut answer = Vec::new();
    let read_answer = async {
        let mut chunk = [0u8; 4096];
        loop {
            let read = reader.read(&mut chunk).await.unwrap();
            answer.extend_from_slice(&chunk[..read]);
            let text = String::from_utf8_lossy(&answer).to_lowercase();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse::<usize>().ok());
                if read == 0 || length.is_some_and(|length| body.len() >= length) {
                    break;
                }
            } else if read == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), read_answer)
        .await
        .expect("an answer to the upload");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(body).expect("a JSON envelope");
    assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE", "{body}");
    let rollback = server
        .call(
            Method::POST,
            "/admin/v1/plugins/nope/rollback",
            Some(&server.admin_token),
            None,
            &[],
        )
        .await;
    assert_eq!(
        rollback.status,
        StatusCode::NOT_FOUND,
        "{:?}",
        rollback.body
    );
}
