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
    /// a streamed answer's first event may take this long from the request
    pub first_token_timeout_ms: u64,
    /// a streamed answer may pause this long between events
    pub idle_timeout_ms: u64,
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
            first_token_timeout_ms: 30_000,
            idle_timeout_ms: 15_000,
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
    pub first_token_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
}

/// The shortest stream timeout an operator may set.
const MIN_STREAM_TIMEOUT_MS: u64 = 100;

/// How long a provider's streamed answer may stay silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTimeouts {
    /// from the request to its first event that carries something
    pub first_token: std::time::Duration,
    /// between two such events
    pub idle: std::time::Duration,
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

    /// Stream timeouts of at least 100 ms, each error naming its field.
    pub fn check_timeouts(&self) -> anyhow::Result<()> {
        let global = [
            ("first_token_timeout_ms", Some(self.first_token_timeout_ms)),
            ("idle_timeout_ms", Some(self.idle_timeout_ms)),
        ]
        .map(|(name, value)| (format!("executions.{name}"), value));
        let per_model = self.models.iter().flat_map(|(slug, model)| {
            [
                ("first_token_timeout_ms", model.first_token_timeout_ms),
                ("idle_timeout_ms", model.idle_timeout_ms),
            ]
            .map(|(name, value)| (format!("executions.models.{slug:?}.{name}"), value))
        });
        for (field, value) in global.into_iter().chain(per_model) {
            if value.is_some_and(|ms| ms < MIN_STREAM_TIMEOUT_MS) {
                anyhow::bail!("{field} must be at least {MIN_STREAM_TIMEOUT_MS}");
            }
        }
        Ok(())
    }

    /// How long a streamed answer of `slug` may stay silent.
    pub fn stream_timeouts(&self, slug: &str) -> StreamTimeouts {
        let model = self.models.get(slug);
        let ms = std::time::Duration::from_millis;
        StreamTimeouts {
            first_token: ms(model
                .and_then(|m| m.first_token_timeout_ms)
                .unwrap_or(self.first_token_timeout_ms)),
            idle: ms(model
                .and_then(|m| m.idle_timeout_ms)
                .unwrap_or(self.idle_timeout_ms)),
        }
    }

    /// The operator's default fallbacks for `slug`.
    pub fn fallback_models(&self, slug: &str) -> &[String] {
        self.models
            .get(slug)
            .map_or(&[], |m| m.fallback_models.as_slice())
    }
}
