//! Adapters replaced and rolled back at runtime, under load, without a restart.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;

use modelroute_tests::emulators::{DEFAULT_TOKEN, openai};

use crate::support::{ProviderSpec, Server, eventually};

/// How long a swap (automatic, or from the plugins directory, whose new build is
/// compiled first) may take on a loaded machine.
const SWAP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

pub fn shipped(name: &str) -> Vec<u8> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../plugins/dist/{name}.wasm"));
    std::fs::read(path).expect("run `make plugins`")
}

/// The same component with a custom section appended: valid, and a new sha256.
pub fn rebuilt(wasm: &[u8], marker: u8) -> Vec<u8> {
    let name = b"modelroute:test-build";
    let mut bytes = wasm.to_vec();
    bytes.extend_from_slice(&[0x00, (1 + name.len() + 1) as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.push(marker);
    bytes
}

async fn listed_sha(server: &Server) -> String {
    let listed = server.admin_get("/admin/v1/plugins").await.body;
    listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "openai" && p["state"] == "active")
        .map(|p| p["sha256"].as_str().unwrap().to_string())
        .unwrap()
}

/// (state, sha256) of every listed version of `name`, the active one first.
pub async fn plugin_states(server: &Server, name: &str) -> Vec<(String, String)> {
    server.admin_get("/admin/v1/plugins").await.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == name)
        .map(|p| {
            (
                p["state"].as_str().unwrap().to_string(),
                p["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub async fn install(server: &Server, name: &str, wasm: Vec<u8>) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .put(format!("{}/admin/v1/plugins/{name}", server.url))
        .bearer_auth(&server.admin_token)
        .body(wasm)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn swapping_and_rolling_back_under_load_fails_no_execution() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = Server::start(&[ProviderSpec {
        name: "openai-emulator",
        adapter: "openai",
        base_url: emulator.base_url(),
        models: &["llama-3.1-8b-instruct"],
    }])
    .await;
    let original = shipped("openai");
    let original_sha = listed_sha(&server).await;
    let swapping = std::sync::atomic::AtomicBool::new(true);

    // Executions run back to back for as long as the swaps go on.
    let load = async {
        let mut ids = Vec::new();
        let mut i = 0;
        while swapping.load(std::sync::atomic::Ordering::SeqCst) || i < 20 {
            i += 1;
            let body = json!({"model": "llama-3.1-8b-instruct", "mode": "SYNC", "input": {"messages": [{"role": "user", "content": format!("swap {i}")}]}});
            let reply = server.post("/v1/executions", body).await;
            assert!(reply.status.is_success(), "{:?}", reply.body);
            ids.push(reply.body["id"].as_str().unwrap().to_string());
        }
        ids
    };
    let swaps = async {
        let mut hashes = Vec::new();
        for marker in 1..=5u8 {
            let (status, body) = install(&server, "openai", rebuilt(&original, marker)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["state"], "active");
            hashes.push(body["sha256"].as_str().unwrap().to_string());
        }
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
        assert_eq!(
            rolled.body["sha256"],
            hashes[3].as_str(),
            "back to the version before the last swap"
        );
        swapping.store(false, std::sync::atomic::Ordering::SeqCst);
        hashes
    };
    let (ids, hashes) = tokio::join!(load, swaps);

    let mut used = HashSet::new();
    for id in &ids {
        let execution = server
            .wait_terminal(id, std::time::Duration::from_secs(30))
            .await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        let record = server
            .admin_get(&format!("/admin/v1/executions/{id}"))
            .await
            .body;
        for attempt in record["attempts"].as_array().unwrap() {
            used.insert(attempt["plugin_sha256"].as_str().unwrap().to_string());
        }
    }
    assert!(
        used.iter()
            .all(|sha| *sha == original_sha || hashes.contains(sha)),
        "{used:?}"
    );
    assert!(
        used.len() >= 2,
        "executions ran on several versions: {used:?}"
    );
    let listed = server.admin_get("/admin/v1/plugins").await.body;
    let states: Vec<(String, String)> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "openai")
        .map(|p| {
            (
                p["state"].as_str().unwrap().to_string(),
                p["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("active".to_string(), hashes[3].clone()),
            ("previous".to_string(), hashes[4].clone())
        ]
    );
}

#[tokio::test]
async fn an_invalid_plugin_is_refused_with_a_reason_and_changes_nothing() {
    let server = Server::start(&[]).await;
    let before = server.admin_get("/admin/v1/plugins").await.body;
    let liar = std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-plugins/liar.wasm"),
    )
    .expect("run `make plugins`");
    for (name, wasm, reason) in [
        ("openai", liar, "the example input breaks the schema"),
        ("openai", b"not wasm at all".to_vec(), "WebAssembly"),
        ("openai", shipped("replicate"), "calls itself"),
        ("openai", shipped("openai")[..1000].to_vec(), "refused"),
    ] {
        let (status, body) = install(&server, name, wasm).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "INPUT_VALIDATION_ERROR");
        let message = body["error"]["details"][0]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{message}");
    }
    let after = server.admin_get("/admin/v1/plugins").await.body;
    assert_eq!(before, after);
    let rollback = server
        .call(
            Method::POST,
            "/admin/v1/plugins/openai/rollback",
            Some(&server.admin_token),
            None,
            &[],
        )
        .await;
    assert_eq!(rollback.status, StatusCode::CONFLICT);
}

/// `modelroute plugin check`: the shipped adapters pass with their recorded fixtures,
/// so does the SDK's template (under 100 lines), and the hostile one fails.
#[test]
fn the_conformance_kit_passes_good_adapters_and_fails_a_bad_one() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let check = |wasm: &str, fixtures: Option<&str>| {
        let mut command = std::process::Command::new(crate::support::binary());
        command.current_dir(&root).args(["plugin", "check", wasm]);
        if let Some(fixtures) = fixtures {
            command.args(["--fixtures", fixtures]);
        }
        let output = command
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run modelroute");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    for (wasm, fixtures, checks) in [
        (
            "plugins/dist/replicate.wasm",
            Some("plugins/replicate/fixtures.json"),
            24,
        ),
        (
            "plugins/dist/openai.wasm",
            Some("plugins/openai/fixtures.json"),
            // 33 of its own (three models), 2 continuations (its two models
            // that accept a prefill) and its fixtures', 6 for each of the two
            // presets it serves for operator-declared models
            47,
        ),
        ("plugins/dist/bfl.wasm", None, 14),
        ("plugins/dist/fal.wasm", None, 14),
        ("target/test-plugins/template.wasm", None, 9),
    ] {
        let (passed, report) = check(wasm, fixtures);
        assert!(passed, "{wasm}:\n{report}");
        assert!(
            report.contains(&format!("{checks} passed, 0 failed, 0 warnings")),
            "{wasm}:\n{report}"
        );
    }
    let (_, report) = check("target/test-plugins/template.wasm", None);
    assert!(
        report.contains("PASS  template-text: the submit carries its attempt id"),
        "{report}"
    );
    let template = std::fs::read_to_string(root.join("sdk/template/src/lib.rs")).unwrap();
    assert!(template.lines().count() < 100);

    let (passed, report) = check("target/test-plugins/hostile.wasm", None);
    assert!(!passed);
    assert!(
        report.contains("FAIL  hostile-test: 429 is a retryable failure"),
        "{report}"
    );
    let (passed, report) = check("Cargo.toml", None);
    assert!(!passed);
    assert!(
        report.contains("FAIL  contract version and manifest"),
        "{report}"
    );
}

/// A version swapped in that keeps trapping is rolled back by itself once it reaches
/// the operator's threshold.
#[tokio::test]
async fn a_trapping_new_version_is_rolled_back_automatically() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = crate::support::Server::start_with(
        &[ProviderSpec {
            name: "hostile-provider",
            adapter: "hostile",
            base_url: emulator.base_url(),
            models: &["hostile-test"],
        }],
        crate::support::Options {
            executions: "max_attempts = 1",
            extra_plugins: &["hostile"],
            plugins: "rollback_after_traps = 3",
            ..Default::default()
        },
    )
    .await;
    let hostile = std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-plugins/hostile.wasm"),
    )
    .unwrap();
    let original = plugin_states(&server, "hostile").await[0].1.clone();
    let (status, body) = install(&server, "hostile", rebuilt(&hostile, 9)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let swapped = body["sha256"].as_str().unwrap().to_string();

    for _ in 0..3 {
        let reply = server
            .post(
                "/v1/executions",
                json!({"model": "hostile-test", "input": {"prompt": "panic"}}),
            )
            .await;
        let id = reply.body["id"].as_str().unwrap().to_string();
        server
            .wait_terminal(&id, std::time::Duration::from_secs(20))
            .await;
    }
    let states = eventually("an automatic rollback", SWAP_WAIT, || async {
        let states = plugin_states(&server, "hostile").await;
        if states.first().map(|s| &s.1) == Some(&original) {
            Ok(states)
        } else {
            Err(states)
        }
    })
    .await;
    assert_eq!(states[1], ("previous".to_string(), swapped));
}

/// Dropping a new build into the plugins directory swaps it in, like an install.
#[tokio::test]
async fn a_component_written_to_the_plugins_directory_is_swapped_in() {
    let server = crate::support::Server::start_with(
        &[],
        crate::support::Options {
            extra_plugins: &["template"],
            ..Default::default()
        },
    )
    .await;
    let dir = server.data.path().join("plugins");
    let before = plugin_states(&server, "template").await;
    let template = std::fs::read(dir.join("template.wasm")).unwrap();
    std::fs::write(dir.join("template.wasm.partial"), rebuilt(&template, 7)).unwrap();
    std::fs::rename(dir.join("template.wasm.partial"), dir.join("template.wasm")).unwrap();
    let states = eventually("the new build swapped in", SWAP_WAIT, || async {
        let states = plugin_states(&server, "template").await;
        if states.len() == 2 {
            Ok(states)
        } else {
            Err(states)
        }
    })
    .await;
    assert_eq!(states[1], ("previous".to_string(), before[0].1.clone()));
    assert_ne!(states[0].1, before[0].1);
}
