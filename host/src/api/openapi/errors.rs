//! The error envelopes (SPEC §5, and OpenAI's shape on the door, §12) as the
//! middleware renders them, and the error answers each operation documents.

use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, response::Response,
};
use utoipa::{IntoResponses, ToSchema};

use crate::error::{Code, Detail};

/// `{"error": {…}}`: every error of `/v1` and `/admin/v1`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope<'a> {
    pub error: ErrorObject<'a>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject<'a> {
    pub code: Code,
    pub message: &'a str,
    /// whether the same request may succeed later
    pub retryable: bool,
    #[schema(example = "req_7f3a9c2b1d")]
    pub request_id: &'a str,
    /// what is wrong with each field, with `INPUT_VALIDATION_ERROR`
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub details: Option<&'a [Detail]>,
    /// the object's current status, for a `409` it caused
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub status: Option<&'a str>,
}

/// `{"error": {…}}` in OpenAI's shape: every error of `/openai/v1`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorEnvelope<'a> {
    pub error: OpenAiErrorObject<'a>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorObject<'a> {
    pub message: &'a str,
    /// OpenAI's error family: `invalid_request_error`, `authentication_error`, …
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// the offending parameter, if one is
    pub param: Option<&'a str>,
    /// the platform's code
    pub code: Code,
    pub retryable: bool,
    pub request_id: &'a str,
}

/// The statuses every operation of `/v1` and `/admin/v1` may answer with an error.
const COMMON: [u16; 9] = [400, 401, 403, 404, 409, 413, 429, 500, 503];
/// What creating an execution adds: no money (402), and a `SYNC` wait that ran out
/// on the provider's side (504).
const EXECUTION: [u16; 2] = [402, 504];

/// The error answers of an operation of `/v1` or `/admin/v1`.
pub struct Errors;
/// The error answers of an operation that runs a model on `/v1`.
pub struct ExecutionErrors;
/// The error answers of the OpenAI-compatible door.
pub struct OpenAiErrors;

impl IntoResponses for Errors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        answers(COMMON.iter(), "ErrorEnvelope")
    }
}

impl IntoResponses for ExecutionErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        answers(COMMON.iter().chain(&EXECUTION), "ErrorEnvelope")
    }
}

impl IntoResponses for OpenAiErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        answers(COMMON.iter().chain(&EXECUTION), "OpenAiErrorEnvelope")
    }
}

fn answers<'a>(
    statuses: impl Iterator<Item = &'a u16>,
    schema: &str,
) -> BTreeMap<String, RefOr<Response>> {
    statuses
        .map(|status| {
            let reason = axum::http::StatusCode::from_u16(*status)
                .ok()
                .and_then(|status| status.canonical_reason())
                .unwrap_or("Error");
            let mut response = ResponseBuilder::new().description(reason);
            if *status == 429 {
                response = response.header("Retry-After", retry_after());
            }
            let response = response
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(schema)))
                        .build(),
                )
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

fn retry_after() -> utoipa::openapi::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::Integer))
        .description(Some("Seconds to wait before trying again"))
        .build()
}
