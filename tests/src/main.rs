//! `modelroute-emulators`: the provider emulators on fixed loopback ports, for
//! `make run` and manual testing. Faults can be injected over HTTP:
//! `curl -X POST 127.0.0.1:9101/__emulator/faults -d '{"kind":"status","status":503}'`.

use clap::Parser;
use modelroute_tests::emulators::{DEFAULT_TOKEN, bfl, fal, openai, replicate};

#[derive(Parser)]
#[command(about = "Emulated AI providers on loopback")]
struct Args {
    /// Address of the Replicate-format emulator.
    #[arg(long, default_value = "127.0.0.1:9101")]
    replicate: String,
    /// Address of the OpenAI-format emulator.
    #[arg(long, default_value = "127.0.0.1:9102")]
    openai: String,
    /// Address of the Black Forest Labs emulator.
    #[arg(long, default_value = "127.0.0.1:9103")]
    bfl: String,
    /// Address of the fal emulator.
    #[arg(long, default_value = "127.0.0.1:9104")]
    fal: String,
    /// The credential the emulators expect.
    #[arg(long, env = "MODELROUTE_EMULATOR_TOKEN", default_value = DEFAULT_TOKEN)]
    token: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let replicate = replicate::spawn(&args.replicate, &args.token).await?;
    let openai = openai::spawn(&args.openai, &args.token).await?;
    tracing::info!(url = %replicate.base_url(), "Replicate-format emulator");
    let bfl = bfl::spawn(&args.bfl, &args.token).await?;
    tracing::info!(url = %openai.base_url(), "OpenAI-format emulator");
    let fal = fal::spawn(&args.fal, &args.token).await?;
    tracing::info!(url = %bfl.base_url(), "Black Forest Labs emulator");
    tracing::info!(url = %fal.base_url(), "fal emulator");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
