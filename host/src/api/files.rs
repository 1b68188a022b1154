//! `/v1/files` (execution scope suffices) and the platform-served signed URLs
//! (`/files/upload/{id}`, `/files/download/{id}`, `/files/grant/{id}`), which carry
//! their own authorization.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use utoipa::ToSchema;

use super::fields::Fields;
use super::lists::List;
use super::openapi::Errors;
use super::openapi::requests::{ConfirmUpload, CreateUpload, ListParams};
use super::{JsonObject, ListQuery, Page, list_body, require};
use crate::App;
use crate::auth::{Caller, Scope};
use crate::error::{ApiError, DetailCode};
use crate::files::signing::{self, GrantQuery, Signature};
use crate::files::storage::ByteStream;
use crate::files::{FileRecord, FileView, Origin};

/// Where to `PUT` a new upload's bytes.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = UploadTicket)]
pub struct UploadTicketView {
    pub file_id: String,
    /// a one-hour signed URL served by the platform
    pub upload_url: String,
    pub expires_at: DateTime<Utc>,
}

/// A signed download URL.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileUrl {
    pub url: String,
    pub expires_at: DateTime<Utc>,
    pub content_type: String,
    pub size_bytes: u64,
}

/// The answer to a delete.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedFile {
    pub file_id: String,
    /// always `file`
    pub object: &'static str,
    pub deleted: bool,
}

/// Start an upload
///
/// Answers a one-hour signed `upload_url` to `PUT` the bytes to, then
/// `POST /v1/files/confirm`. `filename`, `content_type` and `size_bytes` from older clients are accepted and
/// ignored: what a file is gets measured, never taken on trust. The one use of a
/// declared `size_bytes` is to refuse at once (`413`) an upload that could not fit.
#[utoipa::path(
    post, operation_id = "createUpload", path = "/files/upload", tag = "files", request_body = CreateUpload,
    responses((status = 201, body = UploadTicketView), Errors)
)]
pub async fn create_upload(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    caller: Caller,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<UploadTicketView>), ApiError> {
    require(&caller, Scope::Execution)?;
    // Older clients send `filename`, `content_type` and `size_bytes`: accepted,
    // never trusted (only a size over what fits is refused early).
    let mut fields = Fields::new(
        &body,
        &[
            "purpose",
            "ttl_days",
            "filename",
            "content_type",
            "size_bytes",
        ],
    );
    if fields.present("purpose").is_none() {
        fields.refuse(
            "purpose",
            DetailCode::Required,
            "purpose is required: \"INPUT\" or \"UPLOAD\"",
        );
    }
    let purpose = fields.choice("purpose", &["INPUT", "UPLOAD"]);
    let ttl_days = fields.integer("ttl_days", 1..=365).map(|days| days as u32);
    // Ignored, but still of the documented types: `{}` is not a size.
    fields.string("filename");
    fields.string("content_type");
    let declared_size = fields.integer("size_bytes", 0..=i64::MAX as u64);
    fields.finish()?;
    let purpose = purpose.unwrap_or_default().to_string();
    let origin = Origin::caller(&caller, Some(address));
    let ticket = app
        .files
        .create_upload(&caller, purpose, ttl_days, declared_size, origin)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(UploadTicketView {
            file_id: ticket.record.file_id,
            upload_url: ticket.upload_url,
            expires_at: ticket.expires_at,
        }),
    ))
}

/// Upload a file's bytes
///
/// `PUT` of the raw bytes (at most 150 MB) to the signed `upload_url`; the signature is the credential.
#[utoipa::path(
    put, operation_id = "uploadFileBytes", path = "/upload/{id}", tag = "files",
    params(("id" = String, Path, description = "`file_…`"), Signature),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = FileView), Errors)
)]
pub async fn receive_upload(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    signature: Result<Query<Signature>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let signature = signed_query(signature)?;
    let record = app
        .files
        .receive_upload(
            &id,
            &signature,
            declared,
            body.into_data_stream(),
            Some(address.ip().to_string()),
        )
        .await?;
    Ok(Json(record.view()).into_response())
}

/// Confirm an upload
///
/// The file is `READY` for executions from then on.
#[utoipa::path(
    post, operation_id = "confirmUpload", path = "/files/confirm", tag = "files", request_body = ConfirmUpload,
    responses((status = 200, body = FileView), Errors)
)]
pub async fn confirm(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    caller: Caller,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Execution)?;
    let mut fields = Fields::new(&body, &["file_id"]);
    let file_id = fields.required_string("file_id");
    fields.finish()?;
    let file_id = file_id.unwrap_or_default();
    let origin = Origin::caller(&caller, Some(address));
    let record = app.files.confirm(&caller, file_id, origin).await?;
    Ok(Json(record.view()).into_response())
}

/// Get a file
#[utoipa::path(
    get, operation_id = "getFile", path = "/files/{id}", tag = "files", params(("id" = String, Path, description = "`file_…`")),
    responses((status = 200, body = FileView), Errors)
)]
pub async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Execution)?;
    Ok(Json(app.files.get(&caller, &id)?.view()).into_response())
}

/// List files, newest first
#[utoipa::path(
    get, operation_id = "listFiles", path = "/files", tag = "files", params(ListParams),
    responses((status = 200, body = List<FileView>), Errors)
)]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    ListQuery(query): ListQuery,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Execution)?;
    let page = Page::from_query(&query, &[])?;
    let (records, has_more) =
        app.files
            .list(&caller, page.limit, page.starting_after.as_deref())?;
    Ok(list_body(records.iter().map(FileRecord::view).collect(), has_more).into_response())
}

/// Download a file's bytes
#[utoipa::path(
    get, operation_id = "downloadFile", path = "/files/{id}/download", tag = "files", params(("id" = String, Path, description = "`file_…`")),
    responses((status = 200, description = "The bytes, of the file's `content_type`", content_type = "*/*", body = Vec<u8>), Errors)
)]
pub async fn download(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Execution)?;
    let origin = Origin::caller(&caller, Some(address));
    let (record, stream) = app.files.download(&caller, &id, origin).await?;
    Ok(bytes_response(&record, stream))
}

/// Get a signed download URL
///
/// Valid one hour; anyone holding it can download the file.
#[utoipa::path(
    get, operation_id = "getFileUrl", path = "/files/{id}/url", tag = "files", params(("id" = String, Path, description = "`file_…`")),
    responses((status = 200, body = FileUrl), Errors)
)]
pub async fn url(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Execution)?;
    let origin = Origin::caller(&caller, Some(address));
    let (record, url, expires_at) = app.files.download_url(&caller, &id, origin).await?;
    Ok(Json(FileUrl {
        url,
        expires_at,
        content_type: record.content_type,
        size_bytes: record.size_bytes,
    })
    .into_response())
}

/// Delete a file
#[utoipa::path(
    delete, operation_id = "deleteFile", path = "/files/{id}", tag = "files", params(("id" = String, Path, description = "`file_…`")),
    responses((status = 200, body = DeletedFile), Errors)
)]
pub async fn delete(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Execution)?;
    let origin = Origin::caller(&caller, Some(address));
    let record = app.files.delete(&caller, &id, origin).await?;
    Ok(Json(DeletedFile {
        file_id: record.file_id,
        object: "file",
        deleted: true,
    })
    .into_response())
}

/// Download through a signed URL
///
/// The signature is the credential.
#[utoipa::path(
    get, operation_id = "downloadSignedFile", path = "/download/{id}", tag = "files",
    params(("id" = String, Path, description = "`file_…`"), Signature),
    responses((status = 200, description = "The bytes, of the file's `content_type`", content_type = "*/*", body = Vec<u8>), Errors)
)]
pub async fn signed_download(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    signature: Result<Query<Signature>, QueryRejection>,
) -> Result<Response, ApiError> {
    let signature = signed_query(signature)?;
    let (record, stream) = app
        .files
        .signed_download(&id, &signature, Some(address.ip().to_string()))
        .await?;
    Ok(bytes_response(&record, stream))
}

/// Fetch an input file through a grant
///
/// A provider's `GET` of a grant minted for one attempt: the signature and expiry
/// are checked before the execution is even loaded.
#[utoipa::path(
    get, operation_id = "fetchGrant", path = "/grant/{id}", tag = "providers",
    params(("id" = String, Path, description = "the grant's id"), GrantQuery),
    responses((status = 200, description = "The bytes, of the file's `content_type`", content_type = "*/*", body = Vec<u8>), Errors)
)]
pub async fn grant(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    query: Result<Query<GrantQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = signed_query(query)?;
    let grant = app.files.verify_grant(&id, &query)?;
    let running = app.executions.running_attempt(&grant.execution_id)?;
    let (record, stream) = app
        .files
        .serve_grant(grant, running, Some(address.ip().to_string()))
        .await?;
    Ok(bytes_response(&record, stream))
}

/// A signed URL whose query is not even well-formed is refused like a forged one.
fn signed_query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(query)| query)
        .map_err(|_| signing::refused())
}

/// Types a browser shows without running anything: served inline. Every other type
/// (HTML, XML, SVG, PDF, unknown bytes, …) is served as an attachment, so that an
/// upload can never run script on the service's origin.
const INERT_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/heif",
    "image/bmp",
    "video/mp4",
    "video/webm",
    "video/quicktime",
    "audio/mpeg",
    "audio/ogg",
    "audio/opus",
    "audio/aac",
    "audio/m4a",
    "audio/x-flac",
    "audio/x-wav",
];

/// A file's bytes: never sniffed by the browser (`nosniff`), never able to run
/// script (`sandbox`), and downloaded rather than shown unless its type is inert.
fn bytes_response(record: &FileRecord, stream: ByteStream) -> Response {
    let disposition = if INERT_TYPES.contains(&record.content_type.as_str()) {
        "inline"
    } else {
        "attachment"
    };
    (
        [
            (header::CONTENT_TYPE, record.content_type.clone()),
            (header::CONTENT_LENGTH, record.size_bytes.to_string()),
            (header::CACHE_CONTROL, "private, no-store".to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::CONTENT_DISPOSITION, disposition.to_string()),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; sandbox".to_string(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
