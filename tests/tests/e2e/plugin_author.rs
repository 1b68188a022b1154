//! A third-party plugin author's path: the SDK's template, copied out of this
//! repository and renamed, builds with the documented command to a small component
//! that the conformance kit accepts, installs into a running server with the CLI and
//! serves an execution.

use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{Options, ProviderSpec, Server};

const WAIT: Duration = Duration::from_secs(30);
/// The bound; the template's `[profile.release]` gives about 150 KB, the
/// default release profile about 2.6 MB.
const SMALL_COMPONENT: u64 = 300 * 1024;

/// Copies the template's sources and its `.cargo/config.toml` (not a lockfile or
/// build output left by `make plugins`) and renames the crate, as the README tells
/// an author to.
fn copy_template(root: &Path, to: &Path, crate_name: &str) {
    let template = root.join("sdk/template");
    std::fs::create_dir_all(to.join("src")).unwrap();
    std::fs::copy(template.join("src/lib.rs"), to.join("src/lib.rs")).unwrap();
    std::fs::create_dir_all(to.join(".cargo")).unwrap();
    let config = template.join(".cargo/config.toml");
    std::fs::copy(config, to.join(".cargo/config.toml")).unwrap();
    let manifest = std::fs::read_to_string(template.join("Cargo.toml")).unwrap();
    let renamed = manifest.replace(
        "name = \"modelroute-template\"",
        &format!("name = \"{crate_name}\""),
    );
    assert_ne!(renamed, manifest, "the template's crate name moved");
    std::fs::write(to.join("Cargo.toml"), renamed).unwrap();
}

/// The README's build command, `cargo build --release --target wasm32-wasip2`, run in
/// `dir`. Two settings stand in for the registry: this checkout's SDK replaces the
/// published one (offline), and the target directory `make plugins` builds the
/// template in keeps the dependencies compiled once.
fn build_as_documented(root: &Path, dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let local_sdk = format!(
        "patch.crates-io.modelroute-sdk.path=\"{}\"",
        root.join("sdk").display()
    );
    let output = Command::new(cargo)
        .current_dir(dir)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .args(["--offline", "--config", &local_sdk])
        .env("CARGO_TARGET_DIR", root.join("target/template"))
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "the copied template does not build:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The template's example API: `POST /v1/generate` answers every prompt alike.
async fn example_api() -> String {
    let app = axum::Router::new().route(
        "/v1/generate",
        axum::routing::post(|| async {
            axum::Json(
                json!({"text": "hello back", "usage": {"input_tokens": 3, "output_tokens": 2}}),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_copied_out_of_the_workspace_builds_small_checks_installs_and_serves() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let author = tempfile::tempdir().unwrap();
    let dir = author.path().join("acme-text");
    copy_template(&root, &dir, "acme-text");
    build_as_documented(&root, &dir);

    let wasm_path = root.join("target/template/wasm32-wasip2/release/acme_text.wasm");
    let wasm = std::fs::read(&wasm_path).unwrap();
    assert!(
        (wasm.len() as u64) < SMALL_COMPONENT,
        "the documented build gives a {} byte component",
        wasm.len()
    );

    let check = Command::new(crate::support::binary())
        .args(["plugin", "check"])
        .arg(&wasm_path)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run modelroute plugin check");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{report}");
    assert!(report.contains(" 0 failed"), "{report}");
    assert!(
        report.contains(&format!(" KB ({} bytes)", wasm.len())),
        "{report}"
    );
    assert!(!report.contains("warning:"), "{report}");
    assert!(report.contains(" 0 failed, 0 warnings"), "{report}");

    let server = Server::start_with(
        &[ProviderSpec {
            name: "example",
            adapter: "template",
            base_url: example_api().await,
            models: &["template-text"],
        }],
        Options {
            extra_plugins: &["template"],
            ..Options::default()
        },
    )
    .await;
    let install = Command::new(crate::support::binary())
        .args([
            "admin",
            "--url",
            &server.url,
            "--token",
            &server.admin_token,
        ])
        .args(["install-plugin", "--name", "template"])
        .arg(&wasm_path)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run modelroute admin install-plugin");
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let listed = server.admin_get("/admin/v1/plugins").await;
    let active = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "template" && p["state"] == "active")
        .map(|p| p["sha256"].as_str().unwrap().to_string());
    assert_eq!(
        active,
        Some(hex::encode(Sha256::digest(&wasm))),
        "{}",
        listed.body
    );

    let reply = server
        .post(
            "/v1/executions",
            json!({"model": "template-text", "input": {"prompt": "hello there"}}),
        )
        .await;
    let id = reply.body["id"].as_str().expect("an execution id");
    let execution = server.wait_terminal(id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["result"]["output"]["text"], "hello back");
}
