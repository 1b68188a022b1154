//! Ending early: cancel and expiry, the provider request they close and the job
//! they stop.

use super::*;

#[tokio::test]
async fn cancel_stops_a_running_job_releases_the_hold_and_is_idempotent() {
    let emulator = replicate_emulator().await;
    emulator.state.set_never_finish(true);
    let server = Server::start(&[replicate_provider(&emulator)]).await;
    let id = create(&server, flux()).await;
    wait_status(&server, &id, "AWAITING_WEBHOOK").await;

    let cancelled = server
        .post(&format!("/v1/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    assert_eq!(cancelled.body["status"], "CANCELLED");
    let again = server
        .post(&format!("/v1/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(server.get("/v1/balance").await.body["held"], "0");
    assert_eq!(server.get("/v1/balance").await.body["available"], "100");
    wait_until("the provider is asked to cancel", WAIT, || async {
        emulator.count("/v1/predictions/") > 0
            && emulator
                .requests()
                .iter()
                .any(|r| r.path.ends_with("/cancel"))
    })
    .await;
    let result = server.get(&format!("/v1/executions/{id}/result")).await;
    assert_eq!(result.status, StatusCode::CONFLICT);
    assert_eq!(result.error_code(), "CONFLICT");
    assert_eq!(result.body["error"]["status"], "CANCELLED");

    let done = create(&server, flux()).await;
    emulator.state.set_never_finish(false);
    server.wait_terminal(&done, WAIT).await;
    let conflict = server
        .post(&format!("/v1/executions/{done}/cancel"), json!({}))
        .await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(conflict.body["error"]["status"], "COMPLETED");
    assert!(
        conflict.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("COMPLETED")
    );
}

/// Waits until `done` holds, failing with `what` after [`WAIT`].
async fn until(what: &str, done: impl Fn() -> bool) {
    wait_until(what, WAIT, || async { done() }).await
}

/// Regression: a cancelled or expired execution's request kept waiting on a silent
/// provider until the upstream timeout, holding a bulkhead slot that new executions
/// queued behind. Its connection is now closed as soon as the execution ends.
#[tokio::test]
async fn cancel_and_expiry_close_the_provider_request_and_free_its_bulkhead_slot() {
    let emulator = openai_emulator().await;
    emulator.set_always(Some(Fault::Hang));
    let provider = format!(
        "\n[[providers]]\nname = \"one-slot\"\nadapter = \"openai\"\nbase_url = {:?}\napi_key = \"emulator-key\"\nmax_concurrency = 1\n[providers.models.\"llama-3.1-8b-instruct\"]\n",
        emulator.base_url()
    );
    let server = Server::start_with(
        &[],
        Options {
            executions: "upstream_timeout_ms = 600000",
            config: &(provider + "\n[testing]\nclock_control = true\n"),
            ..Options::default()
        },
    )
    .await;
    let chat = json!({"model": "llama-3.1-8b-instruct", "input": {"messages": [{"role": "user", "content": "hi"}]}});

    let cancelled = create(&server, chat.clone()).await;
    until("the request never reached the provider", || {
        emulator.in_flight() == 1
    })
    .await;
    let reply = server
        .post(&format!("/v1/executions/{cancelled}/cancel"), json!({}))
        .await;
    assert_eq!(reply.body["status"], "CANCELLED", "{:?}", reply.body);
    until("the cancelled request was left open", || {
        emulator.in_flight() == 0
    })
    .await;

    let expired = create(&server, chat.clone()).await;
    until("the request never reached the provider", || {
        emulator.in_flight() == 1
    })
    .await;
    server.advance_clock(3600).await;
    assert_eq!(
        server.wait_terminal(&expired, WAIT).await["status"],
        "EXPIRED"
    );
    until("the expired request was left open", || {
        emulator.in_flight() == 0
    })
    .await;

    // The slot is free: the next execution is answered.
    emulator.set_always(None);
    let next = create(&server, chat).await;
    assert_eq!(
        server.wait_terminal(&next, WAIT).await["status"],
        "COMPLETED"
    );
}

/// Regression: a provider job started by a submit that answered after the execution
/// was cancelled was never stopped. A submit to a provider that can cancel jobs is
/// let answer, and its job is cancelled at once.
#[tokio::test]
async fn a_job_started_by_a_submit_that_answers_after_cancel_is_cancelled() {
    let emulator = replicate_emulator().await;
    emulator.state.set_never_finish(true);
    emulator.push_fault(Fault::Delay { ms: 5000 });
    let server = Server::start(&[replicate_provider(&emulator)]).await;
    let id = create(&server, flux()).await;
    until("the submit never reached the provider", || {
        emulator.in_flight() == 1
    })
    .await;
    let reply = server
        .post(&format!("/v1/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(reply.body["status"], "CANCELLED", "{:?}", reply.body);
    until("the provider was never asked to cancel the job", || {
        emulator
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/cancel"))
    })
    .await;
    let record = server
        .admin_get(&format!("/admin/v1/executions/{id}"))
        .await;
    assert!(
        record.body["attempts"][0]["job"].is_null(),
        "the job was never recorded, so only the submit's answer could cancel it: {}",
        record.body
    );
}

#[tokio::test]
async fn a_job_that_never_finishes_expires_and_releases_its_hold() {
    let emulator = replicate_emulator().await;
    emulator.state.set_never_finish(true);
    let server = Server::start_with(
        &[replicate_provider(&emulator)],
        Options {
            executions: "[executions.models.\"flux-1.1-pro\"]\nexpiry_seconds = 2",
            ..Options::default()
        },
    )
    .await;
    let id = create(&server, flux()).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "EXPIRED");
    assert_eq!(server.get("/v1/balance").await.body["available"], "100");
    wait_until("the provider job is stopped", WAIT, || async {
        emulator
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/cancel"))
    })
    .await;
}
