//! The PostgreSQL store's own promises: `modelroute migrate` (once, whoever runs it
//! and however many at once), the constraints that guard the platform's invariants
//! whatever code writes to the database, and a clear refusal to start without it.
//! Run in the suite's PostgreSQL run (`MODELROUTE_TEST_STORE=postgres`), where the
//! rest of the suite runs on PostgreSQL too.

use reqwest::StatusCode;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

use modelroute_tests::emulators::replicate::{self, Replicate};
use modelroute_tests::emulators::{DEFAULT_TOKEN, Emulator};

use crate::support::{Options, Server, binary, flux_input, process_status, replicate_provider};
use crate::test_database::{TestDatabase, postgres_run};

/// Runs `modelroute migrate` on `database`; answers what it printed.
fn migrate(database: &TestDatabase) -> String {
    let output = Command::new(binary())
        .arg("migrate")
        .env("MODELROUTE_CONFIG", config_file(database))
        .env_remove("MODELROUTE_DATABASE_URL")
        .output()
        .expect("run modelroute migrate");
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    printed
}

/// A config whose store is `database`, written beside nothing else.
fn config_file(database: &TestDatabase) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nplugins_dir = {:?}\npublic_url = \"http://127.0.0.1:0\"\n{}",
            dir.join("state"),
            dir.join("plugins"),
            database.config()
        ),
    )
    .unwrap();
    path
}

/// Runs `sql` on `database` from a thread of its own (the blocking client must not
/// run on the test's runtime); answers the error PostgreSQL gave, if any.
fn sql(database: &TestDatabase, sql: &str) -> Option<String> {
    let (url, sql) = (database.url.clone(), sql.to_string());
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client.batch_execute(&sql).err().map(|error| {
            error
                .as_db_error()
                .map_or(error.to_string(), |db| db.message().to_string())
        })
    })
    .join()
    .unwrap()
}

/// Creates a `flux-1.1-pro` execution with the server's key; its id.
async fn create_flux(server: &Server) -> String {
    let created = server
        .post(
            "/v1/executions",
            json!({"model": "flux-1.1-pro", "input": flux_input()}),
        )
        .await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{:?}", created.body);
    created.body["id"].as_str().unwrap().to_string()
}

#[test]
fn migrate_applies_the_schema_once_even_when_hosts_start_together() {
    if !postgres_run() {
        return;
    }
    let database = TestDatabase::create();
    let racing: Vec<_> = (0..3)
        .map(|_| {
            let config = config_file(&database);
            std::thread::spawn(move || {
                Command::new(binary())
                    .args(["migrate", "--config"])
                    .arg(config)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    let printed: Vec<String> = racing
        .into_iter()
        .map(|run| {
            let output = run.join().unwrap();
            assert!(output.status.success(), "{output:?}");
            String::from_utf8_lossy(&output.stdout).to_string()
        })
        .collect();
    let applied = printed
        .iter()
        .filter(|p| p.starts_with("applied migrations [1, "))
        .count();
    assert_eq!(
        applied, 1,
        "exactly one host applies the schema: {printed:?}"
    );
    assert!(migrate(&database).contains("up to date"));
}

#[test]
fn the_schema_refuses_what_would_break_the_money_and_the_state_machine() {
    if !postgres_run() {
        return;
    }
    let database = TestDatabase::create();
    migrate(&database);
    let org = "INSERT INTO organizations (id, name, created_at, record) \
               VALUES ('org_1', 'one', now(), '{}');";
    assert_eq!(sql(&database, org), None);

    // No bucket of a balance below zero.
    let negative = sql(
        &database,
        "INSERT INTO accounts VALUES ('org_1', 0, -1, 0, 0)",
    );
    assert!(negative.unwrap().contains("accounts_available_check"));

    // The ledger is append only.
    assert_eq!(
        sql(
            &database,
            "INSERT INTO ledger_entries (id, seq, organization_id, kind, amount, debit, credit, created_at) \
             VALUES ('led_1', gen_random_uuid(), 'org_1', 'deposit', 5, 'external', 'available', now())"
        ),
        None
    );
    for change in [
        "UPDATE ledger_entries SET amount = 6",
        "DELETE FROM ledger_entries",
    ] {
        let refused = sql(&database, change).expect(change);
        assert!(refused.contains("never changed or removed"), "{refused}");
    }

    // One terminal transition: an execution that ended never changes status again.
    assert_eq!(
        sql(
            &database,
            "INSERT INTO executions (id, organization_id, model, mode, status, hold_amount, created_at, expires_at, completed_at, record) \
             VALUES ('exec_1', 'org_1', 'm', 'ASYNC', 'COMPLETED', 5, now(), now(), now(), '{}')"
        ),
        None
    );
    let reopened = sql(&database, "UPDATE executions SET status = 'FAILED'").unwrap();
    assert!(reopened.contains("already ended COMPLETED"), "{reopened}");
    let unfinished = sql(
        &database,
        "INSERT INTO executions (id, organization_id, model, mode, status, hold_amount, created_at, expires_at, record) \
         VALUES ('exec_2', 'org_1', 'm', 'ASYNC', 'FAILED', 5, now(), now(), '{}')",
    );
    assert!(
        unfinished.is_some(),
        "a terminal execution has its end time"
    );

    // One key per secret, and rows of organizations that exist.
    let key = "INSERT INTO api_keys (id, organization_id, scope, secret_hash, created_at, record) \
               VALUES ('{id}', '{org}', 'full', 'h1', now(), '{}')";
    assert_eq!(
        sql(
            &database,
            &key.replace("{id}", "key_1").replace("{org}", "org_1")
        ),
        None
    );
    let twice = sql(
        &database,
        &key.replace("{id}", "key_2").replace("{org}", "org_1"),
    );
    assert!(twice.unwrap().contains("api_keys_secret_hash_key"));
    let orphan = sql(
        &database,
        "INSERT INTO accounts VALUES ('org_missing', 0, 0, 0, 0)",
    );
    assert!(orphan.unwrap().contains("foreign key"));
}

#[tokio::test]
async fn a_server_without_its_database_refuses_to_start_and_names_it() {
    let printed = Server::refused(
        &[],
        Options {
            config: "\n[store]\nbackend = \"postgres\"\nurl = \"postgres://mr:secret@127.0.0.1:1/gone\"\n",
            ..Options::default()
        },
    );
    assert!(printed.contains("connecting to PostgreSQL at"), "{printed}");
    assert!(printed.contains("127.0.0.1:1"), "{printed}");
    assert!(
        !printed.contains("secret"),
        "the password is never printed: {printed}"
    );

    let printed = Server::refused(
        &[],
        Options {
            config: "\n[store]\nbackend = \"postgres\"\n",
            ..Options::default()
        },
    );
    assert!(printed.contains("MODELROUTE_DATABASE_URL"), "{printed}");
}

/// Regression: a connection the database closed (a restart, `pg_terminate_backend`)
/// must not fail the requests that come next: the writer and the snapshot pool open
/// a new one when the old one cannot begin a transaction.
#[tokio::test]
async fn connections_the_database_closed_are_replaced_without_failing_a_request() {
    if !postgres_run() {
        return;
    }
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = Server::start(&[replicate_provider(&emulator)]).await;
    let database = server.database().expect("a PostgreSQL run");
    for round in 0..3 {
        let closed = database.close_connections();
        assert!(
            closed >= 2,
            "round {round}: the writer and a reader were connected"
        );
        let id = create_flux(&server).await;
        let done = server.wait_terminal(&id, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        assert_eq!(server.get("/v1/balance").await.status, StatusCode::OK);
    }
    server.assert_ledger_verifies().await;
}

/// Lists read the database a chunk at a time (not every row of the organization):
/// pages that span more than one chunk come back whole, in order, with the right
/// `has_more`, for files (newest first by creation) and the ledger (by sequence).
#[tokio::test]
async fn lists_longer_than_one_read_of_the_database_page_whole_and_in_order() {
    if !postgres_run() {
        return;
    }
    const MANY: usize = 130;
    let server = Server::start(&[]).await;
    let created = server
        .call(
            reqwest::Method::POST,
            "/admin/v1/organizations",
            Some(&server.admin_token),
            Some(json!({"name": "Long lists", "credit_usd": "1"})),
            &[],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let org = created.body["organization_id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = created.body["api_key"].as_str().unwrap().to_string();
    let mut files = Vec::new();
    for round in 0..MANY {
        let ticket = server
            .call(
                reqwest::Method::POST,
                "/v1/files/upload",
                Some(&key),
                Some(json!({"purpose": "INPUT"})),
                &[],
            )
            .await;
        assert_eq!(ticket.status, StatusCode::CREATED, "{:?}", ticket.body);
        files.push(ticket.body["file_id"].as_str().unwrap().to_string());
        let credit = server
            .call(
                reqwest::Method::POST,
                &format!("/admin/v1/organizations/{org}/credit"),
                Some(&server.admin_token),
                Some(json!({"amount_usd": "0.01", "memo": format!("credit {round}")})),
                &[],
            )
            .await;
        assert_eq!(credit.status, StatusCode::OK, "{:?}", credit.body);
    }
    let list = |path: String| {
        let (server, key) = (&server, key.clone());
        async move {
            let reply = server
                .call(reqwest::Method::GET, &path, Some(&key), None, &[])
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{path}: {:?}", reply.body);
            reply.body
        }
    };

    let first = list("/v1/files?limit=100".into()).await;
    assert_eq!(first["has_more"], true);
    let last_id = first["data"][99]["file_id"].as_str().unwrap().to_string();
    let rest = list(format!("/v1/files?limit=100&starting_after={last_id}")).await;
    assert_eq!(rest["has_more"], false);
    let listed: Vec<String> = [first, rest]
        .iter()
        .flat_map(|page| page["data"].as_array().unwrap().clone())
        .map(|file| file["file_id"].as_str().unwrap().to_string())
        .collect();
    let newest_first: Vec<String> = files.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);

    // The ledger: the opening credit and one entry per credit, newest first.
    let first = list("/v1/ledger?limit=100".into()).await;
    assert_eq!(first["has_more"], true);
    let last_id = first["data"][99]["id"].as_str().unwrap().to_string();
    let rest = list(format!("/v1/ledger?limit=100&starting_after={last_id}")).await;
    assert_eq!(rest["has_more"], false);
    let memos: Vec<String> = [first, rest]
        .iter()
        .flat_map(|page| page["data"].as_array().unwrap().clone())
        .map(|entry| entry["memo"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(memos.len(), MANY + 1, "{memos:?}");
    let expected: Vec<String> = (0..MANY)
        .rev()
        .map(|round| format!("operator: credit {round}"))
        .collect();
    assert_eq!(memos[..MANY], expected[..]);
}

/// A server reading over `pool_size` connections, with one execution to read
/// (and the emulator it runs on, which must outlive it).
async fn server_with_pool(pool_size: usize) -> (Emulator<Replicate>, Server, String) {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let server = Server::start_with(
        &[replicate_provider(&emulator)],
        Options {
            store: &format!("pool_size = {pool_size}"),
            ..Options::default()
        },
    )
    .await;
    let id = create_flux(&server).await;
    (emulator, server, id)
}

/// 400 reads at once, of the execution `id` and of the balance: each answered.
async fn burst_of_reads(server: &Server, id: &str) {
    let paths = [format!("/v1/executions/{id}"), "/v1/balance".to_string()];
    let replies =
        futures_util::future::join_all((0..400).map(|i| server.get(&paths[i % paths.len()]))).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
}

/// Regression (a CI run where hosts died mid-test): each read took an idle
/// connection or opened one more, without bound, so a burst of requests opened
/// connections until the server refused any (`max_connections` is shared by every
/// host). A host now reads over at most `[store] pool_size` connections, and
/// requests beyond that wait their turn instead of failing.
#[tokio::test]
async fn a_burst_of_requests_reads_over_at_most_pool_size_connections() {
    if !postgres_run() {
        return;
    }
    const POOL_SIZE: i64 = 3;
    // The writer, the lease's heartbeat and the two listeners.
    const OWN: i64 = 4;
    let (_emulator, server, id) = server_with_pool(POOL_SIZE as usize).await;
    let counting = server
        .database()
        .expect("a PostgreSQL run")
        .count_connections();
    burst_of_reads(&server, &id).await;
    let most = counting.stop();

    assert!(
        most <= POOL_SIZE + OWN,
        "{most} connections at once, for {POOL_SIZE} read connections and {OWN} of its own"
    );
    assert!(
        most >= OWN,
        "the sampler saw the server's connections: {most}"
    );
}

/// Regression: a read waiting for one of the pool's connections held a thread of
/// its own. A read runs its statements on its thread (`block_in_place`), and each
/// such hand-off started a new one up to tokio's default of 512: at 64
/// connections the door ran 117 threads, 345 MB, most of them waiting. The
/// server's blocking threads are now bounded by `pool_size` + 8.
#[tokio::test]
async fn a_burst_of_reads_waits_for_a_connection_without_a_thread_each() {
    if !postgres_run() {
        return;
    }
    const POOL_SIZE: u64 = 3;
    const BESIDES_READS: u64 = 8;
    let (_emulator, server, id) = server_with_pool(POOL_SIZE as usize).await;
    let pid = server.pid();
    let before = process_status(pid, "Threads");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let sampling = std::thread::spawn(move || {
        let mut most = 0;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            most = most.max(process_status(pid, "Threads"));
            std::thread::sleep(Duration::from_millis(2));
        }
        most
    });
    burst_of_reads(&server, &id).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampling.join().unwrap();

    assert!(
        most <= before + POOL_SIZE + BESIDES_READS,
        "{most} threads during the burst, {before} before it, for {POOL_SIZE} read connections"
    );
}
