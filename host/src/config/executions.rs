//! Settings of executions: attempts, timeouts and per-model overrides.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionSettings {
    pub expiry_seconds: u64,
    /// per-model overrides, by slug
    pub models: BTreeMap<String, ModelSettings>,
    pub max_attempts: u32,
    pub upstream_timeout_ms: u64,
    pub max_asset_bytes: u64,
    /// how often a job whose provider will call back is polled anyway
    pub callback_fallback_poll_ms: u64,
}

impl Default for ExecutionSettings {
    fn default() -> Self {
        ExecutionSettings {
            expiry_seconds: 1800,
            models: BTreeMap::new(),
            max_attempts: 4,
            upstream_timeout_ms: 60_000,
            max_asset_bytes: 150 * 1024 * 1024,
            callback_fallback_poll_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// how long an execution of this model may take before it is EXPIRED (else the
    /// global `expiry_seconds`)
    pub expiry_seconds: Option<u64>,
    /// the models an execution goes on with when every provider of this one has
    /// failed, unless the client names its own
    pub fallback_models: Vec<String>,
}

impl ExecutionSettings {
    pub fn expiry(&self, slug: &str) -> chrono::Duration {
        let seconds = self
            .models
            .get(slug)
            .and_then(|m| m.expiry_seconds)
            .unwrap_or(self.expiry_seconds);
        chrono::Duration::seconds(seconds.min(i64::MAX as u64) as i64)
    }

    /// The operator's default fallbacks for `slug`.
    pub fn fallback_models(&self, slug: &str) -> &[String] {
        self.models
            .get(slug)
            .map_or(&[], |m| m.fallback_models.as_slice())
    }
}
