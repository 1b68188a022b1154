//! `modelroute-emulators`: the provider emulators on fixed loopback ports, for
//! `make run` and manual testing, until Ctrl-C or SIGTERM. Faults can be injected over
//! HTTP: `curl -X POST 127.0.0.1:9101/__emulator/faults -d '{"kind":"status","status":503}'`.

use anyhow::Context;
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
    let bind = |addr: &str| format!("cannot listen on {addr}");
    let replicate = replicate::spawn(&args.replicate, &args.token)
        .await
        .with_context(|| bind(&args.replicate))?;
    let openai = openai::spawn(&args.openai, &args.token)
        .await
        .with_context(|| bind(&args.openai))?;
    let bfl = bfl::spawn(&args.bfl, &args.token)
        .await
        .with_context(|| bind(&args.bfl))?;
    let fal = fal::spawn(&args.fal, &args.token)
        .await
        .with_context(|| bind(&args.fal))?;
    println!("Replicate-format emulator: {}", replicate.base_url());
    println!("OpenAI-format emulator: {}", openai.base_url());
    println!("Black Forest Labs emulator: {}", bfl.base_url());
    println!("fal emulator: {}", fal.base_url());
    stop_signal().await?;
    tracing::info!("stopping");
    Ok(())
}

/// Ctrl-C, or SIGTERM where there are signals.
async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}
