//! `/v1/files` (execution scope suffices) and the platform-served signed URLs
//! (`/files/upload/{id}`, `/files/download/{id}`, `/files/grant/{id}`), which carry
//! their own authorization.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

use super::fields::Fields;
use super::{JsonObject, ListQuery, Page, list_body, require};
use crate::App;
use crate::auth::{Caller, Scope};
use crate::error::{ApiError, DetailCode};
use crate::files::signing::{self, GrantQuery, Signature};
use crate::files::storage::ByteStream;
use crate::files::{FileRecord, Origin};

/// `POST /v1/files/upload {purpose, ttl_days?}` → `{file_id, upload_url, expires_at}`.
/// `filename`, `content_type` and `size_bytes` from older clients are accepted and
/// ignored: what a file is gets measured, never taken on trust. The one use of a
/// declared `size_bytes` is to refuse at once (`413`) an upload that could not fit.
pub async fn create_upload(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    caller: Caller,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    fields.finish()?;
    let purpose = purpose.unwrap_or_default().to_string();
    let declared_size = body.get("size_bytes").and_then(Value::as_u64);
    let origin = Origin::caller(&caller, Some(address));
    let ticket = app
        .files
        .create_upload(&caller, purpose, ttl_days, declared_size, origin)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "file_id": ticket.record.file_id,
            "upload_url": ticket.upload_url,
            "expires_at": ticket.expires_at,
        })),
    ))
}

/// `PUT {upload_url}` with the raw bytes.
pub async fn receive_upload(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    signature: Result<Query<Signature>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(record.view()))
}

/// `POST /v1/files/confirm {file_id}` → the file object.
pub async fn confirm(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    caller: Caller,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Execution)?;
    let mut fields = Fields::new(&body, &["file_id"]);
    let file_id = fields.required_string("file_id");
    fields.finish()?;
    let file_id = file_id.unwrap_or_default();
    let origin = Origin::caller(&caller, Some(address));
    Ok(Json(
        app.files.confirm(&caller, file_id, origin).await?.view(),
    ))
}

pub async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Execution)?;
    Ok(Json(app.files.get(&caller, &id)?.view()))
}

/// `GET /v1/files?limit&starting_after`, newest first.
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    ListQuery(query): ListQuery,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Execution)?;
    let page = Page::from_query(&query, &[])?;
    let (records, has_more) =
        app.files
            .list(&caller, page.limit, page.starting_after.as_deref())?;
    Ok(list_body(
        records.iter().map(FileRecord::view).collect(),
        has_more,
    ))
}

/// The bytes, streamed from storage.
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

/// `GET /v1/files/{id}/url` → `{url, expires_at, content_type, size_bytes}`.
pub async fn url(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Execution)?;
    let origin = Origin::caller(&caller, Some(address));
    let (record, url, expires_at) = app.files.download_url(&caller, &id, origin).await?;
    Ok(Json(json!({
        "url": url,
        "expires_at": expires_at,
        "content_type": record.content_type,
        "size_bytes": record.size_bytes,
    })))
}

/// `DELETE /v1/files/{id}` → `{file_id, deleted: true}`.
pub async fn delete(
    State(app): State<Arc<App>>,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&caller, Scope::Execution)?;
    let origin = Origin::caller(&caller, Some(address));
    let record = app.files.delete(&caller, &id, origin).await?;
    Ok(Json(
        json!({"file_id": record.file_id, "object": "file", "deleted": true}),
    ))
}

/// `GET` of a signed download URL.
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

/// A provider's `GET` of a grant minted for one attempt: the signature and expiry
/// are checked before the execution is even loaded.
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
