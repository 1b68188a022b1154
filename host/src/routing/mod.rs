//! Providers and how an execution picks one.
//!
//! A provider is an adapter (a plugin, by manifest name) + base URL + credential +
//! the models it serves, all from the operator's config. Candidates for a slug are
//! the providers serving it whose adapter is loaded (only the pinned ones, when the
//! operator pinned some). They are ranked: providers whose circuit breaker is open
//! go last; then by estimated cost for this input (divided by the operator's weight);
//! then by observed latency. Each provider also has a bulkhead: a cap on requests in
//! flight to it, and a health probe (see [`health`]): a provider whose breaker is
//! open or whose last probe failed takes no new attempts.
//!
//! The operator's provider entries are checked against the loaded adapters when the
//! router is built, so a mistake stops the start with the field named.

mod admission;
mod breaker;
mod declared;
pub mod health;

pub use admission::Admission;
pub use breaker::{Pass, State as BreakerState, Transition};

use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::clock;
use crate::config::{self, Config, PriceOverride, ProviderConfig, ProviderModelConfig};
use crate::host_pattern::HostPattern;
use crate::money::Micros;
use crate::plugins::types::Usage;
use crate::plugins::{LoadedPlugin, Registry, catalogue, types};
use crate::upstream::{self, Hosts};
use breaker::Breaker;
use health::Health;

pub struct Provider {
    pub name: String,
    pub adapter: String,
    base_url: Option<String>,
    pub credential: Option<String>,
    /// the operator's list, when given
    allowed_hosts: Option<Vec<HostPattern>>,
    /// hosts besides the base URL's that get the credential
    credential_hosts: Vec<HostPattern>,
    loopback_http_credentials: bool,
    /// see [`health`]
    health_path: Option<String>,
    pub health: Health,
    models: HashMap<String, ProviderModelConfig>,
    breaker: Breaker,
    /// requests in flight to this provider
    bulkhead: Semaphore,
    max_concurrency: usize,
}

impl Provider {
    /// The provider of `config`, whose host lists `Config::load` has checked.
    fn new(config: &ProviderConfig, loopback_http_credentials: bool) -> Provider {
        let parse = |entries: &[String]| -> Vec<HostPattern> {
            entries
                .iter()
                .filter_map(|entry| HostPattern::parse(entry).ok())
                .collect()
        };
        Provider {
            name: config.name.clone(),
            adapter: config.adapter.clone(),
            base_url: config.base_url.clone(),
            credential: config.credential(),
            allowed_hosts: config.allowed_hosts.as_deref().map(parse),
            credential_hosts: parse(&config.credential_hosts),
            loopback_http_credentials,
            health_path: config.health_path.clone(),
            health: Health::default(),
            models: config.models.clone().into_iter().collect(),
            breaker: Breaker::default(),
            bulkhead: Semaphore::new(config.max_concurrency),
            max_concurrency: config.max_concurrency,
        }
    }

    /// Checks the provider against its adapter in `registry`; an error names the
    /// field below `providers[i]` that is wrong.
    fn check(
        &self,
        registry: &Registry,
        declared: &HashMap<String, types::Model>,
    ) -> Result<(), String> {
        let Some(plugin) = registry.get(&self.adapter) else {
            let mut loaded: Vec<String> = registry.all().iter().map(|p| p.name.clone()).collect();
            loaded.sort();
            return Err(format!(
                "adapter: no adapter named {:?} is loaded (loaded: {})",
                self.adapter,
                loaded.join(", ")
            ));
        };
        // In slug order, so that the same config always names the same mistake.
        let mut slugs: Vec<&String> = self.models.keys().collect();
        slugs.sort();
        for slug in slugs {
            let input = match declared.get(slug) {
                Some(model) => &model.input,
                None => plugin.model(slug).map_or("", |m| m.input.as_str()),
            };
            if self.models[slug].accepts_prefill == Some(true) && input != catalogue::CHAT {
                return Err(format!(
                    "models.{slug:?}.accepts_prefill: only a chat model continues an assistant prefill"
                ));
            }
            if let Some(model) = declared.get(slug) {
                if !plugin.manifest.declared_inputs.contains(&model.input) {
                    let inputs = &plugin.manifest.declared_inputs;
                    return Err(format!(
                        "models.{slug:?}: the {:?} adapter does not serve operator-declared models of input {:?} (it serves declared inputs: {})",
                        self.adapter,
                        model.input,
                        if inputs.is_empty() {
                            "none".to_string()
                        } else {
                            inputs.join(", ")
                        }
                    ));
                }
                continue;
            }
            if plugin.model(slug).is_none() {
                let served: Vec<&str> = plugin
                    .manifest
                    .models
                    .iter()
                    .map(|m| m.slug.as_str())
                    .collect();
                return Err(format!(
                    "models.{slug:?}: the {:?} adapter does not serve this model (it serves: {})",
                    self.adapter,
                    served.join(", ")
                ));
            }
        }
        let base_url = self.base_url(&plugin);
        let url =
            config::check_base_url(&base_url).map_err(|error| format!("base_url: {error}"))?;
        if let Some(allowed) = &self.allowed_hosts
            && !allowed.iter().any(|host| host.matches(&url))
        {
            return Err(format!(
                "allowed_hosts: does not include the base_url host \"{}\"",
                HostPattern::of(&url)
                    .map(|h| h.to_string())
                    .unwrap_or_default()
            ));
        }
        if self.credential.is_some() && url.scheme() == "http" {
            if !upstream::is_loopback(&url) {
                return Err(format!(
                    "base_url: {base_url:?} is plain http, which would carry the credential in the clear; use https"
                ));
            }
            if !self.loopback_http_credentials {
                return Err(format!(
                    "base_url: {base_url:?} is plain http: the credential goes over http to loopback only under --dev or with upstream.loopback_http_credentials = true"
                ));
            }
        }
        Ok(())
    }

    pub fn base_url(&self, plugin: &LoadedPlugin) -> String {
        self.base_url
            .clone()
            .unwrap_or_else(|| plugin.manifest.default_base_url.clone())
            .trim_end_matches('/')
            .to_string()
    }

    /// Hosts this provider's requests and assets may name (the operator's list, or
    /// the base URL's host plus the manifest's hosts; `credential_hosts` always),
    /// and those that get the credential: the base URL's host and
    /// `credential_hosts` only. A manifest's hosts are asset hosts.
    pub fn allowed_hosts(&self, plugin: &LoadedPlugin) -> Hosts {
        let base = url::Url::parse(&self.base_url(plugin))
            .ok()
            .and_then(|url| HostPattern::of(&url));
        let credentialed: Vec<HostPattern> = base
            .into_iter()
            .chain(self.credential_hosts.iter().cloned())
            .collect();
        let mut allowed = match &self.allowed_hosts {
            Some(hosts) => hosts.clone(),
            None => plugin
                .manifest
                .allowed_hosts
                .iter()
                .filter_map(|entry| HostPattern::parse(entry).ok())
                .chain(credentialed.iter().cloned())
                .collect(),
        };
        allowed.extend(self.credential_hosts.iter().cloned());
        Hosts {
            allowed,
            credentialed,
            loopback_http_credentials: self.loopback_http_credentials,
        }
    }

    /// The circuit breaker's state at `now`.
    pub fn breaker_state(&self, now: std::time::Instant) -> BreakerState {
        self.breaker.state(now)
    }

    /// Requests in flight to the provider (slots of its bulkhead taken).
    pub fn bulkhead_in_use(&self) -> usize {
        self.max_concurrency
            .saturating_sub(self.bulkhead.available_permits())
    }

    /// Whether the provider can take traffic now or soon: its last health probe
    /// reached it and its breaker is not open.
    pub fn is_available(&self) -> bool {
        self.health.is_up() && self.breaker.state(clock::instant()) != BreakerState::Open
    }

    /// Whether a new request may go to the provider at `now`: its last health
    /// probe reached it and its breaker lets the request through.
    pub fn would_allow(&self, now: std::time::Instant) -> bool {
        self.health.is_up() && self.breaker.would_allow(now)
    }

    /// Why a new request may not go to the provider at `now`, for the log of an
    /// execution that waits; `None` when it may.
    pub fn unavailable_because(&self, now: std::time::Instant) -> Option<String> {
        if !self.health.is_up() {
            return Some("its last health probe failed".into());
        }
        if let Some(left) = self.breaker.cool_down_left(now) {
            return Some(format!(
                "its circuit breaker is open for {:.1} s more",
                left.as_secs_f64()
            ));
        }
        (!self.breaker.would_allow(now))
            .then(|| "its circuit breaker is half-open and its one probe is in flight".into())
    }
}

/// One log line per breaker transition: opening and reopening warn (traffic stops),
/// half-opening and closing inform.
fn log_transition(provider: &str, transition: Transition) {
    let cool_down_s = breaker::COOL_DOWN.as_secs();
    match transition {
        Transition::Opened {
            failures,
            samples,
            window,
        } => tracing::warn!(
            provider,
            failures,
            samples,
            window,
            cool_down_s,
            "circuit breaker opened: {failures} of the last {samples} requests failed (opens at {:.0} % of at least {} in a window of {window}); no new requests for {cool_down_s} s",
            breaker::OPEN_RATIO * 100.0,
            breaker::MIN_SAMPLES,
        ),
        Transition::HalfOpened => tracing::info!(
            provider,
            "circuit breaker half-open: the cool-down passed, one probe request goes through"
        ),
        Transition::Closed => tracing::info!(
            provider,
            "circuit breaker closed: a request succeeded, traffic flows again"
        ),
        Transition::Reopened => tracing::warn!(
            provider,
            cool_down_s,
            "circuit breaker reopened: the probe request failed; no new requests for {cool_down_s} s"
        ),
    }
}

/// One way to run a slug: a provider, the plugin version to use, the model entry
/// (provider model name and price after the operator's overrides).
#[derive(Clone)]
pub struct Candidate {
    pub provider: Arc<Provider>,
    pub plugin: Arc<LoadedPlugin>,
    pub model: types::Model,
    /// the operator's preference (cost is divided by it when ranking)
    weight: f64,
    pinned: bool,
}

pub struct Router {
    providers: Vec<Arc<Provider>>,
    registry: Arc<Registry>,
    /// the operator's declared models by slug, as manifest entries (the provider
    /// model left empty: each provider entry names its own)
    declared: HashMap<String, types::Model>,
}

impl Router {
    pub fn new(config: &Config, registry: Arc<Registry>) -> Router {
        let loopback_http = config.loopback_http_credentials();
        Router {
            providers: config
                .providers
                .iter()
                .map(|p| Arc::new(Provider::new(p, loopback_http)))
                .collect(),
            registry,
            declared: config
                .models
                .iter()
                .map(|model| (model.slug.clone(), declared::declared_model(model)))
                .collect(),
        }
    }

    /// Every configured provider, in the config's order.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// The slugs the operator declared, sorted.
    pub fn declared_slugs(&self) -> Vec<String> {
        let mut slugs: Vec<String> = self.declared.keys().cloned().collect();
        slugs.sort();
        slugs
    }

    /// `provider`'s entry for `slug` on `plugin`: the operator's declaration when
    /// `slug` is declared and the adapter serves declared models of its input
    /// preset (the declaration wins over an adapter that later names the slug), else
    /// the adapter's own manifest entry.
    fn served_model(&self, plugin: &LoadedPlugin, slug: &str) -> Option<types::Model> {
        match self.declared.get(slug) {
            Some(declared) => plugin
                .manifest
                .declared_inputs
                .contains(&declared.input)
                .then(|| declared.clone()),
            None => plugin.model(slug).cloned(),
        }
    }

    /// Checks every provider against its loaded adapter: an unknown adapter, a
    /// model it does not serve, a base URL its allowed hosts leave out or a
    /// credential that would go over plain http is refused, naming the field
    /// (`providers[2].allowed_hosts: …`).
    pub fn check(&self, config: &Config) -> anyhow::Result<()> {
        for (index, model) in config.models.iter().enumerate() {
            let slug = &model.slug;
            let mut defining: Vec<String> = self
                .registry
                .all()
                .iter()
                .filter(|plugin| plugin.model(slug).is_some())
                .map(|plugin| plugin.name.clone())
                .collect();
            if !defining.is_empty() {
                defining.sort();
                anyhow::bail!(
                    "models[{index}].slug: {slug:?} is already defined by the {} adapter's manifest; serve it through [providers.models.{slug:?}] instead of declaring it",
                    defining.join(", ")
                );
            }
            if !self.providers.iter().any(|p| p.models.contains_key(slug)) {
                anyhow::bail!(
                    "models[{index}].slug: no provider serves {slug:?} (add [providers.models.{slug:?}] with its provider_model to a provider whose adapter serves declared {:?} models)",
                    model.preset()
                );
            }
        }
        for (index, provider) in self.providers.iter().enumerate() {
            provider
                .check(&self.registry, &self.declared)
                .map_err(|error| anyhow::anyhow!("providers[{index}].{error}"))?;
        }
        Ok(())
    }

    /// Every provider serving `slug` with a loaded adapter, in config order (only
    /// the pinned ones when any is pinned).
    pub fn candidates(&self, slug: &str) -> Vec<Candidate> {
        let mut candidates: Vec<Candidate> = self
            .providers
            .iter()
            .filter_map(|provider| {
                let overrides = provider.models.get(slug)?;
                let plugin = self.registry.get(&provider.adapter)?;
                let mut model = self.served_model(&plugin, slug)?;
                if let Some(name) = &overrides.provider_model {
                    model.provider_model = name.clone();
                }
                if let Some(price) = &overrides.price {
                    apply_price_override(&mut model.price, price);
                }
                if let Some(accepts) = overrides.accepts_prefill {
                    model.accepts_prefill = accepts;
                }
                Some(Candidate {
                    provider: provider.clone(),
                    plugin,
                    model,
                    weight: overrides.weight.filter(|w| *w > 0.0).unwrap_or(1.0),
                    pinned: overrides.pinned,
                })
            })
            .collect();
        if candidates.iter().any(|c| c.pinned) {
            candidates.retain(|c| c.pinned);
        }
        candidates
    }

    /// [`Router::candidates`], best first for an input expected to consume `units`.
    pub fn ranked(&self, slug: &str, units: &Usage) -> Vec<Candidate> {
        let mut candidates = self.candidates(slug);
        let score = |c: &Candidate| {
            (
                !c.provider.is_available(),
                cost(&c.model.price, units).0 as f64 / c.weight,
                c.provider.breaker.latency_ms().unwrap_or(0.0),
            )
        };
        candidates.sort_by(|a, b| {
            score(a)
                .partial_cmp(&score(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        candidates
    }

    /// The catalogue entry of a slug: the first loaded model description (the same
    /// slug means the same canonical input whichever adapter serves it).
    pub fn model(&self, slug: &str) -> Option<types::Model> {
        self.candidates(slug).into_iter().next().map(|c| c.model)
    }
}

fn apply_price_override(price: &mut types::Price, with: &PriceOverride) {
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
pub fn cost(price: &types::Price, usage: &Usage) -> Micros {
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
mod tests;
