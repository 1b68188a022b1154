//! `modelroute`: the server and the operator's command line.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use modelroute::auth::OperatorToken;
use modelroute::telemetry::{LogFormat, Telemetry};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "modelroute",
    version,
    about = "ModelRoute: AI model execution marketplace"
)]
struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one object a
    /// line, with the request and execution spans) for log pipelines.
    #[arg(long, global = true, env = "MODELROUTE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export every span (request, execution, attempt, adapter call) to this
    /// OpenTelemetry collector's OTLP/HTTP traces URL, as JSON, e.g.
    /// http://127.0.0.1:4318/v1/traces. Off when unset.
    #[arg(long, global = true, env = "MODELROUTE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Configuration file (default: the embedded defaults).
        #[arg(long, env = "MODELROUTE_CONFIG")]
        config: Option<PathBuf>,
        /// Development mode: bootstrap an organization with $100 and its key.
        #[arg(long)]
        dev: bool,
    },
    /// Bring the PostgreSQL database's schema up to date, then exit (`serve` does
    /// this too when it starts). Hosts of the previous version keep working on it.
    Migrate {
        /// Configuration file whose `[store]` names the database (or set
        /// MODELROUTE_DATABASE_URL with `backend = "postgres"`).
        #[arg(long, env = "MODELROUTE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Tools for plugin authors.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Operator commands, through the admin API of a running server.
    Admin {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Check a plugin as the server would load it, then against fixtures: the kit's
    /// own (common provider failures) and yours (`--fixtures file.json`).
    Check {
        /// The component, e.g. target/wasm32-wasip2/release/my_adapter.wasm
        file: PathBuf,
        /// JSON files of recorded exchanges and expected outcomes.
        #[arg(long)]
        fixtures: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct Connection {
    /// The server's base URL.
    #[arg(
        long,
        env = "MODELROUTE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// The operator token (default: read from $MODELROUTE_DATA_DIR/admin-token).
    #[arg(
        long,
        env = "MODELROUTE_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    token: Option<String>,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an organization with a full-scope API key (printed once).
    CreateOrg {
        #[arg(long)]
        name: String,
        /// Initial balance in USD, e.g. 100.00
        #[arg(long, default_value = "0")]
        credit_usd: String,
    },
    /// Credit an organization's balance.
    Credit {
        #[arg(long)]
        org: String,
        #[arg(long)]
        amount_usd: String,
        /// Why (recorded in the ledger).
        #[arg(long)]
        memo: Option<String>,
    },
    /// Set how long an organization's files live when an upload does not say.
    FileTtl {
        #[arg(long)]
        org: String,
        /// 1 to 365
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=365), required_unless_present = "server_default")]
        days: Option<u32>,
        /// Go back to the server's `files.default_ttl_days`.
        #[arg(long, conflicts_with = "days")]
        server_default: bool,
    },
    /// Set an organization's storage quota (what it may store in files; uploads
    /// past it are refused, outputs never are). Prints the quota and the usage.
    FileQuota {
        #[arg(long)]
        org: String,
        /// Bytes, e.g. 1073741824 for 1 GiB
        #[arg(long, required_unless_present_any = ["files", "server_default"])]
        bytes: Option<u64>,
        /// Number of files
        #[arg(long)]
        files: Option<u64>,
        /// Go back to the server's `files.quota_bytes` and `files.quota_files`.
        #[arg(long, conflicts_with_all = ["bytes", "files"])]
        server_default: bool,
    },
    /// Every upload, download, grant and delete of a file.
    FileAudit {
        #[arg(long)]
        file: String,
    },
    /// List loaded plugins.
    Plugins,
    /// Install or replace a plugin at runtime (validated before it goes live).
    InstallPlugin {
        /// The plugin's manifest name.
        #[arg(long)]
        name: String,
        /// The component, e.g. plugins/dist/replicate.wasm
        file: PathBuf,
    },
    /// Restore the version the last install of a plugin replaced.
    RollbackPlugin {
        #[arg(long)]
        name: String,
    },
}

/// Every command ends on an error the same way: one line, `error: <message>:
/// <cause>: …`, and exit code 1. Never `main`'s `Debug` rendering of the error,
/// which adds a backtrace whenever `RUST_BACKTRACE` is set: a typo in an operator's
/// file is not a crash.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match Telemetry::init(cli.log_format, cli.otlp_endpoint.as_deref()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            return ExitCode::FAILURE;
        }
    };
    let ran = run(cli);
    // The spans not yet exported go before the process ends.
    drop(telemetry);
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// `error`'s message and its causes, `: `-separated, on one line (a cause that
/// spans lines, e.g. a TOML parse error with its excerpt, is folded).
fn one_line(error: &anyhow::Error) -> String {
    format!("{error:#}")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config, dev } => {
            let mut config = modelroute::config::Config::load(config.as_deref())?;
            config.dev = dev;
            runtime(Some(config.store.blocking_threads()))?.block_on(modelroute::serve(config))
        }
        Command::Migrate { config } => migrate(config.as_deref()),
        Command::Admin {
            connection,
            command,
        } => runtime(None)?.block_on(admin(connection, command)),
        Command::Plugin {
            command: PluginCommand::Check { file, fixtures },
        } => runtime(None)?.block_on(check_plugin(file, fixtures)),
    }
}

/// The async runtime, its blocking threads bounded for a server (see
/// `StoreSettings::blocking_threads`), tokio's default otherwise.
fn runtime(max_blocking_threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(most) = max_blocking_threads {
        builder.max_blocking_threads(most);
    }
    builder.build().context("starting the async runtime")
}

fn migrate(config: Option<&Path>) -> Result<()> {
    let config = modelroute::config::Config::load(config)?;
    let Some(url) = config.store.postgres_url() else {
        bail!(
            "the store is redb, whose tables are made when the server opens it: nothing to migrate (set [store] backend = \"postgres\")"
        );
    };
    let applied = modelroute::store::migrate(url)?;
    match applied.as_slice() {
        [] => println!("the database's schema is up to date"),
        versions => println!("applied migrations {versions:?}"),
    }
    Ok(())
}

async fn check_plugin(file: PathBuf, fixture_files: Vec<PathBuf>) -> Result<()> {
    use modelroute::plugins::{Runtime, conformance};
    let wasm = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut fixtures = Vec::new();
    for path in &fixture_files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let parsed: Vec<conformance::Fixture> = serde_json::from_str(&text)
            .with_context(|| format!("parsing fixtures {}", path.display()))?;
        fixtures.extend(parsed);
    }
    println!("SIZE  {}", conformance::describe_size(wasm.len()));
    // Compiled artifacts go to a private scratch directory, removed afterwards.
    let cache = std::env::temp_dir().join(format!("modelroute-check-{}", std::process::id()));
    let runtime = Runtime::new(Default::default(), cache.clone())?;
    let report =
        tokio::task::spawn_blocking(move || conformance::check(&runtime, &wasm, &fixtures)).await?;
    let _ = std::fs::remove_dir_all(&cache);
    for check in &report.checks {
        match &check.failure {
            None => println!("PASS  {}", check.name),
            Some(why) => {
                // One mismatch a line; the first beside the check's name.
                let mut lines = why.lines();
                println!("FAIL  {}: {}", check.name, lines.next().unwrap_or_default());
                for line in lines {
                    println!("        {line}");
                }
            }
        }
    }
    for warning in &report.warnings {
        println!("warning: {warning}");
    }
    let failed = report.failed();
    let warnings = report.warnings.len();
    println!(
        "{} passed, {failed} failed, {warnings} warning{}",
        report.checks.len() - failed,
        if warnings == 1 { "" } else { "s" }
    );
    if failed > 0 {
        bail!("{} does not conform", file.display());
    }
    Ok(())
}

async fn admin(connection: Connection, command: AdminCommand) -> Result<()> {
    let token = match connection.token {
        Some(token) => OperatorToken::parse(&token, "--token (or MODELROUTE_ADMIN_TOKEN)")?,
        None => {
            let data = std::env::var("MODELROUTE_DATA_DIR").unwrap_or_else(|_| "./data".into());
            let path = PathBuf::from(data).join("admin-token");
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("no --token given and {} is unreadable", path.display())
            })?;
            OperatorToken::parse(&text, &path.display().to_string())?
        }
    };
    let base = connection.url.trim_end_matches('/');
    let client = reqwest::Client::new();
    let request = match &command {
        AdminCommand::CreateOrg { name, credit_usd } => client
            .post(format!("{base}/admin/v1/organizations"))
            .json(&json!({ "name": name, "credit_usd": credit_usd })),
        AdminCommand::Credit {
            org,
            amount_usd,
            memo,
        } => client
            .post(format!("{base}/admin/v1/organizations/{org}/credit"))
            .json(&json!({ "amount_usd": amount_usd, "memo": memo })),
        AdminCommand::FileTtl { org, days, .. } => client
            .patch(format!("{base}/admin/v1/organizations/{org}"))
            .json(&json!({ "file_ttl_days": days })),
        AdminCommand::FileQuota {
            org,
            bytes,
            files,
            server_default,
        } => {
            let mut body = serde_json::Map::new();
            if *server_default {
                body.insert("file_quota_bytes".into(), Value::Null);
                body.insert("file_quota_files".into(), Value::Null);
            }
            if let Some(bytes) = bytes {
                body.insert("file_quota_bytes".into(), json!(bytes));
            }
            if let Some(files) = files {
                body.insert("file_quota_files".into(), json!(files));
            }
            client
                .patch(format!("{base}/admin/v1/organizations/{org}"))
                .json(&body)
        }
        AdminCommand::FileAudit { file } => {
            client.get(format!("{base}/admin/v1/files/{file}/audit"))
        }
        AdminCommand::Plugins => client.get(format!("{base}/admin/v1/plugins")),
        AdminCommand::InstallPlugin { name, file } => {
            let wasm =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            // Checked here, before the server spends a compile on the wrong file.
            let manifest_name = manifest_name(file, &wasm).await?;
            if manifest_name != *name {
                bail!(
                    "{} is the plugin {manifest_name:?}, not {name:?} (its manifest names it)",
                    file.display()
                );
            }
            client
                .put(format!("{base}/admin/v1/plugins/{name}"))
                .body(wasm)
        }
        AdminCommand::RollbackPlugin { name } => {
            client.post(format!("{base}/admin/v1/plugins/{name}/rollback"))
        }
    };
    let response = request
        .bearer_auth(token.as_str())
        .send()
        .await
        .with_context(|| format!("reaching {base}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        match body["error"]["message"].as_str() {
            Some(message) => bail!("the server answered {status}: {message}"),
            None => bail!("the server answered {status}"),
        }
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

/// The name `wasm`'s manifest gives the plugin, read by loading it as the server
/// and `plugin check` do (in a private scratch cache, removed afterwards).
async fn manifest_name(file: &Path, wasm: &[u8]) -> Result<String> {
    use modelroute::plugins::Runtime;
    let cache = std::env::temp_dir().join(format!("modelroute-name-{}", std::process::id()));
    let runtime = Runtime::new(Default::default(), cache.clone())?;
    let wasm = wasm.to_vec();
    let loaded = tokio::task::spawn_blocking(move || runtime.load(&wasm)).await;
    let _ = std::fs::remove_dir_all(&cache);
    let plugin = loaded?.with_context(|| format!("loading {}", file.display()))?;
    Ok(plugin.name.clone())
}
