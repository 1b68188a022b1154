//! Settings of the server itself: testing switches, the upstream connection, client
//! timeouts and connection caps, rate limits.

use serde::Deserialize;

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
    /// where `GET /metrics` is also served without the operator token (an
    /// operator-only address, e.g. `127.0.0.1:9464`); none by default
    pub metrics_listen: Option<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            header_read_timeout_ms: 30_000,
            body_idle_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections_per_address: 2048,
            metrics_listen: None,
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
