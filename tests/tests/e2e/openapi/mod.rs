//! The OpenAPI document (SPEC §13): `GET /openapi.json` validates as OpenAPI 3.1,
//! the document and the router agree both ways, `/docs` renders it in headless
//! Chromium with nothing leaving the machine, and schemathesis finds no failure
//! against a live server. The Python tools come from `make pydeps`
//! (`target/pydeps-api`) and Chromium from the system (`.ci/run` installs it): where
//! one is missing the test is skipped, except in CI (`CI` set), where it fails.

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;

use modelroute_tests::emulators::{DEFAULT_TOKEN, openai, replicate};

use crate::support::{
    Options, Server, openai_provider, pydeps_python, replicate_with_files, skip_unless_ci,
};

/// How the router answers a path no route serves, and a method a route does not take.
const NO_SUCH_ENDPOINT: &str = "There is no such endpoint";
const NO_SUCH_METHOD: &str = "This endpoint does not accept that method";

/// Every route of SPEC §3–§13 and of the router (`host/src/api`), path parameters
/// written `{}`: the document must describe each one.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    // §3 keys
    ("POST", "/v1/api-keys"),
    ("GET", "/v1/api-keys"),
    ("DELETE", "/v1/api-keys/{}"),
    ("POST", "/v1/api-keys/{}/rotate"),
    // §4 executions
    ("POST", "/v1/executions"),
    ("GET", "/v1/executions"),
    ("GET", "/v1/executions/{}"),
    ("GET", "/v1/executions/{}/result"),
    ("POST", "/v1/executions/{}/cancel"),
    // §7 billing
    ("GET", "/v1/balance"),
    ("GET", "/v1/ledger"),
    // §8 files
    ("POST", "/v1/files/upload"),
    ("POST", "/v1/files/confirm"),
    ("GET", "/v1/files"),
    ("GET", "/v1/files/{}"),
    ("DELETE", "/v1/files/{}"),
    ("GET", "/v1/files/{}/download"),
    ("GET", "/v1/files/{}/url"),
    // §9 webhooks
    ("POST", "/v1/webhooks/endpoints"),
    ("GET", "/v1/webhooks/endpoints"),
    ("GET", "/v1/webhooks/endpoints/{}"),
    ("PATCH", "/v1/webhooks/endpoints/{}"),
    ("DELETE", "/v1/webhooks/endpoints/{}"),
    ("POST", "/v1/webhooks/endpoints/{}/test"),
    ("GET", "/v1/webhooks/default-secret"),
    ("POST", "/v1/provider-webhooks/{}/{}"),
    // §11 models
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{}"),
    // §12 the OpenAI-compatible door
    ("POST", "/openai/v1/chat/completions"),
    ("POST", "/openai/v1/images/generations"),
    ("GET", "/openai/v1/models"),
    ("GET", "/openai/v1/models/{}"),
    // §3, §13 the operator's API
    ("POST", "/admin/v1/organizations"),
    ("PATCH", "/admin/v1/organizations/{}"),
    ("POST", "/admin/v1/organizations/{}/credit"),
    ("GET", "/admin/v1/plugins"),
    ("PUT", "/admin/v1/plugins/{}"),
    ("POST", "/admin/v1/plugins/{}/rollback"),
    ("GET", "/admin/v1/ledger/verify"),
    ("GET", "/admin/v1/webhooks/outbox"),
    ("GET", "/admin/v1/executions/{}"),
    ("GET", "/admin/v1/files/{}/audit"),
    ("POST", "/admin/v1/clock/advance"),
];

/// The methods a path item of OpenAPI may describe.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/test-artifacts`, where a run leaves what a person may want to look at.
fn artifacts() -> PathBuf {
    let dir = root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// `python3` with `target/pydeps-api` on its path, when `module` imports from there.
fn python_with(module: &str) -> Option<Command> {
    pydeps_python("pydeps-api", module)
}

/// Runs `command` to its end, killing it after `limit`.
async fn run(mut command: Command, limit: Duration) -> Output {
    let program = format!("{:?}", command.as_std().get_program());
    command.kill_on_drop(true);
    match tokio::time::timeout(limit, command.output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("{program}: {e}")),
        Err(_) => panic!("{program} ran longer than {limit:?}"),
    }
}

/// What a process printed, both streams.
fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `GET /openapi.json`, which needs no credentials.
async fn document(server: &Server) -> Value {
    let reply = server
        .call(Method::GET, "/openapi.json", None, None, &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|kind| kind.starts_with("application/json")),
        "{:?}",
        reply.headers
    );
    assert!(
        reply.body.is_object(),
        "not a JSON object: {:?}",
        reply.body
    );
    reply.body
}

/// Every operation of `document`: its method and path.
fn operations(document: &Value) -> Vec<(Method, String)> {
    let paths = document["paths"].as_object().expect("the document's paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(|method| {
                    let method = Method::from_bytes(method.to_uppercase().as_bytes());
                    (method.expect("an HTTP method"), path.clone())
                })
        })
        .collect()
}

/// `path` with each parameter written `{}`, whatever its name.
fn template(path: &str) -> String {
    let mut template = String::new();
    let mut in_parameter = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_parameter = true;
                template.push_str("{}");
            }
            '}' => in_parameter = false,
            c if !in_parameter => template.push(c),
            _ => {}
        }
    }
    template
}

/// Whether `path` takes the operator token rather than an API key.
fn operator_path(path: &str) -> bool {
    path.starts_with("/admin/") || path == "/metrics"
}

#[tokio::test]
async fn the_openapi_document_validates() {
    let server = Server::start(&[]).await;
    let document = document(&server).await;
    let version = document["openapi"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("3.1"),
        "openapi is {version:?}, not 3.1"
    );
    let file = artifacts().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&document).unwrap()).unwrap();
    let Some(mut validator) = python_with("openapi_spec_validator") else {
        return;
    };
    validator
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .args(["--validation-errors", "all"])
        .arg(&file);
    let output = run(validator, Duration::from_secs(120)).await;
    assert!(
        output.status.success(),
        "openapi-spec-validator refuses {}:\n{}",
        file.display(),
        printed(&output)
    );
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_every_spec_route_documented() {
    let server = Server::start(&[]).await;
    let operations = operations(&document(&server).await);
    let mut unrouted = Vec::new();
    for (method, path) in &operations {
        let concrete = template(path).replace("{}", "nonexistent");
        let key = if operator_path(path) {
            &server.admin_token
        } else {
            &server.api_key
        };
        let reply = server
            .call(method.clone(), &concrete, Some(key), None, &[])
            .await;
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        if reply.status == StatusCode::METHOD_NOT_ALLOWED
            || message.starts_with(NO_SUCH_ENDPOINT)
            || message.starts_with(NO_SUCH_METHOD)
        {
            unrouted.push(format!("{method} {path}: {} {}", reply.status, reply.body));
        }
    }
    assert!(
        unrouted.is_empty(),
        "documented, but the router has no such route:\n{}",
        unrouted.join("\n")
    );
    let documented: BTreeSet<(String, String)> = operations
        .iter()
        .map(|(method, path)| (method.to_string(), template(path)))
        .collect();
    let undocumented: Vec<String> = ROUTES
        .iter()
        .filter(|(method, path)| !documented.contains(&(method.to_string(), path.to_string())))
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    assert!(
        undocumented.is_empty(),
        "routes the document does not describe:\n{}",
        undocumented.join("\n")
    );
}

mod docs_page;
mod fuzzing;
