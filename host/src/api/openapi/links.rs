//! The document's links: which answer's id the operations on that object take, so
//! clients (and stateful API fuzzers) can follow a create to its object.

use utoipa::openapi::OpenApi;
use utoipa::openapi::RefOr;
use utoipa::openapi::link::LinkBuilder;

/// An operation, the status of its answer that created an object, the field of
/// that answer holding the object's id, and the operations taking it as `id`.
const LINKS: &[(&str, &str, &str, &[&str])] = &[
    (
        "createExecution",
        "202",
        "id",
        &["getExecution", "getExecutionResult", "cancelExecution"],
    ),
    (
        "createApiKey",
        "201",
        "id",
        &["revokeApiKey", "rotateApiKey"],
    ),
    (
        "createUpload",
        "201",
        "file_id",
        &[
            "confirmUpload",
            "getFile",
            "getFileUrl",
            "downloadFile",
            "deleteFile",
        ],
    ),
    (
        "confirmUpload",
        "200",
        "file_id",
        &["getFile", "getFileUrl", "downloadFile", "deleteFile"],
    ),
    (
        "createWebhookEndpoint",
        "201",
        "id",
        &[
            "getWebhookEndpoint",
            "updateWebhookEndpoint",
            "testWebhookEndpoint",
            "deleteWebhookEndpoint",
        ],
    ),
    (
        "createOrganization",
        "201",
        "organization_id",
        &["updateOrganization", "creditOrganization"],
    ),
];

/// Adds the links of [`LINKS`] to `document`'s answers.
pub fn add(document: &mut OpenApi) {
    for item in document.paths.paths.values_mut() {
        for operation in super::operations(item) {
            let Some(id) = operation.operation_id.as_deref() else {
                continue;
            };
            for (_, status, field, targets) in LINKS.iter().filter(|link| link.0 == id) {
                let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status)
                else {
                    continue;
                };
                let value = format!("$response.body#/{field}");
                for target in *targets {
                    // The confirm takes the id in its body; the others in the path.
                    let link = if *target == "confirmUpload" {
                        LinkBuilder::new()
                            .operation_id(*target)
                            .request_body(Some(serde_json::json!({ "file_id": value })))
                    } else {
                        LinkBuilder::new()
                            .operation_id(*target)
                            .parameter("id", value.as_str())
                    };
                    response
                        .links
                        .insert((*target).to_string(), link.build().into());
                }
            }
        }
    }
}
