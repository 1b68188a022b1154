//! Provider health probes: every `[upstream] health_interval_seconds` on the service
//! clock (so tests drive it), each provider is probed, all at once: a `GET` of its
//! `health_path` when the operator configured one (2xx is healthy), else a TCP
//! connect to its base URL's host and port. A failed probe marks the provider down:
//! it takes no new attempts and its models show `available: false`, until a probe
//! succeeds. With a proxy configured, only `health_path` probes run (a direct
//! connect would say nothing about the route traffic takes).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Provider, Router};
use crate::clock;
use crate::config::UpstreamSettings;
use crate::upstream::Upstream;

/// The longest a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a provider's last probe reached it; up until a probe says otherwise.
#[derive(Debug)]
pub struct Health(AtomicBool);

impl Default for Health {
    fn default() -> Self {
        Health(AtomicBool::new(true))
    }
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }
}

/// Probes every provider now, then every `health_interval_seconds` (0: never).
pub fn start(router: Arc<Router>, upstream: Upstream, settings: &UpstreamSettings) {
    if settings.health_interval_seconds == 0 {
        return;
    }
    let interval =
        chrono::Duration::seconds(settings.health_interval_seconds.min(i64::MAX as u64) as i64);
    let connect = settings.proxy.is_none();
    tokio::spawn(async move {
        let mut next = clock::now();
        loop {
            // Re-checked every second, so a jump of the driven clock is never missed.
            while clock::now() < next {
                clock::sleep_until(next, Duration::from_secs(1)).await;
            }
            // Scheduled before probing: a jump during a probe starts the next one.
            next = clock::now() + interval;
            router.probe_all(&upstream, connect).await;
        }
    });
}

impl Router {
    /// Probes every provider with a loaded adapter at once and records the results.
    async fn probe_all(&self, upstream: &Upstream, connect: bool) {
        let probes = self.providers.iter().filter_map(|provider| {
            let plugin = self.registry.get(&provider.adapter)?;
            let base_url = provider.base_url(&plugin);
            Some(probe(provider, base_url, upstream, connect))
        });
        futures_util::future::join_all(probes).await;
    }
}

async fn probe(provider: &Provider, base_url: String, upstream: &Upstream, connect: bool) {
    let up = match &provider.health_path {
        Some(path) => {
            upstream
                .healthy(&format!("{base_url}{path}"), PROBE_TIMEOUT)
                .await
        }
        None if connect => reachable(&base_url).await,
        None => return,
    };
    if up != provider.health.is_up() {
        if up {
            tracing::info!(provider = %provider.name, "provider reachable again");
        } else {
            tracing::warn!(provider = %provider.name, "provider health probe failed: no new attempts go to it");
        }
    }
    provider.health.set(up);
}

/// Whether a TCP connection to `base_url`'s host and port opens in time.
async fn reachable(base_url: &str) -> bool {
    let Ok(url) = url::Url::parse(base_url) else {
        return false;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    let connect = tokio::net::TcpStream::connect(format!("{host}:{port}"));
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, connect).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_a_listening_one_reachable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = format!("http://{}", listener.local_addr().unwrap());
        assert!(reachable(&open).await);
        drop(listener);
        assert!(!reachable(&open).await, "nothing listens any more");
        assert!(!reachable("not a url").await);
    }
}
