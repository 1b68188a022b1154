//! Reading a JSON body field by field. Every problem becomes a `details` entry and
//! reading goes on, so a client learns everything it got wrong in one answer.

use serde_json::{Map, Value};
use std::ops::RangeInclusive;

use crate::error::{ApiError, Detail, DetailCode, quote};

pub struct Fields<'a> {
    body: &'a Map<String, Value>,
    details: Vec<Detail>,
}

impl<'a> Fields<'a> {
    /// Starts reading `body`; a field outside `known` is a detail already.
    pub fn new(body: &'a Map<String, Value>, known: &[&str]) -> Self {
        Fields {
            body,
            details: super::unknown_fields(body, known),
        }
    }

    /// The value of `name`, unless it is absent or `null`.
    pub fn present(&self, name: &str) -> Option<&'a Value> {
        self.body.get(name).filter(|value| !value.is_null())
    }

    /// Records a problem with `name` found by the caller.
    pub fn refuse(&mut self, name: &str, code: DetailCode, message: impl Into<String>) {
        self.details.push(Detail::new(name, code, message));
    }

    /// An optional string.
    pub fn string(&mut self, name: &str) -> Option<&'a str> {
        match self.present(name)? {
            Value::String(text) => Some(text),
            _ => {
                self.refuse(
                    name,
                    DetailCode::InvalidType,
                    format!("{name} must be a string"),
                );
                None
            }
        }
    }

    /// A string that must be there and not be empty.
    pub fn required_string(&mut self, name: &str) -> Option<&'a str> {
        match self.present(name) {
            None => {
                self.refuse(name, DetailCode::Required, format!("{name} is required"));
                None
            }
            Some(Value::String(text)) if text.is_empty() => {
                self.refuse(name, DetailCode::Required, format!("{name} is required"));
                None
            }
            Some(_) => self.string(name),
        }
    }

    /// An optional string that must be one of `choices`.
    pub fn choice(&mut self, name: &str, choices: &[&'static str]) -> Option<&'static str> {
        let value = self.present(name)?;
        let chosen = value
            .as_str()
            .and_then(|text| choices.iter().find(|choice| **choice == text));
        if chosen.is_none() {
            let listed: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
            let shown = match value {
                Value::String(text) => quote(text),
                other => quote(&other.to_string()),
            };
            self.refuse(
                name,
                DetailCode::InvalidValue,
                format!("{name} must be {}, not {shown}", listed.join(" or ")),
            );
        }
        chosen.copied()
    }

    /// An optional whole number within `range` (`256.0` counts as whole).
    pub fn integer(&mut self, name: &str, range: RangeInclusive<u64>) -> Option<u64> {
        let value = self.present(name)?;
        let whole = value.as_u64().or_else(|| {
            value
                .as_f64()
                .filter(|float| float.fract() == 0.0 && *float >= 0.0 && *float <= u64::MAX as f64)
                .map(|float| float as u64)
        });
        match whole {
            Some(number) if range.contains(&number) => Some(number),
            _ if value.is_number() && value.as_f64().is_some_and(|f| f.fract() == 0.0) => {
                self.refuse(
                    name,
                    DetailCode::OutOfRange,
                    format!(
                        "{name} must be between {} and {}",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
            _ => {
                self.refuse(
                    name,
                    DetailCode::InvalidType,
                    format!("{name} must be an integer"),
                );
                None
            }
        }
    }

    /// An optional `true` or `false`.
    pub fn boolean(&mut self, name: &str) -> Option<bool> {
        match self.present(name)? {
            Value::Bool(flag) => Some(*flag),
            _ => {
                self.refuse(
                    name,
                    DetailCode::InvalidType,
                    format!("{name} must be a boolean"),
                );
                None
            }
        }
    }

    /// An optional JSON object.
    pub fn object(&mut self, name: &str) -> Option<&'a Map<String, Value>> {
        match self.present(name)? {
            Value::Object(map) => Some(map),
            _ => {
                self.refuse(
                    name,
                    DetailCode::InvalidType,
                    format!("{name} must be an object"),
                );
                None
            }
        }
    }

    /// An optional list of at most `max` non-empty strings (`[]` is a list too).
    pub fn strings(&mut self, name: &str, max: usize) -> Option<Vec<&'a str>> {
        let Value::Array(items) = self.present(name)? else {
            self.refuse(
                name,
                DetailCode::InvalidType,
                format!("{name} must be an array of strings"),
            );
            return None;
        };
        if items.len() > max {
            self.refuse(
                name,
                DetailCode::OutOfRange,
                format!("{name} may have at most {max} entries"),
            );
            return None;
        }
        let mut strings = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(text) if !text.is_empty() => strings.push(text),
                _ => self.refuse(
                    &format!("{name}[{i}]"),
                    DetailCode::InvalidType,
                    "must be a non-empty string",
                ),
            }
        }
        (strings.len() == items.len()).then_some(strings)
    }

    /// `Ok` when nothing was refused, else every problem in one error.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.details.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.details))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let body = body(json!({
            "mode": "LATER", "wait": 0, "name": 7, "flag": "yes", "extra": 1, "n": 2.5
        }));
        let mut fields = Fields::new(&body, &["mode", "wait", "name", "flag", "n", "id"]);
        assert_eq!(fields.choice("mode", &["ASYNC", "SYNC"]), None);
        assert_eq!(fields.integer("wait", 1..=300), None);
        assert_eq!(fields.string("name"), None);
        assert_eq!(fields.boolean("flag"), None);
        assert_eq!(fields.integer("n", 1..=10), None);
        assert_eq!(fields.required_string("id"), None);
        let error = fields.finish().unwrap_err();
        let found: Vec<(&str, DetailCode)> = error
            .details
            .iter()
            .map(|d| (d.field.as_str(), d.code))
            .collect();
        assert_eq!(
            found,
            [
                ("extra", DetailCode::UnknownField),
                ("mode", DetailCode::InvalidValue),
                ("wait", DetailCode::OutOfRange),
                ("name", DetailCode::InvalidType),
                ("flag", DetailCode::InvalidType),
                ("n", DetailCode::InvalidType),
                ("id", DetailCode::Required),
            ]
        );
    }

    #[test]
    fn good_values_absent_fields_and_nulls_read_cleanly() {
        let body = body(json!({"mode": "SYNC", "wait": 30.0, "name": "x", "gone": null}));
        let mut fields = Fields::new(&body, &["mode", "wait", "name", "gone"]);
        assert_eq!(fields.choice("mode", &["ASYNC", "SYNC"]), Some("SYNC"));
        assert_eq!(fields.integer("wait", 1..=300), Some(30));
        assert_eq!(fields.string("name"), Some("x"));
        assert_eq!(fields.string("gone"), None);
        assert_eq!(fields.boolean("absent"), None);
        assert!(fields.finish().is_ok());
    }
}
