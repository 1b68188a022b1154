//! Operator configuration: an embedded default (`default-config.toml`), replaced by a
//! file given with `--config`, then a few environment overrides.

mod executions;
mod files;
mod models;
mod providers;
mod server;
mod store;
mod webhooks;

pub use executions::{ExecutionSettings, ModelSettings, StreamTimeouts};
pub use files::{FileSettings, S3Settings, StorageSettings};
pub use models::{DeclaredModel, check_slug};
pub use providers::{
    MAX_UNIT_PRICE, PriceOverride, ProviderConfig, ProviderModelConfig, check_base_url,
};
pub use server::{
    FailedAuthSettings, RateLimitSettings, ServerSettings, TestingSettings, UpstreamSettings,
};
pub use store::{Backend, Durability, StoreSettings};
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
    pub store: StoreSettings,
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
    /// models the operator declares, served by adapters of a generic wire format
    #[serde(default)]
    pub models: Vec<DeclaredModel>,
    /// Development conveniences (`--dev`): a bootstrap organization and key.
    #[serde(skip)]
    pub dev: bool,
}

impl Config {
    /// The embedded defaults, or `path`, then `MODELROUTE_LISTEN`,
    /// `MODELROUTE_DATA_DIR`, `MODELROUTE_PLUGINS_DIR`, `MODELROUTE_PUBLIC_URL` and
    /// `MODELROUTE_DATABASE_URL`.
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
        config.store.resolve(env("MODELROUTE_DATABASE_URL"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let mut declared = std::collections::HashMap::new();
        for (index, model) in self.models.iter().enumerate() {
            model
                .validate()
                .map_err(|error| anyhow::anyhow!("models[{index}].{error}"))?;
            if let Some(first) = declared.insert(model.slug.as_str(), index) {
                bail!(
                    "models[{index}].slug: {:?} is declared twice (models[{first}] too)",
                    model.slug
                );
            }
        }
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
            for (slug, model) in &provider.models {
                if declared.contains_key(slug.as_str()) && model.provider_model.is_none() {
                    bail!(
                        "providers[{index}].models.{slug:?}.provider_model: required for a model the operator declares (the provider's own name for it)"
                    );
                }
            }
        }
        if let Some(proxy) = &self.upstream.proxy
            && !url::Url::parse(proxy)
                .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
        {
            bail!("upstream.proxy: {proxy:?} is not an http or https URL");
        }
        if let StorageSettings::S3(s3) = &self.files.storage
            && s3.bucket.trim().is_empty()
        {
            bail!("files.storage.bucket must name the bucket");
        }
        if !(1..=365).contains(&self.files.default_ttl_days) {
            bail!("files.default_ttl_days must be between 1 and 365");
        }
        if !(1..=4096).contains(&self.plugins.concurrent_calls) {
            bail!("plugins.concurrent_calls must be between 1 and 4096");
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
        if let Some(address) = &server.metrics_listen
            && address.parse::<std::net::SocketAddr>().is_err()
        {
            bail!(
                "server.metrics_listen: {address:?} is not an IP address and port (e.g. \"127.0.0.1:9464\")"
            );
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

    /// Configs written when each adapter call had a thread still start.
    #[test]
    fn plugins_call_threads_is_read_as_concurrent_calls() {
        let base = with_provider("[providers.models.\"flux-1.1-pro\"]\n");
        let read = |plugins: &str| -> Result<Config, toml::de::Error> {
            toml::from_str(&format!("{base}\n{plugins}"))
        };
        let old = read("[plugins]\ncall_threads = 8").unwrap();
        assert_eq!(old.plugins.concurrent_calls, 8);
        let new = read("[plugins]\nconcurrent_calls = 9").unwrap();
        assert_eq!(new.plugins.concurrent_calls, 9);
        assert!(read("[plugins]\ncall_threads = 8\nconcurrent_calls = 9").is_err());
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

    /// The config with an openai provider serving `qwen` and the declarations
    /// `models` (TOML of `[[models]]` tables).
    fn with_declared(models: &str, provider_model: &str) -> String {
        format!(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\nplugins_dir = \"p\"\npublic_url = \"http://127.0.0.1:1\"\n[[providers]]\nname = \"a\"\nadapter = \"openai\"\n[providers.models.\"qwen\"]\n{provider_model}\n{models}"
        )
    }

    const QWEN: &str = "[[models]]\nslug = \"qwen\"\nmodality = \"text\"\ndescription = \"An open chat model.\"\ninput = \"chat\"\nprice = { per_million_input_tokens = \"0.9\", per_million_output_tokens = \"0.9\" }\n";

    fn declared_refusal(models: &str) -> String {
        let text = with_declared(models, "provider_model = \"Qwen/Qwen2.5\"");
        let config: Config = toml::from_str(&text).unwrap();
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn a_good_declaration_is_taken_with_a_preset_or_an_inline_schema() {
        let text = with_declared(QWEN, "provider_model = \"Qwen/Qwen2.5\"");
        let config: Config = toml::from_str(&text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.models[0].preset(), "chat");
        assert_eq!(
            config.models[0].schema(),
            *crate::plugins::catalogue::preset("chat").unwrap()
        );
        let inline = QWEN.replace(
            "input = \"chat\"",
            "input = \"chat\"\ninput_schema = '{\"type\": \"object\", \"required\": [\"messages\"]}'",
        );
        let config: Config =
            toml::from_str(&with_declared(&inline, "provider_model = \"q\"")).unwrap();
        config.validate().unwrap();
        assert_eq!(config.models[0].schema()["required"][0], "messages");
        let table = QWEN.replace(
            "input = \"chat\"",
            "input = \"chat\"\ninput_schema = { type = \"object\", required = [\"messages\"] }",
        );
        let config: Config =
            toml::from_str(&with_declared(&table, "provider_model = \"q\"")).unwrap();
        config.validate().unwrap();
        assert_eq!(config.models[0].schema()["type"], "object");
    }

    #[test]
    fn bad_declarations_are_refused_naming_the_field() {
        let swap = |from: &str, to: &str| QWEN.replace(from, to);
        let cases = [
            (
                swap("slug = \"qwen\"", "slug = \"Qwen 2\""),
                "models[0].slug: \"Qwen 2\" is not a slug",
            ),
            (
                swap("slug = \"qwen\"", "slug = \"llama-3.1-8b-instruct\""),
                "models[0].slug: \"llama-3.1-8b-instruct\" is a canonical model",
            ),
            (
                swap("input = \"chat\"", "input = \"chatt\""),
                "models[0].input: unknown preset \"chatt\" (presets: chat, ",
            ),
            (swap("input = \"chat\"\n", ""), "models[0].input: required"),
            (
                swap("modality = \"text\"", "modality = \"image\""),
                "models[0].modality: \"image\", but the \"chat\" preset is for text models",
            ),
            (
                swap("modality = \"text\"", "modality = \"speech\""),
                "models[0].modality: \"speech\" is none of",
            ),
            (
                swap(
                    "description = \"An open chat model.\"",
                    "description = \" \"",
                ),
                "models[0].description: must not be empty",
            ),
            (
                swap(
                    "input = \"chat\"",
                    "input = \"chat\"\ninput_schema = { type = \"objekt\" }",
                ),
                "models[0].input_schema: not a valid JSON Schema",
            ),
            (
                swap(
                    "input = \"chat\"",
                    "input = \"chat\"\ninput_schema = \"{not json\"",
                ),
                "models[0].input_schema: not JSON",
            ),
            (
                swap(
                    "input = \"chat\"",
                    "input = \"chat\"\ninput_schema = \"[1]\"",
                ),
                "models[0].input_schema: a JSON Schema must be an object",
            ),
            (
                swap(
                    "per_million_input_tokens = \"0.9\"",
                    "per_million_input_tokens = \"9000\"",
                ),
                "models[0].price.per_million_input_tokens: 9000 USD is more than",
            ),
            (
                swap(
                    "price = { per_million_input_tokens = \"0.9\", per_million_output_tokens = \"0.9\" }",
                    "price = { per_request = \"0\" }",
                ),
                "models[0].price: no unit is priced above zero",
            ),
            (
                swap(
                    "price = { per_million_input_tokens = \"0.9\", per_million_output_tokens = \"0.9\" }\n",
                    "",
                ),
                "models[0].price: required",
            ),
            (
                format!("{QWEN}{QWEN}"),
                "models[1].slug: \"qwen\" is declared twice",
            ),
        ];
        for (models, expected) in cases {
            let message = declared_refusal(&models);
            assert!(message.starts_with(expected), "{models}: {message}");
        }
        // Each provider serving a declared model names it in its own terms.
        let text = with_declared(QWEN, "");
        let config: Config = toml::from_str(&text).unwrap();
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.starts_with("providers[0].models.\"qwen\".provider_model: required"),
            "{message}"
        );
        // An unknown key is a parse error, naming it.
        let text = with_declared(&format!("{QWEN}inputs = \"chat\"\n"), "");
        let error = toml::from_str::<Config>(&text).unwrap_err().to_string();
        assert!(error.contains("inputs"), "{error}");
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

    #[test]
    fn a_metrics_address_is_optional_and_a_bad_one_is_refused_naming_the_field() {
        let mut config: Config = toml::from_str(EMBEDDED).unwrap();
        assert_eq!(config.server.metrics_listen, None);
        config.server.metrics_listen = Some("127.0.0.1:9464".into());
        config.validate().unwrap();
        config.server.metrics_listen = Some("localhost".into());
        let error = config.validate().unwrap_err().to_string();
        assert!(error.starts_with("server.metrics_listen: "), "{error}");
    }
}
