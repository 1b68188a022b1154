//! The process-wide engine: compiled-artifact cache, pooling allocator, epoch
//! ticker, and a linker with a locked-down WASI in which nothing can wait. Loading a
//! component checks its contract version and reads its manifest.

use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::AdapterPluginPre;
use super::loaded::LoadedPlugin;
use super::{PluginLimits, SUPPORTED_API_VERSIONS, gate, types};

const API_VERSION_SECTION: &str = "modelroute:api-version";
/// The epoch advances this often; call deadlines are counted in ticks.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Bytes of guest stderr kept per call for the logs.
pub(super) const STDERR_CAPTURE: usize = 16 * 1024;
/// Instance slots beyond one per concurrent call: loading and validating a version
/// (start-up, installs, the plugins directory watcher) instantiates it too.
const LOAD_SLOTS: u32 = 64;
/// The WASI functions that wait, by interface (at the version `wasmtime-wasi`
/// defines; the unit test `a_sleeping_adapter_traps_at_once_and_frees_its_turn`
/// fails if an upgrade moves it). A host function that waits is out of the epoch
/// deadline's reach, so an adapter that waited would hold its turn and instance
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
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: StoreLimits,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

pub struct Runtime {
    pub(super) engine: Engine,
    linker: Linker<CallState>,
    pub(super) limits: PluginLimits,
    cache_dir: PathBuf,
    pub(super) gate: gate::CallGate,
}

impl Runtime {
    /// Builds the engine and starts its epoch ticker. `cache_dir` keeps compiled
    /// artifacts keyed by the wasm's hash and the engine's compatibility hash. The
    /// pooling allocator has an instance slot (and a stack) for each call the gate
    /// lets run at once plus `LOAD_SLOTS`, so a call never fails for want of one.
    pub fn new(limits: PluginLimits, cache_dir: PathBuf) -> Result<Arc<Runtime>> {
        let memory_limit = (limits.memory_limit_mb as usize) << 20;
        let slots = u32::try_from(limits.concurrent_calls)
            .ok()
            .and_then(|calls| calls.checked_add(LOAD_SLOTS))
            .context("plugins.concurrent_calls is too large")?;
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
            // Reset an adapter's first pages with memset and keep them: cheaper
            // than faulting them back in on every call. Rust puts the stack
            // first: adapters built with our config (a 128 KiB stack, see
            // .cargo/config.toml) keep stack, statics and a small heap here.
            .linear_memory_keep_resident(256 << 10)
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
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
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
        let gate = gate::CallGate::new(limits.concurrent_calls, limits.call_queue);
        Ok(Arc::new(Runtime {
            engine,
            linker,
            limits,
            cache_dir,
            gate,
        }))
    }

    /// [`Runtime::load`], then [`LoadedPlugin::validate`]: what every version passes
    /// before it may go live (start-up, installs, the plugins directory).
    pub fn load_validated(self: &Arc<Self>, wasm: &[u8]) -> Result<Arc<LoadedPlugin>> {
        let plugin = self.load(wasm)?;
        plugin.validate()?;
        Ok(plugin)
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
            .call("describe", |adapter, store| {
                Box::pin(adapter.call_describe(store))
            })
            .map_err(|e| anyhow!("{e}"))?;
        if manifest.name.trim().is_empty() {
            bail!("the manifest has no name");
        }
        plugin.name = manifest.name.clone();
        plugin.version = manifest.version.clone();
        plugin.manifest = manifest.into();
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
pub(super) fn api_version(wasm: &[u8]) -> Result<String> {
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

pub(super) fn empty_manifest() -> types::Manifest {
    types::Manifest {
        name: String::new(),
        version: String::new(),
        default_base_url: String::new(),
        allowed_hosts: Vec::new(),
        auth: types::AuthScheme::None,
        capabilities: types::Capabilities {
            cancel: false,
            webhooks: false,
            streaming: false,
            inline_files: false,
            idempotent_submit: false,
        },
        models: Vec::new(),
        declared_inputs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::tests::*;
    use crate::plugins::{CallError, wit};
    use std::time::Instant;

    async fn build_submit(
        plugin: &Arc<LoadedPlugin>,
        prompt: &str,
    ) -> Result<Result<wit::HttpRequest, wit::Failure>, CallError> {
        let first = &plugin.manifest.models[0].slug;
        let input = serde_json::json!({ "prompt": prompt }).to_string();
        submit_input(plugin, first, input).await
    }

    async fn submit_input(
        plugin: &Arc<LoadedPlugin>,
        slug: &str,
        input: String,
    ) -> Result<Result<wit::HttpRequest, wit::Failure>, CallError> {
        let model = plugin.model(slug).expect("the adapter serves the model");
        let ctx = wit::CallContext {
            slug: model.slug.clone(),
            provider_model: model.provider_model.clone(),
            input: model.input.clone(),
            base_url: "http://127.0.0.1:9".into(),
            attempt_id: "att_test".into(),
            callback_url: None,
            files: Vec::new(),
            stream: false,
        };
        plugin
            .call_async("build-submit", move |adapter, store| {
                Box::pin(async move { adapter.call_build_submit(store, &ctx, &input).await })
            })
            .await
    }

    /// Adapters link with a 128 KiB stack (.cargo/config.toml), not Rust's 1 MiB:
    /// the deepest JSON one can be given (serde_json reads 128 levels) is read and
    /// written again without overflowing it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_adapter_s_small_stack_holds_the_deepest_json_it_can_be_given() {
        let runtime = runtime(PluginLimits::default());
        let openai = load(&runtime, "plugins/dist/openai.wasm").await;
        // The input, its tools, the tool and `function` are four levels.
        let parameters = format!("{}{}", "[".repeat(123), "]".repeat(123));
        let input = format!(
            r#"{{"messages":[{{"role":"user","content":"hi"}}],"tools":[{{"type":"function","function":{{"name":"f","parameters":{parameters}}}}}]}}"#
        );
        let request = submit_input(&openai, "llama-3.1-8b-instruct", input).await;
        let request = request.expect("no trap").expect("a request");
        let body = String::from_utf8(request.body.expect("a body")).unwrap();
        assert!(body.contains(&parameters), "{body}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sleeping_adapter_traps_at_once_and_frees_its_turn() {
        // One call at a time, and a budget far longer than the test: a sleep that
        // were let wait would hold the turn, and the next call would wait for it.
        let runtime = runtime(PluginLimits {
            concurrent_calls: 1,
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

    /// Calls run on the caller's task: a guest that spins must yield at every
    /// epoch tick, or one adapter would stall every task of its async worker.
    #[tokio::test(flavor = "current_thread")]
    async fn a_spinning_adapter_yields_to_other_tasks_until_its_deadline() {
        let runtime = runtime(PluginLimits {
            call_timeout_ms: 3_000,
            ..PluginLimits::default()
        });
        let hostile = load(&runtime, "target/test-plugins/hostile.wasm").await;
        let openai = load(&runtime, "plugins/dist/openai.wasm").await;
        let started = Instant::now();
        let spinning = tokio::spawn(async move { build_submit(&hostile, "loop").await });
        tokio::task::yield_now().await;
        // One worker thread: this call runs only when the spinning guest yields.
        let request = build_submit(&openai, "hello").await;
        assert!(matches!(request, Ok(Ok(_))), "{request:?}");
        assert!(
            !spinning.is_finished(),
            "served while the other guest spins, {:?} in",
            started.elapsed()
        );
        let error = spinning.await.unwrap().unwrap_err();
        assert!(matches!(error, CallError::Timeout { .. }), "{error}");
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    /// Regression: the wait for a turn once counted against the call's budget, and
    /// a burst of creates on a loaded machine failed estimates that never ran.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_for_a_turn_is_not_counted_in_the_call_s_budget() {
        let runtime = runtime(PluginLimits {
            concurrent_calls: 1,
            call_timeout_ms: 100,
            ..PluginLimits::default()
        });
        let hostile = load(&runtime, "target/test-plugins/hostile.wasm").await;
        // Four guests that spin through their whole budget, one at a time.
        let spinning: Vec<_> = (0..4)
            .map(|_| {
                let hostile = hostile.clone();
                tokio::spawn(async move { build_submit(&hostile, "loop").await })
            })
            .collect();
        // One spins, three wait: this call comes last.
        while runtime.gate.waiting() < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = Instant::now();
        let request = build_submit(&hostile, "hello").await;
        assert!(
            started.elapsed() > Duration::from_millis(250),
            "it waited behind the spinners: {:?}",
            started.elapsed()
        );
        assert!(matches!(request, Ok(Ok(_))), "{request:?}");
        for call in spinning {
            let error = call.await.unwrap().unwrap_err();
            assert!(matches!(error, CallError::Timeout { .. }), "{error}");
        }
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
