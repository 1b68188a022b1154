//! The metrics' HTTP side: `GET /metrics` (the gauges read from the host's state,
//! then every series written out), the operator-only address, and the middleware
//! that counts every request by its route template.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

use crate::App;
use crate::metrics::{CONTENT_TYPE, Gauges, ProviderGauges, metrics};
use crate::routing::BreakerState;

/// The breaker gauge's encoding: 0 closed, 1 half-open, 2 open.
fn breaker_value(state: BreakerState) -> i64 {
    match state {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    }
}

/// Prometheus metrics
///
/// The gauges are read now, then everything is written out in Prometheus' text
/// format. On the main address the gate has checked the operator token.
#[utoipa::path(get, operation_id = "getMetrics", path = "/metrics", tag = "operations",
    responses((status = 200, description = "The OpenMetrics text format, which Prometheus reads", content_type = "application/openmetrics-text", body = String),
        crate::api::openapi::Errors))]
pub async fn scrape(State(app): State<Arc<App>>) -> Response {
    let metrics = metrics();
    let text = tokio::task::spawn_blocking(move || {
        metrics.set_gauges(&gauges(&app));
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

/// The gauges read from the host's state. A part that cannot be read (a store
/// error) is logged and left out: a scrape still answers.
fn gauges(app: &App) -> Gauges {
    let warn = |what: &str, error: anyhow::Error| {
        tracing::warn!(
            error = format!("{error:#}"),
            "metrics: reading {what} failed"
        );
    };
    let executions_in_flight = app
        .executions
        .active()
        .map(|active| active.len())
        .map_err(|e| warn("executions in flight", e))
        .ok();
    let money_held_micros = app
        .store
        .read(crate::billing::total_held)
        .map(|held| held.0)
        .map_err(|e| warn("money held", e))
        .ok();
    let webhook_outbox = app
        .webhooks
        .backlog()
        .map(|b| [b.pending, b.due as u64, b.in_flight as u64])
        .map_err(|e| warn("the webhook outbox", e))
        .ok();
    let now = crate::clock::instant();
    let providers = app
        .router
        .providers()
        .iter()
        .map(|provider| ProviderGauges {
            name: provider.name.clone(),
            breaker: breaker_value(provider.breaker_state(now)),
            bulkhead_in_use: provider.bulkhead_in_use(),
        })
        .collect();
    Gauges {
        executions_in_flight,
        money_held_micros,
        webhook_outbox,
        providers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_state_is_encoded_as_documented() {
        assert_eq!(breaker_value(BreakerState::Closed), 0);
        assert_eq!(breaker_value(BreakerState::HalfOpen), 1);
        assert_eq!(breaker_value(BreakerState::Open), 2);
    }
}
