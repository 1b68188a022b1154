//! `[store] durability`: `strict` answers a change once it is on disk; `batched`
//! answers it once committed and puts it on disk within `durable_within_ms`. A
//! `kill -9` may then lose the changes of the window, but only whole commits, the
//! newest first: an execution is lost with its hold, and a completion with its
//! charge, so a client is never charged for an answer it cannot read; and nothing
//! leaves for a webhook receiver before it is on disk.

use rust_decimal::Decimal;
use serde_json::{Value, json};
use std::time::Duration;

use modelroute_tests::emulators::replicate::{self, Replicate};
use modelroute_tests::emulators::{DEFAULT_TOKEN, Emulator, Fault};

use crate::receiver::Receiver;
use crate::support::{Options, Server, decimal, flux_input, replicate_provider};
use crate::test_database::postgres_run;

const WAIT: Duration = Duration::from_secs(60);

async fn batched_server(emulator: &Emulator<Replicate>, durable_within_ms: u64) -> Server {
    let store = format!("durability = \"batched\"\ndurable_within_ms = {durable_within_ms}\n");
    Server::start_with(
        &[replicate_provider(emulator)],
        Options {
            store: &store,
            ..Default::default()
        },
    )
    .await
}

/// Creates `count` image executions that notify `receiver`; their ids.
async fn create(server: &Server, count: usize, receiver: &Receiver) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let reply = server
            .post(
                "/v1/executions",
                json!({"model": "flux-1.1-pro", "input": flux_input(), "webhook_url": receiver.url}),
            )
            .await;
        assert_eq!(
            reply.status,
            reqwest::StatusCode::ACCEPTED,
            "{:?}",
            reply.body
        );
        ids.push(reply.body["id"].as_str().unwrap().to_string());
    }
    ids
}

/// The ids of the executions whose completion `receiver` was told of.
fn completions_received(receiver: &Receiver) -> Vec<String> {
    receiver
        .received()
        .iter()
        .map(|delivery| delivery.json())
        .filter(|event| event["event_type"] == "execution.completed")
        .map(|event| event["execution_id"].as_str().unwrap().to_string())
        .collect()
}

/// After a restart: each execution is either whole (completed and charged once)
/// or gone (404, never charged); the balance is what the survivors cost, no hold is
/// left, and the ledger verifies. Answers how many were lost.
async fn survivors_are_whole_and_the_lost_cost_nothing(server: &Server, ids: &[String]) -> usize {
    let (mut spent, mut lost) = (Decimal::ZERO, 0);
    for id in ids {
        let reply = server.get(&format!("/v1/executions/{id}")).await;
        if reply.status == reqwest::StatusCode::NOT_FOUND {
            lost += 1;
            continue;
        }
        let execution = server.wait_terminal(id, WAIT).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        spent += decimal(execution["cost"].as_str().unwrap());
    }
    server.assert_spent(spent).await;
    server.assert_ledger_verifies().await;
    lost
}

/// With a window longer than the test, nothing answered after start-up is on
/// disk when the server is killed: executions accepted, run and charged are all
/// lost with their holds and charges, and no receiver heard of them. On
/// PostgreSQL the commits are the database's, which a host's crash does not
/// touch: nothing is lost (the window is the database server's own crash).
#[tokio::test]
async fn batched_kill_9_loses_only_the_window_whole_and_never_charges_for_it() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    let mut server = batched_server(&emulator, 60_000).await;
    let ids = create(&server, 5, &receiver).await;
    for id in &ids {
        let execution = server.wait_terminal(id, WAIT).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
    }
    let charged = server.get("/v1/balance").await.body;
    assert_eq!(charged["available"], "99.8", "{charged}");
    assert!(
        completions_received(&receiver).is_empty(),
        "an event left before it was on disk"
    );

    server.kill();
    server.restart().await;
    let lost = survivors_are_whole_and_the_lost_cost_nothing(&server, &ids).await;
    if postgres_run() {
        assert_eq!(lost, 0, "a host's crash lost the database's commits");
    } else {
        assert_eq!(lost, ids.len(), "a commit of the window survived the crash");
        assert_eq!(server.get("/v1/balance").await.body["available"], "100");
    }
}

/// What a receiver was told of is on disk: once the completions' events arrived
/// (each sent only once durable), a `kill -9` loses none of them.
#[tokio::test]
async fn batched_changes_are_on_disk_within_the_window() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    let mut server = batched_server(&emulator, 200).await;
    let ids = create(&server, 5, &receiver).await;
    crate::support::eventually("every completion's event", WAIT, || async {
        let received = completions_received(&receiver);
        if ids.iter().all(|id| received.contains(id)) {
            Ok(())
        } else {
            Err(received)
        }
    })
    .await;

    server.kill();
    server.restart().await;
    let lost = survivors_are_whole_and_the_lost_cost_nothing(&server, &ids).await;
    assert_eq!(lost, 0);
    let balance = server.get("/v1/balance").await.body;
    assert_eq!(balance["available"], "99.8", "{balance}");
}

/// `restart::executions_cut_at_any_point_all_finish_after_kill_9` with `batched`
/// durability (the default 10 ms window): executions killed in every state
/// either finish whole after the restart or were lost whole.
#[tokio::test]
async fn batched_executions_cut_at_any_point_finish_or_are_lost_whole() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    emulator.set_always(Some(Fault::Delay { ms: 150 }));
    let receiver = Receiver::start().await;
    let mut server = batched_server(&emulator, 10).await;
    let ids = create(&server, 40, &receiver).await;
    server.kill();
    emulator.set_always(None);
    server.restart().await;
    let lost = survivors_are_whole_and_the_lost_cost_nothing(&server, &ids).await;
    assert!(lost < ids.len(), "everything was lost: {lost}");
    let received: Vec<Value> = receiver.received().iter().map(|d| d.json()).collect();
    for event in received {
        let id = event["execution_id"].as_str().unwrap();
        let reply = server.get(&format!("/v1/executions/{id}")).await;
        assert_eq!(
            reply.status,
            reqwest::StatusCode::OK,
            "an event of a lost execution: {event}"
        );
    }
}
