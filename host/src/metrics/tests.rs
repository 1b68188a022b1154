use super::*;

/// The value of the sample `name{labels}` in `text`, as the e2e test reads it.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
}

#[test]
fn counters_are_named_by_convention_and_labelled_by_bounded_values() {
    let metrics = Metrics::new();
    metrics.http_request(
        "/v1/executions/{id}",
        &Method::GET,
        StatusCode::OK,
        Duration::from_millis(3),
    );
    metrics.http_request(
        "/v1/executions/{id}",
        &Method::GET,
        StatusCode::OK,
        Duration::from_millis(5),
    );
    metrics.execution_finished("flux-1.1-pro", "COMPLETED");
    metrics.attempt(
        "replicate",
        "failed",
        Some("PROVIDER_ERROR"),
        Duration::from_millis(40),
    );
    metrics.adapter_call(
        "hostile",
        "0.1.0",
        CallOutcome::Trap,
        Duration::from_micros(300),
    );
    metrics.store_commit(3, Duration::from_micros(900));
    metrics.rate_limited(Refusal::Key);
    metrics.webhook_delivery(DeliveryOutcome::Failed);
    let text = metrics.encode();
    let expect = [
        (
            r#"modelroute_http_requests_total{route="/v1/executions/{id}",method="GET",status="200"}"#,
            2.0,
        ),
        (
            r#"modelroute_http_request_duration_seconds_count{route="/v1/executions/{id}"}"#,
            2.0,
        ),
        (
            r#"modelroute_executions_finished_total{model="flux-1.1-pro",status="COMPLETED"}"#,
            1.0,
        ),
        (
            r#"modelroute_attempts_total{provider="replicate",outcome="failed",code="PROVIDER_ERROR"}"#,
            1.0,
        ),
        (
            r#"modelroute_adapter_calls_total{plugin="hostile",version="0.1.0",outcome="trap"}"#,
            1.0,
        ),
        ("modelroute_store_commit_batch_size_sum", 3.0),
        ("modelroute_store_commit_duration_seconds_count", 1.0),
        (r#"modelroute_rate_limited_total{kind="key"}"#, 1.0),
        (
            r#"modelroute_webhook_deliveries_total{outcome="failed"}"#,
            1.0,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
}

/// A family is written out once it has a sample: one in each.
fn with_a_sample_in_each(metrics: &Metrics) {
    metrics.http_request("/healthz", &Method::GET, StatusCode::OK, Duration::ZERO);
    metrics.execution_finished("m", "COMPLETED");
    metrics.attempt("p", "completed", None, Duration::ZERO);
    metrics.adapter_call("a", "1", CallOutcome::Ok, Duration::ZERO);
    metrics.webhook_delivery(DeliveryOutcome::Delivered);
    metrics.store_commit(1, Duration::ZERO);
    metrics.rate_limited(Refusal::Address);
    let provider = ProviderLabels {
        provider: "p".into(),
    };
    metrics.breaker_state.get_or_create(&provider).set(0);
    metrics.bulkhead_in_use.get_or_create(&provider).set(0);
    metrics
        .webhook_outbox
        .get_or_create(&StateLabels { state: "due" })
        .set(0);
}

#[test]
fn every_listed_series_is_exported_and_every_exported_one_is_listed() {
    let metrics = Metrics::new();
    with_a_sample_in_each(&metrics);
    let text = metrics.encode();
    let mut exported: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .collect();
    exported.sort();
    // The text format names a counter's family without `_total`.
    let mut listed: Vec<&str> = SERIES
        .iter()
        .map(|name| name.strip_suffix("_total").unwrap_or(name))
        .collect();
    listed.sort();
    assert_eq!(exported, listed);
}

#[test]
fn a_method_outside_the_standard_set_is_other() {
    let custom = Method::from_bytes(b"PROPFIND-1").unwrap();
    assert_eq!(method_label(&custom), "other");
    assert_eq!(method_label(&Method::PATCH), "PATCH");
}
