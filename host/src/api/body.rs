//! Reading a request body: a JSON object, sent as JSON, naming each key once,
//! within the route's size limit.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde_json::Value;

use super::MAX_JSON_BODY;
use crate::error::{ApiError, Code, Detail, DetailCode, quote};

/// A JSON object body sent as `application/json`; every failure to read one is an
/// error in the envelope. An object that names a key twice is refused: which of the
/// two a parser keeps is not something a client should have to guess.
pub struct JsonObject(pub serde_json::Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .is_some_and(|essence| {
                essence == "application/json"
                    || (essence.starts_with("application/") && essence.ends_with("+json"))
            });
        if !json {
            return Err(ApiError::invalid(
                "Content-Type",
                DetailCode::InvalidValue,
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| body_refused(rejection, MAX_JSON_BODY))?;
        if bytes.is_empty() {
            return Err(ApiError::invalid(
                "body",
                DetailCode::Required,
                "a JSON object body is required",
            ));
        }
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => {
                serde_json::from_slice::<UniqueKeys>(&bytes).map_err(|error| {
                    ApiError::invalid("body", DetailCode::InvalidValue, error.to_string())
                })?;
                Ok(JsonObject(map))
            }
            Ok(_) => Err(ApiError::invalid(
                "body",
                DetailCode::InvalidType,
                "the body must be a JSON object",
            )),
            Err(error) => Err(ApiError::invalid(
                "body",
                DetailCode::InvalidType,
                format!("malformed JSON: {error}"),
            )),
        }
    }
}

/// A body that could not be read, in the envelope; `limit` is the route's.
pub fn body_refused(rejection: axum::extract::rejection::BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            Code::PayloadTooLarge,
            format!("this endpoint takes bodies of at most {limit} bytes"),
        )
    } else {
        ApiError::invalid("body", DetailCode::InvalidValue, rejection.body_text())
    }
}

/// Reads a JSON document only to refuse an object that names a key twice.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<UniqueKeys>()?;
            if !keys.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "the key {} appears twice in one object",
                    quote(&key)
                )));
            }
        }
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
}

/// A `details` entry for every field of `body` not in `known`.
pub fn unknown_fields(body: &serde_json::Map<String, Value>, known: &[&str]) -> Vec<Detail> {
    body.keys()
        .filter(|field| !known.contains(&field.as_str()))
        .map(|field| {
            Detail::new(
                field,
                DetailCode::UnknownField,
                format!("unknown field {}", quote(field)),
            )
        })
        .collect()
}

/// Refuses a body with fields outside `known`.
pub fn known_fields(body: &serde_json::Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    let details = unknown_fields(body, known);
    if details.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(details))
    }
}
