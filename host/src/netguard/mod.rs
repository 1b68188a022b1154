//! SSRF guard for requests the server makes to customer-supplied URLs (webhook
//! deliveries).
//!
//! A customer controls the URL, so without a guard they could make the server
//! call its own loopback services, the private network or a cloud metadata
//! endpoint. URLs must be https (plain http only when the operator allows it),
//! and every address a host resolves to must be globally routable; loopback can
//! be allowed for local development, every other non-global class never.
//! Redirects are not followed. [`Guard::client`] re-checks the addresses at
//! connect time, so a name cannot be re-pointed between check and use. Names are
//! resolved by the bounded asynchronous [`Resolver`].

mod address;
mod connector;
mod policy;
mod resolver;
#[cfg(test)]
mod tests;

use address::is_localhost_name;
pub use address::{AddressClass, classify};
use connector::to_socket_addrs;
pub use resolver::{DnsSettings, Resolver};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use url::{Host, Url};

/// What the operator relaxes for local development.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub allow_http: bool,
    pub allow_loopback: bool,
}

/// Why a URL was refused. The messages are shown to API clients.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("the URL scheme \"{0}\" is not allowed; use https")]
    SchemeNotAllowed(String),
    /// The address itself is left out of the message: it would tell a client what
    /// an internal name resolves to.
    #[error("the URL resolves to {desc}, which is not allowed", desc = classify(*.0).description())]
    ForbiddenAddress(IpAddr),
    #[error("the host {0} could not be resolved")]
    Unresolvable(String),
    /// The organization has as many lookups in flight as it may.
    #[error("too many webhook host names of this organization are being resolved at once")]
    TooManyLookups,
    /// The server has as many lookups in flight as it allows.
    #[error("too many webhook host names are being resolved at once")]
    ResolverBusy,
}

/// The operator's policy and the resolver: checks URLs when they are registered and
/// builds the client that checks them again at every connection.
#[derive(Clone)]
pub struct Guard {
    policy: Policy,
    resolver: Arc<Resolver>,
}

impl Guard {
    pub fn new(policy: Policy, resolver: Resolver) -> Guard {
        Guard {
            policy,
            resolver: Arc::new(resolver),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// How long a lookup may take.
    pub fn dns_timeout(&self) -> Duration {
        self.resolver.timeout()
    }

    /// [`Policy::check_url`], then resolve the host (a lookup made on behalf of
    /// `organization`, within its share of the resolver) and require every
    /// resolved address to be permitted.
    pub async fn check(&self, organization: &str, url: &str) -> Result<Url, Refusal> {
        let parsed = self.policy.check_url(url)?;
        if let Some(Host::Domain(name)) = parsed.host()
            && !is_localhost_name(name)
        {
            let addrs = self.resolver.lookup_for(organization, name).await?;
            self.policy.require_all(name, to_socket_addrs(addrs, 0))?;
        }
        Ok(parsed)
    }
}
