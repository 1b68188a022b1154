//! Operator configuration: an embedded default (`default-config.toml`), replaced by a
//! file given with `--config`, then a few environment overrides.

mod executions;
mod files;
mod providers;
mod server;
mod webhooks;

pub use executions::{ExecutionSettings, ModelSettings, StreamTimeouts};
pub use files::FileSettings;
pub use providers::{
    MAX_UNIT_PRICE, PriceOverride, ProviderConfig, ProviderModelConfig, check_base_url,
};
pub use server::{
    FailedAuthSettings, RateLimitSettings, ServerSettings, TestingSettings, UpstreamSettings,
};
pub use webhooks::WebhookSettings;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::PathBuf;

use crate::plugins::PluginLimits;

pub const EMBEDDED: &str = include_str!("../default-config.toml");

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
        self.executions.check_timeouts()?;
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
