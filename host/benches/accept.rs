//! Accepts per second at the store: `Executions::accept` writes the execution, its
//! hold (two ledger entries' worth of balance), its queue entry and its idempotency
//! claim in one transaction; concurrent accepts share commits (group commit). With
//! `strict` durability each is acknowledged after its commit's fsync, with `batched`
//! after its commit (flushed within 10 ms). On the embedded store, and on PostgreSQL
//! when `MODELROUTE_TEST_DATABASE_URL` names a server (`make bench` finds or starts
//! one: tests/with-postgres.sh), in a database made for the run: by one host in each
//! mode, and by two hosts sharing the database (each with its writer, serving an
//! organization of its own, the clients spread over both).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

use modelroute::config::{Config, ExecutionSettings};
use modelroute::executions::model::Mode;
use modelroute::executions::{CreateOutcome, Execution, Executions, Status};
use modelroute::files::Files;
use modelroute::files::storage::LocalDisk;
use modelroute::money::Micros;
use modelroute::plugins::Registry;
use modelroute::routing::Router;
use modelroute::store::{Commits, Store};

/// The allocator of the `modelroute` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Accepts in flight: a few hundred clients, and the load at which a commit's fsync
/// is shared by a full batch.
const CONCURRENCY: [usize; 2] = [512, 4096];
/// Accepts per measured iteration, per client.
const PER_CLIENT: usize = 4;

fn execution(org: &str) -> Execution {
    let now = modelroute::clock::now();
    Execution {
        id: modelroute::ids::new_id("exec"),
        organization_id: org.to_string(),
        model: "llama-3.1-8b-instruct".into(),
        fallbacks: Vec::new(),
        status: Status::Pending,
        input: json!({"messages": [{"role": "user", "content": "Say hello to the benchmark"}]}),
        metadata: json!({}),
        mode: Mode::Async,
        webhook_url: None,
        claim: None,
        hold_amount: Micros(10_000),
        estimated_cost: Micros(50),
        usage_estimate: Default::default(),
        cost: None,
        created_at: now,
        started_at: None,
        completed_at: None,
        expires_at: now + chrono::Duration::hours(1),
        output: None,
        error: None,
        attempts: Vec::new(),
        transitions: vec![(Status::Pending, now)],
    }
}

/// A database of its own for the run on PostgreSQL, dropped afterwards.
struct BenchDatabase {
    admin: String,
    name: String,
    url: String,
}

impl BenchDatabase {
    fn create(admin: &str) -> BenchDatabase {
        let name = format!("mr_bench_{}", uuid::Uuid::new_v4().simple());
        let mut url = url::Url::parse(admin).expect("MODELROUTE_TEST_DATABASE_URL parses");
        url.set_path(&name);
        run(admin, &format!("CREATE DATABASE {name}"));
        BenchDatabase {
            admin: admin.to_string(),
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        run(
            &self.admin,
            &format!("DROP DATABASE {} WITH (FORCE)", self.name),
        );
    }
}

fn run(url: &str, statement: &str) {
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("the bench database");
    client.batch_execute(statement).expect(statement);
}

fn accepts(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let batched = Commits::DurableWithin(Duration::from_millis(10));
    for (mode, commits) in [("strict", Commits::Durable), ("batched", batched)] {
        let path = dir.path().join(format!("bench-{mode}.redb"));
        let store = Store::open(&path, commits, 64 << 20).expect("store");
        bench_stores(c, &format!("redb, {mode}"), vec![store]);
    }
    if let Ok(admin) = std::env::var("MODELROUTE_TEST_DATABASE_URL") {
        let database = BenchDatabase::create(&admin);
        let mut hosts = 0;
        let mut host = |commits: Commits| {
            hosts += 1;
            let data = dir.path().join(format!("host-{hosts}"));
            std::fs::create_dir_all(&data).expect("host dir");
            let host = modelroute::cluster::join(&data, Duration::from_secs(60)).expect("host");
            Store::connect(&database.url, &host, commits, 16).expect("store")
        };
        bench_stores(c, "postgres, strict", vec![host(Commits::Durable)]);
        bench_stores(c, "postgres, batched", vec![host(batched)]);
        let two = vec![host(Commits::Durable), host(Commits::Durable)];
        bench_stores(c, "postgres, strict, two hosts", two);
    }
}

/// Accepts through every one of `stores` (a host each), the clients spread over
/// them; each host accepts for an organization of its own.
fn bench_stores(c: &mut Criterion, backend: &str, stores: Vec<Store>) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let hosts: Vec<Host> = stores
        .into_iter()
        .map(|store| runtime.block_on(host(store)))
        .collect();
    let mut group = c.benchmark_group(format!("accepts ({backend})"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for concurrency in CONCURRENCY {
        group.throughput(Throughput::Elements((concurrency * PER_CLIENT) as u64));
        group.bench_function(format!("{concurrency} concurrent clients"), |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iterations {
                        let clients = (0..concurrency).map(|client| {
                            let Host {
                                executions, org, ..
                            } = &hosts[client % hosts.len()];
                            let (executions, org) = (executions.clone(), org.clone());
                            tokio::spawn(async move {
                                for _ in 0..PER_CLIENT {
                                    // Random, as clients' keys are: each claim lands on
                                    // its own page of the index.
                                    let key = modelroute::ids::new_id("idem");
                                    let outcome = executions
                                        .accept(execution(&org), Some((key, "hash".into())))
                                        .await
                                        .expect("accept");
                                    assert!(matches!(outcome, CreateOutcome::Created(_)));
                                }
                            })
                        });
                        for client in clients.collect::<Vec<_>>() {
                            client.await.expect("client");
                        }
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

/// A host accepting for an organization of its own.
struct Host {
    executions: Arc<Executions>,
    org: String,
    /// its file storage (which accepts do not write to)
    _files: tempfile::TempDir,
}

async fn host(store: Store) -> Host {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config::load(None).expect("config");
    let router = Arc::new(Router::new(&config, Arc::new(Registry::default())));
    let (dispatch, _queue) = tokio::sync::mpsc::unbounded_channel();
    let storage = LocalDisk::open(&dir.path().join("files")).expect("file storage");
    let files = Files::new(
        store.clone(),
        Arc::new(storage),
        config.files.clone(),
        &config.public_url,
        vec![7; 32],
    );
    let executions = Arc::new(Executions::new(
        store.clone(),
        router,
        ExecutionSettings::default(),
        Arc::new(files),
        dispatch,
        Arc::new(tokio::sync::Notify::new()),
        vec![9; 32],
    ));
    let org = store
        .write(|txn| {
            let org = modelroute::auth::create_organization(txn, "bench")?;
            let billing = modelroute::billing::deposit(
                txn,
                &org.id,
                modelroute::billing::MAX_DEPOSITS,
                "bench",
            )?;
            anyhow::ensure!(billing == modelroute::billing::Deposit::Made);
            Ok(org.id)
        })
        .await
        .expect("deposit");
    Host {
        executions,
        org,
        _files: dir,
    }
}

criterion_group!(benches, accepts);
criterion_main!(benches);
