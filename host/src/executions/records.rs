//! The durable lifecycle: records and their indexes, compare-and-set updates with
//! the webhook events they cause, endings that resolve the hold, and reads.

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use super::db;
use super::{Execution, Executions, Status};
use super::{lifecycle_event, model};
use crate::billing;

/// Most executions one adoption takes (see [`Executions::adopt`]).
const ADOPT_AT_ONCE: i64 = 250;
use crate::clock;
use crate::error::{ApiError, Code, DetailCode};
use crate::files::audit::{Action, AuditEntry};
use crate::files::grants::AttemptRef;
use crate::money::Micros;
use crate::store::Txn;
use crate::webhooks;

impl Executions {
    /// The execution `id` of `org_id` (another organization's is not found).
    pub fn get(&self, org_id: &str, id: &str) -> Result<Option<Execution>> {
        let execution = self.store.read(|snapshot| db::load(snapshot, id))?;
        Ok(execution.filter(|e| e.organization_id == org_id))
    }

    /// Newest first, after `starting_after`, filtered by status and model.
    pub fn list(
        &self,
        org_id: &str,
        limit: usize,
        starting_after: Option<&str>,
        status: Option<Status>,
        model: Option<&str>,
    ) -> Result<(Vec<Execution>, bool), ApiError> {
        self.store
            .read(|snapshot| {
                let after = match starting_after {
                    Some(cursor) => {
                        match db::load(snapshot, cursor)?.filter(|e| e.organization_id == org_id) {
                            Some(after) => Some(after),
                            None => {
                                return Ok(Err(ApiError::invalid(
                                    "starting_after",
                                    DetailCode::InvalidValue,
                                    "no such execution",
                                )));
                            }
                        }
                    }
                    None => None,
                };
                let page = db::page_of_org(snapshot, org_id, after.as_ref(), limit, |e| {
                    status.is_none_or(|s| s == e.status) && model.is_none_or(|m| m == e.model)
                })?;
                Ok(Ok(page))
            })
            .map_err(ApiError::from)?
    }

    /// Applies `change` to a non-terminal execution in one transaction (a
    /// compare-and-set: a terminal execution never changes again), with the webhook
    /// events the change causes. Leaving the execution terminal removes it from the
    /// dispatcher's queue. Returns the new
    /// state, or `None` when the execution was already terminal.
    pub async fn update<F>(&self, id: &str, change: F) -> Result<Option<Execution>>
    where
        F: FnMut(&mut Execution, &Txn) -> Result<()> + Send + 'static,
    {
        let mut writing = Writing::start(self, id);
        let written = self.write_update(id, change).await;
        if let Some(writing) = &mut writing {
            writing.ended =
                matches!(&written, Ok(Some(execution)) if execution.status.is_terminal());
        }
        written
    }

    /// [`Executions::update`]'s transaction, and what follows its commit.
    async fn write_update<F>(&self, id: &str, mut change: F) -> Result<Option<Execution>>
    where
        F: FnMut(&mut Execution, &Txn) -> Result<()> + Send + 'static,
    {
        let id = id.to_string();
        let updated = self
            .store
            .write(move |txn| {
                let Some(mut execution) = db::load(txn, &id)? else {
                    return Ok(None);
                };
                if execution.status.is_terminal() {
                    return Ok(None);
                }
                let was_started = execution.started_at.is_some();
                let open_attempt = execution
                    .open_attempt_mut()
                    .is_some()
                    .then(|| execution.attempts.len() - 1);
                change(&mut execution, txn)?;
                let queued = match lifecycle_event(was_started, &execution) {
                    Some(event_type) => webhooks::enqueue(
                        txn,
                        webhooks::ExecutionEvent {
                            event_type,
                            organization_id: &execution.organization_id,
                            execution_id: &execution.id,
                            webhook_url: execution.webhook_url.as_deref(),
                            data: &|| serde_json::json!(execution.view()),
                        },
                    )?,
                    None => false,
                };
                db::save(txn, &execution)?;
                Ok(Some((execution, queued, open_attempt)))
            })
            .await?;
        let Some((execution, queued, open_attempt)) = updated else {
            return Ok(None);
        };
        count(&execution, open_attempt);
        if queued {
            self.outbox.notify_one();
        }
        self.notify(&execution);
        Ok(Some(execution))
    }

    /// Moves a non-terminal execution to a terminal state and resolves its hold,
    /// in one transaction. Returns `None` when it was already terminal: a hold is
    /// resolved exactly once, whatever races.
    pub async fn finish(&self, id: &str, ending: Ending) -> Result<Option<Execution>> {
        let now = clock::now();
        self.update(id, move |execution, txn| {
            let (status, outcome) = match &ending {
                Ending::Completed {
                    cost,
                    output,
                    files,
                } => {
                    let origin = crate::files::Origin {
                        actor: execution.id.clone(),
                        address: None,
                    };
                    // The account before the files' usage, as every write takes
                    // an organization's rows: hosts' batches never wait on each
                    // other in a circle over them.
                    let charged = billing::settle(
                        txn,
                        &execution.organization_id,
                        execution.hold_amount,
                        *cost,
                        &execution.id,
                    )?;
                    for record in files {
                        crate::files::insert(txn, record)?;
                        let entry = AuditEntry::new(record, Action::Output, &origin);
                        crate::files::audit::record(txn, &entry)?;
                    }
                    execution.cost = Some(charged);
                    execution.output = Some(output.clone());
                    (Status::Completed, "completed".to_string())
                }
                Ending::Failed { code, detail } => {
                    execution.error = Some(model::ExecutionError::new(*code));
                    (Status::Failed, detail.clone())
                }
                Ending::Cancelled => (Status::Cancelled, "cancelled by the client".to_string()),
                Ending::Expired => {
                    execution.error = Some(model::ExecutionError::new(Code::GenerationTimeout));
                    (Status::Expired, "expired".to_string())
                }
            };
            if status != Status::Completed {
                billing::settle(
                    txn,
                    &execution.organization_id,
                    execution.hold_amount,
                    Micros::ZERO,
                    &execution.id,
                )?;
            }
            let failure = execution.error.as_ref().map(|error| error.code);
            execution.close_attempt(&outcome, failure, now);
            execution.completed_at = Some(now);
            execution.set_status(status, now);
            Ok(())
        })
        .await
    }

    /// Rebuilds every organization's balances from the ledger entries and checks
    /// them against the stored accounts, and that each organization's held amount is
    /// exactly the holds of its non-terminal executions (no orphan hold).
    pub fn verify_ledger(&self) -> Result<LedgerReport> {
        self.store.read(|txn| {
            let rebuilt = billing::rebuild_from_entries(txn)?;
            let mut open_holds: std::collections::BTreeMap<String, u64> = Default::default();
            for (id, _) in db::active(txn)? {
                if let Some(execution) = db::load(txn, &id)? {
                    *open_holds.entry(execution.organization_id).or_default() +=
                        execution.hold_amount.0;
                }
            }
            let mut mismatches = Vec::new();
            for (org, from_entries) in &rebuilt {
                let stored = billing::account(txn, org)?;
                if stored != *from_entries {
                    mismatches.push(format!(
                        "{org}: stored {stored:?}, entries {from_entries:?}"
                    ));
                }
                if stored.deposits.0 != stored.available.0 + stored.held.0 + stored.spent.0 {
                    mismatches.push(format!("{org}: deposits != available + held + spent"));
                }
                let held = open_holds.get(org).copied().unwrap_or(0);
                if stored.held.0 != held {
                    mismatches.push(format!(
                        "{org}: held {} but open executions hold {held}",
                        stored.held
                    ));
                }
            }
            Ok(LedgerReport {
                organizations: rebuilt.len(),
                consistent: mismatches.is_empty(),
                mismatches,
            })
        })
    }

    /// Takes over executions that are not terminal and that no living host drives
    /// (on redb, every one: one host owns the file); their ids. On PostgreSQL, at
    /// most [`ADOPT_AT_ONCE`], so that hosts adopting together share the work.
    pub async fn adopt(&self) -> Result<Vec<String>> {
        let Some(host) = self.store.host().map(|host| host.id.clone()) else {
            return Ok(self.active()?.into_iter().map(|(id, _)| id).collect());
        };
        // One statement, outside the writer's batches.
        self.store
            .autocommit_blocking(move |pg| db::adopt(pg, &host, ADOPT_AT_ONCE))
            .await
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Whether adopting may have left more to adopt.
    pub fn adopted_all(&self, adopted: usize) -> bool {
        self.store.host().is_none() || adopted < ADOPT_AT_ONCE as usize
    }

    /// Whether other hosts share the store.
    pub fn is_shared(&self) -> bool {
        self.store.host().is_some()
    }

    /// Stops the process if this host's lease has lapsed (see [`crate::store::Store::check_lease`]).
    pub fn check_lease(&self) {
        self.store.check_lease();
    }

    /// Ids of every non-terminal execution with its deadline, soonest first.
    pub fn active(&self) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
        self.store.read(db::active)
    }

    /// The execution regardless of organization (the dispatcher's and operators' view).
    pub fn store_get(&self, id: &str) -> Result<Option<Execution>> {
        self.store.read_latest(|snapshot| db::load(snapshot, id))
    }

    /// The attempt execution `id` is running now, if it is running one.
    pub fn running_attempt(&self, id: &str) -> Result<Option<AttemptRef>> {
        let execution = self.store_get(id)?;
        Ok(execution
            .filter(|execution| !execution.status.is_terminal())
            .and_then(|execution| {
                let attempt_id = execution.open_attempt()?.id.clone();
                Some(AttemptRef {
                    organization_id: execution.organization_id,
                    execution_id: execution.id,
                    attempt_id,
                })
            }))
    }
}

/// A change this host writes to an execution someone here waits on: the host
/// tells the waiters itself, so an ending heard meanwhile (its own, on
/// PostgreSQL) is not read back; one that may have been another host's is, once
/// the change is written or given up (see `Watchers::writing`).
struct Writing<'a> {
    executions: &'a Executions,
    id: &'a str,
    /// the change ended the execution: its waiters were told
    ended: bool,
}

impl<'a> Writing<'a> {
    fn start(executions: &'a Executions, id: &'a str) -> Option<Writing<'a>> {
        executions.watchers.writing(id).then_some(Writing {
            executions,
            id,
            ended: false,
        })
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if self.executions.watchers.written(self.id) && !self.ended {
            self.executions.tell_stored(self.id);
        }
    }
}

/// What [`Executions::verify_ledger`] found.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LedgerReport {
    pub organizations: usize,
    pub consistent: bool,
    pub mismatches: Vec<String>,
}

/// How an execution ends.
pub enum Ending {
    /// settles `cost` (capped at the hold) and stores the output files' records
    Completed {
        cost: Micros,
        output: Value,
        files: Vec<crate::files::FileRecord>,
    },
    /// `detail` is for operators (the attempt's outcome); clients see `code`
    Failed {
        code: Code,
        detail: String,
    },
    Cancelled,
    Expired,
}

/// Counts, once its change is committed, what an update ended: the attempt that was
/// open before it (`open_attempt`, an index) if it closed, and the execution if it
/// became terminal.
fn count(execution: &Execution, open_attempt: Option<usize>) {
    let metrics = crate::metrics::metrics();
    if let Some(attempt) = open_attempt
        .and_then(|index| execution.attempts.get(index))
        .filter(|attempt| attempt.ended_at.is_some())
    {
        let outcome = match attempt.failure {
            Some(_) => "failed",
            None if execution.status == Status::Completed => "completed",
            None if execution.status == Status::Cancelled => "cancelled",
            // failed without spending one of max_attempts (closed without a code)
            None => "uncounted",
        };
        let took = attempt
            .ended_at
            .and_then(|ended| (ended - attempt.started_at).to_std().ok())
            .unwrap_or_default();
        metrics.attempt(
            &attempt.provider,
            outcome,
            attempt.failure.map(Code::as_str),
            took,
        );
    }
    if execution.status.is_terminal() {
        metrics.execution_finished(&execution.model, execution.status.as_str());
    }
}
