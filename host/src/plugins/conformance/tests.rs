use super::*;
use crate::plugins::tests::{component, runtime};
use serde_json::json;

fn fixtures(json: Value) -> Vec<Fixture> {
    serde_json::from_value(json).unwrap()
}

fn shipped_fixtures(plugin: &str) -> Vec<Fixture> {
    let path = format!(
        "{}/../plugins/{plugin}/fixtures.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The report's failures as `name: why` lines, and its warnings.
fn run_kit(wasm: &str, fixtures: &[Fixture]) -> (Vec<String>, Vec<String>) {
    let report = check(&runtime(Default::default()), &component(wasm), fixtures);
    let failures = report
        .checks
        .iter()
        .filter_map(|c| Some(format!("{}: {}", c.name, c.failure.as_ref()?)))
        .collect();
    (failures, report.warnings)
}

#[test]
fn the_shipped_adapters_pass_their_fixtures_without_warnings() {
    for plugin in ["replicate", "openai"] {
        let fixtures = shipped_fixtures(plugin);
        assert!(
            fixtures.iter().any(|f| f.request.is_some()),
            "{plugin} has request fixtures"
        );
        let (failures, warnings) = run_kit(&format!("plugins/dist/{plugin}.wasm"), &fixtures);
        assert_eq!(failures, Vec::<String>::new(), "{plugin}");
        assert_eq!(warnings, Vec::<String>::new(), "{plugin}");
    }
    let report = check(
        &runtime(Default::default()),
        &component("plugins/dist/openai.wasm"),
        &[],
    );
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert!(
        names.contains(&"llama-3.1-8b-instruct: a continuation sends its prefill"),
        "{names:?}"
    );
}

#[test]
fn a_model_accepting_prefills_must_be_chat_and_send_the_prefill() {
    let request = |body: &str| types::HttpRequest {
        method: types::Method::Post,
        url: "https://api.example.com/v1/chat".into(),
        headers: Vec::new(),
        body: Some(body.as_bytes().to_vec()),
        timeout_ms: None,
    };
    let fresh = request(r#"{"messages":[{"role":"user","content":"hi"}]}"#);
    let continuing = request(
        r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"Hel"}]}"#,
    );
    assert_eq!(sends_prefill(&fresh, &continuing, "Hel"), Ok(()));
    let ignored = sends_prefill(&fresh, &fresh, "Hel").unwrap_err();
    assert!(
        ignored.contains("does not send the input's prefill"),
        "{ignored}"
    );

    let plugin = runtime(Default::default())
        .load(&component("plugins/dist/openai.wasm"))
        .unwrap();
    let mut image = plugin.model("flux-1.1-pro").unwrap().clone();
    image.accepts_prefill = true;
    let refused = submit_continues_prefill(&plugin, &image).unwrap_err();
    assert!(refused.contains("for chat models"), "{refused}");
}

#[test]
fn the_readme_examples_are_fixtures_the_replicate_adapter_passes() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("### Fixture files")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README documents the fixture files");
    let examples: Vec<Fixture> = section
        .split("```json\n")
        .skip(1)
        .map(|block| serde_json::from_str(block.split("```").next().unwrap()).unwrap())
        .collect();
    assert_eq!(examples.len(), 2);
    assert!(examples[0].response.is_some() && examples[1].request.is_some());
    let (failures, warnings) = run_kit("plugins/dist/replicate.wasm", &examples);
    assert_eq!(failures, Vec::<String>::new());
    assert_eq!(warnings, Vec::<String>::new());
}

#[test]
fn a_fixture_is_a_request_a_response_or_both_never_unknown_fields() {
    let parsed = fixtures(json!([
        {"name": "r", "model": "m", "request": {"url": "https://x"}},
        {"name": "s", "model": "m", "input": {"prompt": "p"}, "request": {"body": {}},
         "response": {"status": 200, "body": "ok"}, "expect": {"outcome": "completed"}},
        {"name": "p", "model": "m", "job": {"id": "j"}, "request": {"method": "GET"}}
    ]));
    assert_eq!(parsed.len(), 3);
    for unknown in [
        json!({"name": "n", "model": "m", "request": {"verb": "GET"}}),
        json!({"name": "n", "model": "m", "expect": {"outcome": "failed", "retry_after": 1}}),
        json!({"name": "n", "model": "m", "submit": {}}),
    ] {
        let error = serde_json::from_value::<Fixture>(unknown.clone()).unwrap_err();
        assert!(
            error.to_string().contains("unknown field"),
            "{unknown}: {error}"
        );
    }
}

#[test]
fn every_request_mismatch_is_one_line_saying_what_was_expected_and_what_came() {
    let bad = fixtures(json!([{
        "name": "bad submit",
        "model": "flux-1.1-pro",
        "input": {"prompt": "a lighthouse", "width": 512},
        "request": {
            "method": "put",
            "url": "https://api.replicate.com/v1/predictions",
            "headers": [["X-Key", "k"], ["CONTENT-TYPE", "application/json"]],
            "body": {"input": {"prompt": "a lighthouse", "width": 512.0, "height": 512}, "webhook": "https://hook"}
        }
    }, {
        "name": "bad poll",
        "model": "flux-1.1-pro",
        "job": {"id": "p1", "state": "{}"},
        "request": {"method": "GET", "url": "https://api.replicate.com/v1/predictions/p2"}
    }]));
    let (failures, _) = run_kit("plugins/dist/replicate.wasm", &bad);
    assert_eq!(
        failures,
        [
            "flux-1.1-pro: bad submit: request method: expected PUT, sent POST\n\
             request url: expected \"https://api.replicate.com/v1/predictions\", sent \"https://api.replicate.com/v1/models/black-forest-labs/flux-1.1-pro/predictions\"\n\
             request header X-Key: expected \"k\", sent none\n\
             request body at /input/height: expected 512, sent 1024\n\
             request body at /webhook: expected \"https://hook\", sent nothing",
            "flux-1.1-pro: bad poll: request url: expected \"https://api.replicate.com/v1/predictions/p2\", sent \"https://api.replicate.com/v1/predictions/p1\"",
        ]
    );
}

#[test]
fn a_fixture_must_say_one_call_and_pair_response_with_expect() {
    let bad = fixtures(json!([
        {"name": "both", "model": "flux-1.1-pro", "input": {}, "job": {"id": "j"}, "request": {}},
        {"name": "neither", "model": "flux-1.1-pro"},
        {"name": "half", "model": "flux-1.1-pro", "response": {"status": 200, "body": {}}},
        {"name": "nobody", "model": "no-such-model", "request": {}}
    ]));
    let (failures, _) = run_kit("plugins/dist/replicate.wasm", &bad);
    assert_eq!(failures.len(), 4, "{failures:#?}");
    assert!(
        failures[0].contains("both input (a submit) and job (a poll)"),
        "{}",
        failures[0]
    );
    assert!(
        failures[1].contains("neither request nor response"),
        "{}",
        failures[1]
    );
    assert!(
        failures[2].contains("response and expect go together"),
        "{}",
        failures[2]
    );
    assert!(
        failures[3].contains("no model \"no-such-model\""),
        "{}",
        failures[3]
    );
}

#[test]
fn the_body_rule_is_a_subset_of_objects_and_equality_of_the_rest() {
    let sent = json!({"a": 1, "b": {"c": [1, {"d": "x", "e": 2}], "f/g": true}, "n": null});
    for matching in [
        json!({}),
        json!({"a": 1.0}),
        json!({"b": {"c": [1, {"d": "x"}]}}),
        json!({"b": {"f/g": true}}),
        json!({"missing": null, "n": null}),
    ] {
        assert_eq!(
            body_mismatches(&matching, &sent),
            Vec::<String>::new(),
            "{matching}"
        );
    }
    assert_eq!(
        body_mismatches(
            &json!({"a": 2, "b": {"c": [1], "f/g": null}, "z": "q"}),
            &sent
        ),
        [
            "request body at /a: expected 2, sent 1",
            "request body at /b/c: expected 1 items, sent 2: [1,{\"d\":\"x\",\"e\":2}]",
            "request body at /b/f~1g: expected null, sent true",
            "request body at /z: expected \"q\", sent nothing",
        ]
    );
    assert_eq!(
        body_mismatches(&json!([1]), &json!({"a": 1})),
        ["request body at /: expected [1], sent {\"a\":1}"]
    );
}

#[test]
fn an_adapter_answering_pending_must_poll_the_job_it_returned() {
    let pending = |model: &str, response: Value| {
        json!({"name": "pending", "model": model,
               "response": {"status": 200, "body": response}, "expect": {"outcome": "pending"}})
    };
    let (failures, _) = run_kit(
        "target/test-plugins/hostile.wasm",
        &fixtures(json!([pending(
            "hostile-test",
            json!({"choices": [{"message": {"content": "pending"}}]})
        )])),
    );
    assert!(
        failures.iter().any(
            |f| f == "hostile-test: pending: answers pending but does not implement build-poll"
        ),
        "{failures:#?}"
    );
    let (failures, _) = run_kit(
        "plugins/dist/replicate.wasm",
        &fixtures(json!([pending(
            "flux-1.1-pro",
            json!({"id": "p1", "status": "processing", "urls": {}})
        )])),
    );
    assert_eq!(failures, Vec::<String>::new());
}

#[test]
fn a_failure_must_carry_the_expected_wait() {
    let throttled = |headers: Value, wait: u32| {
        json!({"name": format!("wait {wait}"), "model": "llama-3.1-8b-instruct",
               "response": {"status": 429, "headers": headers, "body": {"error": {"message": "slow down"}}},
               "expect": {"outcome": "failed", "code": "RATE_LIMITED", "retry_after_ms": wait}})
    };
    let (failures, _) = run_kit(
        "plugins/dist/openai.wasm",
        &fixtures(json!([
            throttled(json!([["retry-after-ms", "1500"]]), 1500),
            throttled(json!([["retry-after", "2"]]), 1500),
            throttled(json!([]), 1500),
        ])),
    );
    assert_eq!(
        failures,
        [
            "llama-3.1-8b-instruct: wait 1500: retry-after-ms: expected 1500, got 2000",
            "llama-3.1-8b-instruct: wait 1500: retry-after-ms: expected 1500, got none",
        ]
    );
}

#[test]
fn a_completion_must_finish_and_call_tools_as_expected() {
    let answer = |content: Value, tool_calls: Value, finish: &str| {
        json!({"status": 200, "body": {"choices": [{"index": 0, "message": {"role": "assistant", "content": content, "tool_calls": tool_calls}, "finish_reason": finish}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 2}}})
    };
    let call =
        json!({"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}});
    let expecting = |name: &str, response: Value, finish: &str, calls: Value| {
        json!({"name": name, "model": "llama-3.1-8b-instruct", "response": response,
               "expect": {"outcome": "completed", "finish_reason": finish, "tool_calls": calls}})
    };
    let (failures, _) = run_kit(
        "plugins/dist/openai.wasm",
        &fixtures(json!([
            expecting(
                "called",
                answer(Value::Null, json!([call]), "tool_calls"),
                "tool_calls",
                json!([call])
            ),
            expecting(
                "unstated",
                answer(json!("hi"), Value::Null, "eos"),
                "stop",
                json!([])
            ),
            expecting(
                "wrong",
                answer(json!("hi"), Value::Null, "length"),
                "stop",
                json!([call])
            ),
        ])),
    );
    assert_eq!(
        failures,
        [
            "llama-3.1-8b-instruct: wrong: finish_reason: expected \"stop\", got \"length\"\n\
             tool_calls: expected [{\"function\":{\"arguments\":\"{}\",\"name\":\"f\"},\"id\":\"call_1\",\"type\":\"function\"}], got []",
        ]
    );
}

#[test]
fn assets_off_the_allowed_hosts_and_usage_the_price_cannot_read_are_warned_about() {
    let prediction = |output: Value| {
        json!({"name": "done", "model": "flux-1.1-pro", "job": {"id": "p1"},
               "response": {"status": 200, "body": {"id": "p1", "status": "succeeded", "output": output}},
               "expect": {"outcome": "completed"}})
    };
    let (failures, warnings) = run_kit(
        "plugins/dist/replicate.wasm",
        &fixtures(json!([
            prediction(json!([
                "https://replicate.delivery/a.png",
                "https://api.replicate.com/b.png"
            ])),
            prediction(json!([
                "https://cdn.example.com/c.png",
                "ftp://replicate.delivery/d.png"
            ])),
        ])),
    );
    assert_eq!(failures, Vec::<String>::new());
    assert_eq!(
        warnings,
        [
            "flux-1.1-pro: done: the output asset https://cdn.example.com/c.png is on cdn.example.com, which is not among the manifest's allowed-hosts: the host will refuse to fetch it",
            "flux-1.1-pro: done: the output asset \"ftp://replicate.delivery/d.png\" is not an http(s) URL: the host will refuse to fetch it",
        ]
    );

    let chat = |usage: Value| {
        json!({"name": "chat", "model": "llama-3.1-8b-instruct",
               "response": {"status": 200, "body": {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage}},
               "expect": {"outcome": "completed", "text": "hi"}})
    };
    let (failures, warnings) = run_kit(
        "plugins/dist/openai.wasm",
        &fixtures(json!([
            chat(json!({"prompt_tokens": 0, "completion_tokens": 2})),
            chat(json!(null)),
        ])),
    );
    assert_eq!(failures, Vec::<String>::new());
    assert_eq!(
        warnings,
        [
            "llama-3.1-8b-instruct: chat: the completion's usage counts none of the units llama-3.1-8b-instruct is priced by (per-million-input-tokens, per-million-output-tokens): the host will charge the estimate instead"
        ]
    );
}

#[test]
fn a_description_naming_the_provider_or_its_hosts_is_warned_about() {
    let model = |slug: &str, description: &str| types::Model {
        slug: slug.into(),
        provider_model: String::new(),
        modality: types::Modality::Image,
        description: description.into(),
        input_schema: String::new(),
        example_input: String::new(),
        price: types::Price {
            per_image: 1,
            ..Default::default()
        },
        accepts_prefill: false,
        input: String::new(),
    };
    let manifest = types::Manifest {
        name: "fal".into(),
        default_base_url: "https://queue.fal.run".into(),
        allowed_hosts: vec!["v3.fal.media".into(), "cdn.example:8443".into()],
        models: vec![
            model(
                "neutral",
                "Fast text-to-image; falls back to a default size.",
            ),
            model("named", "Served by FAL."),
            model("base", "See queue.FAL.run for details."),
            model("asset", "Images land on v3.fal.media."),
            model("port", "Mirrored at cdn.example:8443."),
        ],
        ..super::super::runtime::empty_manifest()
    };
    assert_eq!(
        description_warnings(&manifest),
        [
            "named: the description names \"fal\"; catalogue descriptions must not name a provider or its hosts",
            "base: the description names \"queue.fal.run\"; catalogue descriptions must not name a provider or its hosts",
            "asset: the description names \"v3.fal.media\"; catalogue descriptions must not name a provider or its hosts",
            "port: the description names \"cdn.example:8443\"; catalogue descriptions must not name a provider or its hosts",
        ]
    );
}

#[test]
fn a_large_component_is_reported_with_a_hint_about_the_release_profile() {
    assert_eq!(describe_size(152_801), "149 KB (152801 bytes)");
    assert_eq!(size_warning(152_801), None);
    let large = 2_700_000;
    assert_eq!(describe_size(large), "2.6 MB (2700000 bytes)");
    let warning = size_warning(large).expect("a 2.6 MB component is warned about");
    assert!(warning.contains("2.6 MB"), "{warning}");
    assert!(warning.contains("[profile.release]"), "{warning}");
}
