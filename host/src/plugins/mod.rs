//! Adapters as sandboxed WebAssembly components: the only `bindgen!` in the host.
//!
//! One process-wide [`Runtime`] (engine, pooling allocator, epoch ticker, linker with
//! a locked-down WASI). Each loaded plugin version keeps an `InstancePre`; every call
//! gets a fresh `Store` with a memory limit and an epoch deadline, runs on the
//! blocking pool, and is dropped afterwards (a trap poisons a store). The
//! [`Registry`] swaps plugins atomically: an attempt holds the `Arc` it started with.

pub mod conformance;
mod registry;

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

use crate::config::PluginLimits;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "adapter-plugin",
    });
}

use bindings::AdapterPluginPre;
use bindings::exports::modelroute::provider::adapter::Guest;
/// The contract's types, as the host sees them.
pub use bindings::modelroute::provider::types as wit;

/// Contract versions this host speaks.
pub const SUPPORTED_API_VERSIONS: &[&str] = &["0.2.0"];
const API_VERSION_SECTION: &str = "modelroute:api-version";
/// The epoch advances this often; call deadlines are counted in ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Bytes of guest stderr kept per call for the logs.
const STDERR_CAPTURE: usize = 16 * 1024;

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
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    limits: PluginLimits,
    cache_dir: PathBuf,
}

impl Runtime {
    /// Builds the engine and starts its epoch ticker. `cache_dir` keeps compiled
    /// artifacts keyed by the wasm's hash and the engine's compatibility hash.
    pub fn new(limits: PluginLimits, cache_dir: PathBuf) -> Result<Arc<Runtime>> {
        let memory_limit = (limits.memory_limit_mb as usize) << 20;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(256)
            .total_core_instances(1024)
            .total_memories(512)
            .total_tables(512)
            .total_stacks(256)
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
        Ok(Arc::new(Runtime {
            engine,
            linker,
            limits,
            cache_dir,
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
        // Several servers may share the cache: write privately, rename atomically.
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&temporary, &compiled)?;
        std::fs::rename(&temporary, &path)?;
        // SAFETY: produced just above by this engine.
        Ok(unsafe { Component::deserialize(&self.engine, &compiled) }?)
    }
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
                files: example_grants(&example, manifest.capabilities.inline_files),
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

    /// [`LoadedPlugin::call`] on the blocking pool, so a slow plugin never stalls the
    /// server's async workers.
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
        let call = tokio::task::spawn_blocking(move || plugin.call(function, f));
        // The epoch deadline stops the guest; this outer bound also covers time spent
        // instantiating or waiting for a blocking thread.
        let limit_ms = self.runtime.limits.call_timeout_ms;
        match tokio::time::timeout(Duration::from_millis(limit_ms * 2 + 100), call).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(CallError::Trap {
                plugin: self.name.clone(),
                function,
                message: format!("host task failed: {join}"),
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
pub fn load_dir(runtime: &Arc<Runtime>, dir: &Path) -> Result<Vec<Arc<LoadedPlugin>>> {
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
                let runtime = runtime.clone();
                let file = path.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    let plugin = runtime.load(&std::fs::read(&file)?)?;
                    plugin.validate()?;
                    Ok::<_, anyhow::Error>(plugin)
                })
                .await;
                match loaded {
                    Ok(Ok(plugin))
                        if registry
                            .get(&plugin.name)
                            .is_some_and(|p| p.sha256 == plugin.sha256) => {}
                    Ok(Ok(plugin)) => {
                        tracing::info!(plugin = %plugin.name, version = %plugin.version, sha256 = %plugin.sha256, path = %path.display(), "plugin changed on disk: swapped in");
                        registry.activate(plugin);
                    }
                    Ok(Err(error)) => {
                        tracing::error!(path = %path.display(), error = format!("{error:#}"), "plugin on disk refused")
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

/// Placeholder grants for the files an example input names, as an attempt would
/// get them (an unroutable URL; bytes when the adapter asks for them inline).
fn example_grants(example: &serde_json::Value, inline: bool) -> Vec<wit::FileGrant> {
    crate::files::grants::file_ids(example)
        .into_iter()
        .map(|file_id| wit::FileGrant {
            url: format!("https://example.invalid/files/grant/{file_id}"),
            file_id,
            content_type: "image/png".into(),
            bytes: inline.then(|| b"\x89PNG\r\n\x1a\nexample".to_vec()),
        })
        .collect()
}
