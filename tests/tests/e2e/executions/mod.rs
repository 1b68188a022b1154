//! Executions end to end against the provider emulators, one file per topic; the
//! helpers here are shared by them.

mod failover;
mod fallbacks;
mod formats;
mod lifecycle;
mod requests;
mod stalls;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

use modelroute_tests::emulators::{DEFAULT_TOKEN, Emulator, Fault, openai, replicate};

use crate::support::{
    Options, ProviderSpec, Server, eventually, flux_input, openai_provider, replicate_provider,
    wait_until,
};

const WAIT: Duration = Duration::from_secs(30);

async fn replicate_emulator() -> Emulator<replicate::Replicate> {
    replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap()
}

async fn openai_emulator() -> Emulator<openai::OpenAi> {
    openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap()
}

async fn create(server: &Server, body: Value) -> String {
    let reply = server.post("/v1/executions", body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

fn flux() -> Value {
    json!({"model": "flux-1.1-pro", "input": flux_input()})
}

/// Runs one flux execution and asserts that it completed.
async fn complete_flux(server: &Server) -> Value {
    let id = create(server, flux()).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    execution
}

/// Nothing a client sees may name the provider or its address.
fn assert_no_provider_leak(value: &Value, emulator_url: &str) {
    let text = value.to_string().to_lowercase();
    for leak in ["replicate", "openai", "together", emulator_url] {
        assert!(!text.contains(leak), "{leak} leaked in {value}");
    }
}

pub async fn wait_status(server: &Server, id: &str, status: &str) {
    eventually(&format!("{id} reaches {status}"), WAIT, || async {
        let current = server.get(&format!("/v1/executions/{id}")).await.body;
        if current["status"] == status {
            Ok(())
        } else {
            Err(current)
        }
    })
    .await;
}
