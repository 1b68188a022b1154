//! Random sequences of create / complete / fail / cancel / expire / restart against a
//! reference model of the balances. After every step: the store agrees with the model,
//! deposits = available + held + spent for every organization, the balances rebuilt
//! from the ledger entries equal the stored ones, and a second resolution of a hold
//! is refused and moves nothing.

use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use modelroute::billing::{self, Account};
use modelroute::config::{Config, ExecutionSettings};
use modelroute::error::Code;
use modelroute::executions::model::Mode;
use modelroute::executions::{CreateOutcome, Ending, Execution, Executions, Status};
use modelroute::files::Files;
use modelroute::files::storage::LocalDisk;
use modelroute::money::Micros;
use modelroute::plugins::Registry;
use modelroute::routing::Router;
use modelroute::store::{Commits, Store};

const ORGS: [&str; 3] = ["org_a", "org_b", "org_c"];

#[derive(Debug, Clone)]
enum Op {
    Deposit { org: usize, micros: u64 },
    Create { org: usize, estimate: u64 },
    Complete { exec: usize, cost: u64 },
    Fail { exec: usize },
    Cancel { exec: usize },
    Expire { exec: usize },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..200_000u64).prop_map(|(org, micros)| Op::Deposit { org, micros }),
        (0..3usize, 0..80_000u64).prop_map(|(org, estimate)| Op::Create { org, estimate }),
        (0..30usize, 0..150_000u64).prop_map(|(exec, cost)| Op::Complete { exec, cost }),
        (0..30usize).prop_map(|exec| Op::Fail { exec }),
        (0..30usize).prop_map(|exec| Op::Cancel { exec }),
        (0..30usize).prop_map(|exec| Op::Expire { exec }),
        Just(Op::Restart),
    ]
}

struct Model {
    accounts: BTreeMap<String, Account>,
    /// (id, org, hold, resolved)
    executions: Vec<(String, String, Micros, bool)>,
}

fn open(path: &Path, commits: Commits) -> (Store, Executions) {
    // A restarted store may still be closing on its writer thread: retry briefly.
    let store = (0..200)
        .find_map(|_| {
            Store::open(path, commits, 8 << 20).ok().or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(5));
                None
            })
        })
        .expect("reopen the store");
    let config = Config::load(None).expect("embedded config");
    let router = Arc::new(Router::new(&config, Arc::new(Registry::default())));
    let (dispatch, _) = tokio::sync::mpsc::unbounded_channel();
    let files_dir = path.with_extension("files");
    let storage = LocalDisk::open(&files_dir).expect("file storage");
    let files = Files::new(
        store.clone(),
        Arc::new(storage),
        config.files.clone(),
        &config.public_url,
        vec![7; 32],
    );
    let executions = Executions::new(
        store.clone(),
        router,
        ExecutionSettings::default(),
        Arc::new(files),
        dispatch,
        Arc::new(tokio::sync::Notify::new()),
        vec![9; 32],
    );
    (store, executions)
}

fn execution(org: &str, estimate: Micros) -> Execution {
    let now = modelroute::clock::now();
    Execution {
        id: modelroute::ids::new_id("exec"),
        organization_id: org.to_string(),
        model: "flux-1.1-pro".into(),
        fallbacks: Vec::new(),
        status: Status::Pending,
        input: json!({}),
        metadata: json!({}),
        mode: Mode::Async,
        webhook_url: None,
        claim: None,
        hold_amount: Micros::hold_for(estimate),
        estimated_cost: estimate,
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

async fn run(ops: Vec<Op>, commits: Commits) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let (mut store, mut executions) = open(&path, commits);
    let mut model = Model {
        accounts: BTreeMap::new(),
        executions: Vec::new(),
    };
    for op in ops {
        match op {
            Op::Deposit { org, micros } => {
                let org = ORGS[org];
                let made = store
                    .write(move |txn| billing::deposit(txn, org, Micros(micros), "test"))
                    .await
                    .unwrap();
                assert_eq!(made, billing::Deposit::Made);
                let account = model.accounts.entry(org.into()).or_default();
                account.deposits.0 += micros;
                account.available.0 += micros;
            }
            Op::Create { org, estimate } => {
                let org = ORGS[org];
                let execution = execution(org, Micros(estimate));
                let (id, hold) = (execution.id.clone(), execution.hold_amount);
                let outcome = executions.accept(execution, None).await.unwrap();
                let account = model.accounts.entry(org.into()).or_default();
                if account.available >= hold {
                    let created = matches!(outcome, CreateOutcome::Created(_));
                    prop_assert!(created, "a covered hold was refused");
                    account.available.0 -= hold.0;
                    account.held.0 += hold.0;
                    model.executions.push((id, org.into(), hold, false));
                } else {
                    let refused = matches!(outcome, CreateOutcome::InsufficientBalance { .. });
                    prop_assert!(refused, "a hold beyond the balance was placed");
                }
            }
            Op::Complete { exec, cost } => {
                let ending = Ending::Completed {
                    cost: Micros(cost),
                    output: json!({}),
                    files: Vec::new(),
                };
                resolve(&executions, &mut model, exec, ending, Micros(cost)).await?;
            }
            Op::Fail { exec } => {
                let ending = Ending::Failed {
                    code: Code::GenerationFailed,
                    detail: "test".into(),
                };
                resolve(&executions, &mut model, exec, ending, Micros::ZERO).await?;
            }
            Op::Cancel { exec } => {
                resolve(
                    &executions,
                    &mut model,
                    exec,
                    Ending::Cancelled,
                    Micros::ZERO,
                )
                .await?
            }
            Op::Expire { exec } => {
                resolve(&executions, &mut model, exec, Ending::Expired, Micros::ZERO).await?
            }
            Op::Restart => {
                drop(executions);
                drop(store);
                (store, executions) = open(&path, commits);
            }
        }
        check(&store, &model)?;
    }
    Ok(())
}

/// Resolves execution number `exec` (if it exists) and updates the model.
async fn resolve(
    executions: &Executions,
    model: &mut Model,
    exec: usize,
    ending: Ending,
    cost: Micros,
) -> Result<(), TestCaseError> {
    let Some((id, org, hold, resolved)) = model.executions.get_mut(exec) else {
        return Ok(());
    };
    let result = executions.finish(id, ending).await.unwrap();
    if *resolved {
        prop_assert!(result.is_none(), "a hold was resolved twice");
        return Ok(());
    }
    prop_assert!(result.is_some());
    *resolved = true;
    let charged = cost.min(*hold);
    let account = model.accounts.get_mut(org.as_str()).unwrap();
    account.held.0 -= hold.0;
    account.spent.0 += charged.0;
    account.available.0 += hold.0 - charged.0;
    Ok(())
}

fn check(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    let (stored, rebuilt) = store
        .read(|txn| {
            let stored: BTreeMap<String, Account> = ORGS
                .iter()
                .map(|org| Ok((org.to_string(), billing::account(txn, org)?)))
                .collect::<anyhow::Result<_>>()?;
            Ok((stored, billing::rebuild_from_entries(txn)?))
        })
        .unwrap();
    for org in ORGS {
        let expected = model.accounts.get(org).copied().unwrap_or_default();
        let actual = stored[org];
        prop_assert_eq!(actual, expected, "{}", org);
        prop_assert_eq!(
            actual.deposits.0,
            actual.available.0 + actual.held.0 + actual.spent.0
        );
        prop_assert_eq!(rebuilt.get(org).copied().unwrap_or_default(), actual);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// In either durability mode (a restart here is a clean stop, which flushes).
    #[test]
    fn the_ledger_matches_a_reference_model(
        batched in any::<bool>(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let commits = if batched {
            Commits::DurableWithin(std::time::Duration::from_millis(10))
        } else {
            Commits::Durable
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(ops, commits))?;
    }
}

/// Completion, cancel and expiry racing for the same execution: exactly one wins,
/// the hold is resolved once, and the balances still add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_endings_resolve_each_hold_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, executions) = open(&dir.path().join("db.redb"), Commits::Durable);
    let executions = Arc::new(executions);
    let made = store
        .write(|txn| billing::deposit(txn, "org_a", Micros(100_000_000), "test"))
        .await
        .unwrap();
    assert_eq!(made, billing::Deposit::Made);
    for _ in 0..50 {
        let execution = execution("org_a", Micros(40_000));
        let id = execution.id.clone();
        executions.accept(execution, None).await.unwrap();
        let endings = [
            Ending::Completed {
                cost: Micros(40_000),
                output: json!({}),
                files: Vec::new(),
            },
            Ending::Cancelled,
            Ending::Expired,
            Ending::Failed {
                code: Code::GenerationFailed,
                detail: "race".into(),
            },
        ];
        let racers = endings.into_iter().map(|ending| {
            let (executions, id) = (executions.clone(), id.clone());
            tokio::spawn(async move { executions.finish(&id, ending).await.unwrap().is_some() })
        });
        let mut winners = 0;
        for racer in racers.collect::<Vec<_>>() {
            winners += racer.await.unwrap() as usize;
        }
        assert_eq!(winners, 1, "exactly one ending wins");
    }
    let report = executions.verify_ledger().unwrap();
    assert!(report.consistent, "{:?}", report.mismatches);
    let account = store.read(|txn| billing::account(txn, "org_a")).unwrap();
    assert_eq!(account.held, Micros::ZERO);
    assert_eq!(account.deposits.0, account.available.0 + account.spent.0);
}
