//! An execution's input: the details its schema violations give, and its canonical
//! form.
//!
//! JSON Schema calls `256.0` (or `2.56e2`) an integer, so such an input passes
//! validation; adapters and price functions read integers with `as_u64`/`as_i64`,
//! which see `256.0` as missing. The host therefore rewrites every integer-valued
//! number as an integer, once, before pricing, storing or any adapter sees it.

use serde_json::{Number, Value};

use crate::error::{Detail, DetailCode, quote};

/// How deep an input may nest. serde_json reads at most 128 levels; an input sits
/// a few levels down in its stored execution record and an adapter's request, so
/// one accepted near that limit could be stored and then never read back.
pub(super) const MAX_DEPTH: usize = 64;

/// How many arrays and objects deep `value` nests (a scalar: 0).
pub(super) fn depth(value: &Value) -> usize {
    let inner = match value {
        Value::Array(items) => items.iter().map(depth).max(),
        Value::Object(map) => map.values().map(depth).max(),
        _ => return 0,
    };
    1 + inner.unwrap_or(0)
}

/// Floats beyond this magnitude are not exact integers in an `f64`: left as written.
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53

/// `value` with every integer-valued number written as an integer.
pub fn canonical_numbers(value: Value) -> Value {
    match value {
        Value::Number(number) => Value::Number(integer_if_whole(number)),
        Value::Array(items) => Value::Array(items.into_iter().map(canonical_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (key, canonical_numbers(value)))
                .collect(),
        ),
        other => other,
    }
}

fn integer_if_whole(number: Number) -> Number {
    match number.as_f64() {
        Some(float)
            if number.is_f64() && float.fract() == 0.0 && float.abs() <= EXACT_INTEGER_LIMIT =>
        {
            if float < 0.0 {
                Number::from(float as i64)
            } else {
                Number::from(float as u64)
            }
        }
        _ => number,
    }
}

/// One `details` entry per schema violation, named by its path in the input:
/// `input.messages[2].tool_call_id` (array items by index in brackets).
pub(super) fn schema_details(error: jsonschema::ValidationError<'_>) -> Vec<Detail> {
    use jsonschema::error::ValidationErrorKind as Kind;
    use jsonschema::paths::LocationSegment;
    let mut field = String::from("input");
    for segment in error.instance_path().iter() {
        match segment {
            LocationSegment::Property(name) => {
                field.push('.');
                field.push_str(&name);
            }
            LocationSegment::Index(index) => field.push_str(&format!("[{index}]")),
        }
    }
    // A message names the offending value; a long one only by a short prefix.
    let message = match error.instance().as_ref() {
        Value::String(text) => error.masked_with(quote(text)).to_string(),
        other => {
            let text = other.to_string();
            if text.len() <= 40 {
                error.to_string()
            } else {
                error.masked_with(quote(&text)).to_string()
            }
        }
    };
    match error.kind() {
        Kind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            vec![Detail::new(
                format!("{field}.{name}"),
                DetailCode::Required,
                format!("{name} is required"),
            )]
        }
        Kind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|name| {
                Detail::new(
                    format!("{field}.{name}"),
                    DetailCode::UnknownField,
                    format!("unknown field {name}"),
                )
            })
            .collect(),
        // A property a schema rules out where it stands (`"tool_call_id": false`
        // outside a tool message).
        Kind::FalseSchema => {
            let message = format!(
                "{} is not allowed here",
                field.rsplit('.').next().unwrap_or_default()
            );
            vec![Detail::new(field, DetailCode::UnknownField, message)]
        }
        Kind::Type { .. } => vec![Detail::new(field, DetailCode::InvalidType, message)],
        Kind::Minimum { .. }
        | Kind::Maximum { .. }
        | Kind::ExclusiveMinimum { .. }
        | Kind::ExclusiveMaximum { .. }
        | Kind::MinLength { .. }
        | Kind::MaxLength { .. }
        | Kind::MinItems { .. }
        | Kind::MaxItems { .. }
        | Kind::MultipleOf { .. } => vec![Detail::new(field, DetailCode::OutOfRange, message)],
        _ => vec![Detail::new(field, DetailCode::InvalidValue, message)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `(field, code)` of every detail the canonical chat schema gives `input`.
    fn chat_details(input: Value) -> Vec<(String, String)> {
        let schema = &crate::plugins::catalogue::canonical("llama-3.1-8b-instruct")
            .unwrap()
            .input_schema;
        let validator = jsonschema::validator_for(schema).unwrap();
        validator
            .iter_errors(&input)
            .flat_map(schema_details)
            .map(|d| {
                let json = serde_json::to_value(&d).unwrap();
                (d.field, json["code"].as_str().unwrap().to_string())
            })
            .collect()
    }

    fn refused(input: Value) -> Vec<(String, String)> {
        let details = chat_details(input.clone());
        assert!(!details.is_empty(), "{input} was accepted");
        details
    }

    fn detail(field: &str, code: &str) -> (String, String) {
        (field.to_string(), code.to_string())
    }

    #[test]
    fn the_chat_input_takes_openais_chat_fields() {
        let full = json!({
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "answer in French"}]},
                {"role": "user", "content": "Weather in Paris?", "name": "ana"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
                {"role": "assistant", "content": "Il fait 18 degrés."},
                {"role": "user", "content": "Thanks"},
            ],
            "max_tokens": 64,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": ["\n\n", "END"],
            "seed": -7,
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "description": "the weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": true,
            }}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}},
        });
        assert_eq!(chat_details(full), []);
        for accepted in [
            json!({"messages": [{"role": "user", "content": "hi"}], "stop": "END", "tool_choice": "required"}),
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]}]}),
            json!({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}, "tool_choice": "none"}),
        ] {
            assert_eq!(chat_details(accepted.clone()), [], "{accepted}");
        }
    }

    #[test]
    fn per_role_rules_are_named_by_the_message_and_field() {
        let user = json!({"role": "user", "content": "hi"});
        assert_eq!(
            refused(json!({"messages": [user, user, {"role": "tool", "content": "18 C"}]})),
            [detail("input.messages[2].tool_call_id", "REQUIRED")]
        );
        assert_eq!(
            refused(
                json!({"messages": [{"role": "user", "content": "hi", "tool_call_id": "call_1"}]})
            ),
            [detail("input.messages[0].tool_call_id", "UNKNOWN_FIELD")]
        );
        assert_eq!(
            refused(json!({"messages": [{"role": "user", "content": "hi", "tool_calls": []}]})),
            [
                detail("input.messages[0].tool_calls", "OUT_OF_RANGE"),
                detail("input.messages[0].tool_calls", "UNKNOWN_FIELD"),
            ]
        );
        assert_eq!(
            refused(json!({"messages": [{"role": "assistant", "content": null}]})),
            [detail("input.messages[0].content", "INVALID_TYPE")]
        );
        assert_eq!(
            refused(json!({"messages": [{"role": "user"}]})),
            [detail("input.messages[0].content", "REQUIRED")]
        );
        assert_eq!(
            refused(json!({"messages": [{"role": "critic", "content": "hi"}]})),
            [detail("input.messages[0].role", "INVALID_VALUE")]
        );
        assert_eq!(
            refused(
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})
            ),
            [
                detail("input.messages[0].content[0].text", "REQUIRED"),
                detail("input.messages[0].content[0].type", "INVALID_VALUE"),
                detail("input.messages[0].content[0].image_url", "UNKNOWN_FIELD"),
            ]
        );
        assert_eq!(
            refused(
                json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]}]})
            ),
            [detail(
                "input.messages[0].tool_calls[0].function.arguments",
                "REQUIRED"
            )]
        );
    }

    #[test]
    fn request_options_are_checked_field_by_field() {
        let with = |options: Value| {
            let mut input = json!({"messages": [{"role": "user", "content": "hi"}]});
            input
                .as_object_mut()
                .unwrap()
                .extend(options.as_object().unwrap().clone());
            refused(input)
        };
        assert_eq!(
            with(json!({"top_p": 1.5})),
            [detail("input.top_p", "OUT_OF_RANGE")]
        );
        assert_eq!(
            with(json!({"max_tokens": 5000})),
            [detail("input.max_tokens", "OUT_OF_RANGE")]
        );
        assert_eq!(
            with(json!({"seed": 1.5})),
            [detail("input.seed", "INVALID_TYPE")]
        );
        assert_eq!(
            with(json!({"stop": ["a", "b", "c", "d", "e"]})),
            [detail("input.stop", "OUT_OF_RANGE")]
        );
        assert_eq!(
            with(json!({"stop": 3})),
            [detail("input.stop", "INVALID_TYPE")]
        );
        assert_eq!(
            with(json!({"tools": [{"type": "function", "function": {"name": "get weather"}}]})),
            [detail("input.tools[0].function.name", "INVALID_VALUE")]
        );
        assert_eq!(
            with(
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]})
            ),
            [detail("input.tools[0].function.parameters", "INVALID_TYPE")]
        );
        let many: Vec<Value> = (0..129)
            .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
            .collect();
        assert_eq!(
            with(json!({"tools": many})),
            [detail("input.tools", "OUT_OF_RANGE")]
        );
        assert_eq!(
            with(json!({"tool_choice": "any"})),
            [detail("input.tool_choice", "INVALID_VALUE")]
        );
        assert_eq!(
            with(json!({"tool_choice": {"type": "function"}})),
            [detail("input.tool_choice.function", "REQUIRED")]
        );
        assert_eq!(
            with(json!({"response_format": {"type": "json_schema"}})),
            [detail("input.response_format.json_schema", "REQUIRED")]
        );
        assert_eq!(
            with(json!({"response_format": {"type": "json_object", "json_schema": {"name": "x"}}})),
            [detail("input.response_format.json_schema", "UNKNOWN_FIELD")]
        );
        assert_eq!(
            with(json!({"response_format": {"type": "xml"}})),
            [detail("input.response_format.type", "INVALID_VALUE")]
        );
        assert_eq!(
            with(json!({"frequency_penalty": 1})),
            [detail("input.frequency_penalty", "UNKNOWN_FIELD")]
        );
    }

    #[test]
    fn depth_counts_arrays_and_objects() {
        assert_eq!(depth(&json!("text")), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": []}], "c": 2})), 4);
    }

    /// Regression: `"width": 256.0` passed validation, then the estimate and every
    /// adapter read the width as missing and generated and charged 1024×1024.
    #[test]
    fn integer_valued_floats_become_integers_everywhere_in_the_input() {
        let input: Value = serde_json::from_str(
            r#"{"width": 256.0, "duration": 1e1, "list": [2.0, -3.0, {"n": 0.0}], "x": -0.0}"#,
        )
        .unwrap();
        let canonical = canonical_numbers(input);
        assert_eq!(
            canonical,
            json!({"width": 256, "duration": 10, "list": [2, -3, {"n": 0}], "x": 0})
        );
        assert_eq!(canonical["width"].as_u64(), Some(256));
        assert_eq!(canonical["list"][1].as_i64(), Some(-3));
    }

    #[test]
    fn fractions_huge_floats_strings_and_integers_are_left_alone() {
        let input: Value =
            serde_json::from_str(r#"{"g": 3.5, "huge": 1e300, "s": "256.0", "i": 7, "b": true}"#)
                .unwrap();
        let canonical = canonical_numbers(input.clone());
        assert_eq!(canonical, input);
        assert!(canonical["huge"].is_f64());
        assert!(canonical["g"].is_f64());
    }
}
