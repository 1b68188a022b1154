//! Issue #13, the sandbox's share: an adapter cannot wait outside its deadline (a
//! sleep traps at once, so sleepers hold no thread or instance slot), and an
//! adapter installed or rolled back through the admin API survives a restart.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

use modelroute_tests::emulators::{DEFAULT_TOKEN, Emulator, openai};

use crate::support::{Options, ProviderSpec, Server};

/// The hostile adapter beside a well-behaved openai one, both on one emulator.
/// Adapter calls get a minute each: far longer than any wait below, so only a
/// trap can end a sleeping call in time.
async fn hostile_and_openai(emulator: &Emulator<openai::OpenAi>, plugins: &str) -> Server {
    Server::start_with(
        &[
            ProviderSpec {
                name: "hostile-provider",
                adapter: "hostile",
                base_url: emulator.base_url(),
                models: &["hostile-test"],
            },
            ProviderSpec {
                name: "openai-emulator",
                adapter: "openai",
                base_url: emulator.base_url(),
                models: &["llama-3.1-8b-instruct"],
            },
        ],
        Options {
            executions: "max_attempts = 1",
            extra_plugins: &["hostile"],
            plugins,
            ..Options::default()
        },
    )
    .await
}

async fn create(server: &Server, body: Value) -> String {
    let reply = server.post("/v1/executions", body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    reply.body["id"].as_str().expect("id").to_string()
}

fn sleeper() -> Value {
    json!({"model": "hostile-test", "input": {"prompt": "sleep"}})
}

fn chat(content: &str) -> Value {
    json!({"model": "llama-3.1-8b-instruct", "input": {"messages": [{"role": "user", "content": content}]}})
}

/// Every listed version of `name` as (state, sha256), the active one first.
async fn plugin_states(server: &Server, name: &str) -> Vec<(String, String)> {
    let listed = server.admin_get("/admin/v1/plugins").await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
    listed.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|p| p["name"] == name)
        .map(|p| {
            (
                p["state"].as_str().expect("state").to_string(),
                p["sha256"].as_str().expect("sha256").to_string(),
            )
        })
        .collect()
}

fn state(active: &str, previous: &str) -> Vec<(String, String)> {
    vec![
        ("active".to_string(), active.to_string()),
        ("previous".to_string(), previous.to_string()),
    ]
}

#[tokio::test]
async fn a_sleeping_adapter_fails_its_attempt_at_once_as_a_trap() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = hostile_and_openai(&emulator, "call_timeout_ms = 60000").await;

    let started = Instant::now();
    let id = create(&server, sleeper()).await;
    let execution = server.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert_eq!(execution["error"]["code"], "INTERNAL_ERROR", "{execution}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a sleep inside a one-minute budget ended the attempt only after {:?}",
        started.elapsed()
    );
    assert!(
        server.log().contains("adapters may not wait"),
        "the attempt ended as a trap of the wait"
    );
    assert_eq!(emulator.count("/v1/chat/completions"), 0);

    // The server, and the same adapter, still serve promptly.
    let started = Instant::now();
    let id = create(
        &server,
        json!({"model": "hostile-test", "input": {"prompt": "hello"}}),
    )
    .await;
    let healthy = server.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(healthy["status"], "COMPLETED", "{healthy}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// More sleepers at once than the pooling allocator has instance slots, and many
/// times the adapter threads: had a sleep been let block, they would hold every
/// thread and slot, and no other adapter could run.
#[tokio::test]
async fn a_flood_of_sleeping_adapters_does_not_stop_other_adapters() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server =
        hostile_and_openai(&emulator, "call_timeout_ms = 60000\nconcurrent_calls = 4").await;

    let sleepers =
        futures_util::future::join_all((0..300).map(|_| create(&server, sleeper()))).await;
    let started = Instant::now();
    for i in 0..5 {
        let id = create(&server, chat(&format!("still there {i}"))).await;
        let execution = server.wait_terminal(&id, Duration::from_secs(30)).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    for id in &sleepers {
        let execution = server.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(execution["status"], "FAILED", "{execution}");
        assert_eq!(execution["error"]["code"], "INTERNAL_ERROR", "{execution}");
    }
}

#[tokio::test]
async fn an_adapter_installed_through_the_admin_api_survives_a_restart() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let mut server = Server::start(&[ProviderSpec {
        name: "openai-emulator",
        adapter: "openai",
        base_url: emulator.base_url(),
        models: &["llama-3.1-8b-instruct"],
    }])
    .await;
    let shipped = plugin_states(&server, "openai").await[0].1.clone();

    // The shipped component with a custom section appended: valid, a new sha256.
    let mut wasm = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/openai.wasm"),
    )
    .expect("run `make plugins`");
    let section = b"modelroute:test-build";
    wasm.extend_from_slice(&[0x00, (section.len() + 2) as u8, section.len() as u8]);
    wasm.extend_from_slice(section);
    wasm.push(42);
    let response = reqwest::Client::new()
        .put(format!("{}/admin/v1/plugins/openai", server.url))
        .bearer_auth(&server.admin_token)
        .body(wasm)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let installed = response.json::<Value>().await.unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(installed, shipped);

    // SIGKILL right after the answer: the install was on disk before it.
    server.restart().await;
    assert_eq!(
        plugin_states(&server, "openai").await,
        state(&installed, &shipped)
    );
    let id = create(&server, chat("after the restart")).await;
    assert_eq!(
        server.wait_terminal(&id, Duration::from_secs(30)).await["status"],
        "COMPLETED"
    );
    let record = server
        .admin_get(&format!("/admin/v1/executions/{id}"))
        .await
        .body;
    assert_eq!(record["attempts"][0]["plugin_sha256"], installed.as_str());

    // A rollback is kept the same way.
    let rolled = server
        .call(
            Method::POST,
            "/admin/v1/plugins/openai/rollback",
            Some(&server.admin_token),
            None,
            &[],
        )
        .await;
    assert_eq!(rolled.status, StatusCode::OK, "{:?}", rolled.body);
    server.restart().await;
    assert_eq!(
        plugin_states(&server, "openai").await,
        state(&shipped, &installed)
    );
}
