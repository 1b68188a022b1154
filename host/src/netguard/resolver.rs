//! The asynchronous, bounded DNS resolver behind the SSRF guard.
//!
//! The system's `getaddrinfo` blocks a thread of tokio's shared blocking pool for
//! as long as a name server stays silent, so a client naming a domain whose name
//! server never answers could tie up that pool, and with it everything else that
//! uses it. Here lookups are plain asynchronous DNS queries (hickory), each with a
//! deadline, and the lookups in flight are capped: the API's checks per
//! organization and in total, the delivery client's connect-time lookups in a
//! budget of their own (so a flood of checks cannot delay deliveries). Past a cap a
//! lookup waits briefly for a place (a quarter of the timeout: long enough for a
//! burst of lookups of one new name to be answered from the cache once the first
//! is in), and is then refused as busy.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::Refusal;

/// How names are resolved, from the operator's `[webhooks]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// name servers to ask; empty: the system's (`/etc/resolv.conf`)
    pub servers: Vec<SocketAddr>,
    /// a lookup not answered in this time has failed
    pub timeout: Duration,
    /// the API's lookups in flight at once, all organizations together; the
    /// delivery client's connect-time lookups have a budget of this size of their own
    pub max_lookups: usize,
    /// the API's lookups in flight at once for one organization
    pub max_lookups_per_organization: usize,
}

pub struct Resolver {
    dns: TokioResolver,
    timeout: Duration,
    checks: Arc<Semaphore>,
    per_organization: usize,
    /// one small entry per organization that has had a name resolved
    organizations: Mutex<HashMap<String, Arc<Semaphore>>>,
    deliveries: Arc<Semaphore>,
}

/// A place among the lookups in flight, held while a lookup runs.
struct Place {
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Resolver {
    pub fn new(settings: &DnsSettings) -> anyhow::Result<Resolver> {
        let mut builder = if settings.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|error| {
                anyhow::anyhow!(
                    "reading the system's resolver configuration: {error}; name the servers in [webhooks] dns_servers"
                )
            })?
        } else {
            let servers = settings.servers.iter().map(|server| {
                let mut connections = vec![ConnectionConfig::udp(), ConnectionConfig::tcp()];
                for connection in &mut connections {
                    connection.port = server.port();
                }
                NameServerConfig::new(server.ip(), true, connections)
            });
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers.collect()),
                TokioRuntimeProvider::default(),
            )
        };
        builder.options_mut().timeout = settings.timeout;
        Ok(Resolver {
            dns: builder.build()?,
            timeout: settings.timeout,
            checks: Arc::new(Semaphore::new(settings.max_lookups)),
            per_organization: settings.max_lookups_per_organization,
            organizations: Mutex::default(),
            deliveries: Arc::new(Semaphore::new(settings.max_lookups)),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a lookup past a cap waits for a place.
    fn place_wait(&self) -> Duration {
        self.timeout / 4
    }

    /// The addresses of `host`, for a check the API makes on behalf of
    /// `organization`.
    pub async fn lookup_for(&self, organization: &str, host: &str) -> Result<Vec<IpAddr>, Refusal> {
        let own = {
            let mut organizations = self.organizations.lock().expect("organizations poisoned");
            organizations
                .entry(organization.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_organization)))
                .clone()
        };
        let deadline = Instant::now() + self.place_wait();
        let own = tokio::time::timeout_at(deadline, own.acquire_owned())
            .await
            .map_err(|_| Refusal::TooManyLookups)?
            .expect("never closed");
        let total = tokio::time::timeout_at(deadline, self.checks.clone().acquire_owned())
            .await
            .map_err(|_| Refusal::ResolverBusy)?
            .expect("never closed");
        self.query(
            Place {
                _permits: vec![own, total],
            },
            host,
        )
        .await
    }

    /// The addresses of `host`, for the delivery client's connection.
    pub async fn lookup_for_delivery(&self, host: &str) -> Result<Vec<IpAddr>, Refusal> {
        let permit =
            tokio::time::timeout(self.place_wait(), self.deliveries.clone().acquire_owned())
                .await
                .map_err(|_| Refusal::ResolverBusy)?
                .expect("never closed");
        self.query(
            Place {
                _permits: vec![permit],
            },
            host,
        )
        .await
    }

    /// One lookup, within the timeout, holding `_place` until it ends.
    async fn query(&self, _place: Place, host: &str) -> Result<Vec<IpAddr>, Refusal> {
        match tokio::time::timeout(self.timeout, self.dns.lookup_ip(host)).await {
            Ok(Ok(found)) => Ok(found.iter().collect()),
            Ok(Err(error)) => {
                tracing::debug!(host, %error, "a webhook host did not resolve");
                Err(Refusal::Unresolvable(host.to_owned()))
            }
            Err(_) => {
                tracing::debug!(host, timeout = ?self.timeout, "a webhook host's lookup timed out");
                Err(Refusal::Unresolvable(host.to_owned()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UdpSocket;

    /// A name server on loopback that receives queries and never answers.
    async fn silent_name_server() -> (UdpSocket, SocketAddr) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        (socket, addr)
    }

    fn settings(server: SocketAddr, per_organization: usize) -> DnsSettings {
        DnsSettings {
            servers: vec![server],
            timeout: Duration::from_millis(300),
            max_lookups: 4,
            max_lookups_per_organization: per_organization,
        }
    }

    #[tokio::test]
    async fn a_silent_name_server_fails_the_lookup_within_the_timeout() {
        let (_socket, addr) = silent_name_server().await;
        let resolver = Resolver::new(&settings(addr, 2)).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            resolver.lookup_for("org_a", "hook.stall.example").await,
            Err(Refusal::Unresolvable("hook.stall.example".into()))
        );
        assert_eq!(
            resolver.lookup_for_delivery("hook.stall.example").await,
            Err(Refusal::Unresolvable("hook.stall.example".into()))
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn past_its_places_an_organization_waits_then_is_refused_and_others_are_not() {
        let (_socket, addr) = silent_name_server().await;
        let resolver = Arc::new(Resolver::new(&settings(addr, 2)).unwrap());
        // Two take the organization's places; the third waits a quarter of the
        // timeout, while those two wait for the silent server the whole timeout.
        let flood: Vec<_> = (0..3)
            .map(|_| {
                let resolver = resolver.clone();
                tokio::spawn(
                    async move { resolver.lookup_for("org_a", "hook.stall.example").await },
                )
            })
            .collect();
        tokio::task::yield_now().await;
        // Another organization still gets one of the total's places.
        let other = resolver.lookup_for("org_b", "hook.stall.example").await;
        assert_eq!(
            other,
            Err(Refusal::Unresolvable("hook.stall.example".into()))
        );
        let mut outcomes = Vec::new();
        for lookup in flood {
            outcomes.push(lookup.await.unwrap());
        }
        outcomes.sort_by_key(|outcome| format!("{outcome:?}"));
        assert_eq!(
            outcomes,
            [
                Err(Refusal::TooManyLookups),
                Err(Refusal::Unresolvable("hook.stall.example".into())),
                Err(Refusal::Unresolvable("hook.stall.example".into())),
            ]
        );
    }

    #[tokio::test]
    async fn past_the_total_every_organization_is_refused_as_busy() {
        let (_socket, addr) = silent_name_server().await;
        let mut settings = settings(addr, 2);
        settings.max_lookups = 1;
        let resolver = Arc::new(Resolver::new(&settings).unwrap());
        let first = {
            let resolver = resolver.clone();
            tokio::spawn(async move { resolver.lookup_for("org_a", "hook.stall.example").await })
        };
        // The current-thread runtime runs the first lookup up to its query.
        tokio::task::yield_now().await;
        assert_eq!(
            resolver.lookup_for("org_b", "hook.stall.example").await,
            Err(Refusal::ResolverBusy)
        );
        assert!(first.await.unwrap().is_err());
    }
}
