//! A third-party adapter as its author first wrote it ("Acme Images",
//! `tests/fixtures/acme`): priced per megapixel but reporting only an image count,
//! and describing the model by the provider's own name. The host must neither
//! charge $0 for the paid work nor let the adapter's wording into the catalogue.

use axum::extract::Path;
use axum::routing::{get, post};
use base64::Engine;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

use crate::support::{Options, ProviderSpec, Server};

const WAIT: Duration = Duration::from_secs(30);

/// Acme's API: a job per submit, done at its first poll, answering a small PNG.
async fn acme_api() -> String {
    let png = base64::engine::general_purpose::STANDARD
        .encode(modelroute_tests::emulators::png(64, 48, 7));
    let app = axum::Router::new()
        .route(
            "/v1/jobs",
            post(|| async { axum::Json(json!({"id": "job_1"})) }),
        )
        .route(
            "/v1/jobs/{id}",
            get(move |Path(id): Path<String>| {
                let png = png.clone();
                async move { axum::Json(json!({"id": id, "status": "done", "image": png})) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn acme_server() -> Server {
    Server::start_with(
        &[ProviderSpec {
            name: "acme",
            adapter: "acme",
            base_url: acme_api().await,
            models: &["flux-1.1-pro"],
        }],
        Options {
            extra_plugins: &["acme"],
            ..Options::default()
        },
    )
    .await
}

/// Regression: a completed execution was charged $0 because the adapter priced
/// per megapixel and reported `Usage { images: 1 }`; the host charged its estimate
/// only when usage was entirely empty. Usage that leaves every priced unit at zero
/// is now charged the estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_that_meets_no_priced_unit_is_charged_the_estimate_not_zero() {
    let server = acme_server().await;
    // 512 × 384 is 0.196 megapixels (in thousandths, rounded down) at $0.05 each.
    let input = json!({"prompt": "a lighthouse at dusk", "width": 512, "height": 384});
    let accepted = server
        .post(
            "/v1/executions",
            json!({"model": "flux-1.1-pro", "input": input}),
        )
        .await;
    assert_eq!(
        accepted.body["estimated_cost"], "0.0098",
        "{}",
        accepted.body
    );
    let id = accepted.body["id"].as_str().unwrap();
    let execution = server.wait_terminal(id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["cost"], "0.0098", "{execution}");
    let balance = server.get("/v1/balance").await.body;
    assert_eq!(balance["held"], "0", "{balance}");
    assert_eq!(balance["available"], "99.9902", "{balance}");
    assert!(
        server.log().contains("the estimate is charged"),
        "the charge of the estimate is logged"
    );
}

/// Regression: `GET /v1/models/flux-1.1-pro` showed "… served by Acme Images",
/// because the first adapter's description won. A canonical model is described by
/// its canonical definition, whatever serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_describes_a_model_neutrally_whichever_adapter_serves_it() {
    let server = acme_server().await;
    let model = server.get("/v1/models/flux-1.1-pro").await;
    assert_eq!(
        model.body["description"], "FLUX1.1 [pro]: fast, high-quality text-to-image.",
        "{}",
        model.body
    );
    assert!(!model.body.to_string().contains("Acme"), "{}", model.body);
    assert_eq!(model.body["pricing"]["per_megapixel"], "0.05");
}

/// The conformance kit tells the author about both mistakes before anyone is
/// billed: warnings, not failures, since the host copes with each.
#[test]
fn plugin_check_warns_about_unmet_price_units_and_a_description_naming_the_provider() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let check = Command::new(crate::support::binary())
        .args(["plugin", "check"])
        .arg(root.join("target/test-plugins/acme.wasm"))
        .arg("--fixtures")
        .arg(root.join("tests/fixtures/acme/fixtures.json"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run modelroute plugin check");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{report}");
    assert!(report.contains("0 failed, 2 warnings"), "{report}");
    assert!(
        report.contains("counts none of the units flux-1.1-pro is priced by (per-megapixel)"),
        "{report}"
    );
    assert!(
        report.contains("the description names \"acme\""),
        "{report}"
    );
}
