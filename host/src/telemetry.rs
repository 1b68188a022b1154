//! Where the server's logs and traces go: log lines to stderr, as text or JSON, and,
//! when the operator names a collector, every span (request, execution, attempt,
//! adapter call) exported as OTLP/HTTP with JSON bodies.

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// for people
    Text,
    /// one object a line, with its spans' fields (the request id, the execution id)
    Json,
}

/// The installed logging and tracing; dropping it sends the spans not yet exported.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the process's logging (`RUST_LOG` filters it, default `info`) and,
    /// with `otlp_endpoint` (a collector's traces URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces`), the span export.
    pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Telemetry> {
        let filter = || {
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into())
        };
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let logs = match format {
            LogFormat::Text => logs.boxed(),
            LogFormat::Json => logs
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .boxed(),
        };
        let traces = otlp_endpoint.map(exporter).transpose()?;
        let spans = traces.as_ref().map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("modelroute"))
                .with_filter(filter())
        });
        tracing_subscriber::registry()
            .with(logs.with_filter(filter()))
            .with(spans)
            .init();
        Ok(Telemetry { traces })
    }
}

/// A batching exporter to `endpoint`, sending from its own thread.
fn exporter(endpoint: &str) -> Result<SdkTracerProvider> {
    let url = url::Url::parse(endpoint)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https"))
        .with_context(|| format!("--otlp-endpoint: {endpoint:?} is not an http(s) URL"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url.as_str())
        .build()
        .context("--otlp-endpoint: building the OTLP exporter")?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("modelroute")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: exporting the last spans failed: {error}");
        }
    }
}
