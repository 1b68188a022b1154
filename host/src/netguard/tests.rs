use super::*;
use AddressClass::{LinkLocal, Loopback, Metadata, Private, Reserved, UniqueLocal, Unspecified};
use std::net::SocketAddr;
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
