//! What the load generators (`modelroute-loadgen`, `modelroute-ttfb`) share: a
//! `modelroute` server started from a binary against one OpenAI-format provider,
//! ready, with an organization that has money to spend.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::emulators::DEFAULT_TOKEN;

/// A running server; dropping it stops the process and removes its data.
pub struct BenchServer {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    /// the organization's API key
    pub key: String,
    /// the operator token
    pub admin_token: String,
    /// a client for it, without Nagle's delay and with a large pool
    pub client: reqwest::Client,
    child: Child,
    _data: tempfile::TempDir,
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BenchServer {
    /// Starts `binary` with the adapters of `plugins_dir`, one provider of
    /// `llama-3.1-8b-instruct` at `provider` (an OpenAI-format base URL), `store`
    /// as its `[store]` table's settings and no rate limit to speak of; waits for
    /// `/readyz`; creates an organization with $1M.
    pub async fn start(
        binary: &Path,
        plugins_dir: &Path,
        provider: &str,
        store: &str,
    ) -> Result<BenchServer> {
        let data = tempfile::tempdir()?;
        let config = data.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nplugins_dir = {:?}\npublic_url = \"http://127.0.0.1:0\"\n\
                 [store]\n{store}\n\
                 [rate_limits]\nrequests_per_second = 1000000\nburst = 1000000\n\
                 [upstream]\nloopback_http_credentials = true\n\
                 [[providers]]\nname = \"local\"\nadapter = \"openai\"\nbase_url = {provider:?}\napi_key = \"{DEFAULT_TOKEN}\"\n\
                 [providers.models.\"llama-3.1-8b-instruct\"]\n",
                data.path().join("state"),
                std::path::absolute(plugins_dir)?,
            ),
        )?;
        let child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(512)
            .build()?;
        let mut server = BenchServer {
            base: String::new(),
            key: String::new(),
            admin_token: String::new(),
            client,
            child,
            _data: data,
        };
        // The server writes the port it picked to `$DATA/listen-address`; it can
        // serve once `/readyz` answers 200.
        let state = server._data.path().join("state");
        let deadline = Instant::now() + Duration::from_secs(60);
        server.base = loop {
            if let Ok(address) = std::fs::read_to_string(state.join("listen-address")) {
                let base = format!("http://{}", address.trim());
                let ready = server.client.get(format!("{base}/readyz")).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    break base;
                }
            }
            if Instant::now() > deadline {
                bail!("the server did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        server.admin_token = std::fs::read_to_string(state.join("admin-token"))?
            .trim()
            .to_string();
        let org: Value = server
            .client
            .post(format!("{}/admin/v1/organizations", server.base))
            .bearer_auth(&server.admin_token)
            .json(&json!({"name": "bench", "credit_usd": "1000000"}))
            .send()
            .await?
            .json()
            .await?;
        server.key = org["api_key"].as_str().context("no api key")?.to_string();
        Ok(server)
    }
}
