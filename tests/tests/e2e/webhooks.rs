//! Webhooks (SPEC §9): endpoints, signed deliveries from the durable outbox, the
//! retry schedule on a driven clock, deactivation, kill -9, and the SSRF guard.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

use modelroute_tests::emulators::{DEFAULT_TOKEN, Emulator, openai, replicate};

use crate::receiver::{Received, Receiver};
use crate::support::{
    Options, Server, eventually, flux_input, openai_provider, replicate_provider, wait_until,
};

const WAIT: Duration = Duration::from_secs(60);
/// Lets a server's clock be driven (`POST /admin/v1/clock/advance`).
const CLOCK_CONTROL: &str = "\n[testing]\nclock_control = true\n";

/// A server with the Replicate-format emulator as its one provider, and `config`.
pub async fn server_with(emulator: &Emulator<replicate::Replicate>, config: &str) -> Server {
    Server::start_with(
        &[replicate_provider(emulator)],
        Options {
            config,
            ..Options::default()
        },
    )
    .await
}

async fn create_endpoint(server: &Server, body: Value) -> Value {
    let reply = server.post("/v1/webhooks/endpoints", body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body
}

async fn run_execution(server: &Server, extra: Value) -> String {
    let mut body = json!({"model": "flux-1.1-pro", "input": flux_input()});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let reply = server.post("/v1/executions", body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_string();
    server.wait_terminal(&id, WAIT).await;
    id
}

/// A synchronous execution's `execution.started` event is written with its accept
/// (the accept wakes the outbox only when it queued one), and is delivered.
#[tokio::test]
async fn a_synchronous_execution_s_started_event_written_with_its_accept_is_delivered() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = Server::start_with(&[openai_provider(&emulator)], Options::default()).await;
    let receiver = Receiver::start().await;
    // Only the start: no later event of the execution is queued.
    create_endpoint(
        &server,
        json!({"url": receiver.url, "events": ["execution.started"]}),
    )
    .await;
    let reply = server.sync_chat().await;
    let received = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received[0].json()["event_type"], "execution.started");
    assert_eq!(received[0].json()["execution_id"], reply.body["id"]);
}

#[tokio::test]
async fn endpoints_get_signed_lifecycle_events_and_the_secret_is_shown_once() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = server_with(&emulator, "").await;
    let receiver = Receiver::start().await;
    let endpoint = create_endpoint(
        &server,
        json!({"url": receiver.url, "description": "all events", "headers": {"X-Team": "imaging"}}),
    )
    .await;
    let secret = endpoint["secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("whsec_") && secret.len() >= 46,
        "{secret}"
    );
    assert!(endpoint["id"].as_str().unwrap().starts_with("wh_"));
    assert_eq!(endpoint["events"], json!([]));
    assert_eq!(endpoint["is_active"], json!(true));
    assert_eq!(endpoint["headers"], json!({"X-Team": "imaging"}));
    let id = endpoint["id"].as_str().unwrap();

    let listed = server.get("/v1/webhooks/endpoints").await;
    assert_eq!(listed.status, StatusCode::OK);
    // Like the secret, custom header values are shown once.
    assert_eq!(
        listed.body["data"][0]["headers"],
        json!({"X-Team": "[redacted]"})
    );
    assert_eq!(listed.body["data"][0]["id"], endpoint["id"]);
    assert!(
        listed.body["data"][0].get("secret").is_none(),
        "secret shown again"
    );
    assert_eq!(listed.body["data"][0]["failure_count"], json!(0));

    // The test event is signed and sent now.
    let tested = server
        .post(&format!("/v1/webhooks/endpoints/{id}/test"), json!({}))
        .await;
    assert_eq!(tested.status, StatusCode::OK, "{:?}", tested.body);
    assert_eq!(tested.body["delivered"], json!(true));
    let first = receiver.wait_for(1, WAIT).await.remove(0);
    assert!(first.signed_by(&secret));
    assert_eq!(first.json()["event_type"], "test");
    assert_eq!(first.user_agent, "ModelRoute-Webhooks/1.0");
    assert_eq!(first.headers["x-team"], "imaging");
    assert_eq!(first.headers["content-type"], "application/json");

    // An execution's per-execution URL and the endpoint both hear about it.
    let own = Receiver::start().await;
    let execution = run_execution(&server, json!({"webhook_url": own.url})).await;
    // Deliveries run concurrently: order them by when the event happened.
    let mut received = receiver.wait_for(3, WAIT).await;
    received[1..].sort_by_key(|r| r.json()["event_type"] != "execution.started");
    let events: Vec<Value> = received[1..].iter().map(|r| r.json()).collect();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["execution.started", "execution.completed"]);
    for (event, delivery) in events.iter().zip(&received[1..]) {
        assert!(delivery.signed_by(&secret), "bad signature on {event}");
        assert!(event["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(event["version"], "1.0");
        assert_eq!(event["execution_id"], json!(execution));
        assert_eq!(event["data"]["id"], json!(execution));
        assert!(
            event["organization_id"]
                .as_str()
                .unwrap()
                .starts_with("org_")
        );
        assert!(event["timestamp"].is_string());
    }
    assert_eq!(events[1]["data"]["status"], "COMPLETED");
    assert!(
        !received[2].body.contains("127.0.0.1:"),
        "a provider URL leaked: {}",
        received[2].body
    );

    let default_secret = server.get("/v1/webhooks/default-secret").await;
    let default_secret = default_secret.body["secret"].as_str().unwrap().to_string();
    let own_events = own.wait_for(2, WAIT).await;
    assert!(own_events.iter().all(|r| r.signed_by(&default_secret)));
    let mut own_types: Vec<Value> = own_events
        .iter()
        .map(|r| r.json()["event_type"].clone())
        .collect();
    own_types.sort_by_key(|t| t.to_string());
    assert_eq!(
        own_types,
        [json!("execution.completed"), json!("execution.started")]
    );

    // Filters, updates and delete.
    let patched = server
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/endpoints/{id}"),
            Some(&server.api_key),
            Some(json!({"events": ["execution.failed"]})),
            &[],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{:?}", patched.body);
    assert_eq!(patched.body["events"], json!(["execution.failed"]));
    run_execution(&server, json!({})).await;
    let bad_event = server
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/endpoints/{id}"),
            Some(&server.api_key),
            Some(json!({"events": ["execution.exploded"]})),
            &[],
        )
        .await;
    assert_eq!(bad_event.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_event.error_code(), "INPUT_VALIDATION_ERROR");
    let deleted = server.delete(&format!("/v1/webhooks/endpoints/{id}")).await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        receiver.received().len(),
        3,
        "a filtered-out event was delivered"
    );
    let gone = server.get(&format!("/v1/webhooks/endpoints/{id}")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    // Another organization sees none of it (scopes are checked in money.rs).
    let other = server.new_organization("1.00").await;
    let foreign = server
        .call(
            Method::GET,
            "/v1/webhooks/endpoints",
            Some(&other),
            None,
            &[],
        )
        .await;
    assert_eq!(foreign.body["data"], json!([]));
}

#[tokio::test]
async fn a_failing_receiver_gets_the_exact_retry_schedule_on_a_driven_clock() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = server_with(&emulator, CLOCK_CONTROL).await;
    let receiver = Receiver::start().await;
    receiver.answer_with(500);
    let endpoint = create_endpoint(
        &server,
        json!({"url": receiver.url, "events": ["execution.completed"]}),
    )
    .await;
    run_execution(&server, json!({})).await;
    receiver.wait_for(1, WAIT).await;
    let id = endpoint["id"].as_str().unwrap();
    // Each retry is due 2, 4, 8, 16 and 30 minutes after the previous attempt:
    // a minute short of it, nothing comes; at it, the retry does.
    let mut last_failure = Value::Null;
    for (retry, minutes) in [2u64, 4, 8, 16, 30].into_iter().enumerate() {
        // The clock moves only once the server has recorded the failed attempt
        // (and with it when the next one is due).
        last_failure = wait_for_failure_after(&server, id, &last_failure).await;
        server.advance_clock(minutes * 60 - 60).await;
        server.wait_outbox_idle().await;
        assert_eq!(
            receiver.received().len(),
            retry + 1,
            "retry {} came early",
            retry + 1
        );
        server.advance_clock(60).await;
        receiver.wait_for(retry + 2, WAIT).await;
    }
    let received = receiver.received();
    assert_eq!(received.len(), 6);
    let gaps: Vec<i64> = received
        .windows(2)
        .map(|w| w[1].timestamp - w[0].timestamp)
        .collect();
    for (gap, minutes) in gaps.iter().zip([2i64, 4, 8, 16, 30]) {
        assert!(
            (minutes * 60..minutes * 60 + 5).contains(gap),
            "retry after {gap} s, expected {} s",
            minutes * 60
        );
    }
    // Every attempt is the same event, re-signed.
    let secret = endpoint["secret"].as_str().unwrap();
    let first_id = received[0].json()["id"].clone();
    assert!(
        received
            .iter()
            .all(|r| r.json()["id"] == first_id && r.signed_by(secret))
    );
    // After five retries the delivery is dead.
    server.advance_clock(3600).await;
    let outbox = server.wait_outbox_idle().await;
    assert_eq!(outbox["pending"], json!(0), "{outbox}");
    assert_eq!(receiver.received().len(), 6);
    // One failed delivery (of six attempts): the endpoint stays active.
    let listed = server.get("/v1/webhooks/endpoints").await;
    assert_eq!(listed.body["data"][0]["failure_count"], json!(1));
    assert_eq!(listed.body["data"][0]["is_active"], json!(true));
}

/// A receiver that never answers fails the attempt when `webhooks.timeout_seconds`
/// (30 by default, 1 here) has passed, and the retry brings the same event.
#[tokio::test]
async fn a_receiver_that_never_answers_times_out_and_the_retry_delivers() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let config = format!("{CLOCK_CONTROL}\n[webhooks]\ntimeout_seconds = 1\n");
    let server = server_with(&emulator, &config).await;
    let receiver = Receiver::start().await;
    receiver.fall_silent(true);
    let endpoint = create_endpoint(
        &server,
        json!({"url": receiver.url, "events": ["execution.completed"]}),
    )
    .await;
    let id = endpoint["id"].as_str().unwrap();
    run_execution(&server, json!({})).await;
    receiver.wait_for(1, WAIT).await;
    wait_for_failure_after(&server, id, &Value::Null).await;
    let listed = server
        .get(&format!("/v1/webhooks/endpoints/{id}"))
        .await
        .body;
    assert!(listed["last_success"].is_null(), "{listed}");

    receiver.fall_silent(false);
    server.advance_clock(2 * 60).await;
    let received = receiver.wait_for(2, WAIT).await;
    assert_eq!(received[0].json()["id"], received[1].json()["id"]);
    wait_until("the retry is recorded", WAIT, || async {
        !server
            .get(&format!("/v1/webhooks/endpoints/{id}"))
            .await
            .body["last_success"]
            .is_null()
    })
    .await;
}

/// Waits until endpoint `id` records a failed attempt after `previous` (its
/// `last_failure` then); returns the new `last_failure`.
async fn wait_for_failure_after(server: &Server, id: &str, previous: &Value) -> Value {
    eventually(
        &format!("a failure recorded after {previous}"),
        WAIT,
        || async {
            let endpoint = server
                .get(&format!("/v1/webhooks/endpoints/{id}"))
                .await
                .body;
            let last_failure = &endpoint["last_failure"];
            if !last_failure.is_null() && last_failure != previous {
                Ok(last_failure.clone())
            } else {
                Err(endpoint)
            }
        },
    )
    .await
}

/// Ten deliveries that each fail all their attempts deactivate the endpoint; a
/// delivery still pending then waits, and arrives (the same event) once the endpoint
/// is reactivated. A burst of failed first attempts alone deactivates nothing.
#[tokio::test]
async fn ten_failed_deliveries_deactivate_an_endpoint_and_reactivation_resumes() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = server_with(&emulator, CLOCK_CONTROL).await;
    let receiver = Receiver::start().await;
    receiver.answer_with(503);
    let endpoint = create_endpoint(
        &server,
        json!({"url": receiver.url, "events": ["execution.completed"]}),
    )
    .await;
    let id = endpoint["id"].as_str().unwrap();
    for _ in 0..10 {
        run_execution(&server, json!({})).await;
    }
    receiver.wait_for(10, WAIT).await;
    let state = || async {
        server
            .get(&format!("/v1/webhooks/endpoints/{id}"))
            .await
            .body
    };
    assert_eq!(
        state().await["is_active"],
        json!(true),
        "ten failed attempts are not ten failed deliveries"
    );

    // Every 31 minutes of the driven clock, each pending delivery is retried once;
    // a later execution's delivery runs one step behind the first ten.
    server.advance_clock(31 * 60).await;
    receiver.wait_for(20, WAIT).await;
    let late = run_execution(&server, json!({})).await;
    receiver.wait_for(21, WAIT).await;
    // Each step: one retry of each of the ten, one attempt of the late one. At the
    // fifth the ten have failed all six attempts.
    for expected in [32, 43, 54, 65] {
        server.wait_outbox_idle().await;
        server.advance_clock(31 * 60).await;
        receiver.wait_for(expected, WAIT).await;
    }
    wait_until("the endpoint is deactivated", WAIT, || async {
        state().await["is_active"] != json!(true)
    })
    .await;
    let deactivated = state().await;
    assert_eq!(deactivated["failure_count"], json!(10), "{deactivated}");
    let per_event = |received: &[Received], execution: &str| {
        received
            .iter()
            .filter(|r| r.json()["execution_id"] == json!(execution))
            .count()
    };
    let received = receiver.received();
    assert_eq!(received.len(), 65);
    assert_eq!(
        per_event(&received, &late),
        5,
        "the late delivery is still pending"
    );

    // Paused while deactivated: time passes, nothing is sent.
    let before = received.len();
    server.advance_clock(31 * 60).await;
    server.wait_outbox_idle().await;
    assert_eq!(receiver.received().len(), before);

    // Reactivated: the pending delivery arrives, same event, and the count clears.
    receiver.answer_with(200);
    let patched = server
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/endpoints/{id}"),
            Some(&server.api_key),
            Some(json!({"is_active": true})),
            &[],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{:?}", patched.body);
    server.advance_clock(6 * 60).await;
    let received = receiver.wait_for(before + 1, WAIT).await;
    let last = received.last().unwrap();
    assert_eq!(last.json()["execution_id"], json!(late));
    let first_of_late = received
        .iter()
        .find(|r| r.json()["execution_id"] == json!(late))
        .unwrap();
    assert_eq!(
        last.json()["id"],
        first_of_late.json()["id"],
        "a redelivery keeps its evt_ id"
    );
    wait_until("a delivery succeeds", WAIT, || async {
        !state().await["last_success"].is_null()
    })
    .await;
    assert_eq!(state().await["failure_count"], json!(0));
}

/// SPEC §9: nothing is delivered after 24 hours. An event whose retries were
/// held back by a deactivated endpoint for longer is given up, and reactivating
/// the endpoint brings only new events.
#[tokio::test]
async fn an_event_older_than_24_hours_is_given_up_not_delivered() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = server_with(&emulator, CLOCK_CONTROL).await;
    let receiver = Receiver::start().await;
    let endpoint = create_endpoint(
        &server,
        json!({"url": receiver.url, "events": ["execution.completed"]}),
    )
    .await;
    let path = format!(
        "/v1/webhooks/endpoints/{}",
        endpoint["id"].as_str().unwrap()
    );
    let set_active = |active: bool| {
        server.call(
            Method::PATCH,
            &path,
            Some(&server.api_key),
            Some(json!({ "is_active": active })),
            &[],
        )
    };
    receiver.answer_with(500);
    let old = run_execution(&server, json!({})).await;
    receiver.wait_for(1, WAIT).await;
    let id = endpoint["id"].as_str().unwrap();
    wait_for_failure_after(&server, id, &Value::Null).await;
    assert_eq!(set_active(false).await.status, StatusCode::OK);
    receiver.answer_with(200);

    server.advance_clock(25 * 3600).await;
    wait_until("the old event is given up", WAIT, || async {
        server.log().contains("undelivered after 24 hours")
    })
    .await;
    assert_eq!(set_active(true).await.status, StatusCode::OK);
    server.advance_clock(6 * 60).await;
    let new = run_execution(&server, json!({})).await;
    let received = receiver.wait_for(2, WAIT).await;
    assert_eq!(received[1].json()["execution_id"], json!(new));
    let of_old = receiver
        .received()
        .iter()
        .filter(|r| r.json()["execution_id"] == json!(old))
        .count();
    assert_eq!(of_old, 1, "an event older than 24 hours was sent again");
}

#[tokio::test]
async fn undelivered_events_survive_kill_9_and_are_all_delivered_after_restart() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let mut server = server_with(&emulator, CLOCK_CONTROL).await;
    let receiver = Receiver::start().await;
    receiver.answer_with(500);
    let endpoint = create_endpoint(
        &server,
        json!({"url": receiver.url, "events": ["execution.completed"]}),
    )
    .await;
    // A second endpoint takes every `execution.started` event at once.
    let healthy = Receiver::start().await;
    create_endpoint(
        &server,
        json!({"url": healthy.url, "events": ["execution.started"]}),
    )
    .await;
    let mut executions = Vec::new();
    for _ in 0..5 {
        executions.push(run_execution(&server, json!({})).await);
    }
    receiver.wait_for(5, WAIT).await;
    healthy.wait_for(5, WAIT).await;
    // Every answer is recorded before the kill, so none is left in the
    // at-least-once window.
    server.wait_outbox_idle().await;
    server.kill();
    receiver.answer_with(200);
    server.restart().await;
    // The clock is the system's again after a restart: the retries are still 2
    // minutes away.
    server.advance_clock(120).await;
    let secret = endpoint["secret"].as_str().unwrap();
    eventually(
        "every event is delivered after the restart",
        WAIT,
        || async {
            let delivered: Vec<Value> = receiver.received()[5..]
                .iter()
                .filter(|r| r.signed_by(secret))
                .map(|r| r.json()["execution_id"].clone())
                .collect();
            if executions.iter().all(|id| delivered.contains(&json!(id))) {
                Ok(())
            } else {
                Err(delivered)
            }
        },
    )
    .await;
    // Each event kept its id across the restart.
    let before: Vec<Value> = receiver.received()[..5]
        .iter()
        .map(|r| r.json()["id"].clone())
        .collect();
    let after: Vec<Value> = receiver.received()[5..]
        .iter()
        .map(|r| r.json()["id"].clone())
        .collect();
    for id in &before {
        assert!(after.contains(id), "{id} was redelivered under another id");
    }
    // What was delivered before the kill is not sent again.
    server.advance_clock(3600).await;
    server.wait_outbox_idle().await;
    assert_eq!(healthy.received().len(), 5, "a delivered event was resent");
}

#[tokio::test]
async fn the_ssrf_matrix_is_refused_when_loopback_is_not_allowed() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = server_with(
        &emulator,
        "\n[webhooks]\nallow_http = true\nallow_loopback = false\n",
    )
    .await;
    for url in [
        "http://127.0.0.1/hook",
        "http://127.1.2.3:8080/hook",
        "http://[::1]/hook",
        "http://10.0.0.1/hook",
        "http://172.16.5.4/hook",
        "http://172.31.255.255/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fc00::1]/hook",
        "http://[fd12:3456::1]/hook",
        "http://0.0.0.0/hook",
        "http://localhost/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://2130706433/hook",
        "ftp://example.com/hook",
    ] {
        let reply = server
            .post("/v1/webhooks/endpoints", json!({"url": url}))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{url} was accepted");
        assert_eq!(reply.error_code(), "INPUT_VALIDATION_ERROR");
        assert_eq!(reply.body["error"]["details"][0]["field"], "url", "{url}");
        let execution = server
            .post(
                "/v1/executions",
                json!({"model": "flux-1.1-pro", "input": flux_input(), "webhook_url": url}),
            )
            .await;
        assert_eq!(
            execution.status,
            StatusCode::BAD_REQUEST,
            "{url} accepted as webhook_url"
        );
    }
    // Nothing was held for the refused executions.
    let balance = server.get("/v1/balance").await;
    assert_eq!(balance.body["held"], "0");
}

#[tokio::test]
async fn dev_mode_allows_http_and_loopback_but_never_private_or_metadata_addresses() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = server_with(&emulator, "").await;
    assert!(
        server
            .log()
            .contains("webhooks may go to plain http and loopback"),
        "dev mode does not say what it allows"
    );
    let receiver = Receiver::start().await;
    create_endpoint(&server, json!({"url": receiver.url})).await;
    for url in [
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/",
        "http://[fe80::1]/hook",
    ] {
        let reply = server
            .post("/v1/webhooks/endpoints", json!({"url": url}))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{url} was accepted in dev mode"
        );
    }
}

/// Regression: endpoint inputs had no limits (120 endpoints in one organization, a
/// 100,000-character URL and a 20,000-character header value were all accepted).
/// URLs are at most 2,048 characters, header names 256 and values 1,024,
/// descriptions 500, on create and on PATCH (`400` with an `OUT_OF_RANGE` detail on
/// the field); an organization has at most 20 endpoints (`409 CONFLICT`, like the
/// 21st API key), and a deleted one frees its place.
#[tokio::test]
async fn webhook_endpoint_inputs_and_their_number_are_bounded() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = server_with(&emulator, "").await;
    let receiver = Receiver::start().await;
    // `{receiver}?pad=xxx…` of exactly `length` characters.
    let url_of = |length: usize| {
        let head = format!("{}?pad=", receiver.url);
        format!("{head}{}", "x".repeat(length - head.len()))
    };
    let too_long = [
        (json!({"url": url_of(2049)}), "url"),
        (json!({"url": url_of(100_000)}), "url"),
        (
            json!({"url": receiver.url, "headers": {"X-Token": "v".repeat(1025)}}),
            "headers.X-Token",
        ),
        (
            json!({"url": receiver.url, "headers": {"X-Token": "v".repeat(20_000)}}),
            "headers.X-Token",
        ),
        (
            json!({"url": receiver.url, "headers": {format!("X-{}", "n".repeat(255)): "v"}}),
            "headers",
        ),
        (
            json!({"url": receiver.url, "description": "d".repeat(501)}),
            "description",
        ),
    ];
    let refused_as_out_of_range = |reply: &crate::support::Reply, field: &str| {
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{field}: {:?}",
            reply.body
        );
        assert_eq!(reply.error_code(), "INPUT_VALIDATION_ERROR");
        let detail = &reply.body["error"]["details"][0];
        assert_eq!(detail["field"], field, "{}", reply.body);
        assert_eq!(detail["code"], "OUT_OF_RANGE", "{}", reply.body);
        assert!(
            reply.body.to_string().len() < 2000,
            "the refusal echoes the input"
        );
    };
    for (body, field) in &too_long {
        let reply = server.post("/v1/webhooks/endpoints", body.clone()).await;
        refused_as_out_of_range(&reply, field);
    }
    // At the limits, accepted.
    let at_limits = create_endpoint(
        &server,
        json!({
            "url": url_of(2048),
            "description": "d".repeat(500),
            "headers": {format!("X-{}", "n".repeat(254)): "v".repeat(1024)},
        }),
    )
    .await;
    let id = at_limits["id"].as_str().unwrap().to_string();
    // PATCH is held to the same limits, and changes nothing when refused.
    for (body, field) in &too_long {
        let mut patch = body.clone();
        if patch["url"] == json!(receiver.url) {
            patch.as_object_mut().unwrap().remove("url");
        }
        let reply = server
            .call(
                Method::PATCH,
                &format!("/v1/webhooks/endpoints/{id}"),
                Some(&server.api_key),
                Some(patch),
                &[],
            )
            .await;
        refused_as_out_of_range(&reply, field);
    }
    let unchanged = server.get(&format!("/v1/webhooks/endpoints/{id}")).await;
    assert_eq!(unchanged.body["url"], json!(url_of(2048)));
    // An execution's webhook_url has the same length limit.
    let execution = server
        .post(
            "/v1/executions",
            json!({"model": "flux-1.1-pro", "input": flux_input(), "webhook_url": url_of(2049)}),
        )
        .await;
    refused_as_out_of_range(&execution, "webhook_url");

    // Twenty endpoints per organization; the 21st is a conflict, nothing created.
    let mut ids = vec![id];
    for _ in 1..20 {
        let created = create_endpoint(&server, json!({"url": receiver.url})).await;
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    let refused = server
        .post("/v1/webhooks/endpoints", json!({"url": receiver.url}))
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{:?}", refused.body);
    assert_eq!(refused.error_code(), "CONFLICT");
    let listed = server.get("/v1/webhooks/endpoints?limit=100").await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 20);
    // A deactivated endpoint still counts; a deleted one does not.
    let deactivated = server
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/endpoints/{}", ids[1]),
            Some(&server.api_key),
            Some(json!({"is_active": false})),
            &[],
        )
        .await;
    assert_eq!(deactivated.status, StatusCode::OK);
    let still = server
        .post("/v1/webhooks/endpoints", json!({"url": receiver.url}))
        .await;
    assert_eq!(still.status, StatusCode::CONFLICT);
    let deleted = server
        .delete(&format!("/v1/webhooks/endpoints/{}", ids[0]))
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    create_endpoint(&server, json!({"url": receiver.url})).await;
    // The limit is per organization.
    let other = server.new_organization("1.00").await;
    let elsewhere = server
        .call(
            Method::POST,
            "/v1/webhooks/endpoints",
            Some(&other),
            Some(json!({"url": receiver.url})),
            &[],
        )
        .await;
    assert_eq!(
        elsewhere.status,
        StatusCode::CREATED,
        "{:?}",
        elsewhere.body
    );
}

/// Regression guard: `POST …/{id}/test` is not a delivery. A test send that fails
/// (an error status, or no answer within the timeout) or succeeds leaves the
/// endpoint's `failure_count`, `last_failure` and `last_success` as they were.
#[tokio::test]
async fn a_test_send_leaves_the_endpoints_delivery_status_alone() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = server_with(&emulator, "\n[webhooks]\ntimeout_seconds = 1\n").await;
    let receiver = Receiver::start().await;
    let endpoint = create_endpoint(&server, json!({"url": receiver.url})).await;
    let id = endpoint["id"].as_str().unwrap();
    let test_path = format!("/v1/webhooks/endpoints/{id}/test");
    let test = || server.post(&test_path, json!({}));
    let status = || async {
        let body = server
            .get(&format!("/v1/webhooks/endpoints/{id}"))
            .await
            .body;
        (
            body["failure_count"].clone(),
            body["last_failure"].clone(),
            body["last_success"].clone(),
            body["is_active"].clone(),
        )
    };
    let untouched = (json!(0), Value::Null, Value::Null, json!(true));

    receiver.answer_with(500);
    let failed = test().await;
    assert_eq!(failed.status, StatusCode::OK, "{:?}", failed.body);
    assert_eq!(failed.body["delivered"], json!(false));
    assert_eq!(failed.body["response_status"], json!(500));
    assert_eq!(
        status().await,
        untouched,
        "a failed test changed the endpoint"
    );

    receiver.fall_silent(true);
    let timed_out = test().await;
    assert_eq!(
        timed_out.body["delivered"],
        json!(false),
        "{:?}",
        timed_out.body
    );
    assert!(timed_out.body["response_status"].is_null());
    assert_eq!(
        status().await,
        untouched,
        "a timed-out test changed the endpoint"
    );

    receiver.fall_silent(false);
    receiver.answer_with(200);
    let delivered = test().await;
    assert_eq!(delivered.body["delivered"], json!(true));
    assert_eq!(status().await, untouched, "a test counted as a delivery");
    // Nothing was queued for retry either: the outbox is empty, still three sends.
    let outbox = server.wait_outbox_idle().await;
    assert_eq!(outbox["pending"], json!(0), "{outbox}");
    assert_eq!(receiver.received().len(), 3);
    assert_eq!(status().await, untouched);
}
