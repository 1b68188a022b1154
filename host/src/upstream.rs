//! The host's side of the adapter boundary: every byte sent to or fetched from a
//! provider goes through here. Requests are checked against the provider's allowed
//! hosts, the credential is injected only where it belongs (see [`Hosts`]), bodies
//! are size-capped, and proxy variables of the environment are ignored.

use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;

use crate::host_pattern::HostPattern;
use crate::plugins::types;

/// Largest API response body we read (base64 images make these large).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0} is not an allowed host for this provider")]
    HostNotAllowed(String),
    #[error("invalid URL {0:?}")]
    BadUrl(String),
    #[error("the provider did not answer in time")]
    Timeout,
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("the response is larger than {0} bytes")]
    TooLarge(u64),
}

#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    timeout: Duration,
}

/// Where a request may go and what credential it carries.
pub struct Target<'a> {
    pub hosts: &'a Hosts,
    pub auth: &'a types::AuthScheme,
    pub credential: Option<&'a str>,
}

/// Where one provider's requests may go, and which of them carry its credential.
#[derive(Debug, Clone)]
pub struct Hosts {
    /// requests and asset downloads may go to these
    pub allowed: Vec<HostPattern>,
    /// the credential goes to these only: the base URL's host and the operator's
    /// `credential_hosts` (a manifest's hosts never)
    pub credentialed: Vec<HostPattern>,
    /// plain http may carry the credential, and then only to a loopback address
    /// (`--dev`, or `[upstream] loopback_http_credentials`)
    pub loopback_http_credentials: bool,
}

impl Hosts {
    /// Parses `url` and checks it: http or https, to an allowed host.
    pub fn check(&self, url: &str) -> Result<url::Url, UpstreamError> {
        let parsed = url::Url::parse(url).map_err(|_| UpstreamError::BadUrl(url.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(UpstreamError::BadUrl(url.to_string()));
        }
        let host =
            HostPattern::of(&parsed).ok_or_else(|| UpstreamError::BadUrl(url.to_string()))?;
        if self.allowed.iter().any(|allowed| allowed.matches(&parsed)) {
            Ok(parsed)
        } else {
            Err(UpstreamError::HostNotAllowed(host.to_string()))
        }
    }

    /// Whether a request to `url` may carry the provider's credential: only to a
    /// credentialed host, over https, or over http to loopback when allowed.
    pub fn carries_credential(&self, url: &url::Url) -> bool {
        let transport_ok = match url.scheme() {
            "https" => true,
            "http" => self.loopback_http_credentials && is_loopback(url),
            _ => false,
        };
        transport_ok && self.credentialed.iter().any(|host| host.matches(url))
    }
}

/// Whether `url` names a loopback address (`localhost`, 127.0.0.0/8, `::1`).
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

impl Upstream {
    /// A client for provider traffic. It uses `proxy` when the operator names one
    /// and no other: `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` are ignored, so
    /// the environment cannot redirect requests that carry credentials.
    pub fn new(timeout: Duration, proxy: Option<&str>) -> anyhow::Result<Upstream> {
        let builder = reqwest::Client::builder()
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent("ModelRoute/0.1")
            .no_proxy();
        let builder = match proxy {
            Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy)?),
            None => builder,
        };
        Ok(Upstream {
            client: builder.build()?,
            timeout,
        })
    }

    /// Sends a request an adapter described.
    pub async fn send(
        &self,
        target: &Target<'_>,
        request: &types::HttpRequest,
    ) -> Result<types::HttpResponse, UpstreamError> {
        let response = self.open(target, request).await?;
        read(response).await
    }

    /// Sends a request an adapter described and returns once the headers arrived;
    /// the body is the caller's to read (see [`read`]) or stream.
    pub async fn open(
        &self,
        target: &Target<'_>,
        request: &types::HttpRequest,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = target.hosts.check(&request.url)?;
        let credential = target
            .credential
            .filter(|_| target.hosts.carries_credential(&url));
        let method = match request.method {
            types::Method::Get => reqwest::Method::GET,
            types::Method::Post => reqwest::Method::POST,
            types::Method::Put => reqwest::Method::PUT,
            types::Method::Patch => reqwest::Method::PATCH,
            types::Method::Delete => reqwest::Method::DELETE,
        };
        let timeout = request
            .timeout_ms
            .map(|ms| Duration::from_millis(ms as u64).min(self.timeout))
            .unwrap_or(self.timeout);
        let mut builder = self.client.request(method, url).timeout(timeout);
        for (name, value) in &request.headers {
            // The credential header is the host's alone.
            if !name.eq_ignore_ascii_case("authorization") {
                builder = builder.header(name, value);
            }
        }
        if let Some(secret) = credential {
            builder = match target.auth {
                types::AuthScheme::None => builder,
                types::AuthScheme::Bearer => builder.bearer_auth(secret),
                types::AuthScheme::Header(header) => {
                    builder.header(&header.name, format!("{}{secret}", header.prefix))
                }
            };
        }
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        builder.send().await.map_err(classify)
    }

    /// Starts downloading the asset at `url` (an allowed host, no redirects, no
    /// credential); the body is the caller's to stream.
    pub async fn fetch(
        &self,
        hosts: &Hosts,
        url: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = hosts.check(url)?;
        let response = self
            .client
            .get(url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(classify)?;
        if !response.status().is_success() {
            return Err(UpstreamError::Connection(format!(
                "asset download answered {}",
                response.status()
            )));
        }
        Ok(response)
    }

    /// Whether `url` answers a plain `GET` (no credential) with a success within
    /// `timeout`: a provider's health check.
    pub async fn healthy(&self, url: &str, timeout: Duration) -> bool {
        match self.client.get(url).timeout(timeout).send().await {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        }
    }
}

/// Reads a whole response (size-capped) into the boundary's shape.
pub async fn read(response: reqwest::Response) -> Result<types::HttpResponse, UpstreamError> {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let body = read_capped(response, MAX_RESPONSE_BYTES).await?;
    Ok(types::HttpResponse {
        status,
        headers,
        body: body.to_vec(),
    })
}

pub fn classify(error: reqwest::Error) -> UpstreamError {
    if error.is_timeout() {
        UpstreamError::Timeout
    } else {
        UpstreamError::Connection(error.to_string())
    }
}

async fn read_capped(response: reqwest::Response, max: usize) -> Result<Bytes, UpstreamError> {
    if response
        .content_length()
        .is_some_and(|len| len > max as u64)
    {
        return Err(UpstreamError::TooLarge(max as u64));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(classify)?;
        if body.len() + chunk.len() > max {
            return Err(UpstreamError::TooLarge(max as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(entries: &[&str]) -> Vec<HostPattern> {
        entries
            .iter()
            .map(|e| HostPattern::parse(e).unwrap())
            .collect()
    }

    fn hosts(allowed: &[&str], credentialed: &[&str], loopback_http: bool) -> Hosts {
        Hosts {
            allowed: patterns(allowed),
            credentialed: patterns(credentialed),
            loopback_http_credentials: loopback_http,
        }
    }

    #[test]
    fn only_allowed_hosts_and_ports_pass() {
        let hosts = hosts(&["api.replicate.com", "127.0.0.1:9101"], &[], false);
        assert!(
            hosts
                .check("https://api.replicate.com/v1/predictions")
                .is_ok()
        );
        assert!(hosts.check("https://API.Replicate.com:443/v1").is_ok());
        assert!(hosts.check("http://127.0.0.1:9101/v1").is_ok());
        for refused in [
            "http://127.0.0.1:9102/v1",
            "https://api.replicate.com:8443/v1",
            "https://evil.example/x",
            "https://api.replicate.com.evil.example/",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(hosts.check(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn the_credential_goes_only_to_credentialed_hosts_over_https_or_loopback_http() {
        let url = |u: &str| url::Url::parse(u).unwrap();
        let production = hosts(
            &["api.replicate.com", "replicate.delivery", "status.example"],
            &["api.replicate.com", "status.example"],
            false,
        );
        assert!(production.carries_credential(&url("https://api.replicate.com/v1/p")));
        assert!(production.carries_credential(&url("https://status.example/p")));
        assert!(
            !production.carries_credential(&url("https://replicate.delivery/out.png")),
            "a manifest's asset host gets no credential"
        );
        assert!(
            !production.carries_credential(&url("http://api.replicate.com/v1/p")),
            "never over plain http to a remote host"
        );
        assert!(!production.carries_credential(&url("https://api.replicate.com:8443/v1")));

        let local = |loopback_http| {
            hosts(
                &["127.0.0.1:9101", "127.0.0.1:9102"],
                &["127.0.0.1:9101"],
                loopback_http,
            )
        };
        assert!(local(true).carries_credential(&url("http://127.0.0.1:9101/v1")));
        assert!(!local(true).carries_credential(&url("http://127.0.0.1:9102/v1")));
        assert!(
            !local(false).carries_credential(&url("http://127.0.0.1:9101/v1")),
            "plain http to loopback only when allowed"
        );
        let remote_http = hosts(&["10.0.0.5:8000"], &["10.0.0.5:8000"], true);
        assert!(!remote_http.carries_credential(&url("http://10.0.0.5:8000/v1")));
    }
}
