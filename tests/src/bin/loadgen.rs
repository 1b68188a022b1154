//! `modelroute-loadgen`: measures, in one run on this machine, a provider emulator
//! called directly against the same calls through ModelRoute in SYNC mode (the
//! latency ModelRoute adds), how many ASYNC executions per second ModelRoute
//! accepts, and how many it runs to completion per second (all on the same box).
//! `make bench` runs it against the release build, once per durability mode.

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use modelroute_tests::bench::BenchServer;
use modelroute_tests::emulators::{DEFAULT_TOKEN, openai};

#[derive(Parser)]
struct Args {
    /// The `modelroute` binary to measure.
    #[arg(long, default_value = "target/release/modelroute")]
    server: PathBuf,
    /// Requests per latency phase.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent clients in the latency phases.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Executions in the acceptance phase.
    #[arg(long, default_value_t = 20000)]
    accepts: usize,
    /// Concurrent clients in the acceptance phase.
    #[arg(long, default_value_t = 1024)]
    accept_concurrency: usize,
    /// The server's `[store] durability`: strict or batched.
    #[arg(long, default_value = "strict")]
    durability: String,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// Runs `count` requests built by `make`, `concurrency` at a time; returns each
/// latency (sorted) and the wall time.
async fn drive<F, Fut>(
    count: usize,
    concurrency: usize,
    make: F,
) -> Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let started = Instant::now();
    let mut latencies: Vec<Duration> = futures_util::stream::iter(0..count)
        .map(|i| {
            let request = make(i);
            async move {
                let sent = Instant::now();
                request.await.map(|_| sent.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<Result<Duration>>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let wall = started.elapsed();
    latencies.sort();
    Ok((latencies, wall))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await?;
    let server = BenchServer::start(
        &args.server,
        Path::new("plugins/dist"),
        &emulator.base_url(),
        &format!("durability = {:?}", args.durability),
    )
    .await?;
    let (base, key, token, client) = (
        &server.base,
        &server.key,
        &server.admin_token,
        &server.client,
    );
    let messages = json!([{"role": "user", "content": "Say hello to the benchmark"}]);

    // 1. The emulator alone.
    let direct_url = format!("{}/v1/chat/completions", emulator.base_url());
    let direct_body = json!({"model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", "messages": messages, "max_tokens": 16});
    let (direct, _) = drive(args.requests, args.concurrency, |_| {
        let request = client
            .post(&direct_url)
            .bearer_auth(DEFAULT_TOKEN)
            .json(&direct_body)
            .send();
        async move {
            let response = request.await?;
            if !response.status().is_success() {
                bail!("emulator answered {}", response.status());
            }
            response.bytes().await?;
            Ok(())
        }
    })
    .await?;

    // 2. The same calls through ModelRoute, SYNC.
    let create_url = format!("{base}/v1/executions");
    let sync_body = json!({"model": "llama-3.1-8b-instruct", "mode": "SYNC", "input": {"messages": messages, "max_tokens": 16}});
    let (sync, _) = drive(args.requests, args.concurrency, |_| {
        let request = client
            .post(&create_url)
            .bearer_auth(key)
            .json(&sync_body)
            .send();
        async move {
            let response = request.await?;
            let body: Value = response.json().await?;
            if body["status"] != "COMPLETED" {
                bail!("not completed: {body}");
            }
            Ok(())
        }
    })
    .await?;

    // 2b. The same, while the adapter is replaced (compile + validate + activate).
    let openai_wasm = std::fs::read("plugins/dist/openai.wasm").context("run `make plugins`")?;
    let install_url = format!("{base}/admin/v1/plugins/openai");
    let swaps = async {
        let mut times = Vec::new();
        for marker in 0..3u8 {
            // A trailing custom section: the same adapter, a new hash, so a cold compile.
            let mut wasm = openai_wasm.clone();
            wasm.extend_from_slice(&[0x00, 6, 4, b'b', b'e', b'n', b'c', marker]);
            let started = Instant::now();
            let response = client
                .put(&install_url)
                .bearer_auth(token)
                .body(wasm)
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("install answered {}", response.status());
            }
            times.push(started.elapsed());
        }
        Ok::<_, anyhow::Error>(times)
    };
    let during = drive(args.requests, args.concurrency, |_| {
        let request = client
            .post(&create_url)
            .bearer_auth(key)
            .json(&sync_body)
            .send();
        async move {
            let body: Value = request.await?.json().await?;
            if body["status"] != "COMPLETED" {
                bail!("not completed during a swap: {body}");
            }
            Ok(())
        }
    });
    let (swap_times, during) = tokio::join!(swaps, during);
    let (swap_times, (during, _)) = (swap_times?, during?);

    // 3. ASYNC acceptance, then every accepted execution run to completion: done
    // when no money is held any more.
    let balance_url = format!("{base}/v1/balance");
    let all_ended = async {
        loop {
            let balance: Value = client
                .get(&balance_url)
                .bearer_auth(key)
                .send()
                .await?
                .json()
                .await?;
            if balance["held"] == "0" {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let async_body = json!({"model": "llama-3.1-8b-instruct", "input": {"messages": messages, "max_tokens": 16}});
    let (accepts, wall) = drive(args.accepts, args.accept_concurrency, |_| {
        let request = client
            .post(&create_url)
            .bearer_auth(key)
            .json(&async_body)
            .send();
        async move {
            let response = request.await?;
            if response.status() != reqwest::StatusCode::ACCEPTED {
                bail!("create answered {}", response.status());
            }
            response.bytes().await?;
            Ok(())
        }
    })
    .await?;
    let accepted_at = Instant::now();
    all_ended.await?;
    let completed = wall + accepted_at.elapsed();

    println!("durability: {}", args.durability);
    println!("| measurement | p50 ms | p99 ms |");
    println!("|---|---|---|");
    println!(
        "| emulator alone ({} clients) | {:.2} | {:.2} |",
        args.concurrency,
        percentile(&direct, 0.5),
        percentile(&direct, 0.99)
    );
    println!(
        "| through ModelRoute, SYNC | {:.2} | {:.2} |",
        percentile(&sync, 0.5),
        percentile(&sync, 0.99)
    );
    println!(
        "| added by ModelRoute | {:.2} | {:.2} |",
        percentile(&sync, 0.5) - percentile(&direct, 0.5),
        percentile(&sync, 0.99) - percentile(&direct, 0.99)
    );
    println!(
        "| through ModelRoute, SYNC, during 3 adapter swaps | {:.2} | {:.2} |",
        percentile(&during, 0.5),
        percentile(&during, 0.99)
    );
    let swap_ms: Vec<String> = swap_times
        .iter()
        .map(|t| format!("{:.0}", t.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "| adapter swap (compile + validate + activate), ms | {} | |",
        swap_ms.join(", ")
    );
    println!(
        "| ASYNC create ({} clients): {} accepted in {:.2} s = {:.0} accepts/s | {:.2} | {:.2} |",
        args.accept_concurrency,
        args.accepts,
        wall.as_secs_f64(),
        args.accepts as f64 / wall.as_secs_f64(),
        percentile(&accepts, 0.5),
        percentile(&accepts, 0.99)
    );
    println!(
        "| the same {} run to completion in {:.2} s = {:.0} completed executions/s | | |",
        args.accepts,
        completed.as_secs_f64(),
        args.accepts as f64 / completed.as_secs_f64()
    );
    Ok(())
}
