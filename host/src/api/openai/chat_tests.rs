//! Unit tests of the chat door: parsing, parameter mapping and rendering.

use super::*;

fn read(body: Value) -> Result<ChatRequest, ApiError> {
    parse(body.as_object().unwrap())
}

fn refused(body: Value) -> Vec<(String, DetailCode)> {
    read(body)
        .unwrap_err()
        .details
        .into_iter()
        .map(|d| (d.field, d.code))
        .collect()
}

#[test]
fn every_openai_parameter_maps_to_the_canonical_chat_input() {
    let tools =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let messages = json!([
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "f"},
    ]);
    let chat = read(json!({
        "model": "m", "messages": messages, "max_completion_tokens": 50,
        "temperature": 0.5, "top_p": 0.9, "stop": ["\n"], "seed": 7, "tools": tools,
        "tool_choice": "auto", "response_format": {"type": "json_object"},
        "stream": true, "stream_options": {"include_usage": true},
        "user": "u-1", "metadata": {"team": "a"}, "n": 1,
    }))
    .unwrap();
    assert_eq!(chat.create.model, "m");
    assert_eq!(chat.create.mode, Mode::Streaming);
    assert!(chat.stream && chat.include_usage);
    assert_eq!(
        chat.create.input,
        json!({
            "messages": messages, "max_tokens": 50, "temperature": 0.5, "top_p": 0.9,
            "stop": ["\n"], "seed": 7, "tools": tools, "tool_choice": "auto",
            "response_format": {"type": "json_object"},
        })
    );
    assert_eq!(chat.create.metadata, json!({"team": "a", "user": "u-1"}));
    assert_eq!(chat.renames, [("max_tokens", "max_completion_tokens")]);

    let plain =
        read(json!({"model": "m", "messages": [], "max_tokens": 5, "temperature": null})).unwrap();
    assert_eq!(plain.create.mode, Mode::Sync);
    assert_eq!(plain.create.input, json!({"messages": [], "max_tokens": 5}));
    assert!(plain.renames.is_empty());
    assert_eq!(plain.create.metadata, json!({}));
}

#[test]
fn unknown_parameters_are_refused_by_name() {
    assert_eq!(
        refused(json!({"model": "m", "messages": [], "frequency_penalty": 1})),
        [("frequency_penalty".to_string(), DetailCode::UnknownField)]
    );
    assert_eq!(
        refused(
            json!({"model": "m", "messages": [], "stream": true, "stream_options": {"include_obfuscation": false}})
        ),
        [(
            "stream_options.include_obfuscation".to_string(),
            DetailCode::UnknownField
        )]
    );
}

#[test]
fn what_the_door_cannot_serve_is_refused() {
    let cases = [
        (json!({"model": "m", "messages": [], "n": 2}), "n"),
        (json!({"messages": []}), "model"),
        (json!({"model": "m"}), "messages"),
        (json!({"model": "m", "messages": {}}), "messages"),
        (
            json!({"model": "m", "messages": [], "stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (
            json!({"model": "m", "messages": [], "max_tokens": 1, "max_completion_tokens": 2}),
            "max_completion_tokens",
        ),
        (json!({"models": ["a", ""], "messages": []}), "models"),
        (
            json!({"model": "a", "models": ["b"], "messages": []}),
            "model",
        ),
        (
            json!({"model": "m", "messages": [], "user": "a", "metadata": {"user": "b"}}),
            "user",
        ),
        (
            json!({"model": "m", "messages": [], "stream": "yes"}),
            "stream",
        ),
    ];
    for (body, param) in cases {
        let fields: Vec<String> = refused(body.clone()).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, [param], "{body}");
    }
    let many: Map<String, Value> = (0..50).map(|i| (format!("k{i}"), json!("v"))).collect();
    let fields = refused(json!({"model": "m", "messages": [], "metadata": many, "user": "u"}));
    assert_eq!(fields[0].0, "metadata");
    let one = read(json!({"models": ["a"], "messages": []})).unwrap();
    assert_eq!(one.create.model, "a");
    assert_eq!(one.create.fallback_models, Some(Vec::new()));
    let two = read(json!({"models": ["a", "b"], "messages": []})).unwrap();
    assert_eq!(
        (two.create.model.as_str(), two.create.fallback_models),
        ("a", Some(vec!["b".to_string()]))
    );
    let plain = read(json!({"model": "a", "messages": []})).unwrap();
    assert_eq!(plain.create.fallback_models, None);
}

#[test]
fn a_completed_execution_renders_as_a_chat_completion() {
    let mut execution: Execution = serde_json::from_value(json!({
        "id": "exec_1", "organization_id": "org_1", "model": "llama", "status": "COMPLETED",
        "input": {}, "metadata": {}, "mode": "SYNC", "hold_amount": "0.01",
        "estimated_cost": "0.01", "created_at": "2026-11-24T10:00:00Z",
        "expires_at": "2026-11-24T11:00:00Z", "attempts": [], "transitions": [],
        "output": {"text": "hi", "usage": {"input_tokens": 3, "output_tokens": 1}},
    }))
    .unwrap();
    let body = json!(completion(&execution));
    assert_eq!(body["id"], "exec_1");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["created"], 1_795_514_400);
    assert_eq!(body["model"], "llama");
    assert_eq!(
        body["choices"][0]["message"],
        json!({"role": "assistant", "content": "hi"})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})
    );

    let call =
        json!({"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}});
    execution.output =
        Some(json!({"text": "", "usage": {}, "finish_reason": "tool_calls", "tool_calls": [call]}));
    let body = json!(completion(&execution));
    assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(body["choices"][0]["message"]["tool_calls"], json!([call]));
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
}
