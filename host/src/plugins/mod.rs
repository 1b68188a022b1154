//! Adapters as sandboxed WebAssembly components: the only `bindgen!` in the host.
//!
//! One process-wide [`Runtime`] (engine, pooling allocator, epoch ticker, linker with
//! a locked-down WASI in which nothing can wait). Each loaded plugin version keeps an
//! `InstancePre`; every call gets a fresh `Store` with a memory limit and an epoch
//! deadline, runs on the adapters' own bounded thread pool, and is dropped
//! afterwards (a trap poisons a store). The [`Registry`] swaps plugins atomically:
//! an attempt holds the `Arc` it started with; swaps made at runtime are kept in the
//! data directory ([`Installed`]) and survive a restart.

mod adapter;
pub mod catalogue;
pub mod conformance;
mod contract;
mod installed;
mod limits;
mod pool;
mod registry;

pub use contract::{API_VERSION, SUPPORTED_API_VERSIONS};
pub use installed::Installed;
pub use limits::PluginLimits;
pub use registry::Registry;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::error::Code;
use crate::file_fields::{field_file_ids, file_fields};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "adapter-plugin",
    });
}

use bindings::AdapterPluginPre;
use bindings::exports::modelroute::provider::adapter::Guest;
/// The contract's types, as the host sees them.
pub use bindings::modelroute::provider::types as wit;

const API_VERSION_SECTION: &str = "modelroute:api-version";
/// The epoch advances this often; call deadlines are counted in ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Bytes of guest stderr kept per call for the logs.
const STDERR_CAPTURE: usize = 16 * 1024;
/// Instance slots beyond one per call thread: loading and validating a version
/// (start-up, installs, the plugins directory watcher) instantiates it too.
const LOAD_SLOTS: u32 = 64;
/// The WASI functions that wait, by interface (at the version `wasmtime-wasi`
/// defines; the unit test `a_sleeping_adapter_traps_at_once_and_frees_its_thread`
/// fails if an upgrade moves it). A host function that blocks is out of the epoch
/// deadline's reach, so an adapter that waited would hold its thread and instance
/// slot for as long as it liked; these trap instead. Reading the clocks stays
/// allowed: a guest spinning on them is stopped by the deadline like any loop.
const WAITING_FUNCTIONS: &[(&str, &[&str])] = &[
    ("wasi:io/poll@0.2.12", &["poll", "[method]pollable.block"]),
    (
        "wasi:clocks/monotonic-clock@0.2.12",
        &["subscribe-duration", "subscribe-instant"],
    ),
];

/// What one call's store holds: a WASI context with no files, network or environment.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Why a plugin call produced no answer. Either way the attempt fails cleanly.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("plugin {plugin} trapped in {function}: {message}")]
    Trap {
        plugin: String,
        function: &'static str,
        message: String,
    },
    #[error("plugin {plugin} exceeded its {limit_ms} ms budget in {function}")]
    Timeout {
        plugin: String,
        function: &'static str,
        limit_ms: u64,
    },
    #[error("plugin {plugin} could not run {function}: {reason}")]
    NotRun {
        plugin: String,
        function: &'static str,
        reason: String,
    },
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    limits: PluginLimits,
    cache_dir: PathBuf,
    calls: pool::CallPool,
}

impl Runtime {
    /// Builds the engine and starts its epoch ticker and call threads. `cache_dir`
    /// keeps compiled artifacts keyed by the wasm's hash and the engine's
    /// compatibility hash. The pooling allocator has an instance slot for each call
    /// thread plus `LOAD_SLOTS`, so a call never fails for want of a slot.
    pub fn new(limits: PluginLimits, cache_dir: PathBuf) -> Result<Arc<Runtime>> {
        let memory_limit = (limits.memory_limit_mb as usize) << 20;
        let slots = u32::try_from(limits.call_threads)
            .ok()
            .and_then(|threads| threads.checked_add(LOAD_SLOTS))
            .context("plugins.call_threads is too large")?;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 4)
            .total_memories(slots * 2)
            .total_tables(slots * 2)
            .total_stacks(slots)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_memory_size(memory_limit)
            // Returning a slot's memory to the kernel flushes every core's TLB:
            // do it for many slots at once rather than after every call.
            .decommit_batch_size(64)
            // Reset the first pages an adapter touches with memset and keep them:
            // cheaper than faulting them back in on every call.
            .linear_memory_keep_resident(128 << 10)
            .table_keep_resident(64 << 10);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Pooled slots need no more reservation than the memory limit.
            .memory_reservation(memory_limit as u64)
            .memory_reservation_for_growth(0);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        forbid_waiting(&mut linker)?;
        std::fs::create_dir_all(&cache_dir)
            .with_context(|| format!("creating {}", cache_dir.display()))?;

        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        let calls = pool::CallPool::new(limits.call_threads, limits.call_queue)
            .context("starting the adapter call threads")?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            limits,
            cache_dir,
            calls,
        }))
    }

    /// Checks the contract version, compiles (or loads the cached artifact),
    /// instantiates once and reads the manifest. Nothing is registered here.
    pub fn load(self: &Arc<Self>, wasm: &[u8]) -> Result<Arc<LoadedPlugin>> {
        let api_version = api_version(wasm)?;
        if !SUPPORTED_API_VERSIONS.contains(&api_version.as_str()) {
            bail!(
                "the plugin speaks contract {api_version}; this host supports {}",
                SUPPORTED_API_VERSIONS.join(", ")
            );
        }
        let sha256 = hex::encode(Sha256::digest(wasm));
        let component = self.compile_cached(wasm, &sha256)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("the plugin imports something the host does not provide")?;
        let pre = AdapterPluginPre::new(pre)
            .map_err(anyhow::Error::from)
            .context("the plugin does not export the adapter")?;
        let mut plugin = LoadedPlugin {
            name: String::new(),
            version: String::new(),
            api_version,
            sha256,
            manifest: empty_manifest(),
            loaded_at: Utc::now(),
            wasm: wasm.into(),
            pre,
            runtime: self.clone(),
            calls: AtomicU64::new(0),
            traps: AtomicU64::new(0),
        };
        let manifest = plugin
            .call("describe", |adapter, store| adapter.call_describe(store))
            .map_err(|e| anyhow!("{e}"))?;
        if manifest.name.trim().is_empty() {
            bail!("the manifest has no name");
        }
        plugin.name = manifest.name.clone();
        plugin.version = manifest.version.clone();
        plugin.manifest = manifest;
        Ok(Arc::new(plugin))
    }

    fn compile_cached(&self, wasm: &[u8], sha256: &str) -> Result<Component> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let path = self
            .cache_dir
            .join(format!("{sha256}-{:016x}.cwasm", hasher.finish()));
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an engine with
            // the same compatibility hash, in a directory only this host writes.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok(component),
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "recompiling a bad cache entry")
                }
            }
        }
        let compiled = self
            .engine
            .precompile_component(wasm)
            .map_err(anyhow::Error::from)
            .context("the plugin is not a valid WebAssembly component")?;
        // Several servers may share the cache: written privately, renamed atomically.
        crate::durable::write(&path, &compiled)
            .with_context(|| format!("writing {}", path.display()))?;
        // SAFETY: produced just above by this engine.
        Ok(unsafe { Component::deserialize(&self.engine, &compiled) }?)
    }
}

/// Shadows each of [`WAITING_FUNCTIONS`] with a function that traps.
fn forbid_waiting(linker: &mut Linker<CallState>) -> Result<()> {
    linker.allow_shadowing(true);
    for (interface, functions) in WAITING_FUNCTIONS {
        let mut instance = linker.instance(interface)?;
        for function in *functions {
            let what = format!("{interface}#{function}");
            instance.func_new(function, move |_, _, _, _| {
                Err(wasmtime::Error::msg(format!(
                    "{what}: adapters may not wait (no sleeping, no polling)"
                )))
            })?;
        }
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// Reads the contract version the SDK stamped into the component.
fn api_version(wasm: &[u8]) -> Result<String> {
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let payload = payload.context("the file is not WebAssembly")?;
        if let wasmparser::Payload::CustomSection(section) = payload
            && section.name() == API_VERSION_SECTION
        {
            return String::from_utf8(section.data().to_vec())
                .map_err(|_| anyhow!("the contract version section is not text"));
        }
    }
    bail!("the plugin carries no contract version (was it built with modelroute-sdk?)")
}

fn empty_manifest() -> wit::Manifest {
    wit::Manifest {
        name: String::new(),
        version: String::new(),
        default_base_url: String::new(),
        allowed_hosts: Vec::new(),
        auth: wit::AuthScheme::None,
        capabilities: wit::Capabilities {
            cancel: false,
            webhooks: false,
            streaming: false,
            inline_files: false,
            idempotent_submit: false,
        },
        models: Vec::new(),
    }
}

/// One loaded version of one plugin.
pub struct LoadedPlugin {
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub sha256: String,
    pub manifest: wit::Manifest,
    pub loaded_at: DateTime<Utc>,
    /// the component, kept to be written to the data directory when it is swapped
    wasm: Arc<[u8]>,
    pre: AdapterPluginPre<CallState>,
    runtime: Arc<Runtime>,
    calls: AtomicU64,
    traps: AtomicU64,
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
        for model in &manifest.models {
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
            let (provider_model, input) =
                (model.provider_model.clone(), model.example_input.clone());
            self.call("estimate", |adapter, store| {
                adapter.call_estimate(store, slug, &provider_model, &input)
            })
            .map_err(|e| anyhow!("{e}"))?
            .map_err(|f| anyhow!("model {slug}: estimating the example failed: {}", f.message))?;
            let ctx = wit::CallContext {
                slug: slug.clone(),
                provider_model: model.provider_model.clone(),
                base_url: manifest.default_base_url.clone(),
                attempt_id: "att_validation".into(),
                callback_url: None,
                files: example_grants(&schema, &example, manifest.capabilities.inline_files),
                stream: false,
            };
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

    pub fn model(&self, slug: &str) -> Option<&wit::Model> {
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
        result.map_err(|error| {
            self.traps.fetch_add(1, Ordering::Relaxed);
            let timed_out = error
                .downcast_ref::<wasmtime::Trap>()
                .is_some_and(|trap| *trap == wasmtime::Trap::Interrupt);
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
        let call = self.runtime.calls.run(move || plugin.call(function, f));
        // The epoch deadline stops the guest; this outer bound also covers time spent
        // instantiating or waiting for a call thread.
        let limit_ms = self.runtime.limits.call_timeout_ms;
        match tokio::time::timeout(Duration::from_millis(limit_ms * 2 + 100), call).await {
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

/// Loads every `*.wasm` in `dir`, in name order.
fn load_dir(runtime: &Arc<Runtime>, dir: &Path) -> Result<Vec<Arc<LoadedPlugin>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "reading plugins from {} (run `make plugins`)",
                dir.display()
            )
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let plugin = runtime.load(&std::fs::read(path)?)?;
            plugin.validate()?;
            Ok(plugin)
        })
        .zip(&paths)
        .map(|(loaded, path): (Result<Arc<LoadedPlugin>>, _)| {
            loaded.with_context(|| format!("loading plugin {}", path.display()))
        })
        .collect()
}

/// Start-up: every component in `dir`, then the versions swapped in at runtime
/// before the restart (see [`Installed`]). A kept version wins over the file of
/// the same adapter in `dir`, unless that file changed since it was kept: then the
/// file is swapped in over it, as the watcher would have done had the server run.
pub fn load_all(runtime: &Arc<Runtime>, registry: &Registry, dir: &Path) -> Result<()> {
    for plugin in load_dir(runtime, dir)? {
        registry
            .check_agreement(&plugin)
            .with_context(|| format!("loading plugin {}", plugin.name))?;
        tracing::info!(plugin = %plugin.name, version = %plugin.version, sha256 = %plugin.sha256, "plugin loaded");
        if let Some(installed) = registry.installed() {
            installed.saw_in_plugins_dir(&plugin.name, &plugin.sha256);
        }
        registry.restore(plugin, None);
    }
    let Some(installed) = registry.installed() else {
        return Ok(());
    };
    for kept in installed.load(runtime)? {
        let file = registry.get(&kept.name);
        tracing::info!(plugin = %kept.name, version = %kept.active.version, sha256 = %kept.active.sha256, "plugin restored as swapped in at runtime");
        registry.restore(kept.active.clone(), kept.previous);
        if let Some(file) = file
            && file.sha256 != kept.active.sha256
            && Some(&file.sha256) != kept.plugins_dir.as_ref()
        {
            tracing::info!(plugin = %file.name, version = %file.version, sha256 = %file.sha256, "plugin file changed while the server was stopped: swapped in");
            registry.activate(file)?;
        }
    }
    Ok(())
}

/// How often the plugins directory is looked at for new or changed components.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Watches `dir`: a `*.wasm` file that appears or changes is loaded, validated and
/// swapped in like an install through the admin API (the replaced version is kept
/// for rollback). A file that does not load is logged and left alone.
pub fn watch_dir(runtime: Arc<Runtime>, registry: Arc<Registry>, dir: PathBuf) {
    type Seen = std::collections::HashMap<PathBuf, (std::time::SystemTime, u64)>;
    fn scan(dir: &Path) -> Seen {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                if path.extension()? != "wasm" {
                    return None;
                }
                let meta = std::fs::metadata(&path).ok()?;
                Some((path, (meta.modified().ok()?, meta.len())))
            })
            .collect()
    }
    tokio::spawn(async move {
        let mut seen = scan(&dir);
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let now = scan(&dir);
            for (path, stamp) in &now {
                if seen.get(path) == Some(stamp) {
                    continue;
                }
                let (runtime, registry) = (runtime.clone(), registry.clone());
                let file = path.clone();
                let swapped = tokio::task::spawn_blocking(move || {
                    let plugin = runtime.load(&std::fs::read(&file)?)?;
                    plugin.validate()?;
                    if let Some(installed) = registry.installed() {
                        installed.saw_in_plugins_dir(&plugin.name, &plugin.sha256);
                    }
                    if registry
                        .get(&plugin.name)
                        .is_some_and(|p| p.sha256 == plugin.sha256)
                    {
                        return Ok(None);
                    }
                    registry.activate(plugin.clone())?;
                    Ok::<_, anyhow::Error>(Some(plugin))
                })
                .await;
                match swapped {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(plugin))) => {
                        tracing::info!(plugin = %plugin.name, version = %plugin.version, sha256 = %plugin.sha256, path = %path.display(), "plugin changed on disk: swapped in");
                    }
                    Ok(Err(error)) => {
                        tracing::error!(path = %path.display(), error = format!("{error:#}"), "plugin on disk not swapped in")
                    }
                    Err(error) => {
                        tracing::error!(path = %path.display(), %error, "plugin load task failed")
                    }
                }
            }
            seen = now;
        }
    });
}

/// Placeholder grants for the files an example input names in the fields `schema`
/// marks as files, as an attempt would get them (an unroutable URL; bytes when the
/// adapter asks for them inline).
pub(super) fn example_grants(
    schema: &serde_json::Value,
    example: &serde_json::Value,
    inline: bool,
) -> Vec<wit::FileGrant> {
    field_file_ids(&file_fields(schema), example)
        .into_iter()
        .map(|file_id| wit::FileGrant {
            url: format!("https://example.invalid/files/grant/{file_id}"),
            file_id,
            content_type: "image/png".into(),
            bytes: inline.then(|| b"\x89PNG\r\n\x1a\nexample".to_vec()),
        })
        .collect()
}

/// An adapter's classification, as a client-facing code.
impl From<wit::ErrorCode> for Code {
    fn from(code: wit::ErrorCode) -> Code {
        use wit::ErrorCode as W;
        match code {
            W::InputValidationError => Code::InputValidationError,
            W::ContentModerationRejected => Code::ContentModerationRejected,
            W::FileNotFound => Code::FileNotFound,
            W::FileFormatUnsupported => Code::FileFormatUnsupported,
            W::InsufficientBalance => Code::InsufficientBalance,
            W::RateLimited => Code::RateLimited,
            W::ModelOverloaded => Code::ModelOverloaded,
            W::ModelUnavailable => Code::ModelUnavailable,
            W::GenerationTimeout => Code::GenerationTimeout,
            W::GenerationFailed => Code::GenerationFailed,
            W::ServiceUnavailable => Code::ServiceUnavailable,
            W::InternalError => Code::InternalError,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Instant;

    /// A built component: `plugins/dist/<name>.wasm`, or a test adapter of
    /// `target/test-plugins` (`make plugins` builds both).
    pub(crate) fn component(path: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `make plugins`)", path.display()))
    }

    /// A runtime whose compiled components are shared by the unit tests.
    pub(crate) fn runtime(limits: PluginLimits) -> Arc<Runtime> {
        let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/unit-plugin-cache");
        Runtime::new(limits, cache).unwrap()
    }

    /// Loads a component off the async workers, as the server does.
    pub(crate) async fn load(runtime: &Arc<Runtime>, path: &str) -> Arc<LoadedPlugin> {
        let (runtime, wasm) = (runtime.clone(), component(path));
        tokio::task::spawn_blocking(move || runtime.load(&wasm))
            .await
            .unwrap()
            .unwrap()
    }

    async fn build_submit(
        plugin: &Arc<LoadedPlugin>,
        prompt: &str,
    ) -> Result<Result<wit::HttpRequest, wit::Failure>, CallError> {
        let model = &plugin.manifest.models[0];
        let ctx = wit::CallContext {
            slug: model.slug.clone(),
            provider_model: model.provider_model.clone(),
            base_url: "http://127.0.0.1:9".into(),
            attempt_id: "att_test".into(),
            callback_url: None,
            files: Vec::new(),
            stream: false,
        };
        let input = serde_json::json!({ "prompt": prompt }).to_string();
        plugin
            .call_async("build-submit", move |adapter, store| {
                adapter.call_build_submit(store, &ctx, &input)
            })
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sleeping_adapter_traps_at_once_and_frees_its_thread() {
        // One thread, and a budget far longer than the test: a sleep that were let
        // block would hold the thread, and the next call would wait for it.
        let runtime = runtime(PluginLimits {
            call_threads: 1,
            call_timeout_ms: 120_000,
            ..PluginLimits::default()
        });
        let hostile = load(&runtime, "target/test-plugins/hostile.wasm").await;
        let started = Instant::now();
        let error = build_submit(&hostile, "sleep").await.unwrap_err();
        assert!(
            matches!(&error, CallError::Trap { message, .. } if message.contains("adapters may not wait")),
            "{error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let request = build_submit(&hostile, "hello").await.unwrap().unwrap();
        assert!(
            request.url.ends_with("/v1/chat/completions"),
            "{}",
            request.url
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn adapter_calls_run_while_the_shared_blocking_pool_is_saturated() {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        tokio.block_on(async {
            let runtime = runtime(PluginLimits {
                call_timeout_ms: 500,
                ..PluginLimits::default()
            });
            let openai = load(&runtime, "plugins/dist/openai.wasm").await;
            // Slow blocking work (a name lookup that never answers, a stuck disk)
            // holds tokio's only blocking thread for as long as the test runs.
            let (release, released) = std::sync::mpsc::channel::<()>();
            let (started, running) = tokio::sync::oneshot::channel();
            let stuck = tokio::task::spawn_blocking(move || {
                let _ = started.send(());
                let _ = released.recv();
            });
            running.await.unwrap();
            for _ in 0..3 {
                let request = build_submit(&openai, "hello").await;
                assert!(matches!(request, Ok(Ok(_))), "{request:?}");
            }
            release.send(()).unwrap();
            stuck.await.unwrap();
        });
    }
}
