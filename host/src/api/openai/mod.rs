//! The OpenAI-compatible door, `/openai/v1` (SPEC §12): a thin translation layer.
//! Each call is an ordinary execution created through `Executions::create`, so
//! keys, holds, routing, failover, billing, the ledger, rate limits (the gate) and
//! idempotency apply as on `/v1`, and every call is listed by `GET /v1/executions`.
//! Handlers parse OpenAI's request, authorize, call the domain and render OpenAI's
//! answer; [`errors`] is the one mapping of the platform's errors to OpenAI's.

pub mod chat;
pub mod errors;
mod images;
mod models;
pub mod schema;
mod stream;

use axum::http::HeaderValue;
use axum::response::Response;
use std::sync::Arc;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, Code, Detail, DetailCode};
use crate::executions::{Execution, Status};

/// The door's base path.
pub const BASE: &str = "/openai/v1";

/// Longest a request waits for its execution (OpenAI's SDKs time out at 600 s).
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// How long past its `expires_at` a request waits for the expiry sweep to end it.
const EXPIRY_GRACE: Duration = Duration::from_secs(10);

/// The id the request-id middleware gave this request (`X-Request-Id`), for errors
/// a stream sends in-band after its headers went out.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Whether `path` is the door's: its errors are rendered in OpenAI's shape.
pub fn serves(path: &str) -> bool {
    path.strip_prefix(BASE)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(chat::create))
        .routes(routes!(images::create))
        .routes(routes!(models::list))
        .routes(routes!(models::get))
}

/// Refuses, as OpenAI does, every parameter of `body` outside `params`, each named.
fn refuse_unknown(
    body: &serde_json::Map<String, serde_json::Value>,
    params: &[&str],
) -> Result<(), ApiError> {
    let unknown: Vec<Detail> = body
        .keys()
        .filter(|name| !params.contains(&name.as_str()))
        .map(|name| {
            Detail::new(
                name,
                DetailCode::UnknownField,
                format!("Unrecognized request argument supplied: {name}"),
            )
        })
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(unknown))
    }
}

/// When a request stops waiting for `execution`: its own deadline (then the expiry
/// sweep ends it as `EXPIRED`, a `GENERATION_TIMEOUT`) plus a little, at most
/// [`MAX_WAIT`] from now.
fn deadline(execution: &Execution) -> tokio::time::Instant {
    let left = (execution.expires_at - crate::clock::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::Instant::now() + (left + EXPIRY_GRACE).min(MAX_WAIT)
}

/// Waits for `execution` to end and answers it if it completed; any other end is
/// the error of its code. A request still waiting at its deadline cancels the
/// execution (nothing is charged) and answers `GENERATION_TIMEOUT`. A client that
/// hangs up without an `Idempotency-Key` cancels it too: nobody can receive the
/// answer (with a key, it runs on, and a replay answers it).
async fn finished(
    app: &Arc<App>,
    caller: &Caller,
    execution: Execution,
    keyed: bool,
) -> Result<Execution, ApiError> {
    let mut hang_up = HangUp::new(app, &caller.org_id, &execution.id, !keyed);
    let wait = deadline(&execution).saturating_duration_since(tokio::time::Instant::now());
    let latest = app
        .executions
        .wait_terminal(&caller.org_id, &execution.id, wait)
        .await?
        .unwrap_or(execution);
    hang_up.disarm();
    let latest = if latest.status.is_terminal() {
        latest
    } else {
        return Err(timed_out(app, &caller.org_id, &latest.id).await);
    };
    if latest.status == Status::Completed {
        Ok(latest)
    } else {
        Err(ended_error(&latest))
    }
}

/// Cancels `id`, which ran past the door's wait, and says so.
async fn timed_out(app: &Arc<App>, org_id: &str, id: &str) -> ApiError {
    if let Err(error) = app.dispatcher.cancel(org_id, id).await {
        tracing::warn!(execution = %id, error = format!("{error:#}"), "cancelling an execution past its wait failed");
    }
    ApiError::new(
        Code::GenerationTimeout,
        "The generation did not finish in time; the execution was cancelled and is not charged.",
    )
}

/// The error a client gets for an execution that ended without completing.
fn ended_error(execution: &Execution) -> ApiError {
    match (&execution.error, execution.status) {
        (Some(error), _) => ApiError::new(error.code, error.message.clone()),
        (None, Status::Cancelled) => {
            ApiError::state_conflict("CANCELLED", "The execution was cancelled.")
        }
        (None, Status::Expired) => ApiError::new(
            Code::GenerationTimeout,
            Code::GenerationTimeout.client_message(),
        ),
        (None, _) => ApiError::new(
            Code::GenerationFailed,
            Code::GenerationFailed.client_message(),
        ),
    }
}

/// `X-ModelRoute-Execution-Id`, `X-ModelRoute-Cost` (once known) and
/// `Idempotent-Replayed` on a door's answer.
fn with_execution_headers(
    mut response: Response,
    execution: &Execution,
    replayed: bool,
) -> Response {
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&execution.id) {
        headers.insert("x-modelroute-execution-id", id);
    }
    if let Some(cost) = execution.cost
        && let Ok(cost) = HeaderValue::from_str(&cost.to_string())
    {
        headers.insert("x-modelroute-cost", cost);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Cancels an execution when dropped armed: the request that waited for it went
/// away (its client hung up) before it ended.
struct HangUp {
    app: Option<Arc<App>>,
    org_id: String,
    id: String,
}

impl HangUp {
    fn new(app: &Arc<App>, org_id: &str, id: &str, armed: bool) -> HangUp {
        HangUp {
            app: armed.then(|| app.clone()),
            org_id: org_id.to_string(),
            id: id.to_string(),
        }
    }

    fn disarm(&mut self) {
        self.app = None;
    }
}

impl Drop for HangUp {
    fn drop(&mut self) {
        let Some(app) = self.app.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (org_id, id) = (
            std::mem::take(&mut self.org_id),
            std::mem::take(&mut self.id),
        );
        runtime.spawn(async move {
            tracing::info!(execution = %id, "the client hung up before the answer: cancelling");
            if let Err(error) = app.dispatcher.cancel(&org_id, &id).await {
                tracing::warn!(execution = %id, error = format!("{error:#}"), "cancelling after a hang-up failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_door_s_paths_are_served_by_it() {
        assert!(serves("/openai/v1"));
        assert!(serves("/openai/v1/chat/completions"));
        assert!(serves("/openai/v1/nowhere"));
        assert!(!serves("/openai/v1x"));
        assert!(!serves("/v1/models"));
    }
}
