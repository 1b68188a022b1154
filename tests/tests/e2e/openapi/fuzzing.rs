//! schemathesis against a live server with the emulated providers.

use super::*;

/// What schemathesis checks: no `5xx`; statuses, content types, bodies and headers
/// as documented; a request the document forbids refused; credentials required
/// where documented; a deleted object gone. (Left out: `positive_data_acceptance`,
/// since a valid execution input depends on its model, which a schema cannot say,
/// and `unsupported_method`, which wants `405` where the API answers `404`.)
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance,\
                      negative_data_rejection,ignored_auth,missing_required_header,\
                      use_after_free,ensure_resource_availability";

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
