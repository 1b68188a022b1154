//! ModelRoute's host: the HTTP API, the execution engine, billing, files, and the
//! WebAssembly runtime that runs provider adapters.

pub mod api;
pub mod auth;
pub mod billing;
pub mod callbacks;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod durable;
pub mod error;
pub mod executions;
pub mod file_fields;
pub mod files;
pub mod host_pattern;
pub mod ids;
pub mod mac;
pub mod metrics;
pub mod money;
pub mod netguard;
pub mod plugins;
pub mod ratelimit;
pub mod readiness;
pub mod routing;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod webhooks;

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use auth::{OperatorToken, Scope};
use config::Config;
use executions::Executions;
use executions::dispatch::Dispatcher;
use files::Files;
use money::Micros;
use plugins::{Registry, Runtime};
use routing::Router;
use store::Store;

/// Everything a request handler can reach.
pub struct App {
    pub store: Store,
    pub executions: Arc<Executions>,
    pub dispatcher: Arc<Dispatcher>,
    pub router: Arc<Router>,
    pub registry: Arc<Registry>,
    pub runtime: Arc<Runtime>,
    pub files: Arc<Files>,
    pub webhooks: Arc<webhooks::delivery::Webhooks>,
    pub config: Config,
    pub operator_token: OperatorToken,
    pub limits: ratelimit::Limits,
}

/// Balance given to the organization `--dev` creates on a first start.
const DEV_CREDIT_USD: &str = "100.00";

/// Starts the server and runs until SIGINT or SIGTERM.
pub async fn serve(mut config: Config) -> Result<()> {
    let data = config.data_dir.clone();
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    if config.testing.clock_control {
        clock::restore(&clock::offset_file(&data)).context("restoring the driven clock")?;
        tracing::warn!(now = %clock::now(), "[testing] clock_control is on: the clock can be driven forward; never use this in production");
    }
    let listener = listen(&mut config, &data).await?;
    let operator_token = operator_token(&data)?;
    store::observe_commits(|writes, took| metrics::metrics().store_commit(writes, took));
    let commits = config.store.commits();
    let store = match config.store.postgres_url() {
        None => Store::open(
            &data.join("modelroute.redb"),
            commits,
            config.store.cache_bytes(),
        )?,
        Some(url) => {
            let url = url.to_string();
            let host = cluster::join(&data, config.store.lease())?;
            let connections = config.store.connections();
            tokio::task::spawn_blocking(move || Store::connect(&url, &host, commits, connections))
                .await??
        }
    };

    let cache = config
        .plugins
        .cache_dir
        .clone()
        .unwrap_or_else(|| data.join("plugin-cache"));
    let runtime = Runtime::new(config.plugins.clone(), cache)?;
    let installed = match store.host() {
        None => plugins::Installed::open(&data.join("installed-plugins"))?,
        Some(_) => plugins::Installed::shared(&store)?,
    };
    let registry = Arc::new(Registry::persistent(installed));
    // Listening first: a swap another host makes while this one loads is not missed.
    plugins::follow_other_hosts(&store, runtime.clone(), registry.clone())?;
    plugins::load_all(&runtime, &registry, &config.plugins_dir)?;
    plugins::watch_dir(
        runtime.clone(),
        registry.clone(),
        config.plugins_dir.clone(),
    );
    let router = Arc::new(Router::new(&config, registry.clone()));
    router.check(&config)?;
    executions::check_default_fallbacks(&config.executions, &router)?;
    let storage: Arc<dyn files::storage::Storage> = match &config.files.storage {
        config::StorageSettings::Local => Arc::new(
            files::storage::LocalDisk::open(&data.join("files"))
                .with_context(|| format!("opening {}", data.join("files").display()))?,
        ),
        config::StorageSettings::S3(s3) => {
            Arc::new(files::storage::ObjectStore::connect(s3).await?)
        }
    };
    let files = Arc::new(Files::new(
        store.clone(),
        storage,
        config.files.clone(),
        &config.public_url,
        store::signing_key(&store, files::FILE_URL_KEY).await?,
    ));
    let upstream = upstream::Upstream::new(
        Duration::from_millis(config.executions.upstream_timeout_ms),
        config.upstream.proxy.as_deref(),
    )?;
    routing::health::start(router.clone(), upstream.clone(), &config.upstream);
    let outbox = Arc::new(tokio::sync::Notify::new());
    let policy = config.webhook_policy();
    if config.dev && (policy.allow_http || policy.allow_loopback) {
        tracing::warn!(
            allow_http = policy.allow_http,
            allow_loopback = policy.allow_loopback,
            "development mode: webhooks may go to plain http and loopback addresses (private, link-local and metadata addresses stay refused)"
        );
    }
    let resolver = netguard::Resolver::new(&config.webhooks.dns()?)?;
    let webhooks = webhooks::delivery::Webhooks::new(
        store.clone(),
        netguard::Guard::new(policy, resolver),
        Duration::from_secs(config.webhooks.timeout_seconds),
        outbox.clone(),
    )?;
    let (accepted, queue) = tokio::sync::mpsc::unbounded_channel();
    let executions = Arc::new(Executions::new(
        store.clone(),
        router.clone(),
        config.executions.clone(),
        files.clone(),
        accepted,
        outbox,
        store::signing_key(&store, executions::IDEMPOTENT_ID_KEY).await?,
    ));
    executions.hear_other_hosts()?;
    let callbacks = callbacks::CallbackSigner::load(&store, &config.public_url).await?;
    let dispatcher = Dispatcher::new(
        executions.clone(),
        router.clone(),
        upstream,
        files.clone(),
        config.executions.clone(),
        callbacks,
    );
    if config.dev {
        bootstrap_dev_organization(&store, &data).await?;
    }
    // What start-up wrote (keys, secrets, the dev organization) is on disk before
    // anything is served, in either durability mode.
    store.flush().await?;

    dispatcher.start(queue).await?;
    cluster::start(store.clone(), dispatcher.clone());
    files.start_sweeper();
    webhooks.start();
    let limits = ratelimit::Limits::new(&config.rate_limits, &store);
    let app = Arc::new(App {
        store,
        executions,
        dispatcher,
        router,
        registry,
        runtime,
        files,
        webhooks,
        operator_token,
        limits,
        config: config.clone(),
    });
    let threshold = config.plugins.rollback_after_traps;
    if threshold > 0 {
        let registry = app.registry.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                // A rollback is written to the data directory: off the async workers.
                let registry = registry.clone();
                let _ = tokio::task::spawn_blocking(move || registry.roll_back_trapping(threshold))
                    .await;
            }
        });
    }
    let pruned = app.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(LIMITER_PRUNE_EVERY).await;
            pruned.limits.prune();
        }
    });
    if let Some(address) = &config.server.metrics_listen {
        serve_metrics(address, app.clone(), config.server.clone()).await?;
    }
    let address = listener.local_addr()?;
    tokio::spawn(announce_when_ready(address, data.clone(), config.dev));
    let store = app.store.clone();
    let served = server::serve(
        listener,
        api::router(app),
        &config.server,
        shutdown_signal(),
    )
    .await;
    // With `batched` durability, what was answered reaches disk before the end.
    store.flush().await?;
    served
}

/// Asks the server's own `GET /readyz` once it serves, and says so: the start
/// message operators (and `make run`) wait for, naming what is not ready if
/// anything is.
async fn announce_when_ready(address: std::net::SocketAddr, data: PathBuf, dev: bool) {
    let url = format!("http://{address}/readyz");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build();
    let answer = match client {
        Ok(client) => match client.get(&url).send().await {
            Ok(response) => Ok((response.status(), response.text().await.unwrap_or_default())),
            Err(error) => Err(error.to_string()),
        },
        Err(error) => Err(error.to_string()),
    };
    match answer {
        Ok((status, _)) if status.is_success() => {
            tracing::info!(url = %format!("http://{address}"), data = %data.display(), dev, "ModelRoute is ready (GET /readyz answers 200)")
        }
        Ok((status, body)) => {
            tracing::warn!(%status, readiness = %body, "ModelRoute serves but is not ready")
        }
        Err(error) => tracing::warn!(%url, %error, "ModelRoute could not ask its own /readyz"),
    }
}

/// Serves `GET /metrics` without a token on the operator-only `address`
/// (`server.metrics_listen`), with the main address's connection limits. It is bound
/// before the main address serves, so that a port already taken stops the start;
/// it stops with the process.
async fn serve_metrics(
    address: &str,
    app: Arc<App>,
    settings: config::ServerSettings,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("server.metrics_listen: listening on {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "serving GET /metrics without a token on the operator-only address");
    let router = api::metrics::operator_router(app);
    tokio::spawn(async move {
        let forever = std::future::pending();
        if let Err(error) = server::serve(listener, router, &settings, forever).await {
            tracing::error!(error = format!("{error:#}"), "the metrics listener stopped");
        }
    });
    Ok(())
}

/// Where the server writes the address it listens on, in the data directory.
pub const LISTEN_ADDRESS_FILE: &str = "listen-address";

/// Binds `listen` before anything else starts, so that a port the system picks
/// (`:0`) is known to all: a `public_url` on port 0 takes the same port, and
/// `$DATA/listen-address` tells scripts and tests where the server is.
async fn listen(config: &mut Config, data: &Path) -> Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let address = listener.local_addr()?;
    if let Ok(mut public) = url::Url::parse(&config.public_url)
        && public.port() == Some(0)
        && public.set_port(Some(address.port())).is_ok()
    {
        config.public_url = public.as_str().trim_end_matches('/').to_string();
    }
    config.listen = address.to_string();
    durable::write(
        &data.join(LISTEN_ADDRESS_FILE),
        address.to_string().as_bytes(),
    )
    .with_context(|| format!("writing {}", data.join(LISTEN_ADDRESS_FILE).display()))?;
    Ok(listener)
}

/// How often rate-limit buckets that are full again are forgotten.
const LIMITER_PRUNE_EVERY: Duration = Duration::from_secs(10);

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}

/// `MODELROUTE_ADMIN_TOKEN`, else `$DATA/admin-token`, else a new one written there.
/// A token that is set but empty or short stops the start: the operator meant to
/// set one, and an empty token must never guard the admin API.
fn operator_token(data: &Path) -> Result<OperatorToken> {
    match std::env::var("MODELROUTE_ADMIN_TOKEN") {
        Ok(token) => return OperatorToken::parse(&token, "MODELROUTE_ADMIN_TOKEN"),
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("MODELROUTE_ADMIN_TOKEN is not valid UTF-8")
        }
        Err(std::env::VarError::NotPresent) => {}
    }
    let path = data.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(text) => OperatorToken::parse(&text, &path.display().to_string()).with_context(|| {
            format!(
                "refusing to start: write a token of at least {} characters to {}, or delete the file to have one generated",
                auth::MIN_OPERATOR_TOKEN_CHARS,
                path.display()
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let token = OperatorToken::generate();
            durable::write_secret(&path, token.as_str())?;
            tracing::info!(path = %path.display(), "operator token written");
            Ok(token)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// On a first `--dev` start: an organization with $100.00 and its key in
/// `$DATA/dev-api-key`.
async fn bootstrap_dev_organization(store: &Store, data: &Path) -> Result<()> {
    let path = data.join("dev-api-key");
    if path.exists() {
        return Ok(());
    }
    let credit = Micros::parse(DEV_CREDIT_USD).expect("a valid amount");
    let (org_id, secret) = store
        .write(move |txn| {
            let org = auth::create_organization(txn, "Development")?;
            let (_, secret) = auth::create_key(txn, &org.id, Scope::Full)?;
            anyhow::ensure!(
                billing::deposit(txn, &org.id, credit, "dev bootstrap")? == billing::Deposit::Made,
                "the development credit is over the deposit limit"
            );
            Ok((org.id, secret))
        })
        .await?;
    durable::write_secret(&path, &secret)?;
    tracing::info!(organization = %org_id, path = %path.display(), "development organization created with $100.00");
    Ok(())
}
