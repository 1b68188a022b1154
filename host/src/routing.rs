//! Providers and how an execution picks one.
//!
//! A provider is an adapter (a plugin, by manifest name) + base URL + credential +
//! the models it serves, all from the operator's config. Candidates for a slug are
//! the providers serving it whose adapter is loaded; they are ranked by estimated
//! cost, providers that have just failed repeatedly going last.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{Config, PriceOverride, ProviderConfig};
use crate::money::Micros;
use crate::plugins::{LoadedPlugin, Registry, wit};

/// After this many consecutive failures a provider is tried last for a while.
const FAILURES_BEFORE_BACKOFF: u32 = 3;
const BACKOFF_MS: u64 = 30_000;

pub struct Provider {
    pub name: String,
    pub adapter: String,
    base_url: Option<String>,
    pub credential: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    models: HashMap<String, crate::config::ProviderModelConfig>,
    consecutive_failures: AtomicU32,
    /// unix ms until which the provider is ranked last
    backoff_until_ms: AtomicU64,
}

impl Provider {
    fn new(config: &ProviderConfig) -> Provider {
        Provider {
            name: config.name.clone(),
            adapter: config.adapter.clone(),
            base_url: config.base_url.clone(),
            credential: config.credential(),
            allowed_hosts: config.allowed_hosts.clone(),
            models: config.models.clone().into_iter().collect(),
            consecutive_failures: AtomicU32::new(0),
            backoff_until_ms: AtomicU64::new(0),
        }
    }

    pub fn base_url(&self, plugin: &LoadedPlugin) -> String {
        self.base_url
            .clone()
            .unwrap_or_else(|| plugin.manifest.default_base_url.clone())
            .trim_end_matches('/')
            .to_string()
    }

    /// Hosts (`host` or `host:port`) this provider's requests and assets may name:
    /// the operator's list, or the base URL's host plus the manifest's hosts.
    pub fn allowed_hosts(&self, plugin: &LoadedPlugin) -> Vec<String> {
        if let Some(hosts) = &self.allowed_hosts {
            return hosts.clone();
        }
        let mut hosts = plugin.manifest.allowed_hosts.clone();
        if let Ok(url) = url::Url::parse(&self.base_url(plugin))
            && let Some(host) = url.host_str()
        {
            hosts.push(match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            });
        }
        hosts
    }

    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.backoff_until_ms.store(0, Ordering::Relaxed);
    }

    pub fn record_failure(&self) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURES_BEFORE_BACKOFF {
            self.backoff_until_ms
                .store(now_ms() + BACKOFF_MS, Ordering::Relaxed);
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.backoff_until_ms.load(Ordering::Relaxed) <= now_ms()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One way to run a slug: a provider, the plugin version to use, the model entry
/// (provider model name and price after the operator's overrides).
#[derive(Clone)]
pub struct Candidate {
    pub provider: Arc<Provider>,
    pub plugin: Arc<LoadedPlugin>,
    pub model: wit::Model,
}

pub struct Router {
    providers: Vec<Arc<Provider>>,
    registry: Arc<Registry>,
}

impl Router {
    pub fn new(config: &Config, registry: Arc<Registry>) -> Router {
        Router {
            providers: config
                .providers
                .iter()
                .map(|p| Arc::new(Provider::new(p)))
                .collect(),
            registry,
        }
    }

    pub fn provider(&self, name: &str) -> Option<Arc<Provider>> {
        self.providers.iter().find(|p| p.name == name).cloned()
    }

    /// Every provider serving `slug` with a loaded adapter, in config order, healthy
    /// ones first.
    pub fn candidates(&self, slug: &str) -> Vec<Candidate> {
        let mut candidates: Vec<Candidate> = self
            .providers
            .iter()
            .filter_map(|provider| {
                let overrides = provider.models.get(slug)?;
                let plugin = self.registry.get(&provider.adapter)?;
                let mut model = plugin.model(slug)?.clone();
                if let Some(name) = &overrides.provider_model {
                    model.provider_model = name.clone();
                }
                if let Some(price) = &overrides.price {
                    apply_price_override(&mut model.price, price);
                }
                Some(Candidate {
                    provider: provider.clone(),
                    plugin,
                    model,
                })
            })
            .collect();
        candidates.sort_by_key(|c| !c.provider.is_healthy());
        candidates
    }

    /// The catalogue entry of a slug: the first loaded model description (the same
    /// slug means the same canonical input whichever adapter serves it).
    pub fn model(&self, slug: &str) -> Option<wit::Model> {
        self.candidates(slug).into_iter().next().map(|c| c.model)
    }
}

fn apply_price_override(price: &mut wit::Price, with: &PriceOverride) {
    let set = |field: &mut u64, value: Option<Micros>| {
        if let Some(value) = value {
            *field = value.0;
        }
    };
    set(&mut price.per_request, with.per_request);
    set(&mut price.per_image, with.per_image);
    set(&mut price.per_megapixel, with.per_megapixel);
    set(&mut price.per_second, with.per_second);
    set(
        &mut price.per_million_input_tokens,
        with.per_million_input_tokens,
    );
    set(
        &mut price.per_million_output_tokens,
        with.per_million_output_tokens,
    );
}

/// What `usage` costs at `price`, rounded up to the micro-dollar.
pub fn cost(price: &wit::Price, usage: &wit::Usage) -> Micros {
    let scaled = |unit_price: u64, quantity: u64, per: u64| -> u64 {
        ((unit_price as u128 * quantity as u128).div_ceil(per as u128)).min(u64::MAX as u128) as u64
    };
    let total = [
        scaled(price.per_request, usage.requests as u64, 1),
        scaled(price.per_image, usage.images as u64, 1),
        scaled(price.per_megapixel, usage.megapixels_milli, 1000),
        scaled(price.per_second, usage.seconds_milli, 1000),
        scaled(
            price.per_million_input_tokens,
            usage.input_tokens,
            1_000_000,
        ),
        scaled(
            price.per_million_output_tokens,
            usage.output_tokens,
            1_000_000,
        ),
    ]
    .iter()
    .fold(0u64, |sum, part| sum.saturating_add(*part));
    Micros(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price() -> wit::Price {
        wit::Price {
            per_request: 0,
            per_image: 40_000,
            per_megapixel: 0,
            per_second: 0,
            per_million_input_tokens: 180_000,
            per_million_output_tokens: 180_000,
        }
    }

    fn usage() -> wit::Usage {
        wit::Usage {
            requests: 1,
            images: 0,
            megapixels_milli: 0,
            seconds_milli: 0,
            input_tokens: 0,
            output_tokens: 0,
        }
    }

    #[test]
    fn cost_multiplies_usage_by_unit_prices_and_rounds_up() {
        let one_image = wit::Usage {
            images: 1,
            ..usage()
        };
        assert_eq!(cost(&price(), &one_image), Micros(40_000));
        // 10 and 256 tokens at $0.18 per million: 1.8 and 46.08, each rounded up.
        let tokens = wit::Usage {
            input_tokens: 10,
            output_tokens: 256,
            ..usage()
        };
        assert_eq!(cost(&price(), &tokens), Micros(2 + 47));
    }
}
