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

use crate::support::{Options, Server, openai_provider, replicate_with_files};

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

/// What schemathesis checks: no `5xx`; statuses, content types, bodies and headers
/// as documented; a request the document forbids refused; credentials required
/// where documented; a deleted object gone. (Left out: `positive_data_acceptance`,
/// since a valid execution input depends on its model, which a schema cannot say,
/// and `unsupported_method`, which wants `405` where the API answers `404`.)
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance,\
                      negative_data_rejection,ignored_auth,missing_required_header,\
                      use_after_free,ensure_resource_availability";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/test-artifacts`, where a run leaves what a person may want to look at.
fn artifacts() -> PathBuf {
    let dir = root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// A tool is missing: the test is skipped, unless this is CI.
fn skip(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("skipped: {why}");
}

/// `python3` with `target/pydeps-api` on its path, when `module` imports from there.
fn python_with(module: &str) -> Option<Command> {
    let pydeps = root().join("target/pydeps-api");
    let importable = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .env("PYTHONPATH", &pydeps)
        .output()
        .is_ok_and(|output| output.status.success());
    if !importable {
        skip(&format!(
            "the Python module {module} is not importable from {} (run `make pydeps`)",
            pydeps.display()
        ));
        return None;
    }
    let mut python = Command::new("python3");
    python.env("PYTHONPATH", pydeps);
    Some(python)
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

/// Whether `chromium` runs.
fn chromium_present() -> bool {
    std::process::Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// The values of the `src` and `href` attributes in `html`.
fn links(html: &str) -> Vec<&str> {
    ["src=\"", "href=\""]
        .iter()
        .flat_map(|attribute| {
            html.match_indices(attribute)
                .filter_map(|(at, _)| html[at + attribute.len()..].split('"').next())
        })
        .collect()
}

/// The absolute `http(s)://` URLs written in `text`.
fn absolute_urls(text: &str) -> Vec<&str> {
    text.match_indices("http")
        .map(|(at, _)| &text[at..])
        .filter(|rest| rest.starts_with("http://") || rest.starts_with("https://"))
        .map(|rest| {
            let end = rest
                .find(|c: char| c.is_whitespace() || "\"'`<>()".contains(c))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

/// Whether `url` is on the host and port of `origin`.
fn same_origin(url: &Url, origin: &Url) -> bool {
    url.host_str() == origin.host_str()
        && url.port_or_known_default() == origin.port_or_known_default()
}

/// Fetches the page at `page` and what it links to; asserts that each is served by
/// the server itself, and that the page and its small (not vendored, minified)
/// scripts name no URL of another host.
async fn assert_assets_served_locally(page: &Url) {
    let http = reqwest::Client::new();
    let html = http.get(page.clone()).send().await.expect("GET the docs");
    assert_eq!(html.status(), StatusCode::OK, "{page}");
    let html = html.text().await.expect("the docs page");
    let mut texts = vec![(page.clone(), html.clone())];
    for link in links(&html) {
        let url = page.join(link).unwrap_or_else(|e| panic!("{link:?}: {e}"));
        if url.scheme() == "data" {
            continue;
        }
        assert!(same_origin(&url, page), "the docs load {url}");
        let response = http.get(url.clone()).send().await.expect("GET an asset");
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let body = response.text().await.expect("an asset");
        if body.len() < 64 * 1024 {
            texts.push((url, body));
        }
    }
    for (url, text) in &texts {
        for absolute in absolute_urls(text) {
            let other = Url::parse(absolute).is_ok_and(|absolute| !same_origin(&absolute, page));
            assert!(!other, "{url} names {absolute}");
        }
    }
}

/// The URLs the page at `origin` asked for, from Chromium's net log.
fn page_requests(netlog: &Path, origin: &str) -> Vec<String> {
    let log: Value = serde_json::from_slice(&std::fs::read(netlog).expect("the net log"))
        .expect("the net log is JSON");
    let start_job = &log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"];
    log["events"]
        .as_array()
        .expect("net log events")
        .iter()
        .filter(|event| &event["type"] == start_job)
        .filter(|event| event["params"]["initiator"].as_str() == Some(origin))
        .filter_map(|event| event["params"]["url"].as_str().map(String::from))
        .collect()
}

/// The name Chromium reaches the server by: Swagger UI hides some of its calls out
/// (the online validator's badge) on `localhost` and `127.0.0.1`, not on other hosts.
const DOCS_HOST: &str = "modelroute.test";

#[tokio::test]
async fn the_docs_page_renders_offline_in_headless_chromium() {
    let server = Server::start(&[]).await;
    let page = Url::parse(&format!("{}/docs/", server.url)).unwrap();
    assert_assets_served_locally(&page).await;
    if !chromium_present() {
        skip("chromium is not installed (.ci/run installs it)");
        return;
    }
    let origin = format!("http://{DOCS_HOST}:{}", page.port().expect("a port"));
    let profile = tempfile::tempdir().unwrap();
    let netlog = profile.path().join("netlog.json");
    let screenshot = artifacts().join("docs.png");
    let mut chromium = Command::new("chromium");
    chromium
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
        ])
        // Only the server's name resolves: no request can leave the machine.
        .arg(format!(
            "--host-resolver-rules=MAP {DOCS_HOST} 127.0.0.1 , MAP * ~NOTFOUND"
        ))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--log-net-log={}", netlog.display()))
        .args(["--virtual-time-budget=20000", "--window-size=1280,2400"])
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--dump-dom")
        .arg(format!("{origin}/docs/"));
    let output = run(chromium, Duration::from_secs(120)).await;
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "chromium: {}", printed(&output));
    assert!(
        dom.contains("class=\"swagger-ui\"")
            && dom.contains("opblock")
            && dom.contains("data-path=\"/v1/executions\""),
        "Swagger UI did not render the operations:\n{}",
        tail(&dom, 50)
    );
    assert!(!dom.contains("Failed to load API definition"), "{dom}");
    let requests = page_requests(&netlog, &origin);
    assert!(
        requests.contains(&format!("{origin}/openapi.json")),
        "the page did not fetch the document: {requests:?}"
    );
    let elsewhere: Vec<&String> = requests
        .iter()
        .filter(|url| !url.starts_with(&format!("{origin}/")))
        .collect();
    assert!(elsewhere.is_empty(), "the page reached out: {elsewhere:?}");
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is no PNG",
        screenshot.display()
    );
    eprintln!("screenshot of /docs: {}", screenshot.display());
}

/// Statuses that refuse a request the document forbids: schemathesis' own list, and
/// `413`, which SPEC §8 answers to a `size_bytes` over the cap.
const REFUSALS: &str =
    r#"["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]"#;

/// schemathesis' configuration: [`REFUSALS`], and each security scheme of
/// `document` with its credential (the operator token for `operator_token`, the API
/// key for `api_key`).
fn schemathesis_config(document: &Value, server: &Server) -> String {
    let mut config = format!("[checks.negative_data_rejection]\nexpected-statuses = {REFUSALS}\n");
    let schemes = document["components"]["securitySchemes"]
        .as_object()
        .expect("the document's security schemes");
    for (name, scheme) in schemes {
        assert_eq!(scheme["scheme"], "bearer", "{name}: {scheme}");
        let token = match name.as_str() {
            "operator_token" => &server.admin_token,
            "api_key" => &server.api_key,
            other => panic!("a security scheme this test does not know: {other}"),
        };
        config.push_str(&format!("\n[auth.openapi.{name:?}]\nbearer = {token:?}\n"));
    }
    config
}

#[tokio::test]
async fn schemathesis_finds_nothing_against_a_live_server() {
    let replicate = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let openai = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let providers = [replicate_with_files(&replicate), openai_provider(&openai)];
    let server = Server::start_with(
        &providers,
        Options {
            // The fuzzer sends many requests without valid credentials on purpose;
            // the per-address budget for those would soon refuse all of it.
            config: "\n[rate_limits.failed_auth]\nper_minute = 1000000\nburst = 1000000\n",
            ..Options::default()
        },
    )
    .await;
    let document = document(&server).await;
    let Some(mut schemathesis) = python_with("schemathesis") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("schemathesis.toml");
    std::fs::write(&config, schemathesis_config(&document, &server)).unwrap();
    let junit = artifacts().join("schemathesis.xml");
    schemathesis
        .current_dir(work.path())
        .args(["-m", "schemathesis.cli", "--no-color", "--config-file"])
        .arg(&config)
        .arg("run")
        .arg(format!("{}/openapi.json", server.url))
        .args(["--url", &server.url])
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        // One worker: hypothesis' code introspection is not thread-safe (two workers
        // now and then end a run with an internal "Runtime Error").
        .args(["--max-examples", "50", "--workers", "1"])
        // Deterministic: the same cases on every run, and no example database.
        .args(["--generation-deterministic", "--request-timeout", "30"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&junit);
    let output = run(schemathesis, Duration::from_secs(300)).await;
    assert!(
        output.status.success(),
        "schemathesis found failures (JUnit report: {}):\n{}\nserver log (end):\n{}",
        junit.display(),
        printed(&output),
        tail(&server.log(), 200)
    );
}
