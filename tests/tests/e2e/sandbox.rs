//! Adapters are untrusted: a plugin that panics, spins, hoards memory, calls a host
//! it was not given or hands back garbage fails that attempt with a normalized code,
//! and the server keeps serving.

use serde_json::json;
use std::time::{Duration, Instant};

use modelroute_tests::emulators::{DEFAULT_TOKEN, openai};

use crate::support::{Options, ProviderSpec, Server};

#[tokio::test]
async fn a_misbehaving_plugin_fails_only_its_own_attempts() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = Server::start_with(
        &[ProviderSpec {
            name: "hostile-provider",
            adapter: "hostile",
            base_url: emulator.base_url(),
            models: &["hostile-test"],
        }],
        Options {
            executions: "max_attempts = 1",
            extra_plugins: &["hostile"],
            ..Options::default()
        },
    )
    .await;
    let run = |prompt: &str| {
        let body = json!({"model": "hostile-test", "input": {"prompt": prompt}});
        async {
            let reply = server.post("/v1/executions", body).await;
            assert_eq!(
                reply.status,
                reqwest::StatusCode::ACCEPTED,
                "{:?}",
                reply.body
            );
            let id = reply.body["id"].as_str().unwrap().to_string();
            server.wait_terminal(&id, Duration::from_secs(30)).await
        }
    };

    for (prompt, code) in [
        ("panic", "INTERNAL_ERROR"),
        ("loop", "INTERNAL_ERROR"),
        ("memory", "INTERNAL_ERROR"),
        ("foreign-host", "INTERNAL_ERROR"),
        ("garbage-asset", "GENERATION_FAILED"),
        ("huge-output", "GENERATION_FAILED"),
    ] {
        let started = Instant::now();
        let execution = run(prompt).await;
        assert_eq!(execution["status"], "FAILED", "{prompt}: {execution}");
        assert_eq!(execution["error"]["code"], code, "{prompt}");
        assert!(!execution.to_string().contains("exfiltrate"), "{prompt}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{prompt} took {:?}",
            started.elapsed()
        );

        // The server still serves, promptly, through the same plugin.
        let started = Instant::now();
        let healthy = run("hello").await;
        assert_eq!(healthy["status"], "COMPLETED", "after {prompt}: {healthy}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(
        emulator.count("/v1/chat/completions"),
        8,
        "only the garbage-asset, huge-output and healthy calls reached a provider"
    );

    let plugins = server.admin_get("/admin/v1/plugins").await;
    let hostile = plugins.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "hostile")
        .expect("hostile plugin listed")
        .clone();
    assert_eq!(
        hostile["traps"], 3,
        "panic, loop and memory trapped: {hostile}"
    );
}
