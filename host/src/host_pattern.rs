//! Host lists: the `host` or `host:port` entries operators and manifests write, and
//! whether a URL is one of them.

/// A `host` or `host:port` an operator or a manifest names (IPv6 in brackets).
/// Without a port it means the host on the default port of the URL's scheme (443
/// for https, 80 for http) and no other; with one, exactly that port, so
/// `api.example.com:443` and `api.example.com` both match `https://api.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// as the URL parser writes it (lower case, IPv6 in brackets)
    host: String,
    port: Option<u16>,
}

impl HostPattern {
    /// Parses an entry of a host list; the error says what is wrong with it.
    pub fn parse(entry: &str) -> Result<HostPattern, String> {
        let invalid = || format!("{entry:?} is not a host or host:port (no scheme, no path)");
        if entry.is_empty() || entry.contains(['/', '@', '?', '#', ' ']) {
            return Err(invalid());
        }
        let split = if entry.starts_with('[') {
            // `[v6]` or `[v6]:port`
            entry
                .split_once("]:")
                .map(|(host, port)| (format!("{host}]"), port))
        } else {
            entry
                .rsplit_once(':')
                .map(|(host, port)| (host.to_string(), port))
        };
        let (host, port) = match split {
            Some((host, port)) => (host, Some(port)),
            None => (entry.to_string(), None),
        };
        let host = url::Host::parse(&host).map_err(|_| invalid())?.to_string();
        let port = match port {
            Some(port) => Some(port.parse::<u16>().map_err(|_| invalid())?),
            None => None,
        };
        Ok(HostPattern { host, port })
    }

    /// The host of `url`, with its port when the URL names one that is not its
    /// scheme's default.
    pub fn of(url: &url::Url) -> Option<HostPattern> {
        Some(HostPattern {
            host: url.host_str()?.to_string(),
            port: url.port(),
        })
    }

    pub fn matches(&self, url: &url::Url) -> bool {
        url.host_str() == Some(self.host.as_str())
            && match self.port {
                // The URL parser drops a port that is the scheme's default.
                None => url.port().is_none(),
                Some(port) => url.port_or_known_default() == Some(port),
            }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_a_port_means_the_default_port_and_a_port_means_that_port() {
        let url = |u: &str| url::Url::parse(u).unwrap();
        let bare = HostPattern::parse("api.example.com").unwrap();
        assert!(bare.matches(&url("https://api.example.com/x")));
        assert!(bare.matches(&url("http://api.example.com/x")));
        assert!(!bare.matches(&url("https://api.example.com:8443/x")));
        let tls = HostPattern::parse("api.example.com:443").unwrap();
        assert!(tls.matches(&url("https://api.example.com/x")));
        assert!(!tls.matches(&url("http://api.example.com/x")), "port 80");
        let v6 = HostPattern::parse("[::1]:9000").unwrap();
        assert!(v6.matches(&url("http://[::1]:9000/")));
        assert_eq!(v6.to_string(), "[::1]:9000");
        for bad in [
            "",
            "https://api.example.com",
            "api.example.com/v1",
            "api.example.com:http",
            "api.example.com:99999",
            "user@api.example.com",
            "::1",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
