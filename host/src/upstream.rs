//! The host's side of the adapter boundary: every byte sent to or fetched from a
//! provider goes through here. Requests are checked against the provider's allowed
//! hosts, credentials are injected, bodies are size-capped.

use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;

use crate::plugins::wit;

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

impl UpstreamError {
    /// The normalized failure of an attempt that hit this error.
    pub fn failure(&self) -> wit::Failure {
        let code = match self {
            UpstreamError::Timeout => wit::ErrorCode::GenerationTimeout,
            UpstreamError::Connection(_) => wit::ErrorCode::ServiceUnavailable,
            UpstreamError::TooLarge(_) => wit::ErrorCode::GenerationFailed,
            UpstreamError::HostNotAllowed(_) | UpstreamError::BadUrl(_) => {
                wit::ErrorCode::InternalError
            }
        };
        wit::Failure {
            code,
            message: self.to_string(),
            // Another attempt (possibly at another provider) may do better.
            retryable: true,
            retry_after_ms: None,
        }
    }
}

#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    timeout: Duration,
}

/// Where a request may go and what credential it carries.
pub struct Target<'a> {
    pub allowed_hosts: &'a [String],
    pub auth: &'a wit::AuthScheme,
    pub credential: Option<&'a str>,
}

impl Upstream {
    pub fn new(timeout: Duration) -> anyhow::Result<Upstream> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent("ModelRoute/0.1")
            .build()?;
        Ok(Upstream { client, timeout })
    }

    /// Sends a request an adapter described.
    pub async fn send(
        &self,
        target: &Target<'_>,
        request: &wit::HttpRequest,
    ) -> Result<wit::HttpResponse, UpstreamError> {
        let response = self.open(target, request).await?;
        read(response).await
    }

    /// Sends a request an adapter described and returns once the headers arrived;
    /// the body is the caller's to read (see [`read`]) or stream.
    pub async fn open(
        &self,
        target: &Target<'_>,
        request: &wit::HttpRequest,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = check_url(&request.url, target.allowed_hosts)?;
        let method = match request.method {
            wit::Method::Get => reqwest::Method::GET,
            wit::Method::Post => reqwest::Method::POST,
            wit::Method::Put => reqwest::Method::PUT,
            wit::Method::Patch => reqwest::Method::PATCH,
            wit::Method::Delete => reqwest::Method::DELETE,
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
        if let Some(secret) = target.credential {
            builder = match target.auth {
                wit::AuthScheme::None => builder,
                wit::AuthScheme::Bearer => builder.bearer_auth(secret),
                wit::AuthScheme::Header(header) => {
                    builder.header(&header.name, format!("{}{secret}", header.prefix))
                }
            };
        }
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        builder.send().await.map_err(classify)
    }

    /// Starts downloading the asset at `url` (an allowed host, no redirects); the
    /// body is the caller's to stream.
    pub async fn fetch(
        &self,
        allowed_hosts: &[String],
        url: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = check_url(url, allowed_hosts)?;
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
}

/// Reads a whole response (size-capped) into the boundary's shape.
pub async fn read(response: reqwest::Response) -> Result<wit::HttpResponse, UpstreamError> {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let body = read_capped(response, MAX_RESPONSE_BYTES).await?;
    Ok(wit::HttpResponse {
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

/// Parses `url` and checks its host (with port, when not the scheme's default)
/// against `allowed`. Only http and https are spoken.
fn check_url(url: &str, allowed: &[String]) -> Result<url::Url, UpstreamError> {
    let parsed = url::Url::parse(url).map_err(|_| UpstreamError::BadUrl(url.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(UpstreamError::BadUrl(url.to_string()));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| UpstreamError::BadUrl(url.to_string()))?;
    let with_port = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(&with_port)) {
        Ok(parsed)
    } else {
        Err(UpstreamError::HostNotAllowed(with_port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_hosts_and_ports_pass() {
        let allowed = vec![
            "api.replicate.com".to_string(),
            "127.0.0.1:9101".to_string(),
        ];
        assert!(check_url("https://api.replicate.com/v1/predictions", &allowed).is_ok());
        assert!(check_url("http://127.0.0.1:9101/v1", &allowed).is_ok());
        for refused in [
            "http://127.0.0.1:9102/v1",
            "https://evil.example/x",
            "https://api.replicate.com.evil.example/",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(check_url(refused, &allowed).is_err(), "{refused}");
        }
    }
}
