//! Operator-declared models (issue #15, item 3): a model no adapter names, declared
//! in the config and served by the OpenAI-format adapter under the operator's
//! `provider_model`, is listed, validated, run and billed like a canonical one; a
//! bad declaration stops the start naming the field.

use reqwest::{Method, StatusCode};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use modelroute_tests::emulators::{DEFAULT_TOKEN, Emulator, openai};

use crate::support::{Options, Server, binary, decimal, openai_provider, plugin_dirs};

const QWEN: &str = "qwen-2.5-72b-instruct";
const QWEN_PROVIDER_MODEL: &str = "Qwen/Qwen2.5-72B-Instruct-Turbo";
/// A declared model whose inline schema narrows the chat input: user messages of
/// plain text, and at most 32 tokens.
const TERSE: &str = "terse-chat";

/// The declarations and a provider serving them on the emulator at `base_url`.
fn declarations(base_url: &str) -> String {
    format!(
        r#"
[[models]]
slug = "{QWEN}"
modality = "text"
description = "A 72B open-weights instruction-tuned chat model."
input = "chat"
price = {{ per_million_input_tokens = "120", per_million_output_tokens = "240" }}

[[models]]
slug = "{TERSE}"
modality = "text"
description = "Short answers to one plain question."
input = "chat"
input_schema = '''
{{"type": "object", "required": ["messages"], "additionalProperties": false,
  "properties": {{
    "messages": {{"type": "array", "minItems": 1, "maxItems": 1, "items": {{
      "type": "object", "required": ["role", "content"], "additionalProperties": false,
      "properties": {{"role": {{"const": "user"}}, "content": {{"type": "string"}}}}}}}},
    "max_tokens": {{"type": "integer", "minimum": 1, "maximum": 32}}}}}}
'''
price = {{ per_request = "0.002" }}

[[providers]]
name = "vllm"
adapter = "openai"
base_url = "{base_url}"
api_key = "emulator-key"
[providers.models."{QWEN}"]
provider_model = "{QWEN_PROVIDER_MODEL}"
[providers.models."{TERSE}"]
provider_model = "{QWEN_PROVIDER_MODEL}"
"#
    )
}

async fn declaring_server(emulator: &Emulator<openai::OpenAi>) -> Server {
    let config = declarations(&emulator.base_url());
    Server::start_with(
        &[openai_provider(emulator)],
        Options {
            config: &config,
            ..Options::default()
        },
    )
    .await
}

#[tokio::test]
async fn a_declared_model_is_listed_run_on_its_provider_model_and_billed_at_its_price() {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let server = declaring_server(&emulator).await;

    // Listed like a canonical model, with the declared description, schema and
    // prices, and no provider named.
    let list = server.get("/v1/models?limit=100").await;
    assert_eq!(list.status, StatusCode::OK, "{:?}", list.body);
    let slugs: Vec<&str> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["slug"].as_str().unwrap())
        .collect();
    assert!(slugs.contains(&QWEN) && slugs.contains(&TERSE), "{slugs:?}");
    assert!(slugs.contains(&"llama-3.1-8b-instruct"), "{slugs:?}");
    let qwen = server.get(&format!("/v1/models/{QWEN}")).await.body;
    let chat_schema =
        server.get("/v1/models/llama-3.1-8b-instruct").await.body["input_schema"].clone();
    assert_eq!(qwen["modality"], "text");
    assert_eq!(
        qwen["description"],
        "A 72B open-weights instruction-tuned chat model."
    );
    assert_eq!(
        qwen["input_schema"], chat_schema,
        "the chat preset's schema"
    );
    assert_eq!(qwen["available"], true);
    assert_eq!(
        decimal(
            qwen["pricing"]["per_million_input_tokens"]
                .as_str()
                .unwrap()
        ),
        decimal("120")
    );
    assert_eq!(
        decimal(
            qwen["pricing"]["per_million_output_tokens"]
                .as_str()
                .unwrap()
        ),
        decimal("240")
    );
    let text = qwen.to_string();
    for provider in ["vllm", "openai", "emulator", "127.0.0.1"] {
        assert!(!text.contains(provider), "{provider} named in {text}");
    }
    let terse = server.get(&format!("/v1/models/{TERSE}")).await.body;
    assert_eq!(
        terse["input_schema"]["properties"]["max_tokens"]["maximum"],
        32
    );
    assert_eq!(
        decimal(terse["pricing"]["per_request"].as_str().unwrap()),
        decimal("0.002")
    );

    // A SYNC execution completes on the operator's provider model, billed at the
    // declared token prices: $120 and $240 per million tokens, 120 and 240
    // micro-dollars a token.
    let key = server.new_organization("10").await;
    let input =
        json!({"messages": [{"role": "user", "content": "three little words"}], "max_tokens": 16});
    let reply = server
        .call(
            Method::POST,
            "/v1/executions",
            Some(&key),
            Some(json!({"model": QWEN, "mode": "SYNC", "input": input})),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let execution = &reply.body;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["model"], QWEN);
    let output = &execution["result"]["output"];
    assert_eq!(output["text"], "Echo: words little three", "{output}");
    let usage = &output["usage"];
    let (input_tokens, output_tokens) = (
        usage["input_tokens"].as_u64().unwrap(),
        usage["output_tokens"].as_u64().unwrap(),
    );
    assert!(input_tokens > 0 && output_tokens > 0, "{usage}");
    let expected = Decimal::new((input_tokens * 120 + output_tokens * 240) as i64, 6);
    assert_eq!(
        decimal(execution["cost"].as_str().unwrap()),
        expected,
        "{execution}"
    );
    let balance = server
        .call(Method::GET, "/v1/balance", Some(&key), None, &[])
        .await
        .body;
    assert_eq!(
        decimal(balance["available"].as_str().unwrap()),
        decimal("10") - expected
    );
    assert_eq!(decimal(balance["held"].as_str().unwrap()), Decimal::ZERO);

    let sent: Vec<Value> = emulator
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["model"], QWEN_PROVIDER_MODEL);
    assert_eq!(sent[0]["max_tokens"], 16);

    // The inline schema is the one inputs are validated against, field by field.
    let too_long = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64});
    let refused = server
        .post(
            "/v1/executions",
            json!({"model": TERSE, "mode": "SYNC", "input": too_long}),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        refused.body
    );
    assert_eq!(refused.error_code(), "INPUT_VALIDATION_ERROR");
    let details = &refused.body["error"]["details"];
    assert_eq!(details[0]["field"], "input.max_tokens", "{details}");
    let system = json!({"messages": [{"role": "system", "content": "hi"}]});
    let refused = server
        .post("/v1/executions", json!({"model": TERSE, "input": system}))
        .await;
    assert_eq!(refused.error_code(), "INPUT_VALIDATION_ERROR");
    assert_eq!(
        refused.body["error"]["details"][0]["field"], "input.messages[0].role",
        "{}",
        refused.body
    );
    // The preset's own rules hold for the declared model too.
    let empty = server
        .post(
            "/v1/executions",
            json!({"model": QWEN, "input": {"messages": []}}),
        )
        .await;
    assert_eq!(empty.error_code(), "INPUT_VALIDATION_ERROR");
    assert_eq!(empty.body["error"]["details"][0]["field"], "input.messages");

    // And a valid one runs, at the declared per-request price.
    let reply = server
        .post(
            "/v1/executions",
            json!({"model": TERSE, "mode": "SYNC", "input": {"messages": [{"role": "user", "content": "hi"}]}}),
        )
        .await;
    assert_eq!(reply.body["status"], "COMPLETED", "{}", reply.body);
    assert_eq!(
        decimal(reply.body["cost"].as_str().unwrap()),
        decimal("0.002")
    );
    let verify = server.admin_get("/admin/v1/ledger/verify").await;
    assert_eq!(verify.status, StatusCode::OK, "{:?}", verify.body);
}

/// Runs `modelroute serve` on a config whose tail is `tail`; answers its output,
/// having checked that it stopped (within 60 s) with a failure.
fn serve_refuses(tail: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, cache) = plugin_dirs();
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nplugins_dir = {plugins:?}\npublic_url = \"http://127.0.0.1:0\"\n[plugins]\ncache_dir = {cache:?}\n{tail}",
        dir.path().join("state"),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("MODELROUTE_LISTEN")
        .env_remove("MODELROUTE_DATA_DIR")
        .env_remove("MODELROUTE_PLUGINS_DIR")
        .env_remove("MODELROUTE_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the server started on a bad declaration:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!status.success(), "exited {status}: {text}");
    text
}

#[test]
fn a_bad_declaration_stops_the_start_naming_the_field() {
    let good = declarations("http://127.0.0.1:9");
    let cases = [
        (
            good.replace(
                "input = \"chat\"\nprice = {",
                "input = \"chatt\"\nprice = {",
            ),
            "models[0].input: unknown preset \"chatt\" (presets: chat,",
        ),
        (
            good.replace(r#""maximum": 32"#, r#""maximum": "32""#),
            "models[1].input_schema: not a valid JSON Schema",
        ),
        (
            good.replace("slug = \"terse-chat\"", "slug = \"flux-1.1-pro\""),
            "models[1].slug: \"flux-1.1-pro\" is a canonical model",
        ),
        (
            good.replace("per_request = \"0.002\"", "per_request = \"2000\""),
            "models[1].price.per_request:",
        ),
        (
            good.replace(
                &format!(
                    "provider_model = \"{QWEN_PROVIDER_MODEL}\"\n[providers.models.\"{TERSE}\"]"
                ),
                &format!("[providers.models.\"{TERSE}\"]"),
            ),
            "providers[0].models.\"qwen-2.5-72b-instruct\".provider_model: required",
        ),
        // Checked against the loaded adapters: the replicate adapter serves no
        // declared models, and a declaration no provider serves is a mistake.
        (
            good.replace("adapter = \"openai\"", "adapter = \"replicate\""),
            "providers[0].models.\"qwen-2.5-72b-instruct\": the \"replicate\" adapter does not serve operator-declared models of input \"chat\"",
        ),
        (
            good.replace(
                "[providers.models.\"terse-chat\"]\nprovider_model",
                "[providers.models.\"other\"]\nprovider_model",
            ),
            "models[1].slug: no provider serves \"terse-chat\"",
        ),
    ];
    for (tail, field) in cases {
        let output = serve_refuses(&tail);
        assert!(output.contains(field), "expected {field:?} in:\n{output}");
    }
}
