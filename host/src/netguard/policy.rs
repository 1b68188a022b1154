//! URL validation against the operator's policy: scheme, credentials, and the
//! class of every address a host is or resolves to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use url::{Host, Url};

use super::address::{AddressClass, classify, is_localhost_name};
use super::{Policy, Refusal};
impl Policy {
    /// Whether a connection to `ip` is permitted: global addresses always,
    /// loopback only if `allow_loopback`, every other non-global class never.
    pub fn permits(&self, ip: IpAddr) -> bool {
        match classify(ip) {
            AddressClass::Global => true,
            AddressClass::Loopback => self.allow_loopback,
            _ => false,
        }
    }

    pub(super) fn require(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.permits(ip) {
            Ok(())
        } else {
            Err(Refusal::ForbiddenAddress(ip))
        }
    }

    /// Syntax, scheme and IP-literal checks only (no DNS). Returns the parsed
    /// URL. `localhost` names count as loopback here.
    pub fn check_url(&self, url: &str) -> Result<Url, Refusal> {
        let parsed = Url::parse(url).map_err(|e| Refusal::InvalidUrl(e.to_string()))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => return Err(Refusal::SchemeNotAllowed(other.to_owned())),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Refusal::InvalidUrl(
                "the URL must not contain a user name or password".into(),
            ));
        }
        match parsed.host() {
            None => return Err(Refusal::InvalidUrl("the URL has no host".into())),
            Some(Host::Ipv4(ip)) => self.require(IpAddr::V4(ip))?,
            Some(Host::Ipv6(ip)) => self.require(IpAddr::V6(ip))?,
            Some(Host::Domain(name)) if is_localhost_name(name) => {
                self.require(IpAddr::V4(Ipv4Addr::LOCALHOST))?
            }
            Some(Host::Domain(_)) => {}
        }
        Ok(parsed)
    }

    pub(super) fn require_all(
        &self,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        if addrs.is_empty() {
            return Err(Refusal::Unresolvable(host.to_owned()));
        }
        for addr in &addrs {
            self.require(addr.ip())?;
        }
        Ok(addrs)
    }
}
