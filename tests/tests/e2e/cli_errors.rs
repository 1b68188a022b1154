//! The command line ends on an error with one line, `error: <message>: <cause>`, and
//! exit code 1, never a backtrace, even under `RUST_BACKTRACE=1` (regression: a typo
//! in a fixture file printed a 30-frame backtrace).

use std::path::PathBuf;
use std::process::Command;

use crate::support::binary;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the binary with `args` under `RUST_BACKTRACE=1`; answers its exit code and
/// stderr, having checked that it failed with exactly one `error: ` line.
fn fails_in_one_line(args: &[&str]) -> String {
    let output = Command::new(binary())
        .current_dir(root())
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .env_remove("MODELROUTE_URL")
        .env_remove("MODELROUTE_ADMIN_TOKEN")
        .output()
        .expect("run modelroute");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line expected:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for noise in ["backtrace", "Caused by", "Stack", "panicked", "Error: "] {
        assert!(!stderr.contains(noise), "{args:?}: {noise:?} in:\n{stderr}");
    }
    stderr
}

#[test]
fn a_malformed_fixture_file_is_one_error_line_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = dir.path().join("fixtures.json");
    // A typo: a trailing comma.
    std::fs::write(&fixtures, r#"[{"name": "x",}]"#).unwrap();
    let fixtures = fixtures.to_str().unwrap();
    let stderr = fails_in_one_line(&[
        "plugin",
        "check",
        "plugins/dist/openai.wasm",
        "--fixtures",
        fixtures,
    ]);
    // The message, then its cause (serde's position of the typo).
    assert!(
        stderr.starts_with(&format!("error: parsing fixtures {fixtures}: ")),
        "{stderr}"
    );
    assert!(stderr.contains("line 1 column"), "{stderr}");
}

#[test]
fn installing_a_plugin_under_another_name_is_refused_before_any_upload() {
    // Nothing listens on port 1: had the CLI uploaded, the error would be about
    // reaching the server, not about the name.
    let token = "op_".to_string() + &"0".repeat(64);
    let stderr = fails_in_one_line(&[
        "admin",
        "--url",
        "http://127.0.0.1:1",
        "--token",
        &token,
        "install-plugin",
        "--name",
        "replicate",
        "plugins/dist/openai.wasm",
    ]);
    assert!(
        stderr.contains("is the plugin \"openai\", not \"replicate\""),
        "{stderr}"
    );
    assert!(!stderr.contains("reaching"), "{stderr}");
}

#[test]
fn a_malformed_config_stops_serve_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "listen = \n").unwrap();
    let stderr = fails_in_one_line(&["serve", "--config", config.to_str().unwrap()]);
    assert!(stderr.contains("parsing config"), "{stderr}");
}

#[test]
fn an_otlp_endpoint_that_is_not_an_http_url_is_one_error_line() {
    let stderr = fails_in_one_line(&["--otlp-endpoint", "ftp://collector:4318", "serve"]);
    assert!(
        stderr.contains("--otlp-endpoint: \"ftp://collector:4318\" is not an http(s) URL"),
        "{stderr}"
    );
}
