//! Providers as the operator configures them: adapter, base URL, credentials,
//! models and price overrides, and the checks that need no adapter.

use anyhow::Result;
use serde::Deserialize;
use std::collections::BTreeMap;

use crate::money::Micros;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    /// the adapter plugin's manifest name
    pub adapter: String,
    /// defaults to the adapter's `default-base-url`
    pub base_url: Option<String>,
    /// environment variable holding the credential
    pub api_key_env: Option<String>,
    /// a literal credential, for local emulators only
    pub api_key: Option<String>,
    /// hosts (`host` or `host:port`; without a port, the scheme's default port)
    /// requests and downloads may go to; defaults to the base URL's host, the
    /// adapter's manifest hosts and `credential_hosts`
    pub allowed_hosts: Option<Vec<String>>,
    /// hosts besides the base URL's that get the credential (nothing else does)
    #[serde(default)]
    pub credential_hosts: Vec<String>,
    /// a path on the base URL whose `GET` (no credential) answers 2xx while the
    /// provider is healthy; without it the probe is a TCP connect to the base URL
    pub health_path: Option<String>,
    /// requests in flight to this provider at most (the bulkhead)
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    pub models: BTreeMap<String, ProviderModelConfig>,
}

fn default_max_concurrency() -> usize {
    64
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderModelConfig {
    /// ranking preference: the estimated cost is divided by it (default 1)
    pub weight: Option<f64>,
    /// when any provider of a model is pinned, only pinned ones serve it
    #[serde(default)]
    pub pinned: bool,
    /// the provider's own model name, when it differs from the adapter's default
    pub provider_model: Option<String>,
    /// unit prices (USD decimal strings) replacing the adapter's defaults
    pub price: Option<PriceOverride>,
    /// whether this provider continues an assistant prefill for the model (a chat
    /// model), replacing the adapter's word; operator-declared models default to no
    pub accepts_prefill: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    pub per_request: Option<Micros>,
    pub per_image: Option<Micros>,
    pub per_megapixel: Option<Micros>,
    pub per_second: Option<Micros>,
    pub per_million_input_tokens: Option<Micros>,
    pub per_million_output_tokens: Option<Micros>,
}

/// A provider's base URL must be an http or https URL with a host.
pub fn check_base_url(base_url: &str) -> Result<url::Url, String> {
    match url::Url::parse(base_url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(url),
        _ => Err(format!("{base_url:?} is not an http or https URL")),
    }
}

impl PriceOverride {
    /// Every unit price by its field name.
    pub fn units(&self) -> [(&'static str, Option<Micros>); 6] {
        [
            ("per_request", self.per_request),
            ("per_image", self.per_image),
            ("per_megapixel", self.per_megapixel),
            ("per_second", self.per_second),
            ("per_million_input_tokens", self.per_million_input_tokens),
            ("per_million_output_tokens", self.per_million_output_tokens),
        ]
    }
}

/// The most a unit (an image, a second, a million tokens…) may be priced at: a
/// higher price is a typo (micro-dollars written as dollars), not a price.
pub const MAX_UNIT_PRICE: Micros = Micros(1_000_000_000);

impl ProviderConfig {
    /// The checks that need no adapter; the error starts with the field's path
    /// below `providers[i]`. (Those against the adapter are made when it is loaded.)
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.models.is_empty() {
            return Err("models: the provider serves no models".into());
        }
        if let Some(base_url) = &self.base_url {
            check_base_url(base_url).map_err(|error| format!("base_url: {error}"))?;
        }
        let lists = [
            (
                "allowed_hosts",
                self.allowed_hosts.as_deref().unwrap_or(&[]),
            ),
            ("credential_hosts", &self.credential_hosts[..]),
        ];
        for (field, entries) in lists {
            for (at, entry) in entries.iter().enumerate() {
                crate::host_pattern::HostPattern::parse(entry)
                    .map_err(|error| format!("{field}[{at}]: {error}"))?;
            }
        }
        if let Some(path) = &self.health_path
            && !path.starts_with('/')
        {
            return Err(format!("health_path: {path:?} must start with /"));
        }
        if self.max_concurrency == 0 {
            return Err("max_concurrency: must be at least 1".into());
        }
        for (slug, model) in &self.models {
            if let Some(weight) = model.weight
                && !(weight.is_finite() && weight > 0.0)
            {
                return Err(format!(
                    "models.{slug:?}.weight: {weight} is not a positive number"
                ));
            }
            if let Some(price) = &model.price {
                for (unit, value) in price.units() {
                    if let Some(value) = value
                        && value > MAX_UNIT_PRICE
                    {
                        return Err(format!(
                            "models.{slug:?}.price.{unit}: {value} USD is more than {MAX_UNIT_PRICE} USD a unit (prices are in dollars, e.g. \"0.04\")"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The credential: the environment variable wins over a literal key.
    pub fn credential(&self) -> Option<String> {
        self.api_key_env
            .as_deref()
            .and_then(|name| std::env::var(name).ok())
            .filter(|v| !v.is_empty())
            .or_else(|| self.api_key.clone())
    }
}
