//! The guarded HTTP client: no redirects, no proxies, and a resolver that checks
//! every address again at connect time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::address::is_localhost_name;
use super::{Guard, Refusal};
impl Guard {
    /// A client for guarded requests: redirects are not followed, proxies are
    /// not used (a proxy would resolve names itself), and host names are
    /// resolved by a resolver that fails the connection when any address is not
    /// permitted, so every request is checked at connect time. The resulting
    /// error's source chain contains the [`Refusal`].
    ///
    /// reqwest does not resolve IP-literal hosts, so those bypass the resolver:
    /// call [`Policy::check_url`] on the URL before each send.
    pub fn client(&self, timeout: Duration, user_agent: &str) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(!self.policy.allow_http)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(user_agent)
            .dns_resolver(GuardedResolver(self.clone()))
            .build()?)
    }

    /// The addresses to connect to for `host`, if all of them are permitted.
    /// `localhost` names are loopback by definition and are not looked up.
    async fn resolve_for_delivery(&self, host: &str) -> Result<Vec<SocketAddr>, Refusal> {
        let addrs = if is_localhost_name(host) {
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]
        } else {
            self.resolver.lookup_for_delivery(host).await?
        };
        // Port 0: reqwest substitutes the URL's port.
        self.policy.require_all(host, to_socket_addrs(addrs, 0))
    }
}

pub(super) fn to_socket_addrs(addrs: Vec<IpAddr>, port: u16) -> Vec<SocketAddr> {
    addrs
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Resolves with the guard's resolver and refuses names with any non-permitted
/// address.
struct GuardedResolver(Guard);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let addrs = guard.resolve_for_delivery(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
