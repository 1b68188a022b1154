//! What one adapter call costs the host, as the dispatcher makes it: the hop to an
//! adapter thread, a fresh store, instantiation from the `InstancePre`, the call,
//! and the conversions across the boundary.
//! `make bench` builds the plugins first; figures go in the README.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::PathBuf;

use modelroute::plugins::PluginLimits;
use modelroute::plugins::Runtime;
use modelroute::plugins::types::{Answered, CallContext, HttpResponse};

fn plugin_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{name}.wasm"))
}

fn context() -> CallContext {
    CallContext {
        slug: "flux-1.1-pro".into(),
        provider_model: "black-forest-labs/flux-1.1-pro".into(),
        input: "text-to-image".into(),
        base_url: "http://127.0.0.1:9101".into(),
        attempt_id: "att_bench".into(),
        callback_url: None,
        files: Vec::new(),
        stream: false,
    }
}

fn adapter_calls(c: &mut Criterion) {
    let cache = tempfile::tempdir().expect("temp dir");
    let runtime =
        Runtime::new(PluginLimits::default(), cache.path().to_path_buf()).expect("runtime");
    let wasm = std::fs::read(plugin_path("replicate")).expect("run `make plugins` first");

    c.bench_function("load (compile, cold cache)", |b| {
        b.iter(|| {
            let cold = tempfile::tempdir().expect("temp dir");
            let runtime =
                Runtime::new(PluginLimits::default(), cold.path().to_path_buf()).expect("runtime");
            black_box(runtime.load(&wasm).expect("load"))
        })
    });
    runtime.load(&wasm).expect("warm the cache");
    c.bench_function("load (cached artifact)", |b| {
        b.iter(|| black_box(runtime.load(&wasm).expect("load")))
    });

    let plugin = runtime.load(&wasm).expect("load");
    let ctx = context();
    let input = r#"{"prompt":"a lighthouse at dusk","width":1024,"height":768}"#;
    let calls = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    c.bench_function("build-submit", |b| {
        b.iter(|| {
            calls
                .block_on(plugin.build_submit(&ctx, input.to_string()))
                .expect("request")
        })
    });

    let response = HttpResponse {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"id":"p1","status":"succeeded","output":"https://replicate.delivery/p1.png","error":null,"urls":{"get":"https://api.replicate.com/v1/predictions/p1","cancel":"https://api.replicate.com/v1/predictions/p1/cancel"},"metrics":{"predict_time":1.2}}"#.to_vec(),
    };
    let answered = Answered::Submit(input.to_string());
    c.bench_function("parse-response", |b| {
        b.iter(|| {
            black_box(calls.block_on(plugin.parse_response(&ctx, &answered, response.clone())))
        })
    });
}

criterion_group!(benches, adapter_calls);
criterion_main!(benches);
