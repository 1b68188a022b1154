//! What an adapter sent or answered, against what a fixture expects: one line per
//! mismatch.

use serde_json::Value;

use super::{Expect, ExpectRequest};
use crate::plugins::types;

fn method_name(method: types::Method) -> &'static str {
    match method {
        types::Method::Get => "GET",
        types::Method::Post => "POST",
        types::Method::Put => "PUT",
        types::Method::Patch => "PATCH",
        types::Method::Delete => "DELETE",
    }
}

/// How `request` differs from `expected`, one line per difference.
pub(super) fn request_mismatches(
    expected: &ExpectRequest,
    request: &types::HttpRequest,
) -> Vec<String> {
    let mut mismatches = Vec::new();
    let method = method_name(request.method);
    if let Some(want) = &expected.method
        && !want.eq_ignore_ascii_case(method)
    {
        mismatches.push(format!(
            "request method: expected {}, sent {method}",
            want.to_ascii_uppercase()
        ));
    }
    if let Some(want) = &expected.url
        && *want != request.url
    {
        mismatches.push(format!(
            "request url: expected {want:?}, sent {:?}",
            request.url
        ));
    }
    for (name, want) in &expected.headers {
        let sent: Vec<&str> = request
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        if !sent.contains(&want.as_str()) {
            let sent = match sent.as_slice() {
                [] => "none".to_string(),
                values => values
                    .iter()
                    .map(|v| format!("{v:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            mismatches.push(format!(
                "request header {name}: expected {want:?}, sent {sent}"
            ));
        }
    }
    if let Some(want) = &expected.body {
        match request.body.as_deref() {
            None => mismatches.push(format!("request body: expected {want}, sent none")),
            Some(bytes) => match serde_json::from_slice::<Value>(bytes) {
                Ok(sent) => mismatches.extend(body_mismatches(want, &sent)),
                Err(_) => {
                    let text = String::from_utf8_lossy(bytes);
                    if want.as_str() != Some(&*text) {
                        mismatches.push(format!(
                            "request body: expected {want}, sent {:?} (not JSON)",
                            truncate(&text, 200)
                        ));
                    }
                }
            },
        }
    }
    mismatches
}

fn truncate(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// How a JSON body differs from the expected one, one line per difference, each
/// naming its place as a JSON pointer. The rule: an expected object is a subset
/// (every key it names must match, others may be sent; `null` means the key is
/// absent or null); an array must have the same length, element by element; any
/// other value must be equal (numbers by value, so `1` matches `1.0`).
pub fn body_mismatches(expected: &Value, sent: &Value) -> Vec<String> {
    let mut mismatches = Vec::new();
    compare_json(expected, Some(sent), "", &mut mismatches);
    mismatches
}

fn compare_json(expected: &Value, sent: Option<&Value>, at: &str, out: &mut Vec<String>) {
    let place = if at.is_empty() { "/" } else { at };
    let describe = |value: Option<&Value>| match value {
        None => "nothing".to_string(),
        Some(value) => truncate(&value.to_string(), 200),
    };
    match (expected, sent) {
        (Value::Null, None | Some(Value::Null)) => {}
        (Value::Object(want), Some(Value::Object(got))) => {
            for (key, value) in want {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                compare_json(value, got.get(key), &format!("{at}/{escaped}"), out);
            }
        }
        (Value::Array(want), Some(Value::Array(got))) => {
            if want.len() != got.len() {
                out.push(format!(
                    "request body at {place}: expected {} items, sent {}: {}",
                    want.len(),
                    got.len(),
                    describe(sent)
                ));
                return;
            }
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                compare_json(w, Some(g), &format!("{at}/{i}"), out);
            }
        }
        (Value::Number(want), Some(Value::Number(got)))
            if want == got || want.as_f64() == got.as_f64() => {}
        (want, Some(got)) if want == got => {}
        (want, got) => out.push(format!(
            "request body at {place}: expected {}, sent {}",
            describe(Some(want)),
            describe(got)
        )),
    }
}

/// How `outcome` differs from `expect`, one line per difference.
pub(super) fn outcome_mismatches(outcome: &types::Outcome, expect: &Expect) -> Vec<String> {
    let mut mismatches = Vec::new();
    match (outcome, expect.outcome.as_str()) {
        (types::Outcome::Completed(completion), "completed") => {
            if let Some(text) = &expect.text
                && completion.text.as_deref() != Some(text.as_str())
            {
                mismatches.push(format!(
                    "text: expected {text:?}, got {:?}",
                    completion.text
                ));
            }
            if let Some(assets) = expect.assets
                && completion.assets.len() != assets
            {
                mismatches.push(format!(
                    "assets: expected {assets}, got {}",
                    completion.assets.len()
                ));
            }
            let finish_reason = completion.finish_reason();
            if let Some(expected) = expect.finish_reason
                && finish_reason != expected
            {
                mismatches.push(format!(
                    "finish_reason: expected {}, got {}",
                    serde_json::json!(expected),
                    serde_json::json!(finish_reason)
                ));
            }
            let calls: Vec<Value> = completion
                .tool_calls
                .iter()
                .map(types::ToolCall::canonical)
                .collect();
            if let Some(expected) = &expect.tool_calls
                && &calls != expected
            {
                mismatches.push(format!(
                    "tool_calls: expected {}, got {}",
                    truncate(&Value::from(expected.clone()).to_string(), 300),
                    truncate(&Value::from(calls).to_string(), 300)
                ));
            }
        }
        (types::Outcome::Pending(_), "pending") => {}
        (types::Outcome::Failed(failure), "failed") => {
            let code = serde_json::to_value(failure.code).unwrap_or_default();
            if let Some(expected) = &expect.code
                && code.as_str() != Some(expected.as_str())
            {
                mismatches.push(format!("code: expected {expected}, got {code}"));
            }
            if let Some(retryable) = expect.retryable
                && failure.retryable != retryable
            {
                mismatches.push(format!(
                    "retryable: expected {retryable}, got {} ({code})",
                    failure.retryable
                ));
            }
            if let Some(retry_after_ms) = expect.retry_after_ms
                && failure.retry_after_ms != Some(retry_after_ms)
            {
                let got = failure
                    .retry_after_ms
                    .map_or("none".to_string(), |ms| ms.to_string());
                mismatches.push(format!(
                    "retry-after-ms: expected {retry_after_ms}, got {got}"
                ));
            }
        }
        (other, expected) => mismatches.push(format!(
            "outcome: expected {expected}, got {}",
            describe(other)
        )),
    }
    mismatches
}

fn describe(outcome: &types::Outcome) -> String {
    match outcome {
        types::Outcome::Completed(_) => "completed".into(),
        types::Outcome::Pending(_) => "pending".into(),
        types::Outcome::Failed(f) => format!("failed ({:?}: {})", f.code, f.message),
    }
}
