//! Sustained load, in both durability modes (#18): every request is answered and
//! charged exactly, the server's memory stays flat once it is warm (every cache
//! is bounded), and the ledger verifies at the end.

use futures_util::StreamExt;
use rust_decimal::Decimal;

use modelroute_tests::emulators::{DEFAULT_TOKEN, openai};

use crate::support::{Options, Server, decimal, openai_provider, process_status};

/// Requests per round; the first round warms the server up.
const ROUND: usize = 1_000;
const ROUNDS_MEASURED: usize = 3;
const IN_FLIGHT: usize = 32;
/// What the measured rounds may add to the resident set, once warm: a request
/// that kept 4 KiB would add 12 MiB. redb's page cache is set to 1 MiB so that
/// its filling does not hide a leak.
const GROWTH_KIB: u64 = 12 * 1024;

#[tokio::test]
async fn strict_sustained_load_keeps_memory_flat_and_the_money_exact() {
    soak("strict").await;
}

#[tokio::test]
async fn batched_sustained_load_keeps_memory_flat_and_the_money_exact() {
    soak("batched").await;
}

async fn soak(durability: &str) {
    let emulator = openai::spawn("127.0.0.1:0", DEFAULT_TOKEN).await.unwrap();
    let store = format!("durability = \"{durability}\"\ncache_mb = 1");
    let server = Server::start_with(
        &[openai_provider(&emulator)],
        Options {
            store: &store,
            ..Options::default()
        },
    )
    .await;

    let mut spent = round(&server).await;
    let warm = process_status(server.pid(), "VmRSS");
    for _ in 0..ROUNDS_MEASURED {
        spent += round(&server).await;
    }
    let after = process_status(server.pid(), "VmRSS");
    assert!(
        after <= warm + GROWTH_KIB,
        "{durability}: {warm} KiB resident once warm, {after} KiB after {} more requests",
        ROUND * ROUNDS_MEASURED
    );

    server.assert_spent(spent).await;
    server.assert_ledger_verifies().await;
}

/// `ROUND` synchronous chat executions, `IN_FLIGHT` at a time, each answered
/// `COMPLETED`; what they cost.
async fn round(server: &Server) -> Decimal {
    futures_util::stream::iter(0..ROUND)
        .map(|_| server.sync_chat())
        .buffer_unordered(IN_FLIGHT)
        .fold(Decimal::ZERO, |spent, reply| async move {
            spent + decimal(reply.body["cost"].as_str().unwrap())
        })
        .await
}
