//! The canonical form of an execution's input.
//!
//! JSON Schema calls `256.0` (or `2.56e2`) an integer, so such an input passes
//! validation; adapters and price functions read integers with `as_u64`/`as_i64`,
//! which see `256.0` as missing. The host therefore rewrites every integer-valued
//! number as an integer, once, before pricing, storing or any adapter sees it.

use serde_json::{Number, Value};

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
