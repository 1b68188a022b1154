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
        // The provider never fails: a restart is not a failed attempt, so every
        // execution completes (regression: cut attempts spent the attempt budget,
        // and executions cut by a few restarts ended FAILED).
        let execution = server.wait_terminal(id, WAIT).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
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

/// Several hundred executions, the server killed three times at random moments.
/// Every execution ends; no provider job is counted twice; no attempt's request is
/// sent twice (each attempt has at most one prediction at the provider); the ledger
/// rebuilds to the balances with no hold left.
#[tokio::test]
async fn random_kills_during_hundreds_of_executions_lose_nothing_and_repeat_nothing() {
    use rand::Rng;
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    emulator.set_always(Some(Fault::Delay { ms: 20 }));
    let mut server = Server::start(&[ProviderSpec {
        name: "replicate-emulator",
        adapter: "replicate",
        base_url: emulator.base_url(),
        models: &["flux-1.1-pro"],
    }])
    .await;
    let mut ids = Vec::new();
    for round in 0..3 {
        for i in 0..100 {
            let prompt = format!("run {round}-{i}");
            let input = json!({"prompt": prompt, "width": 256, "height": 256});
            let reply = server
                .post(
                    "/v1/executions",
                    json!({"model": "flux-1.1-pro", "input": input}),
                )
                .await;
            assert_eq!(
                reply.status,
                reqwest::StatusCode::ACCEPTED,
                "{:?}",
                reply.body
            );
            ids.push((reply.body["id"].as_str().unwrap().to_string(), prompt));
        }
        let pause = rand::rng().random_range(0..400);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.kill();
        server.restart().await;
    }
    emulator.set_always(None);

    let creates = emulator.requests();
    for (id, prompt) in &ids {
        // The provider never fails: a restart is not a failed attempt, so every
        // execution completes (regression: cut attempts spent the attempt budget,
        // and executions cut by a few restarts ended FAILED).
        let execution = server.wait_terminal(id, WAIT).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        let record = server
            .call(
                reqwest::Method::GET,
                &format!("/admin/v1/executions/{id}"),
                Some(&server.admin_token),
                None,
                &[],
            )
            .await
            .body;
        let attempts = record["attempts"].as_array().unwrap();
        let sent = creates
            .iter()
            .filter(|r| {
                r.path.ends_with("/predictions") && r.body.contains(&format!("\"{prompt}\""))
            })
            .count();
        assert!(
            sent <= attempts.len(),
            "{id}: {sent} submits for {} attempts",
            attempts.len()
        );
        let jobs: Vec<&str> = attempts
            .iter()
            .filter_map(|a| a["job"]["id"].as_str())
            .collect();
        let unique: std::collections::HashSet<&&str> = jobs.iter().collect();
        assert_eq!(
            unique.len(),
            jobs.len(),
            "{id}: a provider job recorded twice"
        );
        assert!(attempts.iter().all(|a| a["plugin_version"] == "0.1.0"));
    }
    let verified = server
        .call(
            reqwest::Method::GET,
            "/admin/v1/ledger/verify",
            Some(&server.admin_token),
            None,
            &[],
        )
        .await
        .body;
    assert_eq!(verified["consistent"], true, "{verified}");
    assert_eq!(server.get("/v1/balance").await.body["held"], "0");
}
