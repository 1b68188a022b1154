//! The metrics' HTTP side: the scrape endpoint, the operator-only address, and the
//! middleware that counts every request by its route template.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

use super::{CONTENT_TYPE, metrics};
use crate::App;
use crate::routing::BreakerState;

/// A request's method as a label: a client may send any token as a method, so
/// one outside the standard set is `other`.
pub(super) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The breaker gauge's encoding: 0 closed, 1 half-open, 2 open.
pub(super) fn breaker_value(state: BreakerState) -> i64 {
    match state {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    }
}

/// `GET /metrics`: the gauges are read now, then everything is written out. On the
/// main address the gate has checked the operator token.
pub async fn scrape(State(app): State<Arc<App>>) -> Response {
    let metrics = metrics();
    let text = tokio::task::spawn_blocking(move || {
        metrics.collect(&app);
        metrics.encode()
    })
    .await;
    match text {
        Ok(text) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            text,
        )
            .into_response(),
        Err(_) => crate::error::ApiError::internal().into_response(),
    }
}

/// The router of the operator-only metrics address: `GET /metrics` without a token.
pub fn operator_router(app: Arc<App>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(app)
}

/// Counts every request by its route template and status, and times it to its
/// response's headers. Layered with `Router::layer`, so it runs once the route is
/// matched; a request no route matched is `unmatched`.
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    metrics().http_request(route, &method, response.status(), started.elapsed());
    response
}
