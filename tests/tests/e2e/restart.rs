//! Durability: `kill -9` of the server at awkward moments, then a restart. Every
//! acknowledged execution must still end in a terminal state, with its money right.

use serde_json::json;
use std::time::Duration;

use modelroute_tests::emulators::{DEFAULT_TOKEN, Fault, replicate};

use crate::executions::wait_status;
use crate::support::{ProviderSpec, Server, flux_input};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_job_running_at_the_provider_is_polled_again_after_kill_9() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    emulator.state.set_never_finish(true);
    let mut server = Server::start(&[ProviderSpec {
        name: "replicate-emulator",
        adapter: "replicate",
        base_url: emulator.base_url(),
        models: &["flux-1.1-pro"],
    }])
    .await;
    let reply = server
        .post(
            "/v1/executions",
            json!({"model": "flux-1.1-pro", "input": flux_input()}),
        )
        .await;
    let id = reply.body["id"].as_str().unwrap().to_string();
    wait_status(&server, &id, "AWAITING_WEBHOOK").await;

    server.kill();
    emulator.state.set_never_finish(false);
    server.restart().await;

    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(
        emulator.count("/v1/models/"),
        1,
        "the provider job was resumed, not submitted again"
    );
    let balance = server.get("/v1/balance").await.body;
    assert_eq!(
        balance,
        json!({"available": "99.96", "held": "0", "currency": "USD"})
    );
}

#[tokio::test]
async fn executions_cut_at_any_point_all_finish_after_kill_9() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    // Slow submits, so the kill lands on executions in every state: queued,
    // mid-submit, waiting for the provider, finished.
    emulator.set_always(Some(Fault::Delay { ms: 150 }));
    let mut server = Server::start(&[ProviderSpec {
        name: "replicate-emulator",
        adapter: "replicate",
        base_url: emulator.base_url(),
        models: &["flux-1.1-pro"],
    }])
    .await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let reply = server
            .post(
                "/v1/executions",
                json!({"model": "flux-1.1-pro", "input": {"prompt": format!("picture {i}")}}),
            )
            .await;
        assert_eq!(
            reply.status,
            reqwest::StatusCode::ACCEPTED,
            "{:?}",
            reply.body
        );
        ids.push(reply.body["id"].as_str().unwrap().to_string());
    }
    server.kill();
    emulator.set_always(None);
    server.restart().await;

    let mut spent = 0.0;
    for id in &ids {
        let execution = server.wait_terminal(id, WAIT).await;
        assert!(
            ["COMPLETED", "FAILED"].contains(&execution["status"].as_str().unwrap()),
            "{execution}"
        );
        spent += execution["cost"]
            .as_str()
            .map_or(0.0, |c| c.parse::<f64>().unwrap());
    }
    let balance = server.get("/v1/balance").await.body;
    assert_eq!(balance["held"], "0", "no orphan hold");
    let available: f64 = balance["available"].as_str().unwrap().parse().unwrap();
    assert!(
        (available + spent - 100.0).abs() < 1e-9,
        "{available} + {spent} != 100"
    );
}
