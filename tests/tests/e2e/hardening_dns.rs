//! Webhook hosts resolve asynchronously, through the configured name servers, with
//! a timeout and a cap on lookups in flight (issue #13): a name server that never
//! answers costs a client only its own prompt refusals, and no other organization
//! anything.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use modelroute_tests::emulators::{DEFAULT_TOKEN, replicate};

use crate::receiver::Receiver;
use crate::support::{Server, flux_input, wait_until};
use crate::webhooks::server_with;

const WAIT: Duration = Duration::from_secs(60);
/// The servers' `[webhooks] dns_timeout_ms`.
const DNS_TIMEOUT: Duration = Duration::from_millis(1000);
/// Where a name server that never answers is asked.
const STALLED_URL: &str = "https://hook.stall.example/x";

/// A name server on loopback, over UDP and TCP (a resolver may move to TCP once
/// UDP queries have timed out): names under `ok.example` are answered (an A record
/// of 127.0.0.1, or of 10.0.0.1 for `internal.ok.example`; no AAAA), every other
/// query is received and never answered, and so is every query while it is
/// silent.
struct NameServer {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    silent: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NameServer {
    async fn start() -> NameServer {
        let (udp, tcp) = bind_udp_and_tcp().await;
        let addr = udp.local_addr().expect("addr");
        let queries = Arc::new(AtomicUsize::new(0));
        let silent = Arc::new(AtomicBool::new(false));
        let (counted, muted) = (queries.clone(), silent.clone());
        let over_udp = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((len, from)) = udp.recv_from(&mut buf).await {
                counted.fetch_add(1, Ordering::SeqCst);
                if muted.load(Ordering::SeqCst) {
                    continue;
                }
                if let Some(answer) = answer(&buf[..len]) {
                    let _ = udp.send_to(&answer, from).await;
                }
            }
        });
        let (counted, muted) = (queries.clone(), silent.clone());
        let over_tcp = tokio::spawn(async move {
            while let Ok((stream, _)) = tcp.accept().await {
                let (counted, muted) = (counted.clone(), muted.clone());
                tokio::spawn(async move { serve_tcp(stream, &counted, &muted).await });
            }
        });
        NameServer {
            addr,
            queries,
            silent,
            tasks: vec![over_udp, over_tcp],
        }
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    fn fall_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }

    /// The `[webhooks]` table pointing a server at this name server.
    fn config(&self) -> String {
        format!(
            "\n[webhooks]\ndns_servers = [\"{}\"]\ndns_timeout_ms = {}\n",
            self.addr,
            DNS_TIMEOUT.as_millis()
        )
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A UDP socket and a TCP listener on one loopback port.
async fn bind_udp_and_tcp() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().expect("addr")).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port was free for both UDP and TCP");
}

/// DNS over TCP (RFC 1035 §4.2.2): each message after its two-byte length.
async fn serve_tcp(mut stream: TcpStream, counted: &AtomicUsize, muted: &AtomicBool) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        counted.fetch_add(1, Ordering::SeqCst);
        if muted.load(Ordering::SeqCst) {
            continue;
        }
        if let Some(answer) = answer(&query) {
            let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&answer);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}

/// The answer to one DNS query (RFC 1035 §4.1), or None for a name left
/// unanswered. Answers carry a TTL of 0, so nothing is cached.
fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    let mut end = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(end)?);
        end += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(end..end + len)?).to_ascii_lowercase());
        end += len;
    }
    let question = query.get(12..end + 4)?;
    let record_type = u16::from_be_bytes([query[end], query[end + 1]]);
    let name = labels.join(".");
    if !name.ends_with("ok.example") {
        return None;
    }
    let address = if name == "internal.ok.example" {
        Ipv4Addr::new(10, 0, 0, 1)
    } else {
        Ipv4Addr::LOCALHOST
    };
    let answers: u16 = if record_type == 1 { 1 } else { 0 };
    let recursion_desired = header[2] & 0x01;
    let mut out = vec![header[0], header[1], 0x84 | recursion_desired, 0x80];
    for count in [1u16, answers, 0, 0] {
        out.extend_from_slice(&count.to_be_bytes());
    }
    out.extend_from_slice(question);
    if answers == 1 {
        // The question's name (a pointer to offset 12), A, IN, TTL 0, 4 bytes.
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        out.extend_from_slice(&address.octets());
    }
    Some(out)
}

/// One request as `key`, and how long its answer took.
async fn timed(
    server: &Server,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (crate::support::Reply, Duration) {
    let started = Instant::now();
    let reply = server.call(method, path, Some(key), body, &[]).await;
    (reply, started.elapsed())
}

/// What an organization flooding the server with a name whose name server never
/// answers gets back: `400` naming the field, once its lookup timed out, or `429`
/// with `Retry-After` while its share of lookups is taken; promptly either way.
fn assert_prompt_and_clear(reply: &crate::support::Reply, took: Duration, field: &str) {
    // Waiting for a place (a quarter of the timeout) and then the lookup (the
    // timeout), with room for a loaded debug build.
    let bound = DNS_TIMEOUT * 2 + Duration::from_secs(6);
    assert!(took < bound, "answered after {took:?}: {:?}", reply.body);
    match reply.status {
        StatusCode::BAD_REQUEST => {
            assert_eq!(reply.error_code(), "INPUT_VALIDATION_ERROR");
            let detail = &reply.body["error"]["details"][0];
            assert_eq!(detail["field"], field, "{:?}", reply.body);
            let message = detail["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("hook.stall.example could not be resolved"),
                "{message}"
            );
        }
        StatusCode::TOO_MANY_REQUESTS => {
            assert_eq!(reply.error_code(), "RATE_LIMITED");
            assert_eq!(reply.body["error"]["retryable"], json!(true));
            assert!(reply.header("retry-after").is_some(), "{:?}", reply.headers);
        }
        other => panic!("{other}: {:?}", reply.body),
    }
}

/// The stall: a few hundred concurrent creates from one organization whose
/// webhook URLs name a domain whose name server never answers. Each gets a prompt,
/// clear refusal; meanwhile another organization's plain creates and reads, and its
/// webhook URLs that do resolve, go through promptly.
#[tokio::test]
async fn a_name_server_that_never_answers_stalls_no_other_organization() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let dns = NameServer::start().await;
    let server = Arc::new(server_with(&emulator, &dns.config()).await);
    let other = server.new_organization("10.00").await;
    let receiver = Receiver::start().await;
    let resolvable = receiver.url.replace("127.0.0.1", "hook.ok.example");

    // Organization A: 300 requests at once, again and again until B is done.
    let done = Arc::new(AtomicBool::new(false));
    let flood: Vec<_> = (0..300)
        .map(|i| {
            let (server, done) = (server.clone(), done.clone());
            tokio::spawn(async move {
                let key = server.api_key.clone();
                let deadline = Instant::now() + WAIT;
                let mut answered = Vec::new();
                while answered.is_empty() || !done.load(Ordering::SeqCst) {
                    assert!(Instant::now() < deadline, "the flood never ended");
                    let (path, field, body) = if i % 3 == 0 {
                        ("/v1/webhooks/endpoints", "url", json!({"url": STALLED_URL}))
                    } else {
                        (
                            "/v1/executions",
                            "webhook_url",
                            json!({"model": "flux-1.1-pro", "input": flux_input(), "webhook_url": STALLED_URL}),
                        )
                    };
                    let (reply, took) = timed(&server, &key, Method::POST, path, Some(body)).await;
                    assert_prompt_and_clear(&reply, took, field);
                    answered.push(reply.status);
                }
                answered
            })
        })
        .collect();
    // The flood's lookups are under way.
    wait_until("a query reaches the name server", WAIT, || async {
        dns.queries() > 0
    })
    .await;

    // Organization B, meanwhile: creates, reads, and webhook URLs that resolve.
    let prompt = Duration::from_secs(5);
    for round in 0..5 {
        let (created, took) = timed(
            &server,
            &other,
            Method::POST,
            "/v1/executions",
            Some(json!({"model": "flux-1.1-pro", "input": flux_input()})),
        )
        .await;
        assert_eq!(created.status, StatusCode::ACCEPTED, "{:?}", created.body);
        assert!(took < prompt, "round {round}: a plain create took {took:?}");
        let id = created.body["id"].as_str().unwrap();
        for path in [format!("/v1/executions/{id}"), "/v1/balance".to_string()] {
            let (read, took) = timed(&server, &other, Method::GET, &path, None).await;
            assert_eq!(read.status, StatusCode::OK, "{path}: {:?}", read.body);
            assert!(took < prompt, "round {round}: {path} took {took:?}");
        }
        let (with_url, took) = timed(
            &server,
            &other,
            Method::POST,
            "/v1/executions",
            Some(
                json!({"model": "flux-1.1-pro", "input": flux_input(), "webhook_url": resolvable}),
            ),
        )
        .await;
        assert_eq!(with_url.status, StatusCode::ACCEPTED, "{:?}", with_url.body);
        assert!(
            took < prompt,
            "round {round}: a resolvable webhook_url took {took:?}"
        );
    }
    let (endpoint, took) = timed(
        &server,
        &other,
        Method::POST,
        "/v1/webhooks/endpoints",
        Some(json!({"url": resolvable})),
    )
    .await;
    assert_eq!(endpoint.status, StatusCode::CREATED, "{:?}", endpoint.body);
    assert!(took < prompt, "an endpoint create took {took:?}");
    done.store(true, Ordering::SeqCst);

    let mut statuses = Vec::new();
    for task in flood {
        statuses.extend(task.await.expect("a flood request failed its checks"));
    }
    assert!(statuses.len() >= 300);
    assert!(
        statuses.contains(&StatusCode::BAD_REQUEST),
        "no lookup of the flood ever reached its timeout"
    );
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "the organization's cap on lookups in flight never applied"
    );
    // Nothing of A's got through.
    let endpoints = server.get("/v1/webhooks/endpoints").await;
    assert_eq!(endpoints.body["data"], json!([]));
    let balance = server.get("/v1/balance").await;
    assert_eq!(balance.body["held"], "0");
}

/// Registration and every delivery resolve through `[webhooks] dns_servers`: a name
/// it answers with loopback (allowed in dev mode) is registered and delivered to,
/// one it answers with a private address is refused, and a delivery whose name
/// does not resolve in time is a failed attempt that the retry makes good.
#[tokio::test]
async fn webhook_hosts_resolve_through_the_configured_name_servers() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let dns = NameServer::start().await;
    let config = format!("\n[testing]\nclock_control = true\n{}", dns.config());
    let server = server_with(&emulator, &config).await;
    let receiver = Receiver::start().await;
    let named = receiver.url.replace("127.0.0.1", "hook.ok.example");
    let created = server
        .post(
            "/v1/webhooks/endpoints",
            json!({"url": named, "events": ["execution.completed"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["url"], json!(named));
    let id = created.body["id"].as_str().unwrap();
    let secret = created.body["secret"].as_str().unwrap();
    let tested = server
        .post(&format!("/v1/webhooks/endpoints/{id}/test"), json!({}))
        .await;
    assert_eq!(tested.body["delivered"], json!(true), "{:?}", tested.body);
    assert!(receiver.wait_for(1, WAIT).await[0].signed_by(secret));

    let internal = server
        .post(
            "/v1/webhooks/endpoints",
            json!({"url": "http://internal.ok.example/hook"}),
        )
        .await;
    assert_eq!(internal.status, StatusCode::BAD_REQUEST);
    assert_eq!(internal.error_code(), "INPUT_VALIDATION_ERROR");
    assert_eq!(
        internal.body["error"]["details"][0]["message"],
        "the URL resolves to a private address, which is not allowed"
    );

    // An execution's own webhook_url, by name.
    let own = Receiver::start().await;
    let own_named = own.url.replace("127.0.0.1", "own.ok.example");
    let first = run_execution(&server, json!({"webhook_url": own_named})).await;
    own.wait_for(2, WAIT).await;
    let delivered = receiver.wait_for(2, WAIT).await;
    assert_eq!(delivered[1].json()["execution_id"], json!(first));

    // The endpoint moves to a name no connection is open to yet (an open one would
    // be reused without a lookup), which then stops resolving: the delivery fails,
    // and its retry delivers.
    let moved = receiver.url.replace("127.0.0.1", "moved.ok.example");
    let patched = server
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/endpoints/{id}"),
            Some(&server.api_key),
            Some(json!({"url": moved})),
            &[],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{:?}", patched.body);
    dns.fall_silent(true);
    let second = run_execution(&server, json!({})).await;
    wait_until("a failed attempt is recorded", WAIT, || async {
        !server
            .get(&format!("/v1/webhooks/endpoints/{id}"))
            .await
            .body["last_failure"]
            .is_null()
    })
    .await;
    assert_eq!(receiver.received().len(), 2);
    dns.fall_silent(false);
    server.advance_clock(2 * 60).await;
    let delivered = receiver.wait_for(3, WAIT).await;
    assert_eq!(delivered[2].json()["execution_id"], json!(second));
    assert!(delivered[2].signed_by(secret));
}

async fn run_execution(server: &Server, extra: Value) -> String {
    let mut body = json!({"model": "flux-1.1-pro", "input": flux_input()});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let reply = server.post("/v1/executions", body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_string();
    server.wait_terminal(&id, WAIT).await;
    id
}
