//! Operator configuration: an embedded default (`default-config.toml`), replaced by a
//! file given with `--config`, then a few environment overrides.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::money::Micros;
use crate::plugins::PluginLimits;

pub const EMBEDDED: &str = include_str!("default-config.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub plugins_dir: PathBuf,
    pub public_url: String,
    #[serde(default)]
    pub plugins: PluginLimits,
    #[serde(default)]
    pub executions: ExecutionSettings,
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub rate_limits: RateLimitSettings,
    #[serde(default)]
    pub files: FileSettings,
    #[serde(default)]
    pub webhooks: WebhookSettings,
    #[serde(default)]
    pub testing: TestingSettings,
    #[serde(default)]
    pub upstream: UpstreamSettings,
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// Development conveniences (`--dev`): a bootstrap organization and key.
    #[serde(skip)]
    pub dev: bool,
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// how long an execution of this model may take before it is EXPIRED
    pub expiry_seconds: u64,
}

impl ExecutionSettings {
    pub fn expiry(&self, slug: &str) -> chrono::Duration {
        let seconds = self
            .models
            .get(slug)
            .map_or(self.expiry_seconds, |m| m.expiry_seconds);
        chrono::Duration::seconds(seconds.min(i64::MAX as u64) as i64)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSettings {
    /// largest upload, enforced while the bytes stream in
    pub max_upload_bytes: u64,
    /// how long files live unless the organization or the upload says otherwise
    pub default_ttl_days: u32,
    /// lifetime of signed upload and download URLs
    pub signed_url_seconds: u64,
    /// lifetime of the URL a provider gets for one input file of one attempt
    pub grant_seconds: u64,
    /// largest input file handed to an adapter as bytes (`inline-files`)
    pub max_inline_bytes: u64,
    /// how often expired files are deleted
    pub sweep_interval_seconds: u64,
    /// bytes an organization may store (uploads and outputs; only uploads are
    /// refused past it), unless the operator sets its own
    pub quota_bytes: u64,
    /// files an organization may store, likewise
    pub quota_files: u64,
}

impl Default for FileSettings {
    fn default() -> Self {
        FileSettings {
            max_upload_bytes: 150 * 1024 * 1024,
            default_ttl_days: 30,
            signed_url_seconds: 3600,
            grant_seconds: 600,
            max_inline_bytes: 20 * 1024 * 1024,
            sweep_interval_seconds: 60,
            quota_bytes: 10 * 1024 * 1024 * 1024,
            quota_files: 100_000,
        }
    }
}

/// Outbound webhook deliveries. `allow_http` and `allow_loopback` default to off,
/// and to on under `--dev`; private, link-local and metadata addresses are refused
/// whatever is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    pub allow_http: Option<bool>,
    pub allow_loopback: Option<bool>,
    /// a receiver that has not answered in this time has failed the attempt
    pub timeout_seconds: u64,
    /// name servers (`"ip"` or `"ip:port"`) that resolve webhook hosts; empty: the
    /// system's (`/etc/resolv.conf`). Meant for tests and special networks.
    pub dns_servers: Vec<String>,
    /// a webhook host not resolved in this time is invalid at registration and a
    /// failed attempt at delivery
    pub dns_timeout_ms: u64,
    /// webhook host lookups in flight at once for the API, all organizations
    /// together (deliveries have a budget of this size of their own)
    pub dns_max_lookups: usize,
    /// webhook host lookups in flight at once for one organization
    pub dns_max_lookups_per_organization: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            allow_http: None,
            allow_loopback: None,
            timeout_seconds: 30,
            dns_servers: Vec::new(),
            dns_timeout_ms: 3000,
            dns_max_lookups: 64,
            dns_max_lookups_per_organization: 8,
        }
    }
}

impl WebhookSettings {
    /// How webhook hosts are resolved.
    pub fn dns(&self) -> Result<crate::netguard::DnsSettings> {
        let servers = self
            .dns_servers
            .iter()
            .map(|server| {
                server
                    .parse::<std::net::SocketAddr>()
                    .or_else(|_| {
                        server
                            .parse::<std::net::IpAddr>()
                            .map(|ip| std::net::SocketAddr::new(ip, 53))
                    })
                    .with_context(|| {
                        format!("webhooks.dns_servers: {server:?} is not an address (\"ip\" or \"ip:port\")")
                    })
            })
            .collect::<Result<_>>()?;
        if self.dns_timeout_ms == 0 {
            bail!("webhooks.dns_timeout_ms must be at least 1");
        }
        if self.dns_max_lookups == 0 || self.dns_max_lookups_per_organization == 0 {
            bail!(
                "webhooks.dns_max_lookups and dns_max_lookups_per_organization must be at least 1"
            );
        }
        Ok(crate::netguard::DnsSettings {
            servers,
            timeout: std::time::Duration::from_millis(self.dns_timeout_ms),
            max_lookups: self.dns_max_lookups,
            max_lookups_per_organization: self.dns_max_lookups_per_organization,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestingSettings {
    /// `POST /admin/v1/clock/advance` moves the service's clock forward (tests of
    /// retry schedules and TTLs); never enable it in production
    pub clock_control: bool,
}

/// How the server talks to providers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSettings {
    /// the proxy every provider request goes through (`http://` or `https://`);
    /// none by default, and `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` are ignored
    pub proxy: Option<String>,
    /// plain http may carry a provider's credential to a loopback address
    /// (default: on with `--dev`, off otherwise); never to any other address
    pub loopback_http_credentials: Option<bool>,
    /// how often each provider is probed (0: never); a provider whose probe fails
    /// takes no traffic and its models show `available: false` until one succeeds
    pub health_interval_seconds: u64,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            proxy: None,
            loopback_http_credentials: None,
            health_interval_seconds: 30,
        }
    }
}

/// How long the HTTP server waits on a client, and how many connections one client
/// address may hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// a request's headers must have arrived in full this long after the connection
    /// was ready for them (on a kept-alive HTTP/1.1 connection, its idle time counts)
    pub header_read_timeout_ms: u64,
    /// a request body that sends nothing for this long fails (`400`), and its
    /// connection is closed; a slow body that keeps moving is not cut
    pub body_idle_timeout_ms: u64,
    /// a connection with no request in flight on which no byte moved for this long
    /// is closed (HTTP/2: after a GOAWAY)
    pub idle_timeout_ms: u64,
    /// connections one client address (an IPv6 /64) may hold open; more are closed
    /// as soon as they are accepted (0: no limit)
    pub max_connections_per_address: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            header_read_timeout_ms: 30_000,
            body_idle_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections_per_address: 2048,
        }
    }
}

/// Per API key: a sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    pub requests_per_second: u32,
    pub burst: u32,
    /// requests that fail authentication, per client address
    pub failed_auth: FailedAuthSettings,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            requests_per_second: 100,
            burst: 200,
            failed_auth: FailedAuthSettings::default(),
        }
    }
}

/// Per client address (an IPv6 /64): requests without a valid credential (none, a
/// malformed, unknown, revoked or expired API key, a wrong operator token). An
/// address past its budget is refused (`429`) whatever it presents, until the
/// budget refills.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailedAuthSettings {
    pub per_minute: u32,
    pub burst: u32,
}

impl Default for FailedAuthSettings {
    fn default() -> Self {
        FailedAuthSettings {
            per_minute: 120,
            burst: 60,
        }
    }
}

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

impl Config {
    /// The embedded defaults, or `path`, then `MODELROUTE_LISTEN`,
    /// `MODELROUTE_DATA_DIR`, `MODELROUTE_PLUGINS_DIR` and `MODELROUTE_PUBLIC_URL`.
    pub fn load(path: Option<&std::path::Path>) -> Result<Config> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?,
            None => EMBEDDED.to_string(),
        };
        let mut config: Config = toml::from_str(&text).context("parsing config")?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(listen) = env("MODELROUTE_LISTEN") {
            if env("MODELROUTE_PUBLIC_URL").is_none() {
                config.public_url = format!("http://{listen}");
            }
            config.listen = listen;
        }
        if let Some(dir) = env("MODELROUTE_DATA_DIR") {
            config.data_dir = dir.into();
        }
        if let Some(dir) = env("MODELROUTE_PLUGINS_DIR") {
            config.plugins_dir = dir.into();
        }
        if let Some(url) = env("MODELROUTE_PUBLIC_URL") {
            config.public_url = url;
        }
        config.public_url = config.public_url.trim_end_matches('/').to_string();
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for (index, provider) in self.providers.iter().enumerate() {
            if !names.insert(&provider.name) {
                bail!(
                    "providers[{index}].name: provider {:?} is configured twice",
                    provider.name
                );
            }
            provider
                .validate()
                .map_err(|error| anyhow::anyhow!("providers[{index}].{error}"))?;
        }
        if let Some(proxy) = &self.upstream.proxy
            && !url::Url::parse(proxy)
                .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
        {
            bail!("upstream.proxy: {proxy:?} is not an http or https URL");
        }
        if !(1..=365).contains(&self.files.default_ttl_days) {
            bail!("files.default_ttl_days must be between 1 and 365");
        }
        if !(1..=4096).contains(&self.plugins.call_threads) {
            bail!("plugins.call_threads must be between 1 and 4096");
        }
        if self.executions.max_attempts == 0 {
            bail!("executions.max_attempts must be at least 1");
        }
        self.webhooks.dns()?;
        let server = &self.server;
        for (name, value) in [
            ("header_read_timeout_ms", server.header_read_timeout_ms),
            ("body_idle_timeout_ms", server.body_idle_timeout_ms),
            ("idle_timeout_ms", server.idle_timeout_ms),
        ] {
            if value == 0 {
                bail!("server.{name} must be at least 1");
            }
        }
        Ok(())
    }
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

impl Config {
    /// Where webhooks may be delivered: `--dev` allows `http` and loopback unless
    /// the config says otherwise.
    pub fn webhook_policy(&self) -> crate::netguard::Policy {
        crate::netguard::Policy {
            allow_http: self.webhooks.allow_http.unwrap_or(self.dev),
            allow_loopback: self.webhooks.allow_loopback.unwrap_or(self.dev),
        }
    }

    /// Whether plain http may carry a provider's credential to loopback: `--dev`
    /// allows it unless the config says otherwise.
    pub fn loopback_http_credentials(&self) -> bool {
        self.upstream.loopback_http_credentials.unwrap_or(self.dev)
    }
}

/// The most a unit (an image, a second, a million tokens…) may be priced at: a
/// higher price is a typo (micro-dollars written as dollars), not a price.
pub const MAX_UNIT_PRICE: Micros = Micros(1_000_000_000);

impl ProviderConfig {
    /// The checks that need no adapter; the error starts with the field's path
    /// below `providers[i]`. (Those against the adapter are made when it is loaded.)
    fn validate(&self) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_serve_flux_four_times_an_editor_a_text_and_a_video_model() {
        let config: Config = toml::from_str(EMBEDDED).unwrap();
        config.validate().unwrap();
        let serving = |slug: &str| {
            config
                .providers
                .iter()
                .filter(|p| p.models.contains_key(slug))
                .count()
        };
        assert_eq!(serving("flux-1.1-pro"), 4);
        assert_eq!(serving("kling-video"), 1);
        assert_eq!(serving("llama-3.1-8b-instruct"), 1);
        assert_eq!(serving("flux-kontext-pro"), 2);
    }

    /// The config with one provider whose table ends with `extra`.
    fn with_provider(extra: &str) -> String {
        format!(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\nplugins_dir = \"p\"\npublic_url = \"http://127.0.0.1:1\"\n[[providers]]\nname = \"a\"\nadapter = \"replicate\"\n{extra}"
        )
    }

    fn refusal(extra: &str) -> String {
        let config: Config = toml::from_str(&with_provider(extra)).unwrap();
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn provider_mistakes_are_refused_naming_the_field() {
        let flux = "[providers.models.\"flux-1.1-pro\"]\n";
        let cases = [
            (
                format!("base_url = \"ftp://x\"\n{flux}"),
                "providers[0].base_url:",
            ),
            (
                format!("allowed_hosts = [\"a.example\", \"https://b.example/\"]\n{flux}"),
                "providers[0].allowed_hosts[1]:",
            ),
            (
                format!("credential_hosts = [\"b.example:x\"]\n{flux}"),
                "providers[0].credential_hosts[0]:",
            ),
            (
                format!("max_concurrency = 0\n{flux}"),
                "providers[0].max_concurrency:",
            ),
            (
                format!("health_path = \"health\"\n{flux}"),
                "providers[0].health_path:",
            ),
            (
                format!("{flux}weight = 0.0\n"),
                "providers[0].models.\"flux-1.1-pro\".weight:",
            ),
            (
                format!("{flux}price = {{ per_image = \"40000\" }}\n"),
                "providers[0].models.\"flux-1.1-pro\".price.per_image:",
            ),
            ("models = {}\n".to_string(), "providers[0].models:"),
        ];
        for (extra, field) in cases {
            let message = refusal(&extra);
            assert!(message.starts_with(field), "{extra}: {message}");
        }
        let config: Config = toml::from_str(&with_provider(&format!(
            "{flux}price = {{ per_image = \"1000\" }}\n"
        )))
        .unwrap();
        config
            .validate()
            .expect("a high price that is still a price");
    }

    #[test]
    fn webhook_dns_settings_take_addresses_with_or_without_a_port() {
        let mut settings = WebhookSettings {
            dns_servers: vec!["127.0.0.1:5353".into(), "::1".into()],
            ..WebhookSettings::default()
        };
        let dns = settings.dns().unwrap();
        assert_eq!(
            dns.servers,
            [
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(dns.timeout, std::time::Duration::from_secs(3));
        settings.dns_servers = vec!["ns.example".into()];
        assert!(settings.dns().is_err());
        settings.dns_servers = Vec::new();
        settings.dns_timeout_ms = 0;
        assert!(settings.dns().is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = format!("{EMBEDDED}\nlisten_port = 1\n");
        assert!(toml::from_str::<Config>(&text).is_err());
    }
}
