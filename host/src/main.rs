//! `modelroute`: the server and the operator's command line.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "modelroute",
    version,
    about = "ModelRoute: AI model execution marketplace"
)]
struct Cli {
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
    /// Operator commands, through the admin API of a running server.
    Admin {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: AdminCommand,
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve { config, dev } => {
            let mut config = modelroute::config::Config::load(config.as_deref())?;
            config.dev = dev;
            runtime.block_on(modelroute::serve(config))
        }
        Command::Admin {
            connection,
            command,
        } => runtime.block_on(admin(connection, command)),
    }
}

async fn admin(connection: Connection, command: AdminCommand) -> Result<()> {
    let token = match connection.token {
        Some(token) => token,
        None => {
            let data = std::env::var("MODELROUTE_DATA_DIR").unwrap_or_else(|_| "./data".into());
            let path = PathBuf::from(data).join("admin-token");
            std::fs::read_to_string(&path)
                .with_context(|| format!("no --token given and {} is unreadable", path.display()))?
                .trim()
                .to_string()
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
        AdminCommand::Plugins => client.get(format!("{base}/admin/v1/plugins")),
        AdminCommand::InstallPlugin { name, file } => {
            let wasm =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            client
                .put(format!("{base}/admin/v1/plugins/{name}"))
                .body(wasm)
        }
        AdminCommand::RollbackPlugin { name } => {
            client.post(format!("{base}/admin/v1/plugins/{name}/rollback"))
        }
    };
    let response = request
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("reaching {base}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    println!("{}", serde_json::to_string_pretty(&body)?);
    if !status.is_success() {
        bail!("the server answered {status}");
    }
    Ok(())
}
