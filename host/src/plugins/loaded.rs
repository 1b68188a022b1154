//! One loaded version of one plugin: its manifest, its validation before it goes
//! live, and calls into fresh instances under the call budget.

use anyhow::{Result, anyhow, bail};
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Instrument;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::file_fields::{field_file_ids, file_fields};
use crate::metrics::CallOutcome;

use super::bindings::AdapterPluginPre;
use super::bindings::exports::modelroute::provider::adapter::Guest;
use super::runtime::{CallState, EPOCH_TICK, Runtime, STDERR_CAPTURE};
use super::{CallError, types, wit};

/// What a call does with a fresh instance: a future borrowing the instance's
/// exports and its store.
pub type CallFuture<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

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
            self.call("estimate", move |adapter, store| {
                Box::pin(async move { adapter.call_estimate(store, &model_ref, &input).await })
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
            let example = model.example_input.clone();
            self.call("build-submit", move |adapter, store| {
                Box::pin(async move { adapter.call_build_submit(store, &ctx, &example).await })
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

    /// Runs `f` against a fresh instance on the calling thread, blocking it until
    /// the call ends (at most the call budget): for loading, validating and the
    /// conformance kit, off the async workers. Async code uses
    /// [`LoadedPlugin::call_async`].
    pub fn call<R, F>(&self, function: &'static str, f: F) -> Result<R, CallError>
    where
        F: for<'a> FnOnce(&'a Guest, &'a mut Store<CallState>) -> CallFuture<'a, R>,
    {
        futures_executor::block_on(self.run(function, f))
    }

    /// [`LoadedPlugin::call`] on the calling task, once the runtime's gate lets it
    /// in: the guest's code runs right here (no hand-off to another thread) and
    /// yields to the other tasks at every epoch tick, so a slow adapter delays no
    /// one for longer than a tick. The budget counts the ticks the guest runs
    /// through, not the wait for a turn: under a burst, calls queue (at most
    /// `call_queue` of them) rather than fail for time spent waiting.
    pub async fn call_async<R, F>(&self, function: &'static str, f: F) -> Result<R, CallError>
    where
        R: Send,
        F: for<'a> FnOnce(&'a Guest, &'a mut Store<CallState>) -> CallFuture<'a, R> + Send,
    {
        let span = tracing::info_span!("adapter_call", plugin = %self.name, version = %self.version, function);
        let call = async {
            let _turn = self
                .runtime
                .gate
                .enter()
                .await
                .map_err(|refused| CallError::NotRun {
                    plugin: self.name.clone(),
                    function,
                    reason: refused.to_string(),
                })?;
            AssertUnwindSafe(self.run(function, f))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(CallError::Trap {
                        plugin: self.name.clone(),
                        function,
                        message: "the host panicked while running the call".into(),
                    })
                })
        };
        call.instrument(span).await
    }

    /// One call in a fresh store with the memory limit and the epoch deadline.
    async fn run<R, F>(&self, function: &'static str, f: F) -> Result<R, CallError>
    where
        F: for<'a> FnOnce(&'a Guest, &'a mut Store<CallState>) -> CallFuture<'a, R>,
    {
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
        // Every tick the guest yields; once the budget's ticks have passed, it traps.
        let mut ticks_left = limits
            .call_timeout_ms
            .div_ceil(EPOCH_TICK.as_millis() as u64)
            .max(1);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            ticks_left -= 1;
            Ok(if ticks_left == 0 {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });

        let result = match self.pre.instantiate_async(&mut store).await {
            Ok(instance) => f(instance.modelroute_provider_adapter(), &mut store).await,
            Err(error) => Err(error),
        };
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
