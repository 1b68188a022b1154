//! How the server treats its providers: where their credential goes, that the
//! environment cannot reroute their traffic, that a wrong provider entry stops the
//! start, and that the catalogue says when no provider can serve a model.

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use modelroute_tests::emulators::{DEFAULT_TOKEN, Emulator, replicate};

use crate::support::{
    Options, ProviderSpec, Server, eventually, flux_input, plugin_dirs, replicate_provider,
};

const WAIT: Duration = Duration::from_secs(60);

async fn replicate_emulator() -> Emulator<replicate::Replicate> {
    replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap()
}

/// `host:port` of an emulator URL.
fn authority(url: &str) -> &str {
    url.trim_start_matches("http://")
}

async fn run_flux(server: &Server) -> Value {
    let reply = server
        .post(
            "/v1/executions",
            json!({"model": "flux-1.1-pro", "input": flux_input()}),
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_string();
    server.wait_terminal(&id, WAIT).await
}

/// Finding 4: the operator allows a second host of the provider (its poll and
/// output URLs point there, as a status or CDN host would); the key goes to the
/// base URL's host only.
#[tokio::test]
async fn the_credential_goes_to_the_base_url_host_and_never_to_another_allowed_host() {
    let emulator = replicate_emulator().await;
    let second = emulator.open_second_host().await.unwrap();
    let base = emulator.base_url();
    let config = format!(
        "[[providers]]\nname = \"two-hosts\"\nadapter = \"replicate\"\nbase_url = {base:?}\napi_key = \"emulator-key\"\nallowed_hosts = [{:?}, {:?}]\n[providers.models.\"flux-1.1-pro\"]\n",
        authority(&base),
        authority(&second),
    );
    let server = Server::start_with(
        &[],
        Options {
            config: &config,
            ..Options::default()
        },
    )
    .await;
    let execution = run_flux(&server).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");

    let requests = emulator.requests();
    let (to_base, to_second): (Vec<_>, Vec<_>) = requests
        .iter()
        .partition(|r| r.host() == Some(authority(&base)));
    assert!(!to_base.is_empty(), "the submit went to the base URL");
    for request in &to_base {
        assert_eq!(
            request.header("authorization"),
            Some("Bearer emulator-key"),
            "{request:?}"
        );
    }
    assert!(
        to_second
            .iter()
            .any(|r| r.host() == Some(authority(&second))),
        "the poll went to the second host: {requests:?}"
    );
    for request in &to_second {
        assert!(
            request
                .headers
                .iter()
                .all(|(_, value)| !value.contains("emulator-key")),
            "the second host saw the credential: {request:?}"
        );
    }
}

/// A listener that counts the connections it gets and closes each at once: a
/// proxy that forwards nothing. Answers its URL and the count.
async fn counting_proxy() -> (String, Arc<AtomicUsize>) {
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", proxy.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = proxy.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (url, connections)
}

/// Finding 9: `HTTP_PROXY` and friends in the server's environment point at a
/// listener that counts connections; provider traffic never goes there.
#[tokio::test]
async fn proxy_variables_in_the_environment_never_reroute_provider_traffic() {
    let (proxy_url, connections) = counting_proxy().await;
    let emulator = replicate_emulator().await;
    let mut env: Vec<(&str, &str)> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .iter()
    .map(|name| (*name, proxy_url.as_str()))
    .collect();
    env.extend([("NO_PROXY", ""), ("no_proxy", "")]);
    let server = Server::start_with(
        &[replicate_provider(&emulator)],
        Options {
            env: &env,
            ..Options::default()
        },
    )
    .await;
    let execution = run_flux(&server).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert!(
        emulator.count("/v1/models/") >= 1,
        "the provider was reached"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 0, "the proxy was used");
}

/// Finding 9, the other side: a proxy the operator names in `[upstream] proxy`
/// does carry provider traffic (this one forwards nothing, so the provider never
/// sees a request).
#[tokio::test]
async fn the_operators_upstream_proxy_carries_provider_traffic() {
    let (proxy_url, connections) = counting_proxy().await;
    let emulator = replicate_emulator().await;
    let config = format!("\n[upstream]\nproxy = {proxy_url:?}\n");
    let server = Server::start_with(
        &[replicate_provider(&emulator)],
        Options {
            config: &config,
            ..Options::default()
        },
    )
    .await;
    let execution = run_flux(&server).await;
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert!(
        connections.load(Ordering::SeqCst) >= 1,
        "the proxy was not used"
    );
    assert_eq!(
        emulator.requests().len(),
        0,
        "nothing went around the proxy"
    );
}

/// Finding 12: each wrong provider entry stops the start at once, and the error
/// names the field. The first provider is fine, so the index shows which is wrong.
#[tokio::test]
async fn a_misconfigured_provider_stops_the_start_naming_the_field() {
    let flux = "[providers.models.\"flux-1.1-pro\"]\n";
    let replicate =
        "adapter = \"replicate\"\nbase_url = \"http://127.0.0.1:9101\"\napi_key = \"k\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{replicate}allowed_hosts = [\"127.0.0.1:9102\"]\n{flux}"),
            "",
            "providers[1].allowed_hosts: does not include the base_url host \"127.0.0.1:9101\"",
        ),
        (
            format!("adapter = \"replicat\"\n{flux}"),
            "",
            "providers[1].adapter: no adapter named \"replicat\"",
        ),
        (
            format!("{replicate}[providers.models.\"gpt-5\"]\n"),
            "",
            "providers[1].models.\"gpt-5\": the \"replicate\" adapter does not serve this model",
        ),
        (
            format!("{replicate}{flux}price = {{ per_image = \"4000\" }}\n"),
            "",
            "providers[1].models.\"flux-1.1-pro\".price.per_image:",
        ),
        (
            format!("{replicate}{flux}price = {{ per_image = \"-0.04\" }}\n"),
            "",
            "per_image = \"-0.04\"",
        ),
        (
            format!("{replicate}{flux}weight = -1.0\n"),
            "",
            "providers[1].models.\"flux-1.1-pro\".weight:",
        ),
        (
            format!("adapter = \"replicate\"\nbase_url = \"ftp://127.0.0.1:9101\"\n{flux}"),
            "",
            "providers[1].base_url: \"ftp://127.0.0.1:9101\" is not an http or https URL",
        ),
        (
            format!("{replicate}allowed_hosts = [\"http://127.0.0.1:9101/\"]\n{flux}"),
            "",
            "providers[1].allowed_hosts[0]:",
        ),
        (
            format!(
                "adapter = \"replicate\"\nbase_url = \"http://192.0.2.7:8000\"\napi_key = \"k\"\n{flux}"
            ),
            "",
            "providers[1].base_url: \"http://192.0.2.7:8000\" is plain http",
        ),
        (
            format!("{replicate}{flux}"),
            "[upstream]\nloopback_http_credentials = false\n",
            "providers[1].base_url: \"http://127.0.0.1:9101\" is plain http",
        ),
    ];
    let (plugins, cache) = plugin_dirs();
    for (provider, tables, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nplugins_dir = {plugins:?}\npublic_url = \"http://127.0.0.1:1\"\n\n[plugins]\ncache_dir = {cache:?}\n\n{tables}\n[[providers]]\nname = \"fine\"\nadapter = \"openai\"\nbase_url = \"http://127.0.0.1:9102\"\n[providers.models.\"llama-3.1-8b-instruct\"]\n\n[[providers]]\nname = \"wrong\"\n{provider}",
            dir.path().join("state"),
        );
        let path = dir.path().join("config.toml");
        std::fs::write(&path, &config).unwrap();
        let (status, stderr) = exit_of(
            std::process::Command::new(crate::support::binary())
                .args(["serve", "--dev", "--config"])
                .arg(&path)
                .env("RUST_LOG", "warn")
                .env_remove("MODELROUTE_LISTEN")
                .env_remove("MODELROUTE_DATA_DIR"),
            &config,
        );
        assert!(!status.success(), "{config}\n{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}\nconfig:\n{config}"
        );
        assert!(!stderr.contains("ModelRoute is ready"), "{stderr}");
    }
}

/// Runs `command` to its end (120 s at most, else kills it and fails: compiling
/// the adapters into a cold cache takes a while); answers its exit status and stderr.
fn exit_of(command: &mut std::process::Command, what: &str) -> (std::process::ExitStatus, String) {
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn modelroute");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the server started instead of refusing:\n{what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

async fn flux_available(server: &Server) -> (bool, bool) {
    let one = server.get("/v1/models/flux-1.1-pro").await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    let list = server.get("/v1/models").await;
    let listed = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["slug"] == "flux-1.1-pro")
        .expect("flux is listed")["available"]
        .as_bool()
        .unwrap();
    (one.body["available"].as_bool().unwrap(), listed)
}

/// Polls the catalogue until flux's `available` is `want` (both in the list and
/// on its own), or fails after `WAIT`.
async fn wait_available(server: &Server, want: bool) {
    let what = format!("flux's available becomes {want}");
    eventually(&what, WAIT, || async {
        let seen = flux_available(server).await;
        if seen == (want, want) {
            Ok(())
        } else {
            Err(seen)
        }
    })
    .await;
}

/// Finding 21: the only provider of a model goes away; once a health probe has
/// noticed, the catalogue says the model is unavailable and new work waits
/// instead of failing; when the provider is back, the next probe makes it
/// available again and the waiting execution runs.
#[tokio::test]
async fn a_model_whose_only_provider_is_down_is_unavailable_until_a_probe_finds_it_back() {
    let emulator = replicate_emulator().await;
    let base = emulator.base_url();
    let server = Server::start_with(
        &[ProviderSpec {
            name: "only",
            adapter: "replicate",
            base_url: base.clone(),
            models: &["flux-1.1-pro"],
        }],
        Options {
            config: "\n[testing]\nclock_control = true\n\n[upstream]\nhealth_interval_seconds = 60\n",
            ..Options::default()
        },
    )
    .await;
    assert_eq!(flux_available(&server).await, (true, true));

    emulator.shutdown().await;
    server.advance_clock(60).await;
    wait_available(&server, false).await;
    let reply = server
        .post(
            "/v1/executions",
            json!({"model": "flux-1.1-pro", "input": flux_input()}),
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_string();

    let back = replicate::spawn(authority(&base), DEFAULT_TOKEN)
        .await
        .unwrap();
    server.advance_clock(60).await;
    wait_available(&server, true).await;
    let execution = server.wait_terminal(&id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(
        back.count("/v1/models/"),
        1,
        "one submit, once the provider was back"
    );
}
