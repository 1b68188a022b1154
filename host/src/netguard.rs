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

mod resolver;

pub use resolver::{DnsSettings, Resolver};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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

/// The class of an address, for messages and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Global,
    Loopback,
    Private,
    LinkLocal,
    UniqueLocal,
    /// Cloud instance metadata and similar host-local control endpoints.
    Metadata,
    Unspecified,
    /// Any other special-purpose range: multicast, broadcast, documentation,
    /// CGNAT, benchmarking, protocol assignments, unallocated IPv6 space, ….
    Reserved,
}

impl AddressClass {
    fn description(self) -> &'static str {
        match self {
            AddressClass::Global => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::UniqueLocal => "a unique-local address",
            AddressClass::Metadata => "a cloud metadata address",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Reserved => "a reserved address",
        }
    }
}

use AddressClass::{LinkLocal, Loopback, Metadata, Private, Reserved, UniqueLocal, Unspecified};

/// Non-global IPv4 ranges, first match wins (so the metadata hosts come before
/// the link-local range that holds most of them).
const V4_RANGES: &[(Ipv4Addr, u8, AddressClass)] = &[
    (Ipv4Addr::new(169, 254, 169, 254), 32, Metadata), // AWS, GCP, Azure IMDS, …
    (Ipv4Addr::new(169, 254, 170, 2), 32, Metadata),   // AWS ECS task credentials
    (Ipv4Addr::new(100, 100, 100, 200), 32, Metadata), // Alibaba Cloud
    (Ipv4Addr::new(168, 63, 129, 16), 32, Metadata),   // Azure wireserver (a public address)
    (Ipv4Addr::new(0, 0, 0, 0), 8, Unspecified),
    (Ipv4Addr::new(127, 0, 0, 0), 8, Loopback),
    (Ipv4Addr::new(10, 0, 0, 0), 8, Private),
    (Ipv4Addr::new(172, 16, 0, 0), 12, Private),
    (Ipv4Addr::new(192, 168, 0, 0), 16, Private),
    (Ipv4Addr::new(169, 254, 0, 0), 16, LinkLocal),
    (Ipv4Addr::new(100, 64, 0, 0), 10, Reserved), // CGNAT shared space
    (Ipv4Addr::new(192, 0, 0, 0), 24, Reserved),  // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24, Reserved),  // TEST-NET-1
    (Ipv4Addr::new(192, 88, 99, 0), 24, Reserved), // 6to4 relay anycast (deprecated)
    (Ipv4Addr::new(198, 18, 0, 0), 15, Reserved), // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24, Reserved), // TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24, Reserved), // TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4, Reserved),   // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4, Reserved),   // future use, broadcast
];

/// Non-global IPv6 ranges inside the global-unicast block 2000::/3, plus those
/// outside it that get a class of their own; everything else outside 2000::/3
/// (site-local fec0::/10, multicast ff00::/8, discard-only 100::/64, …) is
/// [`AddressClass::Reserved`]. First match wins.
const V6_RANGES: &[(Ipv6Addr, u8, AddressClass)] = &[
    // AWS IMDS
    (
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        128,
        Metadata,
    ),
    (Ipv6Addr::UNSPECIFIED, 128, Unspecified),
    (Ipv6Addr::LOCALHOST, 128, Loopback),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, LinkLocal),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, UniqueLocal),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23, Reserved), // protocol assignments, Teredo
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, Reserved), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, Reserved), // documentation (RFC 9637)
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16, Reserved), // SRv6 SIDs
];

/// Whether `ip` lies in `net/prefix`, both being `width`-bit addresses.
fn in_range(ip: u128, net: u128, prefix: u8, width: u32) -> bool {
    let host_bits = width - u32::from(prefix);
    ip.checked_shr(host_bits) == net.checked_shr(host_bits)
}

/// The class of an address. IPv6 forms that embed an IPv4 address (mapped,
/// compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) take the class of the
/// embedded address.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let bits = u128::from(u32::from(ip));
    V4_RANGES
        .iter()
        .find(|(net, prefix, _)| in_range(bits, u128::from(u32::from(*net)), *prefix, 32))
        .map_or(AddressClass::Global, |&(_, _, class)| class)
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let bits = u128::from(ip);
    if let Some(&(_, _, class)) = V6_RANGES
        .iter()
        .find(|(net, prefix, _)| in_range(bits, u128::from(*net), *prefix, 128))
    {
        return class;
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    if bits >> 125 == 0b001 {
        AddressClass::Global
    } else {
        AddressClass::Reserved
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:0:0/96`), IPv4-compatible
/// (`::/96`), NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff | 0, _, _] | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => {
            Some(Ipv4Addr::from(bits as u32))
        }
        [0x2002, ..] => Some(Ipv4Addr::from((bits >> 80) as u32)),
        _ => None,
    }
}

/// `localhost` and `*.localhost` are loopback by definition (RFC 6761),
/// whatever DNS says.
fn is_localhost_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

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

    fn require(&self, ip: IpAddr) -> Result<(), Refusal> {
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

    fn require_all(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refusal> {
        if addrs.is_empty() {
            return Err(Refusal::Unresolvable(host.to_owned()));
        }
        for addr in &addrs {
            self.require(addr.ip())?;
        }
        Ok(addrs)
    }
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

fn to_socket_addrs(addrs: Vec<IpAddr>, port: u16) -> Vec<SocketAddr> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const STRICT: Policy = Policy {
        allow_http: false,
        allow_loopback: false,
    };
    const DEV: Policy = Policy {
        allow_http: true,
        allow_loopback: true,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn forbidden(s: &str) -> Refusal {
        Refusal::ForbiddenAddress(ip(s))
    }

    /// A guard resolving with the system's configuration.
    fn guard(policy: Policy) -> Guard {
        let settings = DnsSettings {
            servers: Vec::new(),
            timeout: Duration::from_secs(3),
            max_lookups: 8,
            max_lookups_per_organization: 8,
        };
        Guard::new(policy, Resolver::new(&settings).unwrap())
    }

    /// Hosts that must be refused whenever loopback is not allowed.
    const MATRIX: &[&str] = &[
        "127.0.0.1",
        "127.255.0.9",
        "[::1]",
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.0.1",
        "192.168.255.255",
        "169.254.169.254",
        "[fc00::1]",
        "[fdff:ffff::1]",
        "0.0.0.0",
        "localhost",
        "foo.localhost",
        "LOCALHOST.",
    ];

    #[test]
    fn classify_ranges() {
        let cases = [
            ("127.0.0.1", Loopback),
            ("127.255.255.255", Loopback),
            ("::1", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.0", Private),
            ("172.31.255.255", Private),
            ("172.32.0.1", AddressClass::Global),
            ("172.15.255.255", AddressClass::Global),
            ("192.168.1.1", Private),
            ("169.254.1.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("169.254.169.254", Metadata),
            ("169.254.170.2", Metadata),
            ("fd00:ec2::254", Metadata),
            ("100.100.100.200", Metadata),
            ("168.63.129.16", Metadata),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("224.0.0.1", Reserved),
            ("255.255.255.255", Reserved),
            ("240.0.0.1", Reserved),
            ("192.0.2.1", Reserved),
            ("198.51.100.1", Reserved),
            ("203.0.113.1", Reserved),
            ("100.64.0.1", Reserved),
            ("100.127.255.255", Reserved),
            ("198.18.0.1", Reserved),
            ("198.19.255.255", Reserved),
            ("192.0.0.8", Reserved),
            ("2001:db8::1", Reserved),
            ("100::1", Reserved),
            ("fec0::1", Reserved),
            ("ff02::1", Reserved),
            ("2001::1", Reserved),
            ("93.184.216.34", AddressClass::Global),
            ("8.8.8.8", AddressClass::Global),
            ("100.128.0.1", AddressClass::Global),
            ("2606:4700::1", AddressClass::Global),
            ("2a00:1450::1", AddressClass::Global),
        ];
        for (addr, class) in cases {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn classify_embedded_ipv4() {
        let cases = [
            ("::ffff:10.0.0.1", Private),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", Metadata),
            ("::ffff:93.184.216.34", AddressClass::Global),
            ("::127.0.0.1", Loopback),
            ("::10.0.0.1", Private),
            ("64:ff9b::7f00:1", Loopback),
            ("64:ff9b::a9fe:a9fe", Metadata),
            ("64:ff9b::10.0.0.1", Private),
            ("64:ff9b::93.184.216.34", AddressClass::Global),
            ("2002:7f00:1::1", Loopback),
            ("2002:c0a8:101::1", Private),
            ("2002:5db8:d822::1", AddressClass::Global),
        ];
        for (addr, class) in cases {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn permits_only_loopback_when_allowed() {
        let allow = Policy {
            allow_http: false,
            allow_loopback: true,
        };
        for a in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(!STRICT.permits(ip(a)), "{a}");
            assert!(allow.permits(ip(a)), "{a}");
        }
        for a in [
            "10.0.0.1",
            "169.254.169.254",
            "fd00::1",
            "0.0.0.0",
            "::",
            "fe80::1",
        ] {
            assert!(!allow.permits(ip(a)), "{a}");
        }
        assert!(STRICT.permits(ip("93.184.216.34")));
        assert!(STRICT.permits(ip("2606:4700::1")));
    }

    #[test]
    fn check_url_refuses_matrix() {
        for host in MATRIX {
            let url = format!("https://{host}/hook");
            assert!(
                matches!(STRICT.check_url(&url), Err(Refusal::ForbiddenAddress(_))),
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn check_refuses_matrix() {
        let strict = guard(STRICT);
        for host in MATRIX {
            let url = format!("https://{host}:8443/hook");
            assert!(
                matches!(
                    strict.check("org", &url).await,
                    Err(Refusal::ForbiddenAddress(_))
                ),
                "{url}"
            );
        }
    }

    /// The "a name resolving to loopback", through the system resolver
    /// rather than the `localhost` name rule: the machine's own host name and the
    /// usual `/etc/hosts` aliases, whichever resolve here to non-global addresses.
    #[tokio::test]
    async fn a_name_resolving_to_an_internal_address_is_refused() {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let strict = guard(STRICT);
        let mut checked = Vec::new();
        for name in [
            hostname.trim(),
            "ip6-localhost",
            "ip6-loopback",
            "localhost.localdomain",
        ] {
            let Ok(addrs) = tokio::net::lookup_host((name, 443)).await else {
                continue;
            };
            let addrs: Vec<IpAddr> = addrs.map(|addr| addr.ip()).collect();
            if addrs.is_empty() || addrs.iter().any(|ip| classify(*ip) == AddressClass::Global) {
                continue;
            }
            let refusal = strict.check("org", &format!("https://{name}/hook")).await;
            assert!(
                matches!(refusal, Err(Refusal::ForbiddenAddress(ip)) if addrs.contains(&ip)),
                "{name} resolves to {addrs:?}: {refusal:?}"
            );
            checked.push(name.to_owned());
        }
        assert!(
            !checked.is_empty(),
            "no name on this machine resolves to an internal address"
        );
    }

    #[tokio::test]
    async fn dev_policy_allows_loopback_only() {
        let dev = guard(DEV);
        for url in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://localhost:8080/",
        ] {
            assert!(dev.check("org", url).await.is_ok(), "{url}");
        }
        for (url, addr) in [
            ("http://10.0.0.1/", "10.0.0.1"),
            (
                "http://169.254.169.254/latest/meta-data/",
                "169.254.169.254",
            ),
            ("http://[fd00::1]/", "fd00::1"),
            ("http://0.0.0.0:8080/", "0.0.0.0"),
        ] {
            assert_eq!(dev.check("org", url).await, Err(forbidden(addr)), "{url}");
        }
    }

    #[tokio::test]
    async fn global_literals_permitted() {
        let strict = guard(STRICT);
        for url in ["https://93.184.216.34/hook", "https://[2606:4700::1]:8443/"] {
            assert_eq!(strict.check("org", url).await.unwrap().as_str(), url);
        }
    }

    #[test]
    fn scheme_rules() {
        assert_eq!(
            STRICT.check_url("http://93.184.216.34/"),
            Err(Refusal::SchemeNotAllowed("http".into()))
        );
        let http = Policy {
            allow_http: true,
            allow_loopback: false,
        };
        assert!(http.check_url("http://93.184.216.34/").is_ok());
        assert_eq!(
            http.check_url("http://127.0.0.1/"),
            Err(forbidden("127.0.0.1"))
        );
        for url in [
            "ftp://93.184.216.34/",
            "file:///etc/passwd",
            "gopher://a.b/",
        ] {
            assert!(
                matches!(http.check_url(url), Err(Refusal::SchemeNotAllowed(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn odd_ipv4_literals_normalized() {
        for host in [
            "0x7f.1",
            "2130706433",
            "017700000001",
            "127.1",
            "0x7f000001",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
        ] {
            let url = format!("https://{host}/");
            assert!(
                matches!(STRICT.check_url(&url), Err(Refusal::ForbiddenAddress(a)) if a.is_loopback() || a == ip("::ffff:127.0.0.1")),
                "{url}"
            );
        }
        assert_eq!(STRICT.check_url("https://0/"), Err(forbidden("0.0.0.0")));
        assert_eq!(
            STRICT.check_url("https://0xa9.0xfe.0xa9.0xfe/"),
            Err(forbidden("169.254.169.254"))
        );
        assert_eq!(
            STRICT.check_url("https://167772161/"),
            Err(forbidden("10.0.0.1"))
        );
    }

    #[test]
    fn invalid_urls() {
        for url in [
            "https://user:pass@93.184.216.34/",
            "https://user@93.184.216.34/",
            "https://:pass@93.184.216.34/",
            "not a url",
            "https://",
            "/relative/path",
        ] {
            assert!(
                matches!(STRICT.check_url(url), Err(Refusal::InvalidUrl(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn every_resolved_address_must_be_permitted() {
        let sa = |s: &str| SocketAddr::new(ip(s), 443);
        assert!(
            STRICT
                .require_all("h", vec![sa("93.184.216.34"), sa("2606:4700::1")])
                .is_ok()
        );
        assert_eq!(
            STRICT.require_all("h", vec![sa("93.184.216.34"), sa("10.0.0.1")]),
            Err(forbidden("10.0.0.1"))
        );
        assert_eq!(
            STRICT.require_all("h", vec![]),
            Err(Refusal::Unresolvable("h".into()))
        );
    }

    #[test]
    fn messages() {
        assert_eq!(
            forbidden("10.0.0.1").to_string(),
            "the URL resolves to a private address, which is not allowed"
        );
        assert_eq!(
            forbidden("169.254.169.254").to_string(),
            "the URL resolves to a cloud metadata address, which is not allowed"
        );
        assert_eq!(
            forbidden("::").to_string(),
            "the URL resolves to an unspecified address, which is not allowed"
        );
    }

    /// Answers each connection on `listener` with `response`.
    fn serve(listener: TcpListener, response: &'static str) {
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
    }

    fn refusal_in(err: &reqwest::Error) -> Option<&Refusal> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = source {
            if let Some(refusal) = e.downcast_ref::<Refusal>() {
                return Some(refusal);
            }
            source = e.source();
        }
        None
    }

    #[tokio::test]
    async fn client_refuses_loopback_at_connect_time() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        serve(
            listener,
            "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
        );
        let url = format!("http://localhost:{port}/");

        let strict_http = Policy {
            allow_http: true,
            allow_loopback: false,
        };
        let client = guard(strict_http)
            .client(Duration::from_secs(5), "test")
            .unwrap();
        let err = client.get(&url).send().await.unwrap_err();
        assert!(
            matches!(refusal_in(&err), Some(Refusal::ForbiddenAddress(_))),
            "{err:?}"
        );

        let client = guard(DEV).client(Duration::from_secs(5), "test").unwrap();
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn client_does_not_follow_redirects() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        serve(
            listener,
            "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\ncontent-length: 0\r\n\r\n",
        );
        let client = guard(DEV).client(Duration::from_secs(5), "test").unwrap();
        let response = client
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::FOUND);
    }

    #[tokio::test]
    async fn client_refuses_http_unless_allowed() {
        let client = guard(STRICT)
            .client(Duration::from_secs(5), "test")
            .unwrap();
        let err = client.get("http://localhost:1/").send().await.unwrap_err();
        assert!(err.is_builder(), "{err:?}");
    }
}
