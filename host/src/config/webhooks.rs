//! Settings of outbound webhook deliveries.

use anyhow::{Context, Result, bail};
use serde::Deserialize;

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
