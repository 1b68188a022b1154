//! The API's machine-readable contract (SPEC §13): `GET /openapi.json`, an OpenAPI
//! 3.1 document built from the router itself (each route is registered with the
//! `#[utoipa::path]` annotation of its handler, so a route cannot exist
//! undocumented) and from the types the answers are rendered from; and `GET /docs`,
//! Swagger UI whose assets are compiled into the binary, so the page works with no
//! request leaving the machine.

mod errors;
mod links;
pub mod requests;

pub use errors::{
    ErrorEnvelope, ErrorObject, Errors, ExecutionErrors, OpenAiErrorEnvelope, OpenAiErrorObject,
    OpenAiErrors,
};

use axum::Router;
use serde_json::Value;
use std::sync::Arc;
use utoipa::OpenApi as _;
use utoipa::openapi::schema::{AdditionalProperties, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::App;

/// The document's fixed parts; the paths come from the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "ModelRoute API",
        description = "Run AI models through one API: executions with holds, routing, \
            failover and settlement; files; signed webhooks; an OpenAI-compatible door; \
            and the operator's admin API. Money is a decimal string of US dollars; \
            times are RFC 3339 UTC; lists are `{data, has_more}` pages.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorEnvelope, OpenAiErrorEnvelope)),
    tags(
        (name = "executions", description = "Run a model: create, follow, cancel"),
        (name = "files", description = "Uploads, outputs and their signed URLs"),
        (name = "webhooks", description = "Endpoints that receive signed execution events"),
        (name = "keys", description = "API keys of the organization"),
        (name = "billing", description = "Balance and ledger"),
        (name = "models", description = "The catalogue"),
        (name = "openai", description = "The OpenAI-compatible API"),
        (name = "admin", description = "The operator's API (operator token)"),
        (name = "operations", description = "Health, readiness and metrics"),
        (name = "providers", description = "Provider callbacks (their URL is their credential)"),
    )
)]
struct Contract;

/// The security schemes, and each operation's: the gate's own rule for its path
/// (`gate::credential_of`), so the document says what the gate asks.
fn add_security(openapi: &mut OpenApi) {
    let components = openapi.components.get_or_insert_with(Default::default);
    let bearer = |description: &str| {
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some(description.to_string());
        SecurityScheme::Http(http)
    };
    components.add_security_scheme(
        "api_key",
        bearer("An API key of the organization: `Authorization: Bearer sk_…`."),
    );
    components.add_security_scheme(
        "operator_token",
        bearer("The operator token of this deployment: `Authorization: Bearer …`."),
    );
    for (path, item) in openapi.paths.paths.iter_mut() {
        let scheme = super::gate::credential_of(path);
        for operation in operations(item) {
            operation.security = Some(match scheme {
                Some(name) => vec![SecurityRequirement::new(name, Vec::<String>::new())],
                None => vec![SecurityRequirement::default()],
            });
        }
    }
}

fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// The document's fixed parts, which the router's routes are added to.
pub fn contract() -> OpenApi {
    Contract::openapi()
}

/// Completes the router's document: the security of each operation, the links
/// from a create to its object's operations, `X-Request-Id` on every answer, and
/// the rate-limit headers on every answer the gate counts (an API key's).
pub fn complete(document: &mut OpenApi) {
    add_security(document);
    links::add(document);
    refuse_unknown_fields(document);
    for (path, item) in document.paths.paths.iter_mut() {
        let counted = super::gate::credential_of(path) == Some("api_key");
        for operation in operations(item) {
            for response in operation.responses.responses.values_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                let id = header(
                    "This request's id, also inside every error",
                    of_type(Type::String).pattern(Some("^req_")),
                );
                response.headers.insert("X-Request-Id".into(), id);
                if counted {
                    for (name, description) in RATE_LIMIT_HEADERS {
                        let count = header(description, of_type(Type::Integer));
                        response.headers.insert(name.into(), count);
                    }
                }
            }
        }
    }
}

/// What every answer to an API key carries (SPEC §10).
const RATE_LIMIT_HEADERS: [(&str, &str); 3] = [
    (
        "X-RateLimit-Limit",
        "The key's burst: requests it may make at once",
    ),
    ("X-RateLimit-Remaining", "Requests it may make now"),
    (
        "X-RateLimit-Reset",
        "When its bucket is full again (unix seconds)",
    ),
];

/// Marks each JSON request body's schema `additionalProperties: false`: every
/// handler refuses a field it does not know, naming it, rather than ignore it.
fn refuse_unknown_fields(document: &mut OpenApi) {
    let mut bodies = Vec::new();
    for item in document.paths.paths.values_mut() {
        for operation in operations(item) {
            let contents = operation
                .request_body
                .iter()
                .flat_map(|body| body.content.values());
            for content in contents {
                if let Some(RefOr::Ref(reference)) = &content.schema {
                    bodies.push(reference.ref_location.clone());
                }
            }
        }
    }
    let Some(components) = document.components.as_mut() else {
        return;
    };
    for body in bodies {
        let name = body.trim_start_matches("#/components/schemas/");
        if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(name) {
            object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
        }
    }
}

/// A response header of `schema`.
fn header(description: &str, schema: utoipa::openapi::ObjectBuilder) -> utoipa::openapi::Header {
    utoipa::openapi::HeaderBuilder::new()
        .schema(schema)
        .description(Some(description))
        .build()
}

fn of_type(kind: utoipa::openapi::schema::Type) -> utoipa::openapi::ObjectBuilder {
    utoipa::openapi::ObjectBuilder::new().schema_type(kind)
}

/// The document as served: JSON, with the link objects' field names as OpenAPI
/// spells them (utoipa 5 writes `operation_id` and `request_body` in links).
pub fn served(document: &OpenApi) -> Value {
    let mut json = serde_json::to_value(document).unwrap_or_default();
    for item in members(json.get_mut("paths")) {
        for operation in members(Some(item)) {
            for response in members(operation.get_mut("responses")) {
                for link in members(response.get_mut("links")) {
                    let Some(link) = link.as_object_mut() else {
                        continue;
                    };
                    for (written, spelled) in [
                        ("operation_id", "operationId"),
                        ("operation_ref", "operationRef"),
                        ("request_body", "requestBody"),
                    ] {
                        if let Some(value) = link.remove(written) {
                            link.insert(spelled.to_string(), value);
                        }
                    }
                }
            }
        }
    }
    json
}

/// The values of a JSON object (none for anything else).
fn members(value: Option<&mut Value>) -> impl Iterator<Item = &mut Value> {
    value
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|object| object.values_mut())
}

/// `GET /openapi.json` and `GET /docs`: Swagger UI, its assets served from the
/// binary, and its online validator off (it would send the document's URL to
/// validator.swagger.io), so that the page makes no request off this host.
pub fn router(document: Value) -> Router<Arc<App>> {
    let ui = SwaggerUi::new("/docs")
        .external_url_unchecked("/openapi.json", document)
        .config(Config::default().validator_url("none"));
    Router::new().merge(ui)
}

#[cfg(test)]
mod tests {
    /// Links are spelled as OpenAPI has them, whatever utoipa writes: a client
    /// (or a fuzzer) following them finds the operation.
    #[test]
    fn links_name_their_operation_as_openapi_spells_it() {
        let document = crate::api::document();
        let link = &document["paths"]["/v1/executions"]["post"]["responses"]["202"]["links"]["getExecution"];
        assert_eq!(link["operationId"], "getExecution", "{link}");
        assert_eq!(link["parameters"]["id"], "$response.body#/id");
        let text = document.to_string();
        assert!(!text.contains("\"operation_id\"") && !text.contains("\"request_body\""));
        let confirm = &document["paths"]["/v1/files/upload"]["post"]["responses"]["201"]["links"]["confirmUpload"];
        assert_eq!(confirm["requestBody"]["file_id"], "$response.body#/file_id");
    }
}
