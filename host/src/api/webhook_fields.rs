//! The fields of a webhook endpoint as clients send them: its URL (checked under
//! the operator's policy), description, events and custom headers.

use serde_json::Value;
use std::collections::BTreeMap;

use crate::App;
use crate::error::{ApiError, Code, DetailCode};
use crate::netguard::Refusal;
use crate::webhooks::{EVENT_TYPES, RESERVED_HEADERS};

/// Most custom headers an endpoint may carry.
const MAX_HEADERS: usize = 20;
/// Longest custom header name and value, in characters.
const MAX_HEADER_NAME: usize = 256;
const MAX_HEADER_VALUE: usize = 1024;
/// Longest URL a delivery may go to, in characters (also an execution's
/// `webhook_url`).
pub const MAX_URL_CHARS: usize = 2048;
/// Longest description, in characters.
const MAX_DESCRIPTION: usize = 500;

/// A URL deliveries may go to under the operator's policy (scheme, and every
/// address it resolves to), checked for `organization`. A host that does not
/// resolve within the resolver's timeout is invalid; one that found no place among
/// the lookups in flight is refused as busy ([`busy`]).
pub async fn checked_url(
    app: &App,
    organization: &str,
    field: &str,
    url: &Value,
) -> Result<String, ApiError> {
    let Some(url) = url.as_str() else {
        return Err(ApiError::invalid(
            field,
            DetailCode::InvalidType,
            format!("{field} must be a string"),
        ));
    };
    if url.chars().count() > MAX_URL_CHARS {
        return Err(ApiError::invalid(
            field,
            DetailCode::OutOfRange,
            format!("{field} may be at most {MAX_URL_CHARS} characters"),
        ));
    }
    match app.webhooks.guard().check(organization, url).await {
        Ok(parsed) => Ok(parsed.to_string()),
        Err(refusal @ (Refusal::TooManyLookups | Refusal::ResolverBusy)) => Err(busy(app, refusal)),
        Err(refusal) => Err(ApiError::invalid(
            field,
            DetailCode::InvalidValue,
            refusal.to_string(),
        )),
    }
}

/// A lookup that found no place: `429 RATE_LIMITED` when the organization has as
/// many in flight as it may, `503 SERVICE_UNAVAILABLE` when the server has; both
/// retryable after about one lookup timeout.
pub(super) fn busy(app: &App, refusal: Refusal) -> ApiError {
    let code = match refusal {
        Refusal::TooManyLookups => Code::RateLimited,
        _ => Code::ServiceUnavailable,
    };
    let retry_after = app
        .webhooks
        .guard()
        .dns_timeout()
        .as_millis()
        .div_ceil(1000)
        .max(1);
    ApiError::new(code, format!("{refusal}; try again shortly"))
        .with_header("retry-after", retry_after.to_string())
}

pub(super) fn description(value: Option<&Value>) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.chars().count() <= MAX_DESCRIPTION => {
            Ok(Some(text.clone()))
        }
        Some(Value::String(_)) => Err(ApiError::invalid(
            "description",
            DetailCode::OutOfRange,
            format!("description may be at most {MAX_DESCRIPTION} characters"),
        )),
        Some(_) => Err(ApiError::invalid(
            "description",
            DetailCode::InvalidType,
            "description must be a string",
        )),
    }
}

pub(super) fn events(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::invalid(
                "events",
                DetailCode::InvalidType,
                "events must be an array of event types",
            ));
        }
    };
    let mut events = Vec::new();
    for item in items {
        match item.as_str() {
            Some(event) if EVENT_TYPES.contains(&event) => {
                if !events.iter().any(|e| e == event) {
                    events.push(event.to_string());
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    "events",
                    DetailCode::InvalidValue,
                    format!(
                        "unknown event type {item}; one of {}",
                        EVENT_TYPES.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(events)
}

pub(super) fn headers(value: Option<&Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::invalid(
                "headers",
                DetailCode::InvalidType,
                "headers must be an object of header names to string values",
            ));
        }
    };
    if map.len() > MAX_HEADERS {
        return Err(ApiError::invalid(
            "headers",
            DetailCode::OutOfRange,
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let mut headers = BTreeMap::new();
    for (name, value) in map {
        if name.chars().count() > MAX_HEADER_NAME {
            return Err(ApiError::invalid(
                "headers",
                DetailCode::OutOfRange,
                format!("header names may be at most {MAX_HEADER_NAME} characters"),
            ));
        }
        let field = format!("headers.{name}");
        let lower = name.to_ascii_lowercase();
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || RESERVED_HEADERS.contains(&lower.as_str())
        {
            return Err(ApiError::invalid(
                &field,
                DetailCode::InvalidValue,
                format!("{name:?} is not a header an endpoint may set"),
            ));
        }
        match value.as_str() {
            Some(text) if text.chars().count() > MAX_HEADER_VALUE => {
                return Err(ApiError::invalid(
                    &field,
                    DetailCode::OutOfRange,
                    format!("header values may be at most {MAX_HEADER_VALUE} characters"),
                ));
            }
            Some(text) if axum::http::HeaderValue::from_str(text).is_ok() => {
                headers.insert(name.clone(), text.to_string());
            }
            _ => {
                return Err(ApiError::invalid(
                    &field,
                    DetailCode::InvalidValue,
                    "header values must be strings of visible ASCII",
                ));
            }
        }
    }
    Ok(headers)
}
