//! `modelroute-ttfb`: the time to the first streamed text of a `stream: true` chat
//! completion, from the OpenAI-format emulator called directly and through
//! ModelRoute's OpenAI-compatible door (`POST /openai/v1/chat/completions`), one
//! client at a time and several at once. `make bench-door` runs it against the
//! release build.
//!
//! Time to first text: from sending the request until the body has delivered a
//! `data:` event whose `choices[0].delta.content` is not empty (the role chunk
//! before it does not count). Every stream is then read to its `data: [DONE]`.

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::path::PathBuf;

use std::time::{Duration, Instant};

use modelroute_tests::bench::BenchServer;
use modelroute_tests::emulators::{DEFAULT_TOKEN, openai};

#[derive(Parser)]
struct Args {
    /// The `modelroute` binary to measure.
    #[arg(long, default_value = "target/release/modelroute")]
    server: PathBuf,
    /// Where the server loads its adapters from (it needs `openai.wasm`).
    #[arg(long, default_value = "plugins/dist")]
    plugins_dir: PathBuf,
    /// Streams per phase.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Concurrent clients in the concurrent phases.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// Whether one SSE event (its text, without the blank line) carries streamed text.
fn has_text(event: &str) -> bool {
    event.lines().any(|line| {
        line.strip_prefix("data:")
            .and_then(|data| serde_json::from_str::<Value>(data.trim()).ok())
            .and_then(|chunk| {
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(|text| !text.is_empty())
            })
            .unwrap_or(false)
    })
}

/// Sends one streamed request and reads it to its end; returns the time from
/// sending it to the first event with text.
async fn first_text(request: reqwest::RequestBuilder) -> Result<Duration> {
    let sent = Instant::now();
    let response = request.send().await?;
    if !response.status().is_success() {
        bail!("answered {}: {}", response.status(), response.text().await?);
    }
    let mut body = response.bytes_stream();
    let (mut buffer, mut first, mut done) = (Vec::new(), None, false);
    while let Some(bytes) = body.next().await {
        buffer.extend_from_slice(&bytes?);
        // Complete events only; a partial one waits for its next bytes.
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            let event = std::str::from_utf8(&event)?;
            if first.is_none() && has_text(event) {
                first = Some(sent.elapsed());
            }
            done |= event.trim() == "data: [DONE]";
        }
    }
    if !done {
        bail!("the stream ended without [DONE]");
    }
    first.context("the stream carried no text")
}

/// Runs `count` streams built by `make`, `concurrency` at a time; returns each
/// stream's time to first text, sorted.
async fn drive<F>(count: usize, concurrency: usize, make: F) -> Result<Vec<Duration>>
where
    F: Fn() -> reqwest::RequestBuilder,
{
    let mut times: Vec<Duration> = futures_util::stream::iter(0..count)
        .map(|_| first_text(make()))
        .buffer_unordered(concurrency)
        .collect::<Vec<Result<Duration>>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    times.sort();
    Ok(times)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await?;
    let server =
        BenchServer::start(&args.server, &args.plugins_dir, &emulator.base_url(), "").await?;
    let (base, key, client) = (&server.base, &server.key, &server.client);
    let messages = json!([{"role": "user", "content": "Say hello to the benchmark"}]);
    let direct_url = format!("{}/v1/chat/completions", emulator.base_url());
    let direct_body = json!({"model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", "messages": messages, "max_tokens": 16, "stream": true});
    let direct = || {
        client
            .post(&direct_url)
            .bearer_auth(DEFAULT_TOKEN)
            .json(&direct_body)
    };
    let door_url = format!("{base}/openai/v1/chat/completions");
    let door_body = json!({"model": "llama-3.1-8b-instruct", "messages": messages, "max_tokens": 16, "stream": true});
    let door = || client.post(&door_url).bearer_auth(key).json(&door_body);

    // Warm both paths (connections, the adapter's compiled instance).
    drive(args.concurrency, args.concurrency, direct).await?;
    drive(args.concurrency, args.concurrency, door).await?;

    println!("| time to first streamed text | p50 ms | p99 ms |");
    println!("|---|---|---|");
    for clients in [1, args.concurrency] {
        let alone = drive(args.requests, clients, direct).await?;
        let through = drive(args.requests, clients, door).await?;
        let row = |name: &str, p50: f64, p99: f64| {
            println!("| {name}, {clients} at a time | {p50:.2} | {p99:.2} |");
        };
        let (alone50, alone99) = (percentile(&alone, 0.5), percentile(&alone, 0.99));
        let (door50, door99) = (percentile(&through, 0.5), percentile(&through, 0.99));
        row("emulator alone", alone50, alone99);
        row("through the door", door50, door99);
        row("added by ModelRoute", door50 - alone50, door99 - alone99);
    }
    Ok(())
}
