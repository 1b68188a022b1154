//! Test helpers: a real `modelroute` server process on loopback with its own data
//! directory, driven over HTTP like a client would.

use modelroute_tests::emulators::Emulator;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `modelroute` binary next to this test binary (`cargo build --bins` puts it
/// there; `make test` does that first). `MODELROUTE_BIN` overrides.
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("MODELROUTE_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join("modelroute");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` (make test does)",
        path.display()
    );
    path
}

fn plugins_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist");
    assert!(
        dir.join("replicate.wasm").exists(),
        "{} has no plugins: run `make plugins`",
        dir.display()
    );
    dir
}

/// Compiled adapters, shared by every server of the suite (compiling them in a
/// debug build takes seconds; loading a cached one, milliseconds).
fn shared_plugin_cache() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("e2e-plugin-cache")
}

/// One provider entry of the server's config.
pub struct ProviderSpec<'a> {
    pub name: &'a str,
    pub adapter: &'a str,
    pub base_url: String,
    pub models: &'a [&'a str],
}

/// A response, with its status and JSON body (Null when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the SPEC's error envelope and returns its code.
    pub fn error_code(&self) -> &str {
        let error = &self.body["error"];
        assert!(error.is_object(), "not an error envelope: {}", self.body);
        assert!(error["message"].is_string(), "{}", self.body);
        assert!(error["retryable"].is_boolean(), "{}", self.body);
        assert_eq!(
            error["request_id"].as_str(),
            self.header("x-request-id"),
            "request_id must match X-Request-Id"
        );
        error["code"].as_str().expect("code")
    }
}

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
    pub api_key: String,
    pub admin_token: String,
    http: Client,
    /// the server's PostgreSQL database, on a PostgreSQL run (dropped after it)
    database: Option<crate::test_database::TestDatabase>,
}

/// What a test server differs in.
pub struct Options<'a> {
    /// extra TOML for the `[executions]` table
    pub executions: &'a str,
    /// test-only adapters (built into `target/test-plugins` by `make plugins`) to
    /// load beside the shipped ones
    pub extra_plugins: &'a [&'a str],
    /// requests per second and burst per key
    pub rate_limit: (u32, u32),
    /// extra TOML for the `[plugins]` table
    pub plugins: &'a str,
    /// extra TOML for the `[store]` table (with this run's database, if any)
    pub store: &'a str,
    /// extra top-level tables (`[webhooks]`, `[files]`, `[testing]`, …)
    pub config: &'a str,
    /// environment variables of the server process
    pub env: &'a [(&'a str, &'a str)],
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            executions: "",
            extra_plugins: &[],
            rate_limit: (10_000, 10_000),
            plugins: "",
            store: "",
            config: "",
            env: &[],
        }
    }
}

impl Server {
    /// Starts a dev-mode server whose providers are `providers`.
    pub async fn start(providers: &[ProviderSpec<'_>]) -> Server {
        Self::start_with(providers, Options::default()).await
    }

    pub async fn start_with(providers: &[ProviderSpec<'_>], options: Options<'_>) -> Server {
        let mut server = Self::configure(providers, options);
        server.launch().await;
        let state = server.data.path().join("state");
        server.api_key = read_trimmed(&state.join("dev-api-key"));
        server.admin_token = read_trimmed(&state.join("admin-token"));
        server
    }

    /// Runs a server that must refuse to start; answers what it printed.
    pub fn refused(providers: &[ProviderSpec<'_>], options: Options<'_>) -> String {
        let server = Self::configure(providers, options);
        let output = Command::new(binary())
            .args(["serve", "--dev", "--config"])
            .arg(&server.config)
            .env_remove("MODELROUTE_LISTEN")
            .env_remove("MODELROUTE_DATA_DIR")
            .envs(server.env.iter().map(|(name, value)| (name, value)))
            .output()
            .expect("run modelroute");
        let printed = String::from_utf8_lossy(&output.stderr).to_string()
            + &String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "the server started: {printed}");
        printed
    }

    /// Writes the configuration of a server; nothing runs yet.
    fn configure(providers: &[ProviderSpec<'_>], options: Options<'_>) -> Server {
        let Options {
            executions,
            extra_plugins: extra,
            rate_limit: (per_second, burst),
            plugins: plugin_settings,
            store,
            config: extra_config,
            env,
        } = options;
        let data = tempfile::tempdir().expect("temp dir");
        let plugins = if extra.is_empty() {
            plugins_dir()
        } else {
            let dir = data.path().join("plugins");
            std::fs::create_dir_all(&dir).expect("plugins dir");
            for entry in std::fs::read_dir(plugins_dir()).expect("plugins") {
                let path = entry.expect("entry").path();
                std::fs::copy(&path, dir.join(path.file_name().expect("name")))
                    .expect("copy plugin");
            }
            let test_plugins =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-plugins");
            for name in extra {
                let path = test_plugins.join(format!("{name}.wasm"));
                assert!(
                    path.exists(),
                    "{} is missing: run `make plugins`",
                    path.display()
                );
                std::fs::copy(&path, dir.join(format!("{name}.wasm"))).expect("copy test plugin");
            }
            dir
        };
        let mut config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nplugins_dir = {:?}\npublic_url = \"http://127.0.0.1:0\"\n\n[plugins]\ncache_dir = {:?}\n{plugin_settings}\n\n[rate_limits]\nrequests_per_second = {per_second}\nburst = {burst}\n\n[executions]\n{executions}\n",
            data.path().join("state"),
            plugins,
            shared_plugin_cache(),
        );
        for provider in providers {
            config.push_str(&format!(
                "\n[[providers]]\nname = {:?}\nadapter = {:?}\nbase_url = {:?}\napi_key = \"emulator-key\"\n",
                provider.name, provider.adapter, provider.base_url
            ));
            for model in provider.models {
                config.push_str(&format!("[providers.models.{model:?}]\n"));
            }
        }
        config.push_str(extra_config);
        let database = crate::test_database::TestDatabase::for_this_run()
            .filter(|_| !extra_config.contains("[store]"));
        match &database {
            Some(database) => config.push_str(&format!("{}{store}", database.config())),
            None if !store.is_empty() => config.push_str(&format!("\n[store]\n{store}")),
            None => {}
        }
        let path = data.path().join("config.toml");
        std::fs::write(&path, config).expect("write config");
        Server {
            child: None,
            url: String::new(),
            data,
            config: path,
            env: env
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            api_key: String::new(),
            admin_token: String::new(),
            // Idle connections are dropped well before the shortest idle timeout a
            // test gives its server (1 s): reusing one the server is closing at that
            // moment fails the request (a flake seen in CI: `IncompleteMessage` on
            // the first request after a wait of about a second).
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_idle_timeout(Duration::from_millis(400))
                .build()
                .expect("client"),
            database,
        }
    }

    async fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let _ = std::fs::remove_file(self.address_file());
        let child = Command::new(binary())
            .args(["serve", "--dev", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,wasmtime=warn,cranelift=warn")
            .env_remove("MODELROUTE_LISTEN")
            .env_remove("MODELROUTE_DATA_DIR")
            .env_remove("MODELROUTE_ADMIN_TOKEN")
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn modelroute");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        if self.url.is_empty() {
            self.learn_address(deadline).await;
        }
        loop {
            if let Ok(response) = self.http.get(format!("{}/readyz", self.url)).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("the server exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the server did not become ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn address_file(&self) -> PathBuf {
        self.data.path().join("state/listen-address")
    }

    /// On the first start the server picks its port (no race with another test for
    /// a port found free): read where it listens, and keep that port in the config
    /// so that a restart serves the same URLs.
    async fn learn_address(&mut self, deadline: Instant) {
        let address = loop {
            if let Ok(address) = std::fs::read_to_string(self.address_file()) {
                break address;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("the server exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the server did not listen; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.url = format!("http://{address}");
        let config = std::fs::read_to_string(&self.config).expect("config");
        std::fs::write(
            &self.config,
            config.replace("127.0.0.1:0\"", &format!("{address}\"")),
        )
        .expect("config");
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// Moves the server's clock forward (it must run with `[testing] clock_control`).
    /// Waits until the webhook worker has nothing due and nothing in flight (by the
    /// service clock): whatever it was going to send by now has been sent and
    /// recorded. The state query behind every "nothing more was sent" check.
    pub async fn wait_outbox_idle(&self) -> Value {
        let admin_token = self.admin_token.clone();
        eventually(
            "the webhook outbox is idle",
            Duration::from_secs(30),
            || {
                let admin_token = admin_token.clone();
                async move {
                    let reply = self
                        .call(
                            Method::GET,
                            "/admin/v1/webhooks/outbox",
                            Some(&admin_token),
                            None,
                            &[],
                        )
                        .await;
                    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
                    let idle = reply.body["due"] == json!(0) && reply.body["in_flight"] == json!(0);
                    if idle {
                        Ok(reply.body)
                    } else {
                        Err(reply.body)
                    }
                }
            },
        )
        .await
    }

    pub async fn advance_clock(&self, seconds: u64) {
        let reply = self
            .call(
                Method::POST,
                "/admin/v1/clock/advance",
                Some(&self.admin_token),
                Some(json!({ "seconds": seconds })),
                &[],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }

    pub fn log_path(&self) -> PathBuf {
        self.data.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The server's PostgreSQL database, on a PostgreSQL run.
    pub fn database(&self) -> Option<&crate::test_database::TestDatabase> {
        self.database.as_ref()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill");
            child.wait().expect("wait");
        }
    }

    /// How the server exited, once it has (by itself).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().expect("try_wait")
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|error| {
            // Most often the server is gone: what it logged last says why.
            panic!(
                "request: {error:?}\nthe server's log ends:\n{}",
                self.log_tail(40)
            )
        });
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Some(&self.api_key), None, &[])
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(&self.api_key), Some(body), &[])
            .await
    }

    /// A `SYNC` chat execution of `llama-3.1-8b-instruct`, answered `COMPLETED`.
    pub async fn sync_chat(&self) -> Reply {
        let reply = self
            .post(
                "/v1/executions",
                json!({"model": "llama-3.1-8b-instruct", "mode": "SYNC",
                       "input": {"messages": [{"role": "user", "content": "hi"}]}}),
            )
            .await;
        assert_eq!(reply.body["status"], "COMPLETED", "{:?}", reply.body);
        reply
    }

    /// `GET path` as the operator.
    pub async fn admin_get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Some(&self.admin_token), None, &[])
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, Some(&self.api_key), None, &[])
            .await
    }

    pub async fn bytes(&self, path: &str) -> (StatusCode, Vec<u8>) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .expect("request");
        (
            response.status(),
            response.bytes().await.expect("body").to_vec(),
        )
    }

    /// Polls until the execution is terminal (or panics after `timeout`).
    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let reply = self.get(&format!("/v1/executions/{id}")).await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
            let status = reply.body["status"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if ["COMPLETED", "FAILED", "CANCELLED", "EXPIRED"].contains(&status.as_str()) {
                return reply.body;
            }
            assert!(
                Instant::now() < deadline,
                "execution {id} still {status}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Creates an organization through the admin API; returns its API key.
    pub async fn new_organization(&self, credit_usd: &str) -> String {
        let reply = self
            .call(
                Method::POST,
                "/admin/v1/organizations",
                Some(&self.admin_token),
                Some(json!({"name": "Another", "credit_usd": credit_usd})),
                &[],
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.body["api_key"].as_str().expect("api_key").to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        // The database goes after the process that used it.
        self.database.take();
    }
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

pub fn flux_input() -> Value {
    json!({"prompt": "a lighthouse at dusk", "width": 512, "height": 384})
}

/// The shipped adapters' directory and the suite's compiled-adapter cache, for a
/// test that writes a whole config itself.
pub fn plugin_dirs() -> (PathBuf, PathBuf) {
    (plugins_dir(), shared_plugin_cache())
}

/// A secret in the API key format, with a valid checksum, that no server issued
/// (`seed` makes each one different).
pub fn unissued_secret(seed: u32) -> String {
    let body = format!("{:064x}", 0xfeed_0000_u64 + seed as u64);
    format!("sk_{body}_{:08x}", crc32fast::hash(body.as_bytes()))
}

/// A provider entry for the Replicate-format emulator serving `flux-1.1-pro`.
pub fn replicate_provider<S>(emulator: &Emulator<S>) -> ProviderSpec<'static> {
    ProviderSpec {
        name: "replicate-emulator",
        adapter: "replicate",
        base_url: emulator.base_url(),
        models: &["flux-1.1-pro"],
    }
}

/// The Replicate-format emulator serving the image model and its file-input
/// sibling (`flux-kontext-pro`, whose `image` is a file).
pub fn replicate_with_files<S>(emulator: &Emulator<S>) -> ProviderSpec<'static> {
    ProviderSpec {
        models: &["flux-1.1-pro", "flux-kontext-pro"],
        ..replicate_provider(emulator)
    }
}

/// A provider entry for the OpenAI-format emulator (images and chat).
pub fn openai_provider<S>(emulator: &Emulator<S>) -> ProviderSpec<'static> {
    ProviderSpec {
        name: "openai-emulator",
        adapter: "openai",
        base_url: emulator.base_url(),
        models: &["flux-1.1-pro", "llama-3.1-8b-instruct"],
    }
}

impl Server {
    /// The dev organization's 100 USD of credit less `spent` is what it has left,
    /// and no hold remains.
    pub async fn assert_spent(&self, spent: rust_decimal::Decimal) {
        let balance = self.get("/v1/balance").await.body;
        assert_eq!(balance["held"], "0", "no orphan hold: {balance}");
        let available = decimal(balance["available"].as_str().unwrap());
        assert_eq!(available + spent, decimal("100"), "{available} + {spent}");
    }

    /// The ledger's own check: balances, holds and entries agree.
    pub async fn assert_ledger_verifies(&self) {
        let reply = self.admin_get("/admin/v1/ledger/verify").await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["consistent"], true, "{}", reply.body);
    }

    /// How many stored objects hold bytes of `file_id` (each upload writes its own).
    pub fn objects_of(&self, file_id: &str) -> usize {
        let dir = self.data.path().join("state/files/objects");
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|entry| {
                let name = entry.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with(file_id)
            })
            .count()
    }
}

/// How often [`eventually`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `probe` until it answers `Ok`, and returns that; after `timeout` the test
/// fails naming `what` and the last thing the probe saw. For conditions that the
/// suite cannot be told about, only find by looking.
pub async fn eventually<T, E, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last seen: {seen:?}")
            }
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

/// [`eventually`] for a yes-or-no condition.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(what, timeout, || {
        let check = condition();
        async move { if check.await { Ok(()) } else { Err("no") } }
    })
    .await
}

/// Each of an execution's `attempts` was submitted at most once among `submits`
/// (the bodies of the submits sent for it, whose callback URL names the attempt),
/// and there were no more submits than attempts.
pub fn assert_no_attempt_submitted_twice(id: &str, attempts: &[Value], submits: &[&str]) {
    for attempt in attempts {
        let own = format!(".{}.", attempt["id"].as_str().unwrap());
        let sent = submits.iter().filter(|body| body.contains(&own)).count();
        assert!(sent <= 1, "{id}: attempt {own} submitted {sent} times");
    }
    assert!(
        submits.len() <= attempts.len(),
        "{id}: {} submits for {} attempts",
        submits.len(),
        attempts.len()
    );
}

/// An amount of money as the API writes it (decimal text), exactly.
pub fn decimal(amount: &str) -> rust_decimal::Decimal {
    amount
        .parse()
        .unwrap_or_else(|e| panic!("{amount:?} is not a decimal amount: {e}"))
}

/// A tool the test needs is missing: the test is skipped, unless this is CI (`CI`
/// set), where that fails it.
pub fn skip_unless_ci(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("skipped: {why}");
}

/// `python3` with `target/<folder>` (where `make pydeps` installs a pinned Python
/// tool) on its path, when `module` imports from there; else `None`, the test
/// skipped as [`skip_unless_ci`] says.
pub fn pydeps_python(folder: &str, module: &str) -> Option<tokio::process::Command> {
    let pydeps = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(folder);
    let importable = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .env("PYTHONPATH", &pydeps)
        .output()
        .is_ok_and(|output| output.status.success());
    if !importable {
        skip_unless_ci(&format!(
            "the Python module {module} is not importable from {} (run `make pydeps`)",
            pydeps.display()
        ));
        return None;
    }
    let mut python = tokio::process::Command::new("python3");
    python.env("PYTHONPATH", pydeps);
    Some(python)
}

/// A numeric field of the process `pid`'s `/proc/<pid>/status` (Linux): `VmRSS` and
/// `VmHWM` in KiB, `Threads` a count.
pub fn process_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
