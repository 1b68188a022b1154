//! One loaded version of one plugin: its manifest, its validation before it goes
//! live, and calls into fresh instances under the call budget.

use anyhow::{Result, anyhow, bail};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimitsBuilder};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::file_fields::{field_file_ids, file_fields};
use crate::metrics::CallOutcome;

use super::bindings::AdapterPluginPre;
use super::bindings::exports::modelroute::provider::adapter::Guest;
use super::runtime::{CallState, EPOCH_TICK, Runtime, STDERR_CAPTURE};
use super::{CallError, pool, types, wit};

/// One loaded version of one plugin.
pub struct LoadedPlugin {
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub sha256: String,
    pub manifest: types::Manifest,
    pub loaded_at: DateTime<Utc>,
    /// the component, kept to be written to the data directory when it is swapped
    pub(super) wasm: Arc<[u8]>,
    pub(super) pre: AdapterPluginPre<CallState>,
    pub(super) runtime: Arc<Runtime>,
    pub(super) calls: AtomicU64,
    pub(super) traps: AtomicU64,
}

impl LoadedPlugin {
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn traps(&self) -> u64 {
        self.traps.load(Ordering::Relaxed)
    }

    /// Checks the manifest and smoke-tests every model with its example input:
    /// each schema compiles and accepts its example, and the adapter estimates and
    /// builds a submit request for it. Run before a version becomes active.
    pub fn validate(&self) -> Result<()> {
        let manifest = &self.manifest;
        if manifest.version.trim().is_empty() {
            bail!("the manifest has no version");
        }
        if manifest.models.is_empty() {
            bail!("the manifest serves no models");
        }
        let mut declared = Vec::new();
        for preset in &manifest.declared_inputs {
            let example = super::catalogue::declared_example(preset).ok_or_else(|| {
                anyhow!(
                    "declared-inputs: unknown input preset {preset:?} (presets: {})",
                    super::catalogue::presets().join(", ")
                )
            })?;
            declared.push(example);
        }
        // Each declared preset is smoke-tested as a model the operator might declare.
        for model in manifest.models.iter().chain(&declared) {
            let slug = &model.slug;
            let schema: serde_json::Value = serde_json::from_str(&model.input_schema)
                .map_err(|e| anyhow!("model {slug}: the input schema is not JSON: {e}"))?;
            let validator = jsonschema::validator_for(&schema)
                .map_err(|e| anyhow!("model {slug}: the input schema is invalid: {e}"))?;
            let example: serde_json::Value = serde_json::from_str(&model.example_input)
                .map_err(|e| anyhow!("model {slug}: the example input is not JSON: {e}"))?;
            if let Some(error) = validator.iter_errors(&example).next() {
                bail!("model {slug}: the example input breaks the schema: {error}");
            }
            let (model_ref, input) = (wit::ModelRef::from(model), model.example_input.clone());
            self.call("estimate", |adapter, store| {
                adapter.call_estimate(store, &model_ref, &input)
            })
            .map_err(|e| anyhow!("{e}"))?
            .map_err(|f| anyhow!("model {slug}: estimating the example failed: {}", f.message))?;
            let ctx = wit::CallContext::from(&types::CallContext {
                slug: slug.clone(),
                provider_model: model.provider_model.clone(),
                input: model.input.clone(),
                base_url: manifest.default_base_url.clone(),
                attempt_id: "att_validation".into(),
                callback_url: None,
                files: example_grants(&schema, &example, manifest.capabilities.inline_files),
                stream: false,
            });
            self.call("build-submit", |adapter, store| {
                adapter.call_build_submit(store, &ctx, &model.example_input)
            })
            .map_err(|e| anyhow!("{e}"))?
            .map_err(|f| {
                anyhow!(
                    "model {slug}: building a request for the example failed: {}",
                    f.message
                )
            })?;
        }
        Ok(())
    }

    pub fn model(&self, slug: &str) -> Option<&types::Model> {
        self.manifest.models.iter().find(|m| m.slug == slug)
    }

    /// Runs `f` against a fresh instance, blocking the current thread for at most the
    /// call budget. Use [`LoadedPlugin::call_async`] from async code.
    pub fn call<R>(
        &self,
        function: &'static str,
        f: impl FnOnce(&Guest, &mut Store<CallState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let limits = &self.runtime.limits;
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let state = CallState {
            wasi: WasiCtxBuilder::new().stderr(stderr.clone()).build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size((limits.memory_limit_mb as usize) << 20)
                .instances(32)
                .trap_on_grow_failure(true)
                .build(),
        };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|state| &mut state.limits);
        let ticks = limits
            .call_timeout_ms
            .div_ceil(EPOCH_TICK.as_millis() as u64)
            .max(1);
        store.set_epoch_deadline(ticks);

        let result = self
            .pre
            .instantiate(&mut store)
            .and_then(|instance| f(instance.modelroute_provider_adapter(), &mut store));
        let output = stderr.contents();
        if !output.is_empty() {
            tracing::info!(plugin = %self.name, function, stderr = %String::from_utf8_lossy(&output), "plugin output");
        }
        // The call that reads the manifest while loading has no name to count it by.
        let counted = (!self.name.is_empty()).then(crate::metrics::metrics);
        let took = started.elapsed();
        if let (Some(metrics), Ok(_)) = (counted, &result) {
            metrics.adapter_call(&self.name, &self.version, CallOutcome::Ok, took);
        }
        result.map_err(|error| {
            self.traps.fetch_add(1, Ordering::Relaxed);
            let timed_out = error
                .downcast_ref::<wasmtime::Trap>()
                .is_some_and(|trap| *trap == wasmtime::Trap::Interrupt);
            let outcome = if timed_out {
                CallOutcome::Timeout
            } else {
                CallOutcome::Trap
            };
            if let Some(metrics) = counted {
                metrics.adapter_call(&self.name, &self.version, outcome, took);
            }
            if timed_out {
                CallError::Timeout {
                    plugin: self.name.clone(),
                    function,
                    limit_ms: limits.call_timeout_ms,
                }
            } else {
                CallError::Trap {
                    plugin: self.name.clone(),
                    function,
                    message: format!("{error:#}"),
                }
            }
        })
    }

    /// [`LoadedPlugin::call`] on the adapters' own threads, so a slow plugin never
    /// stalls the server's async workers and no other blocking work delays it.
    pub async fn call_async<R, F>(
        self: &Arc<Self>,
        function: &'static str,
        f: F,
    ) -> Result<R, CallError>
    where
        R: Send + 'static,
        F: FnOnce(&Guest, &mut Store<CallState>) -> wasmtime::Result<R> + Send + 'static,
    {
        let plugin = self.clone();
        // A child of the caller's span (the attempt, the request), on the call thread too.
        let span = tracing::info_span!("adapter_call", plugin = %self.name, version = %self.version, function);
        let on_thread = span.clone();
        let call = self
            .runtime
            .calls
            .run(move || on_thread.in_scope(|| plugin.call(function, f)));
        // The epoch deadline stops the guest; this outer bound also covers time spent
        // instantiating or waiting for a call thread.
        let limit_ms = self.runtime.limits.call_timeout_ms;
        let bounded = tokio::time::timeout(Duration::from_millis(limit_ms * 2 + 100), call);
        match tracing::Instrument::instrument(bounded, span).await {
            Ok(Ok(result)) => result,
            Ok(Err(pool::PoolError::Panicked)) => Err(CallError::Trap {
                plugin: self.name.clone(),
                function,
                message: "the host panicked while running the call".into(),
            }),
            Ok(Err(refused)) => Err(CallError::NotRun {
                plugin: self.name.clone(),
                function,
                reason: refused.to_string(),
            }),
            Err(_) => Err(CallError::Timeout {
                plugin: self.name.clone(),
                function,
                limit_ms,
            }),
        }
    }
}

/// Placeholder grants for the files an example input names in the fields `schema`
/// marks as files, as an attempt would get them (an unroutable URL; bytes when the
/// adapter asks for them inline).
pub(super) fn example_grants(
    schema: &serde_json::Value,
    example: &serde_json::Value,
    inline: bool,
) -> Vec<types::FileGrant> {
    field_file_ids(&file_fields(schema), example)
        .into_iter()
        .map(|file_id| types::FileGrant {
            url: format!("https://example.invalid/files/grant/{file_id}"),
            file_id,
            content_type: "image/png".into(),
            bytes: inline.then(|| b"\x89PNG\r\n\x1a\nexample".to_vec()),
        })
        .collect()
}
