//! Many hosts on one PostgreSQL database and one bucket (PostgreSQL runs only):
//! they serve the same API, each drives the executions it accepted under a lease,
//! a host killed mid-run has its work taken over by the others, a host that lost
//! its lease writes nothing more, and a client waiting on one host hears of an
//! execution that ended on another.

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use modelroute_tests::emulators::{DEFAULT_TOKEN, Emulator, Fault, png, replicate};

use crate::object_store::{CREDENTIALS, S3Server};
use crate::receiver::Receiver;
use crate::support::{
    Options, Server, assert_no_attempt_submitted_twice, decimal, replicate_with_files, wait_until,
};
use crate::test_database::{TestDatabase, postgres_run};

const WAIT: Duration = Duration::from_secs(120);
/// Short, so that a dead host's work is taken over within seconds, and long
/// enough that a loaded CI machine renews every lease in time.
const LEASE_SECONDS: u64 = 4;

/// Hosts sharing one database and one bucket. The first host's URL is every
/// host's public URL, as a load balancer's would be.
struct Cluster {
    hosts: Vec<Server>,
    // Dropped after the hosts, which use them.
    _s3: S3Server,
    _database: TestDatabase,
}

impl Cluster {
    /// `count` hosts, or `None` on a redb run (and where moto is missing outside CI).
    async fn start(emulator: &Emulator<replicate::Replicate>, count: usize) -> Option<Cluster> {
        Cluster::start_with(emulator, count, Options::default().rate_limit).await
    }

    /// `count` hosts allowing each key `rate_limit` (requests per second, burst).
    async fn start_with(
        emulator: &Emulator<replicate::Replicate>,
        count: usize,
        rate_limit: (u32, u32),
    ) -> Option<Cluster> {
        if !postgres_run() {
            return None;
        }
        let s3 = S3Server::start().await?;
        let database = TestDatabase::create();
        let config = format!(
            "{}lease_seconds = {LEASE_SECONDS}\n{}\n[webhooks]\ntimeout_seconds = 2\n",
            database.config(),
            s3.config()
        );
        let mut hosts: Vec<Server> = Vec::new();
        for _ in 0..count {
            let public_url = hosts.first().map(|first| first.url.clone());
            let mut env: Vec<(&str, &str)> = CREDENTIALS.to_vec();
            if let Some(url) = &public_url {
                env.push(("MODELROUTE_PUBLIC_URL", url));
            }
            let host = Server::start_with(
                &[replicate_with_files(emulator)],
                Options {
                    config: &config,
                    env: &env,
                    rate_limit,
                    ..Options::default()
                },
            )
            .await;
            hosts.push(host);
        }
        Some(Cluster {
            hosts,
            _s3: s3,
            _database: database,
        })
    }
}

/// Upload → PUT → confirm of a small PNG through `host`; the file id.
async fn upload(host: &Server, key: &str, seed: u64) -> String {
    let ticket = host
        .call(
            Method::POST,
            "/v1/files/upload",
            Some(key),
            Some(json!({"purpose": "INPUT"})),
            &[],
        )
        .await;
    assert_eq!(ticket.status, StatusCode::CREATED, "{:?}", ticket.body);
    let file_id = ticket.body["file_id"].as_str().unwrap().to_string();
    let put = reqwest::Client::new()
        .put(ticket.body["upload_url"].as_str().unwrap())
        .body(png(16, 16, seed))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let confirmed = host
        .call(
            Method::POST,
            "/v1/files/confirm",
            Some(key),
            Some(json!({ "file_id": file_id })),
            &[],
        )
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    file_id
}

/// Creates an execution through the hosts at `urls` like a client behind a load
/// balancer: first at `urls[first]`, and on the next host whenever one does not
/// answer, under the same idempotency key. The execution's id; a panic when no
/// host answers for a minute.
async fn create(
    client: &reqwest::Client,
    urls: &[String],
    first: usize,
    key: &str,
    idempotency_key: &str,
    body: &Value,
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for turn in 0.. {
        assert!(
            std::time::Instant::now() < deadline,
            "no host answered the create {idempotency_key:?} for a minute"
        );
        let url = &urls[(first + turn) % urls.len()];
        let sent = client
            .post(format!("{url}/v1/executions"))
            .bearer_auth(key)
            .header("Idempotency-Key", idempotency_key)
            .json(body)
            .send()
            .await;
        // No answer, or the host's failure: the next host is asked.
        if let Ok(response) = sent {
            let status = response.status();
            if let Ok(body) = response.json::<Value>().await
                && !status.is_server_error()
            {
                assert!(status.is_success(), "{status}: {body}");
                return body["id"].as_str().expect("an execution id").to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!()
}

/// #17's multi-host test: three hosts on one database and one bucket, clients
/// spread over them, 1,000 executions with uploaded input files and webhooks, and
/// `kill -9` of one host in the middle of the run. Nothing acknowledged is lost
/// (every execution completes: the provider never fails), no attempt is submitted
/// twice, every hold is settled, the ledger verifies and the balance is the
/// credit less the executions' costs, and every execution's completion is
/// delivered to its webhook (at least once).
#[tokio::test]
async fn three_hosts_lose_nothing_and_charge_nothing_twice_when_one_is_killed_mid_run() {
    const EXECUTIONS: usize = 1_000;
    const FILES: usize = 30;
    const CREDIT: &str = "10000";
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let Some(mut cluster) = Cluster::start(&emulator, 3).await else {
        return;
    };
    let receiver = Receiver::start().await;
    let key = cluster.hosts[0].new_organization(CREDIT).await;
    let mut files = Vec::new();
    for seed in 0..FILES {
        files.push(upload(&cluster.hosts[seed % 3], &key, seed as u64).await);
    }
    emulator.set_always(Some(Fault::Delay { ms: 20 }));

    let urls: Vec<String> = cluster.hosts.iter().map(|host| host.url.clone()).collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let creating = {
        let (key, receiver_url) = (key.clone(), receiver.url.clone());
        tokio::spawn(async move {
            futures_util::stream::iter(0..EXECUTIONS)
                .map(|i| {
                    let (client, urls, key) = (client.clone(), urls.clone(), key.clone());
                    let prompt = format!("run {i}");
                    let body = json!({
                        "model": "flux-kontext-pro",
                        "input": {"prompt": prompt, "image": files[i % files.len()]},
                        "webhook_url": receiver_url,
                    });
                    async move {
                        let id = create(&client, &urls, i % 3, &key, &prompt, &body).await;
                        (id, prompt)
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
        })
    };
    // Killed once a third of the executions reached the provider.
    wait_until("a third of the run", WAIT, || async {
        emulator
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/predictions"))
            .count()
            >= EXECUTIONS / 3
    })
    .await;
    cluster.hosts[1].kill();
    let ids = creating.await.unwrap();
    let unique: HashSet<&String> = ids.iter().map(|(id, _)| id).collect();
    assert_eq!(
        unique.len(),
        EXECUTIONS,
        "one execution per idempotency key"
    );

    let survivor = &cluster.hosts[0];
    let creates = emulator.requests();
    let mut submits_of: HashMap<String, Vec<&str>> = HashMap::new();
    for request in creates.iter().filter(|r| r.path.ends_with("/predictions")) {
        let input: Value = serde_json::from_str(&request.body).unwrap();
        let prompt = input["input"]["prompt"].as_str().unwrap_or_default();
        submits_of
            .entry(prompt.to_string())
            .or_default()
            .push(request.body.as_str());
    }
    let mut costs = rust_decimal::Decimal::ZERO;
    for (id, prompt) in &ids {
        let execution = terminal(survivor, &key, id).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        costs += decimal(execution["cost"].as_str().unwrap());
        let record = survivor
            .call(
                Method::GET,
                &format!("/admin/v1/executions/{id}"),
                Some(&survivor.admin_token),
                None,
                &[],
            )
            .await
            .body;
        let attempts = record["attempts"].as_array().unwrap();
        let submits = submits_of.get(prompt).cloned().unwrap_or_default();
        assert_no_attempt_submitted_twice(id, attempts, &submits);
    }

    // Every hold settled, once: the balance is the credit less what was charged.
    let balance = balance(survivor, &key).await;
    assert_eq!(balance["held"], "0", "{balance}");
    assert_eq!(
        decimal(balance["available"].as_str().unwrap()),
        decimal(CREDIT) - costs,
        "{balance}"
    );
    survivor.assert_ledger_verifies().await;

    // Every completion reaches the webhook, the killed host's claims included.
    let completed = |receiver: &Receiver| -> HashSet<String> {
        receiver
            .received()
            .iter()
            .map(|r| r.json())
            .filter(|event| event["event_type"] == "execution.completed")
            .map(|event| event["execution_id"].as_str().unwrap().to_string())
            .collect()
    };
    wait_until("every completion delivered", WAIT, || async {
        completed(&receiver).len() == EXECUTIONS
    })
    .await;
    assert_eq!(completed(&receiver), unique.into_iter().cloned().collect());
}

/// A host that stops answering (here: stopped by SIGSTOP) past its lease has its
/// execution taken over by another host, which completes it; when it wakes, it
/// writes nothing more and exits instead of acting on work that is not its own.
#[tokio::test]
async fn a_host_that_lost_its_lease_is_fenced_and_its_execution_completes_elsewhere() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let Some(mut cluster) = Cluster::start(&emulator, 2).await else {
        return;
    };
    // The submit takes long enough for the host to be stopped while it waits.
    emulator.set_always(Some(Fault::Delay { ms: 1_500 }));
    let key = cluster.hosts[0].new_organization("10").await;
    let host = &cluster.hosts[1];
    let created = host
        .call(
            Method::POST,
            "/v1/executions",
            Some(&key),
            Some(json!({"model": "flux-1.1-pro", "input": {"prompt": "fenced", "width": 256, "height": 256}})),
            &[],
        )
        .await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    wait_until("the submit reached the provider", WAIT, || async {
        !emulator.requests().is_empty()
    })
    .await;
    let pid = host.pid().to_string();
    signal("-STOP", &pid);
    // Well past the lease: the other host removes this one and adopts its work.
    tokio::time::sleep(Duration::from_secs(LEASE_SECONDS * 3)).await;
    emulator.set_always(None);
    let execution = terminal(&cluster.hosts[0], &key, &id).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    signal("-CONT", &pid);

    let exited = wait_for_exit(&mut cluster.hosts[1], WAIT).await;
    assert_eq!(exited, Some(75), "{}", cluster.hosts[1].log());
    assert!(
        cluster.hosts[1].log().contains("lease lapsed"),
        "{}",
        cluster.hosts[1].log()
    );
    let other = &cluster.hosts[0];
    let after = terminal(other, &key, &id).await;
    assert_eq!(after["cost"], execution["cost"], "charged once");
    let balance = balance(other, &key).await;
    assert_eq!(balance["held"], "0", "{balance}");
    assert_eq!(
        decimal(balance["available"].as_str().unwrap()),
        decimal("10") - decimal(after["cost"].as_str().unwrap()),
        "{balance}"
    );
    other.assert_ledger_verifies().await;
}

/// A `SYNC` client whose call reached another host (a retry of a call that timed
/// out, sent by its load balancer elsewhere) gets the answer of the execution the
/// first host drives, as soon as it ends there (told by the database).
#[tokio::test]
async fn a_sync_client_on_one_host_gets_the_answer_of_an_execution_another_host_drives() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let Some(cluster) = Cluster::start(&emulator, 2).await else {
        return;
    };
    emulator.set_always(Some(Fault::Delay { ms: 1_000 }));
    let key = cluster.hosts[0].new_organization("10.00").await;
    let body = json!({
        "model": "flux-1.1-pro",
        "mode": "SYNC",
        "input": {"prompt": "across hosts", "width": 256, "height": 256},
    });
    let call = |host: &Server| {
        let request = reqwest::Client::new()
            .post(format!("{}/v1/executions", host.url))
            .bearer_auth(&key)
            .header("Idempotency-Key", "across-hosts")
            .json(&body);
        async move {
            let reply = request.send().await.unwrap();
            (reply.status(), reply.json::<Value>().await.unwrap())
        }
    };
    let driving = tokio::spawn(call(&cluster.hosts[0]));
    wait_until("the first host submitted", WAIT, || async {
        !emulator.requests().is_empty()
    })
    .await;
    let (status, answer) = call(&cluster.hosts[1]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "COMPLETED", "{answer}");
    let (first_status, first) = driving.await.unwrap();
    assert_eq!(first_status, StatusCode::OK, "{first}");
    assert_eq!(answer["id"], first["id"]);
    assert_eq!(answer["output"], first["output"]);
}

/// An execution accepted by one host is read, listed and cancelled through
/// another; both hosts run, with no lock between them.
#[tokio::test]
async fn hosts_on_one_database_serve_the_same_executions() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let Some(cluster) = Cluster::start(&emulator, 2).await else {
        return;
    };
    emulator.set_always(Some(Fault::Delay { ms: 3_000 }));
    let key = cluster.hosts[0].new_organization("10.00").await;
    let created = cluster.hosts[0]
        .call(
            Method::POST,
            "/v1/executions",
            Some(&key),
            Some(json!({"model": "flux-1.1-pro", "input": {"prompt": "shared", "width": 256, "height": 256}})),
            &[],
        )
        .await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap();
    let other = &cluster.hosts[1];
    let read = other
        .call(
            Method::GET,
            &format!("/v1/executions/{id}"),
            Some(&key),
            None,
            &[],
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);
    let listed = other
        .call(Method::GET, "/v1/executions", Some(&key), None, &[])
        .await;
    assert_eq!(listed.body["data"][0]["id"], json!(id));
    let cancelled = other
        .call(
            Method::POST,
            &format!("/v1/executions/{id}/cancel"),
            Some(&key),
            None,
            &[],
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    assert_eq!(cancelled.body["status"], "CANCELLED");
    let balance = balance(&cluster.hosts[0], &key).await;
    assert_eq!(balance["held"], "0", "the hold is released: {balance}");
    assert_eq!(balance["available"], "10", "{balance}");
}

/// Execution `id` of the organization `key` once it is terminal, read through `host`.
async fn terminal(host: &Server, key: &str, id: &str) -> Value {
    let path = format!("/v1/executions/{id}");
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        last = host
            .call(Method::GET, &path, Some(key), None, &[])
            .await
            .body;
        if ["COMPLETED", "FAILED", "CANCELLED", "EXPIRED"]
            .contains(&last["status"].as_str().unwrap_or_default())
        {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{id} did not end: {last}");
}

/// The same create sent to two hosts at once, with one idempotency key, is one
/// execution (the database's key is the one claim; the host that loses the race
/// runs its write again and answers the winner's execution), held and charged once.
#[tokio::test]
async fn one_idempotency_key_sent_to_two_hosts_at_once_is_one_execution() {
    const KEYS: usize = 20;
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let Some(cluster) = Cluster::start(&emulator, 2).await else {
        return;
    };
    let key = cluster.hosts[0].new_organization("10").await;
    let client = reqwest::Client::new();
    let urls: Vec<String> = cluster.hosts.iter().map(|host| host.url.clone()).collect();
    let sends = (0..KEYS).flat_map(|n| {
        let body = json!({"model": "flux-1.1-pro", "input": {"prompt": format!("twice {n}"), "width": 256, "height": 256}});
        let (client, urls, key) = (&client, &urls, &key);
        (0..2).map(move |first| {
            let body = body.clone();
            async move {
                let idempotency_key = format!("same-{n}");
                let id = create(client, &urls[first..=first], 0, key, &idempotency_key, &body).await;
                (n, id)
            }
        })
    });
    let answered = futures_util::future::join_all(sends).await;
    let mut ids: HashMap<usize, HashSet<String>> = HashMap::new();
    for (n, id) in answered {
        ids.entry(n).or_default().insert(id);
    }
    assert!(ids.values().all(|same| same.len() == 1), "{ids:?}");
    let mut costs = rust_decimal::Decimal::ZERO;
    for id in ids.values().flatten() {
        let execution = terminal(&cluster.hosts[0], &key, id).await;
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        costs += decimal(execution["cost"].as_str().unwrap());
    }
    let listed = cluster.hosts[1]
        .call(
            Method::GET,
            "/v1/executions?limit=100",
            Some(&key),
            None,
            &[],
        )
        .await
        .body;
    assert_eq!(listed["data"].as_array().unwrap().len(), KEYS, "{listed}");
    let balance = balance(&cluster.hosts[1], &key).await;
    assert_eq!(balance["held"], "0", "{balance}");
    assert_eq!(
        decimal(balance["available"].as_str().unwrap()),
        decimal("10") - costs,
        "{balance}"
    );
}

/// A key's rate limit holds across hosts: its burst is spent once, wherever its
/// requests land, and the refusal says when to come back.
#[tokio::test]
async fn a_key_s_rate_limit_holds_across_hosts() {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    // One request a second after a burst of three; the four requests take far less.
    let Some(cluster) = Cluster::start_with(&emulator, 2, (1, 3)).await else {
        return;
    };
    let key = cluster.hosts[0].new_organization("1").await;
    let mut remaining = Vec::new();
    for turn in 0..4 {
        let host = &cluster.hosts[turn % 2];
        let reply = host
            .call(Method::GET, "/v1/balance", Some(&key), None, &[])
            .await;
        remaining.push((
            reply.status,
            reply.header("x-ratelimit-remaining").map(str::to_string),
        ));
        if turn == 3 {
            assert_eq!(reply.error_code(), "RATE_LIMITED", "{:?}", reply.body);
            assert!(reply.header("retry-after").is_some());
        }
    }
    let ok = |left: &str| (StatusCode::OK, Some(left.to_string()));
    assert_eq!(
        remaining,
        [
            ok("2"),
            ok("1"),
            ok("0"),
            (StatusCode::TOO_MANY_REQUESTS, Some("0".to_string()))
        ]
    );
}

/// An adapter installed through one host's admin API runs on every host; a
/// rollback through another reaches every host too; and a host that starts again
/// runs what the hosts run, not its plugins directory's version.
#[tokio::test]
async fn an_adapter_installed_or_rolled_back_through_any_host_reaches_every_host() {
    use crate::plugins::{install, plugin_states, rebuilt, shipped};
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let Some(mut cluster) = Cluster::start(&emulator, 2).await else {
        return;
    };
    let original = shipped("replicate");
    let (status, body) = install(&cluster.hosts[0], "replicate", rebuilt(&original, 9)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let installed = body["sha256"].as_str().unwrap().to_string();
    let shipped_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&original));
    wait_until("the install reaches the other host", WAIT, || async {
        active_on(&cluster.hosts[1]).await.as_deref() == Some(installed.as_str())
    })
    .await;
    let key = cluster.hosts[0].new_organization("1").await;
    let ran = cluster.hosts[1]
        .call(
            Method::POST,
            "/v1/executions",
            Some(&key),
            Some(json!({"model": "flux-1.1-pro", "input": {"prompt": "new adapter", "width": 256, "height": 256}})),
            &[],
        )
        .await;
    let id = ran.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        terminal(&cluster.hosts[1], &key, &id).await["status"],
        "COMPLETED"
    );

    let rolled = cluster.hosts[1]
        .call(
            Method::POST,
            "/admin/v1/plugins/replicate/rollback",
            Some(&cluster.hosts[1].admin_token),
            None,
            &[],
        )
        .await;
    assert_eq!(rolled.status, StatusCode::OK, "{:?}", rolled.body);
    wait_until("the rollback reaches the first host", WAIT, || async {
        active_on(&cluster.hosts[0]).await.as_deref() == Some(shipped_sha.as_str())
    })
    .await;
    assert_eq!(
        plugin_states(&cluster.hosts[0], "replicate").await,
        [
            ("active".to_string(), shipped_sha.clone()),
            ("previous".to_string(), installed.clone())
        ]
    );
    // Installed again through the first host, then the second restarts: it runs
    // the hosts' version, not its plugins directory's.
    let (status, _) = install(&cluster.hosts[0], "replicate", rebuilt(&original, 9)).await;
    assert_eq!(status, StatusCode::OK);
    cluster.hosts[1].restart().await;
    assert_eq!(active_on(&cluster.hosts[1]).await, Some(installed));
}

/// The sha256 of the active version of the `replicate` adapter on `host`.
async fn active_on(host: &Server) -> Option<String> {
    let states = crate::plugins::plugin_states(host, "replicate").await;
    states.first().map(|(_, sha256)| sha256.clone())
}

/// The organization `key`'s balance, read through `host`.
async fn balance(host: &Server, key: &str) -> Value {
    host.call(Method::GET, "/v1/balance", Some(key), None, &[])
        .await
        .body
}

fn signal(which: &str, pid: &str) {
    let status = std::process::Command::new("kill")
        .args([which, pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// The exit code of `host` once it exits by itself within `timeout`.
async fn wait_for_exit(host: &mut Server, timeout: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Some(status) = host.exited() {
            return status.code();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}
