//! Holes the hardening review found in the native API's inputs and answers: numbers
//! written as floats, echoed values, key rotation, ledger ids, replayed waits.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

use modelroute_tests::emulators::{DEFAULT_TOKEN, fal, replicate};

use crate::support::{ProviderSpec, Server, replicate_provider};

const WAIT: Duration = Duration::from_secs(30);

/// Sends `body` exactly as written, so numbers keep the form the client chose.
async fn create_raw(server: &Server, body: &str) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/executions", server.url))
        .bearer_auth(&server.api_key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let created: Value = response.json().await.expect("json");
    let id = created["id"].as_str().expect("id").to_string();
    server.wait_terminal(&id, WAIT).await
}

/// What the operator sees of an execution: its stored input among the rest.
async fn stored(server: &Server, id: &Value) -> Value {
    let reply = server
        .admin_get(&format!("/admin/v1/executions/{}", id.as_str().unwrap()))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body
}

/// Regression: `"width": 256.0` passed validation (JSON Schema calls it an
/// integer), then the estimate and the adapter read it as missing: 1024×1024 was
/// generated and charged.
#[tokio::test]
async fn whole_numbers_written_as_floats_are_generated_and_charged_as_sent() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = Server::start(&[replicate_provider(&emulator)]).await;
    let as_integers = create_raw(
        &server,
        r#"{"model":"flux-1.1-pro","input":{"prompt":"x","width":256,"height":256}}"#,
    )
    .await;
    for body in [
        r#"{"model":"flux-1.1-pro","input":{"prompt":"x","width":256.0,"height":256.0}}"#,
        r#"{"model":"flux-1.1-pro","input":{"prompt":"x","width":2.56e2,"height":256.0}}"#,
    ] {
        let execution = create_raw(&server, body).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        let image = &execution["result"]["output"]["images"][0];
        assert_eq!(
            (image["width"].as_u64(), image["height"].as_u64()),
            (Some(256), Some(256))
        );
        assert_eq!(execution["estimated_cost"], as_integers["estimated_cost"]);
        assert_eq!(execution["cost"], as_integers["cost"]);
        // The stored input is the canonical one.
        let record = stored(&server, &execution["id"]).await;
        assert_eq!(record["input"]["width"], json!(256), "{record}");
        assert!(record["input"]["width"].is_u64());
    }
}

/// Regression: `kling-video` with `"duration": 10.0` (or `1e1`) was charged and
/// generated as 5 s, the default.
#[tokio::test]
async fn a_video_duration_written_as_a_float_is_the_duration_generated_and_charged() {
    let emulator = fal::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = Server::start(&[ProviderSpec {
        name: "fal-emulator",
        adapter: "fal",
        base_url: emulator.base_url(),
        models: &["kling-video"],
    }])
    .await;
    for duration in ["10.0", "1e1", "10"] {
        let execution = create_raw(
            &server,
            &format!(
                r#"{{"model":"kling-video","input":{{"prompt":"waves","duration":{duration}}}}}"#
            ),
        )
        .await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        assert_eq!(
            execution["result"]["output"]["videos"][0]["duration_s"],
            10.0
        );
        assert_eq!(
            execution["cost"], "0.5",
            "10 s at $0.05 a second ({duration})"
        );
    }
}

/// Regression: a 900 KB prompt that failed validation answered a 1.8 MB error
/// that quoted it whole, in the detail and again in the message.
#[tokio::test]
async fn a_huge_invalid_value_is_quoted_by_a_short_prefix_only() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = Server::start(&[replicate_provider(&emulator)]).await;
    let huge = "y".repeat(900_000);
    for body in [
        // a value that breaks the model's schema (a string where a number goes)
        json!({"model": "flux-1.1-pro", "input": {"prompt": "x", "width": huge}}),
        // an unknown model slug
        json!({"model": huge, "input": {}}),
        // a field the API does not know, named by a huge key
        json!({"model": "flux-1.1-pro", "input": {}, huge.clone(): 1}),
    ] {
        let reply = server.post("/v1/executions", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.error_code(), "INPUT_VALIDATION_ERROR");
        let size = reply.body.to_string().len();
        assert!(
            size < 4_096,
            "a {size}-byte error: {}",
            &reply.body.to_string()[..300]
        );
        // A detail's field names a key by at most 200 characters; messages quote 40.
        assert!(!reply.body.to_string().contains(&"y".repeat(201)));
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(!message.contains(&"y".repeat(41)), "{message}");
    }
    // A short value is still quoted whole, so the client sees what was wrong.
    let reply = server
        .post(
            "/v1/executions",
            json!({"model": "flux-1.1-pro", "input": {"prompt": "x", "width": "wide"}}),
        )
        .await;
    assert!(
        reply.body["error"]["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("\"wide\""),
        "{:?}",
        reply.body
    );
}

/// Regression: ledger entry ids were global and sequential (`le_0000…0042`): an
/// organization could gauge the others' activity from the gaps. They are opaque,
/// and the ledger lists newest first, paging with `starting_after`.
#[tokio::test]
async fn ledger_ids_are_opaque_and_the_ledger_lists_newest_first() {
    let server = Server::start(&[]).await;
    let admin = |method: Method, path: String, body: Value| {
        let server = &server;
        async move {
            server
                .call(method, &path, Some(&server.admin_token), Some(body), &[])
                .await
        }
    };
    let created = admin(
        Method::POST,
        "/admin/v1/organizations".into(),
        json!({"name": "Ledger", "credit_usd": "1"}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let org = created.body["organization_id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = created.body["api_key"].as_str().unwrap().to_string();
    for amount in ["2", "3", "4"] {
        let reply = admin(
            Method::POST,
            format!("/admin/v1/organizations/{org}/credit"),
            json!({"amount_usd": amount, "memo": format!("credit {amount}")}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    let list = |query: String| {
        let key = key.clone();
        let server = &server;
        async move {
            server
                .call(
                    Method::GET,
                    &format!("/v1/ledger{query}"),
                    Some(&key),
                    None,
                    &[],
                )
                .await
        }
    };
    let ledger = list(String::new()).await.body;
    let entries = ledger["data"].as_array().unwrap();
    let amounts: Vec<&str> = entries
        .iter()
        .map(|e| e["amount"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, ["4", "3", "2", "1"], "{ledger}");
    for entry in entries {
        let id = entry["id"].as_str().unwrap();
        let uuid = id.strip_prefix("le_").expect("le_ prefix");
        assert!(uuid::Uuid::try_parse(uuid).is_ok(), "{id} is not opaque");
    }
    // Paging: after the newest entry come the older ones, in order.
    let first = entries[0]["id"].as_str().unwrap();
    let page = list(format!("?limit=2&starting_after={first}")).await.body;
    let ids: Vec<&Value> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["id"])
        .collect();
    assert_eq!(ids, [&entries[1]["id"], &entries[2]["id"]]);
    assert_eq!(page["has_more"], true);
    // Another organization's entry id is not a cursor here.
    let theirs = server.get("/v1/ledger").await.body;
    let their_id = theirs["data"][0]["id"].as_str().unwrap();
    let refused = list(format!("?starting_after={their_id}")).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
}

/// Regression: a `SYNC` create replayed with a longer `wait_seconds` was a `409`:
/// how long a call waits is not what the execution is.
#[tokio::test]
async fn a_sync_create_replayed_with_another_wait_is_the_same_request() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = Server::start(&[replicate_provider(&emulator)]).await;
    let send = |wait: u64| {
        server.call(
            Method::POST,
            "/v1/executions",
            Some(&server.api_key),
            Some(json!({
                "model": "flux-1.1-pro",
                "mode": "SYNC",
                "wait_seconds": wait,
                "input": {"prompt": "x", "width": 256, "height": 256},
            })),
            &[("Idempotency-Key", "sync-wait")],
        )
    };
    let first = send(5).await;
    assert!(first.status.is_success(), "{:?}", first.body);
    let replay = send(120).await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body["id"], first.body["id"]);
}
