//! Adapters as sandboxed WebAssembly components: the only `bindgen!` in the host.
//!
//! One process-wide [`Runtime`] (engine, pooling allocator, epoch ticker, linker with
//! a locked-down WASI in which nothing can wait). Each loaded plugin version keeps an
//! `InstancePre`; every call gets a fresh `Store` with a memory limit and an epoch
//! deadline, runs on the calling task (at most `concurrent_calls` at once, yielding
//! at every epoch tick), and is dropped
//! afterwards (a trap poisons a store). The [`Registry`] swaps plugins atomically:
//! an attempt holds the `Arc` it started with; swaps made at runtime are kept in the
//! data directory ([`Installed`]) and survive a restart.

mod adapter;
pub mod catalogue;
pub mod conformance;
mod contract;
mod convert;
mod directory;
mod gate;
mod installed;
mod limits;
mod loaded;
mod registry;
mod runtime;
pub mod types;
mod usage;

pub use contract::{API_VERSION, SUPPORTED_API_VERSIONS};
pub use directory::{load_all, watch_dir};
pub use installed::{Installed, follow_other_hosts};
pub use limits::PluginLimits;
pub use loaded::LoadedPlugin;
pub use registry::Registry;
pub use runtime::{CallState, Runtime};

use crate::error::Code;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "adapter-plugin",
        // Calls run on the caller's task and yield at every epoch tick.
        exports: { default: async },
    });
}

/// The contract's types as generated; the rest of the host uses [`types`].
use bindings::modelroute::provider::types as wit;

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
    use std::path::Path;
    use std::sync::Arc;

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
}
