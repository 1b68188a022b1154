//! The server's edge (#13): the operator token, authentication and rate limits
//! before routing, slow and greedy clients, and malformed requests. Raw TCP where
//! the behaviour is below HTTP clients; clients bound to other loopback addresses
//! (127.0.0.2, 127.0.0.3) where a test needs distinct client addresses.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{Options, Server, binary, unissued_secret};

/// Generous bound for anything the server must do within a configured timeout.
const BOUND: Duration = Duration::from_secs(20);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn address(server: &Server) -> SocketAddr {
    server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("address")
}

/// A TCP connection to `server` from the loopback address `from`.
async fn connect_from(server: &Server, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(ip(from), 0)).expect("bind");
    socket.connect(address(server)).await.expect("connect")
}

/// Everything the server sends until it closes the connection; panics if it is
/// still open after `bound`. A reset counts as closed.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let deadline = Instant::now() + bound;
    loop {
        let mut buf = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the connection is still open after {bound:?}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
}

/// A raw HTTP/1.1 response: status, lower-case headers and the JSON body.
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl RawReply {
    fn parse(bytes: &[u8]) -> RawReply {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .expect("a status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        RawReply {
            status,
            headers,
            body: serde_json::from_str(&body).unwrap_or(Value::Null),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the SPEC's envelope, its id the `X-Request-Id`, and returns the code.
    fn error_code(&self) -> &str {
        let error = &self.body["error"];
        assert!(
            error["message"].is_string(),
            "not an envelope: {}",
            self.body
        );
        assert!(error["retryable"].is_boolean(), "{}", self.body);
        let id = self.header("x-request-id").expect("X-Request-Id");
        assert_eq!(error["request_id"], id, "{}", self.body);
        error["code"].as_str().expect("code")
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Sends `request` on a new connection from 127.0.0.1 and reads the answer until
/// the server closes the connection.
async fn exchange(server: &Server, request: &[u8]) -> RawReply {
    let mut stream = connect_from(server, "127.0.0.1").await;
    stream.write_all(request).await.expect("write");
    let received = read_until_closed(&mut stream, BOUND).await;
    RawReply::parse(&received)
}

/// Starts `serve` with a data directory prepared by `prepare` and `env`, and waits
/// for it to exit; returns whether it succeeded and what it wrote to stderr.
fn start_and_expect_exit(
    prepare: impl FnOnce(&std::path::Path),
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    prepare(&state);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {state:?}\nplugins_dir = {:?}\npublic_url = \"http://127.0.0.1:{port}\"\n",
            dir.path()
        ),
    )
    .expect("config");
    let mut command = Command::new(binary());
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("MODELROUTE_ADMIN_TOKEN")
        .env_remove("MODELROUTE_LISTEN")
        .env_remove("MODELROUTE_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn modelroute");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().expect("kill");
            child.wait().expect("wait");
            panic!("the server started with an operator token it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    (status, stderr, state.join("admin-token"))
}

#[tokio::test]
async fn an_empty_or_short_operator_token_stops_the_server_from_starting() {
    for written in ["", "\n", "  \t\n", "op_too_short\n"] {
        let (status, stderr, path) = start_and_expect_exit(
            |state| std::fs::write(state.join("admin-token"), written).expect("token file"),
            &[],
        );
        assert!(!status.success(), "{written:?}: {status}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{written:?}: the message must name the file: {stderr}"
        );
    }
    for set in ["", "   ", "short"] {
        let (status, stderr, _) = start_and_expect_exit(|_| {}, &[("MODELROUTE_ADMIN_TOKEN", set)]);
        assert!(!status.success(), "{set:?}: {status}");
        assert!(stderr.contains("MODELROUTE_ADMIN_TOKEN"), "{stderr}");
    }
}

#[tokio::test]
async fn an_empty_bearer_credential_is_refused_over_http1_and_h2c() {
    let server = Server::start_with(&[], Options::default()).await;
    let http1 = reqwest::Client::builder().http1_only().build().unwrap();
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (client, version) in [
        (&http1, reqwest::Version::HTTP_11),
        (&h2c, reqwest::Version::HTTP_2),
    ] {
        for path in ["/admin/v1/plugins", "/v1/models"] {
            for credential in ["Bearer ", "Bearer    ", "bearer \t"] {
                let response = client
                    .get(format!("{}{path}", server.url))
                    .header("authorization", credential)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.version(), version);
                assert_eq!(
                    response.status(),
                    StatusCode::UNAUTHORIZED,
                    "{path} {credential:?} over {version:?}"
                );
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{body}");
            }
        }
        // The real credentials still work over both.
        let admin = client
            .get(format!("{}/admin/v1/plugins", server.url))
            .bearer_auth(&server.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(admin.status(), StatusCode::OK, "over {version:?}");
    }
}

#[tokio::test]
async fn guessing_keys_from_one_address_is_refused_after_its_failure_budget() {
    let server = Server::start_with(
        &[],
        Options {
            config: "\n[rate_limits.failed_auth]\nper_minute = 1\nburst = 5\n",
            ..Options::default()
        },
    )
    .await;
    let from = |address: &str| {
        reqwest::Client::builder()
            .local_address(ip(address))
            .build()
            .unwrap()
    };
    let get = |client: reqwest::Client, key: String| {
        let url = format!("{}/v1/models", server.url);
        async move {
            let response = client.get(url).bearer_auth(key).send().await.unwrap();
            let status = response.status();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let headers = (
                header("x-ratelimit-limit"),
                header("x-ratelimit-remaining"),
                header("retry-after"),
            );
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, headers, body)
        }
    };
    let guesser = from("127.0.0.2");
    // Each guess is a different well-formed secret: they share the address's budget,
    // and the 401s tell its real state.
    for (n, remaining) in ["4", "3", "2", "1", "0"].into_iter().enumerate() {
        let (status, (limit, left, _), body) =
            get(guesser.clone(), unissued_secret(n as u32)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(limit.as_deref(), Some("5"));
        assert_eq!(left.as_deref(), Some(remaining), "guess {n}");
    }
    let (status, (_, left, retry_after), body) = get(guesser.clone(), unissued_secret(99)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    assert_eq!(left.as_deref(), Some("0"));
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Without a key, and even with a valid one, that address waits: a right guess
    // must look like a wrong one.
    let anonymous = guesser
        .get(format!("{}/v1/models", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::TOO_MANY_REQUESTS);
    let (status, _, _) = get(guesser.clone(), server.api_key.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Another address is not affected, with or without a valid key.
    let other = from("127.0.0.3");
    let (status, (limit, _, _), _) = get(other.clone(), server.api_key.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        limit.as_deref(),
        Some("10000"),
        "a valid key counts in its own bucket"
    );
    let (status, (_, left, _), _) = get(other, unissued_secret(7)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(left.as_deref(), Some("4"));
}

#[tokio::test]
async fn unknown_v1_paths_and_methods_are_authenticated_and_limited_before_routing() {
    let server = Server::start_with(&[], Options::default()).await;
    let limited = |reply: &crate::support::Reply| {
        for name in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(
                reply.header(name).is_some(),
                "{name} missing: {:?}",
                reply.headers
            );
        }
    };
    for (method, path) in [
        (Method::GET, "/v1/nothing"),
        (Method::GET, "/v1"),
        (Method::PUT, "/v1/models"),
        (Method::DELETE, "/v1/balance"),
    ] {
        let anonymous = server.call(method.clone(), path, None, None, &[]).await;
        assert_eq!(
            anonymous.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
        assert_eq!(anonymous.error_code(), "UNAUTHORIZED");
        limited(&anonymous);
        let known = server
            .call(method.clone(), path, Some(&server.api_key), None, &[])
            .await;
        assert_eq!(known.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(known.error_code(), "NOT_FOUND");
        limited(&known);
    }
    // The operator API answers nothing about its paths without the token either.
    let admin = server
        .call(Method::GET, "/admin/v1/nothing", None, None, &[])
        .await;
    assert_eq!(admin.status, StatusCode::UNAUTHORIZED);
    // Providers call back without an API key: that route is still theirs.
    let callback = server
        .call(
            Method::POST,
            "/v1/provider-webhooks/nowhere/token",
            None,
            Some(serde_json::json!({})),
            &[],
        )
        .await;
    assert_eq!(
        callback.status,
        StatusCode::NOT_FOUND,
        "{:?}",
        callback.body
    );
    assert_eq!(callback.header("x-ratelimit-limit"), None);
}

/// A server whose timeouts are short, for the slow-client tests.
async fn impatient_server() -> Server {
    Server::start_with(
        &[],
        Options {
            config: "\n[server]\nheader_read_timeout_ms = 1000\nbody_idle_timeout_ms = 1000\nidle_timeout_ms = 1000\n",
            ..Options::default()
        },
    )
    .await
}

#[tokio::test]
async fn headers_that_never_finish_and_silent_connections_are_cut_off() {
    let server = impatient_server().await;
    let started = Instant::now();
    let mut slow = connect_from(&server, "127.0.0.1").await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut silent = connect_from(&server, "127.0.0.1").await;
    assert!(read_until_closed(&mut slow, BOUND).await.is_empty());
    assert!(read_until_closed(&mut silent, BOUND).await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A kept-alive connection that goes quiet after its request is closed too.
    let mut kept = connect_from(&server, "127.0.0.1").await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = read_until_closed(&mut kept, BOUND).await;
    assert!(answered.starts_with(b"HTTP/1.1 200"), "{answered:?}");
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_in_the_envelope_and_closed() {
    let server = impatient_server().await;
    let mut stream = connect_from(&server, "127.0.0.1").await;
    let head = format!(
        "POST /v1/executions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        server.api_key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let reply = RawReply::parse(&read_until_closed(&mut stream, BOUND).await);
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.error_code(), "INPUT_VALIDATION_ERROR");
    assert_eq!(reply.body["error"]["details"][0]["field"], "body");
    // Nothing was created.
    assert_eq!(
        server.get("/v1/executions").await.body["data"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn more_connections_than_allowed_from_one_address_are_closed_at_once() {
    let server = Server::start_with(
        &[],
        Options {
            config: "\n[server]\nmax_connections_per_address = 3\nheader_read_timeout_ms = 600000\nidle_timeout_ms = 600000\n",
            ..Options::default()
        },
    )
    .await;
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // Served, and kept alive: each holds its place.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(&server, "127.0.0.2").await;
        stream.write_all(healthz).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(BOUND, stream.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        held.push(stream);
    }
    let mut refused = connect_from(&server, "127.0.0.2").await;
    assert!(
        read_until_closed(&mut refused, BOUND).await.is_empty(),
        "a fourth connection is closed without an answer"
    );
    // Another address has its own places.
    let mut other = connect_from(&server, "127.0.0.3").await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut other, BOUND)
            .await
            .starts_with(b"HTTP/1.1 200")
    );
    // A closed connection gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + BOUND;
    loop {
        let mut again = connect_from(&server, "127.0.0.2").await;
        again
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        if read_until_closed(&mut again, BOUND)
            .await
            .starts_with(b"HTTP/1.1 200")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn malformed_requests_that_reach_the_api_are_answered_in_the_envelope() {
    let server = Server::start_with(&[], Options::default()).await;
    let key = server.api_key.clone();
    let token = server.admin_token.clone();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        // A path segment that does not decode to UTF-8.
        (
            format!("GET /v1/files/%FF HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n").into_bytes(),
            400,
            "INPUT_VALIDATION_ERROR",
        ),
        (
            format!("GET /admin/v1/executions/%C0%AF HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").into_bytes(),
            400,
            "INPUT_VALIDATION_ERROR",
        ),
        // Header values with bytes that are valid on the wire but not UTF-8.
        (
            [
                b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n".as_slice(),
            ]
            .concat(),
            401,
            "UNAUTHORIZED",
        ),
        (
            [
                format!("POST /v1/executions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n").as_bytes(),
                b"Content-Type: application/json\xff\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            ]
            .concat(),
            400,
            "INPUT_VALIDATION_ERROR",
        ),
        (
            [
                format!("POST /v1/executions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n").as_bytes(),
                b"Idempotency-Key: \xe9t\xe9\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            ]
            .concat(),
            400,
            "INPUT_VALIDATION_ERROR",
        ),
    ];
    for (request, status, code) in cases {
        let reply = exchange(&server, &request).await;
        let shown = String::from_utf8_lossy(&request).into_owned();
        assert_eq!(reply.status, status, "{shown}: {}", reply.body);
        assert_eq!(reply.error_code(), code, "{shown}");
    }
}
