//! `/v1/files`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::sync::Arc;

use super::require;
use crate::App;
use crate::auth::{Caller, Scope};
use crate::error::ApiError;
use crate::files::{self, FileRecord};

fn find(app: &App, caller: &Caller, id: &str) -> Result<FileRecord, ApiError> {
    require(caller, Scope::Execution)?;
    let now = crate::clock::now();
    app.store
        .read(|txn| files::get(txn, &caller.org_id, id, now))?
        .ok_or_else(ApiError::not_found)
}

pub async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(find(&app, &caller, &id)?.view()))
}

/// The bytes, streamed from storage.
pub async fn download(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = find(&app, &caller, &id)?;
    let file = tokio::fs::File::open(app.files.path(&record.file_id))
        .await
        .map_err(anyhow::Error::from)?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, record.content_type),
            (header::CONTENT_LENGTH, record.size_bytes.to_string()),
        ],
        body,
    )
        .into_response())
}
