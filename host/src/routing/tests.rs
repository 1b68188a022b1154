//! Costs, and declared models as candidates and as refusals.

use super::*;

fn price() -> types::Price {
    types::Price {
        per_request: 0,
        per_image: 40_000,
        per_megapixel: 0,
        per_second: 0,
        per_million_input_tokens: 180_000,
        per_million_output_tokens: 180_000,
    }
}

fn usage() -> Usage {
    Usage {
        requests: 1,
        images: 0,
        megapixels_milli: 0,
        seconds_milli: 0,
        input_tokens: 0,
        output_tokens: 0,
    }
}

/// A router over the openai adapter and the template (which serves its own
/// `template-text`), with `tail` appended to a config naming them.
async fn router_with(tail: &str) -> (Router, Config, tempfile::TempDir) {
    use crate::plugins::tests::{load, runtime};
    let data = tempfile::tempdir().unwrap();
    let runtime = runtime(Default::default());
    let registry = Registry::persistent(
        crate::plugins::Installed::open(&data.path().join("installed")).unwrap(),
    );
    for path in [
        "plugins/dist/openai.wasm",
        "target/test-plugins/template.wasm",
    ] {
        registry.activate(load(&runtime, path).await).unwrap();
    }
    let text = format!(
        "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\nplugins_dir = \"p\"\npublic_url = \"http://127.0.0.1:1\"\n{tail}"
    );
    let path = data.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(Some(&path)).unwrap();
    (Router::new(&config, Arc::new(registry)), config, data)
}

const DECLARED: &str = r#"
[[models]]
slug = "qwen"
modality = "text"
description = "An open chat model."
input = "chat"
price = { per_million_input_tokens = "0.9", per_million_output_tokens = "0.9" }
[[providers]]
name = "vllm"
adapter = "openai"
base_url = "https://vllm.example"
[providers.models."qwen"]
provider_model = "Qwen/Qwen2.5"
price = { per_million_output_tokens = "1.5" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_model_is_a_candidate_like_a_manifest_entry() {
    let (router, config, _data) = router_with(DECLARED).await;
    router.check(&config).unwrap();
    let candidates = router.candidates("qwen");
    assert_eq!(candidates.len(), 1);
    let model = &candidates[0].model;
    assert_eq!(
        (model.provider_model.as_str(), model.input.as_str()),
        ("Qwen/Qwen2.5", "chat")
    );
    assert_eq!(
        (
            model.price.per_million_input_tokens,
            model.price.per_million_output_tokens
        ),
        (900_000, 1_500_000),
        "the declared price, then the provider's override"
    );
    assert_eq!(router.declared_slugs(), ["qwen"]);
    assert!(router.candidates("llama-3.1-8b-instruct").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_slug_an_adapter_defines_is_refused() {
    let tail = DECLARED.replace("\"qwen\"", "\"template-text\"");
    let (router, config, _data) = router_with(&tail).await;
    let error = router.check(&config).unwrap_err().to_string();
    assert!(
        error.starts_with(
            "models[0].slug: \"template-text\" is already defined by the template adapter's manifest"
        ),
        "{error}"
    );
    let tail = DECLARED.replace("adapter = \"openai\"", "adapter = \"template\"");
    let (router, config, _data) = router_with(&tail).await;
    let error = router.check(&config).unwrap_err().to_string();
    assert!(
        error.starts_with("providers[0].models.\"qwen\": the \"template\" adapter does not serve operator-declared models of input \"chat\" (it serves declared inputs: none)"),
        "{error}"
    );
    assert!(router.candidates("qwen").is_empty());
}

#[test]
fn cost_multiplies_usage_by_unit_prices_and_rounds_up() {
    let one_image = Usage {
        images: 1,
        ..usage()
    };
    assert_eq!(cost(&price(), &one_image), Micros(40_000));
    // 10 and 256 tokens at $0.18 per million: 1.8 and 46.08, each rounded up.
    let tokens = Usage {
        input_tokens: 10,
        output_tokens: 256,
        ..usage()
    };
    assert_eq!(cost(&price(), &tokens), Micros(2 + 47));
}
