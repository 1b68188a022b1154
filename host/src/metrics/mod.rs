//! `GET /metrics`: the operator's window, in the Prometheus text format.
//!
//! Counters and histograms are kept as they happen (atomics, by `prometheus-client`'s
//! typed families); the gauges that are cheap to read from the host's state
//! (executions in flight, money held, the webhook outbox, breakers, bulkheads) are
//! read at scrape time instead, so they can never drift.
//!
//! Labels come from bounded sets only: a route template (never a raw path), a model,
//! a provider, a plugin and its version, a status, an error code. Never an execution
//! id, a key or an organization.
//!
//! The families live in one process-wide [`Metrics`] ([`metrics()`]): the store's
//! writer thread, the adapters' call threads and the dispatcher record into it
//! without each being handed a handle. The registry that names them for a scrape is
//! built per [`Metrics`] value, not global.

use axum::http::{Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::LazyLock;
use std::time::Duration;

/// Every series name the server exports (with its type's suffixes as a scrape shows
/// them), for the dashboard's test and the README.
pub const SERIES: &[&str] = &[
    "modelroute_http_requests_total",
    "modelroute_http_request_duration_seconds",
    "modelroute_executions_finished_total",
    "modelroute_executions_in_flight",
    "modelroute_money_held_usd",
    "modelroute_attempts_total",
    "modelroute_provider_attempt_duration_seconds",
    "modelroute_provider_breaker_state",
    "modelroute_provider_bulkhead_in_use",
    "modelroute_adapter_calls_total",
    "modelroute_adapter_call_duration_seconds",
    "modelroute_webhook_deliveries_total",
    "modelroute_webhook_outbox",
    "modelroute_store_commit_duration_seconds",
    "modelroute_store_commit_batch_size",
    "modelroute_rate_limited_total",
];

/// The content type of the text format this module writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The gauges read from the host's state at a scrape (`None`: could not be read).
#[derive(Debug, Default)]
pub struct Gauges {
    pub executions_in_flight: Option<usize>,
    pub money_held_micros: Option<u64>,
    /// pending, due, in flight
    pub webhook_outbox: Option<[u64; 3]>,
    pub providers: Vec<ProviderGauges>,
}

/// A provider's gauges.
#[derive(Debug)]
pub struct ProviderGauges {
    pub name: String,
    /// 0 closed, 1 half-open, 2 open
    pub breaker: i64,
    pub bulkhead_in_use: usize,
}

/// Every series the server keeps between scrapes, and the gauges set at a scrape.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram>,
    executions_finished: Family<ExecutionLabels, Counter>,
    executions_in_flight: Gauge,
    money_held: Gauge<f64, std::sync::atomic::AtomicU64>,
    attempts: Family<AttemptLabels, Counter>,
    attempt_duration: Family<ProviderLabels, Histogram>,
    breaker_state: Family<ProviderLabels, Gauge>,
    bulkhead_in_use: Family<ProviderLabels, Gauge>,
    adapter_calls: Family<AdapterCallLabels, Counter>,
    adapter_duration: Family<PluginLabels, Histogram>,
    webhook_deliveries: Family<OutcomeLabels, Counter>,
    webhook_outbox: Family<StateLabels, Gauge>,
    store_commit: Histogram,
    store_batch: Histogram,
    rate_limited: Family<KindLabels, Counter>,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// HTTP responses: 1 ms to ~33 s.
fn http_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Attempts at a provider: 10 ms to ~11 min (an image job may take minutes).
fn attempt_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 17))
}

/// Adapter calls and store commits: 0.1 ms to ~3 s.
fn fast_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("modelroute");
        let http_requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            http_requests.clone(),
        );
        let http_duration = Family::new_with_constructor(http_buckets as fn() -> Histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time to a response's headers, by route template",
            Unit::Seconds,
            http_duration.clone(),
        );
        let executions_finished = Family::default();
        registry.register(
            "executions_finished",
            "Executions that reached a terminal status, by model and status",
            executions_finished.clone(),
        );
        let executions_in_flight = Gauge::default();
        registry.register(
            "executions_in_flight",
            "Executions not yet terminal",
            executions_in_flight.clone(),
        );
        let money_held = Gauge::default();
        registry.register(
            "money_held_usd",
            "Money held for executions not yet settled, in USD, over all organizations",
            money_held.clone(),
        );
        let attempts = Family::default();
        registry.register(
            "attempts",
            "Attempts at a provider that ended, by provider, outcome and error code",
            attempts.clone(),
        );
        let attempt_duration = Family::new_with_constructor(attempt_buckets as fn() -> Histogram);
        registry.register_with_unit(
            "provider_attempt_duration",
            "An attempt's time at its provider, from start to outcome, by provider",
            Unit::Seconds,
            attempt_duration.clone(),
        );
        let breaker_state = Family::default();
        registry.register(
            "provider_breaker_state",
            "A provider's circuit breaker: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        let bulkhead_in_use = Family::default();
        registry.register(
            "provider_bulkhead_in_use",
            "Requests in flight to a provider, of its max_concurrency",
            bulkhead_in_use.clone(),
        );
        let adapter_calls = Family::default();
        registry.register(
            "adapter_calls",
            "Calls into an adapter, by plugin, version and outcome (ok, trap, timeout)",
            adapter_calls.clone(),
        );
        let adapter_duration = Family::new_with_constructor(fast_buckets as fn() -> Histogram);
        registry.register_with_unit(
            "adapter_call_duration",
            "Time of one call into an adapter, by plugin and version",
            Unit::Seconds,
            adapter_duration.clone(),
        );
        let webhook_deliveries = Family::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery sends and their outcome (delivered, failed, given_up)",
            webhook_deliveries.clone(),
        );
        let webhook_outbox = Family::default();
        registry.register(
            "webhook_outbox",
            "The webhook outbox: pending (not yet delivered nor given up), due, in_flight",
            webhook_outbox.clone(),
        );
        let store_commit = fast_buckets();
        registry.register_with_unit(
            "store_commit_duration",
            "Time to write and commit one batch of the store's group commit",
            Unit::Seconds,
            store_commit.clone(),
        );
        let store_batch = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        registry.register(
            "store_commit_batch_size",
            "Writes committed together in one batch",
            store_batch.clone(),
        );
        let rate_limited = Family::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by kind (key, address)",
            rate_limited.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            executions_finished,
            executions_in_flight,
            money_held,
            attempts,
            attempt_duration,
            breaker_state,
            bulkhead_in_use,
            adapter_calls,
            adapter_duration,
            webhook_deliveries,
            webhook_outbox,
            store_commit,
            store_batch,
            rate_limited,
        }
    }

    pub fn http_request(&self, route: &str, method: &Method, status: StatusCode, took: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                method: method_label(method),
                status: status.as_u16(),
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// An execution of `model` reached the terminal `status`.
    pub fn execution_finished(&self, model: &str, status: &'static str) {
        self.executions_finished
            .get_or_create(&ExecutionLabels {
                model: model.to_string(),
                status,
            })
            .inc();
    }

    /// An attempt at `provider` ended with `outcome` (and its `code` when it failed)
    /// after `took`.
    pub fn attempt(
        &self,
        provider: &str,
        outcome: &'static str,
        code: Option<&'static str>,
        took: Duration,
    ) {
        self.attempts
            .get_or_create(&AttemptLabels {
                provider: provider.to_string(),
                outcome,
                code: code.unwrap_or(""),
            })
            .inc();
        self.attempt_duration
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// One call into `plugin` `version` ended with `outcome` after `took`.
    pub fn adapter_call(&self, plugin: &str, version: &str, outcome: CallOutcome, took: Duration) {
        self.adapter_calls
            .get_or_create(&AdapterCallLabels {
                plugin: plugin.to_string(),
                version: version.to_string(),
                outcome: outcome.as_str(),
            })
            .inc();
        self.adapter_duration
            .get_or_create(&PluginLabels {
                plugin: plugin.to_string(),
                version: version.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// A webhook delivery's attempt was recorded.
    pub fn webhook_delivery(&self, outcome: DeliveryOutcome) {
        self.webhook_deliveries
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The store committed `writes` writes together in `took`.
    pub fn store_commit(&self, writes: usize, took: Duration) {
        self.store_commit.observe(took.as_secs_f64());
        self.store_batch.observe(writes as f64);
    }

    pub fn rate_limited(&self, refusal: Refusal) {
        let kind = match refusal {
            Refusal::Key => "key",
            Refusal::Address => "address",
        };
        self.rate_limited.get_or_create(&KindLabels { kind }).inc();
    }

    /// Sets the gauges read from the host's state at a scrape; a part that could not
    /// be read (`None`) keeps its last value.
    pub fn set_gauges(&self, gauges: &Gauges) {
        if let Some(in_flight) = gauges.executions_in_flight {
            self.executions_in_flight.set(in_flight as i64);
        }
        if let Some(held) = gauges.money_held_micros {
            self.money_held.set(held as f64 / 1_000_000.0);
        }
        if let Some([pending, due, in_flight]) = gauges.webhook_outbox {
            for (state, value) in [("pending", pending), ("due", due), ("in_flight", in_flight)] {
                self.webhook_outbox
                    .get_or_create(&StateLabels { state })
                    .set(value as i64);
            }
        }
        for provider in &gauges.providers {
            let labels = ProviderLabels {
                provider: provider.name.clone(),
            };
            self.breaker_state
                .get_or_create(&labels)
                .set(provider.breaker);
            self.bulkhead_in_use
                .get_or_create(&labels)
                .set(provider.bulkhead_in_use as i64);
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

mod labels;
#[cfg(test)]
mod tests;

use labels::*;
pub use labels::{CallOutcome, DeliveryOutcome, Refusal};

/// A request's method as a label: a client may send any token as a method, so
/// one outside the standard set is `other`.
fn method_label(method: &Method) -> &'static str {
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
