//! The operator's limits on adapters (`[plugins]` in the config).

use serde::Deserialize;
use std::path::PathBuf;

/// How much time and memory adapters get, and how many calls run at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    pub call_timeout_ms: u64,
    pub memory_limit_mb: u64,
    /// compiled components (default `$DATA/plugin-cache`); safe to share
    pub cache_dir: Option<PathBuf>,
    /// a swapped-in version that traps this often is rolled back (0: never)
    pub rollback_after_traps: u64,
    /// adapter calls that run at once (each on the task that makes it); the
    /// pooling allocator gets an instance slot for each, plus some for loading.
    /// `call_threads`, its name when each call had a thread, is still read.
    #[serde(alias = "call_threads")]
    pub concurrent_calls: usize,
    /// adapter calls that may wait for a turn at once; one more fails its
    /// attempt at once (retryable) rather than queue without limit. The wait is
    /// not counted in the call's time limit; this cap bounds memory, far above the
    /// bursts a server takes (a load test of 1,024 clients creating at once had
    /// more than 1,024 calls waiting a few µs)
    pub call_queue: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            call_timeout_ms: 1000,
            memory_limit_mb: 64,
            cache_dir: None,
            rollback_after_traps: 10,
            concurrent_calls: 64,
            call_queue: 65_536,
        }
    }
}
