//! Executions: acceptance (validation, estimate, hold, idempotency), the durable
//! lifecycle, and reads. The dispatcher ([`dispatcher`]) drives accepted executions.

pub mod dispatch;
pub mod input;
pub mod model;

use anyhow::Result;
use chrono::Duration;
use hmac::{Hmac, Mac};
use redb::ReadableTable;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

use crate::auth::Caller;
use crate::billing::{self, HoldResult};
use crate::clock;
use crate::config::ExecutionSettings;
use crate::error::{ApiError, Code, Detail, DetailCode, quote};
use crate::file_fields::{FileField, file_fields};
use crate::files::Files;
use crate::files::audit::{Action, AuditEntry};
use crate::ids::new_id;
use crate::money::Micros;
use crate::plugins::wit;
use crate::routing::{self, Router};
use crate::store::{self, ACTIVE_EXECUTIONS, EXECUTIONS, EXECUTIONS_BY_ORG, Store};
use crate::webhooks;
pub use model::{Claim, Execution, Mode, Status};

/// A validated `POST /v1/executions` body.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub model: String,
    pub input: Value,
    pub metadata: Value,
    pub mode: Mode,
    pub webhook_url: Option<String>,
}

/// The name of the server's secret for [`keyed_id`].
pub const IDEMPOTENT_ID_KEY: &str = "idempotent-id-key";

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_HOURS: i64 = 24;

pub struct Created {
    pub execution: Execution,
    /// an earlier request with the same idempotency key created it
    pub replayed: bool,
    /// status changes and output deltas, for a new `STREAMING` execution
    pub events: Option<broadcast::Receiver<StreamMessage>>,
}

/// What a `STREAMING` client is told as the execution runs.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamMessage {
    Status(Status),
    Delta(String),
    /// the deltas so far are void
    Reset,
}

/// Messages a slow streaming client may fall behind by before it misses some.
const STREAM_BUFFER: usize = 1024;

pub struct Executions {
    store: Store,
    router: Arc<Router>,
    settings: ExecutionSettings,
    files: Arc<Files>,
    /// per (plugin sha256, slug): the input schema's validator and file properties
    validators: Mutex<HashMap<(String, String), Arc<InputRules>>>,
    /// the latest status of executions someone is waiting on
    watchers: Mutex<HashMap<String, watch::Sender<Status>>>,
    /// event streams of running `STREAMING` executions
    streams: Mutex<HashMap<String, broadcast::Sender<StreamMessage>>>,
    dispatch: tokio::sync::mpsc::UnboundedSender<String>,
    /// wakes the webhook delivery worker
    outbox: Arc<tokio::sync::Notify>,
    /// the server's secret for the ids of executions created with an idempotency key
    id_key: Arc<[u8]>,
}

impl Executions {
    pub fn new(
        store: Store,
        router: Arc<Router>,
        settings: ExecutionSettings,
        files: Arc<Files>,
        dispatch: tokio::sync::mpsc::UnboundedSender<String>,
        outbox: Arc<tokio::sync::Notify>,
        id_key: Vec<u8>,
    ) -> Executions {
        Executions {
            store,
            router,
            settings,
            files,
            validators: Mutex::default(),
            watchers: Mutex::default(),
            streams: Mutex::default(),
            dispatch,
            outbox,
            id_key: id_key.into(),
        }
    }

    /// Validates, estimates, and writes the execution, its hold, its queue entry and
    /// its idempotency claim in one transaction.
    pub async fn create(
        &self,
        caller: &Caller,
        request: CreateRequest,
        idempotency: Option<(String, String)>,
    ) -> Result<Created, ApiError> {
        // A retry of an earlier request is answered before anything is checked again:
        // its files may be gone, its model retired, the balance spent since.
        if let Some((key, request_hash)) = &idempotency {
            let now = clock::now();
            let earlier = self.store.read(|txn| {
                let executions = txn.open_table(EXECUTIONS)?;
                earlier_use(
                    &executions,
                    &self.id_key,
                    &caller.org_id,
                    key,
                    request_hash,
                    now,
                )
            })?;
            if let Ok(outcome) = earlier {
                return self.respond(outcome);
            }
        }
        let candidates = self
            .router
            .ranked(&request.model, &routing::Units::default());
        let Some(first) = candidates.first() else {
            return Err(ApiError::invalid(
                "model",
                DetailCode::InvalidValue,
                format!(
                    "unknown model {}; see GET /v1/models",
                    quote(&request.model)
                ),
            ));
        };
        let rules = self.input_rules(first)?;
        rules.validate(&request.input)?;
        let input = input::canonical_numbers(request.input);
        self.files
            .check_input_files(&caller.org_id, &rules.files, &input)?;
        // Rank the providers for what this input consumes, then price it with the
        // adapter of the one that will run it.
        let mut units = estimate(first, &input).await?;
        let chosen = self
            .router
            .ranked(&request.model, &units)
            .into_iter()
            .next()
            .unwrap_or_else(|| first.clone());
        if chosen.plugin.sha256 != first.plugin.sha256 {
            units = estimate(&chosen, &input).await?;
        }
        let estimated_cost = routing::cost(&chosen.model.price, &units);
        let hold_amount = Micros::hold_for(estimated_cost);

        let now = clock::now();
        let execution = Execution {
            id: new_id("exec"),
            organization_id: caller.org_id.clone(),
            model: request.model.clone(),
            status: Status::Pending,
            input,
            metadata: request.metadata,
            mode: request.mode,
            webhook_url: request.webhook_url,
            claim: None,
            hold_amount,
            estimated_cost,
            usage_estimate: units,
            cost: None,
            created_at: now,
            started_at: None,
            completed_at: None,
            expires_at: now + self.settings.expiry(&request.model),
            output: None,
            error: None,
            attempts: Vec::new(),
            transitions: vec![(Status::Pending, now)],
        };

        let outcome = self.accept(execution, idempotency).await?;
        self.respond(outcome)
    }

    /// The answer to a create: the new execution (dispatched), the one an earlier
    /// use of the key created, or why nothing was created.
    fn respond(&self, outcome: CreateOutcome) -> Result<Created, ApiError> {
        match outcome {
            CreateOutcome::Created(execution) => {
                // Subscribe before dispatch, so the stream misses nothing.
                let events = (execution.mode == Mode::Streaming).then(|| {
                    let (sender, receiver) = broadcast::channel(STREAM_BUFFER);
                    self.lock_streams().insert(execution.id.clone(), sender);
                    receiver
                });
                let _ = self.dispatch.send(execution.id.clone());
                Ok(Created {
                    execution,
                    replayed: false,
                    events,
                })
            }
            CreateOutcome::Replayed(execution) => Ok(Created {
                execution,
                replayed: true,
                events: None,
            }),
            CreateOutcome::KeyReused => Err(ApiError::new(
                Code::Conflict,
                "this Idempotency-Key was already used with a different request",
            )),
            CreateOutcome::InsufficientBalance { hold, available } => Err(ApiError::new(
                Code::InsufficientBalance,
                format!("the hold of ${hold} exceeds the available balance of ${available}"),
            )),
        }
    }

    /// Writes a new execution with its hold, its queue entry and its idempotency
    /// claim in one transaction, unless the key was claimed or the balance is short.
    pub async fn accept(
        &self,
        mut execution: Execution,
        idempotency: Option<(String, String)>,
    ) -> Result<CreateOutcome> {
        // An execution created with an idempotency key has an id derived from the
        // organization and the key, and carries its claim: finding the claim is
        // reading the execution, and an accept writes one index entry fewer.
        let now = execution.created_at;
        let key = idempotency.inspect(|(key, request_hash)| {
            execution.id = keyed_id(&self.id_key, &execution.organization_id, key, 0);
            execution.claim = Some(Claim {
                request_hash: request_hash.clone(),
                expires_at: now + Duration::hours(IDEMPOTENCY_TTL_HOURS),
            });
        });
        // Encoding and keys are prepared here, off the single writer thread.
        let mut prepared = Prepared::of(&execution)?;
        let id_key = self.id_key.clone();
        self.store
            .write(move |txn| {
                let mut executions = txn.open_table(EXECUTIONS)?;
                if let Some((key, request_hash)) = &key {
                    let org = &execution.organization_id;
                    match earlier_use(&executions, &id_key, org, key, request_hash, now)? {
                        Ok(outcome) => return Ok(outcome),
                        Err(free) if free != execution.id => {
                            execution.id = free;
                            prepared = Prepared::of(&execution)?;
                        }
                        Err(_) => {}
                    }
                }
                match billing::hold(
                    txn,
                    &execution.organization_id,
                    execution.hold_amount,
                    &execution.id,
                )? {
                    HoldResult::InsufficientBalance { available } => {
                        let hold = execution.hold_amount;
                        return Ok(CreateOutcome::InsufficientBalance { hold, available });
                    }
                    HoldResult::Placed => {}
                }
                executions.insert(execution.id.as_str(), prepared.record.as_slice())?;
                txn.open_table(ACTIVE_EXECUTIONS)?
                    .insert(prepared.active.as_str(), [].as_slice())?;
                txn.open_table(EXECUTIONS_BY_ORG)?
                    .insert(prepared.by_org.as_str(), [].as_slice())?;
                Ok(CreateOutcome::Created(execution))
            })
            .await
    }

    /// What `candidate`'s schema demands of an input (compiled once per version).
    fn input_rules(&self, candidate: &routing::Candidate) -> Result<Arc<InputRules>, ApiError> {
        let key = (
            candidate.plugin.sha256.clone(),
            candidate.model.slug.clone(),
        );
        let mut cache = self.validators.lock().expect("validator cache poisoned");
        if let Some(rules) = cache.get(&key) {
            return Ok(rules.clone());
        }
        let invalid = |e: &dyn std::fmt::Display| {
            ApiError::from(anyhow::anyhow!(
                "model {} has an invalid schema: {e}",
                key.1
            ))
        };
        let schema: Value =
            serde_json::from_str(&candidate.model.input_schema).map_err(|e| invalid(&e))?;
        let rules = Arc::new(InputRules {
            validator: jsonschema::validator_for(&schema).map_err(|e| invalid(&e))?,
            files: file_fields(&schema),
        });
        cache.insert(key, rules.clone());
        Ok(rules)
    }

    /// The execution `id` of `org_id` (another organization's is not found).
    pub fn get(&self, org_id: &str, id: &str) -> Result<Option<Execution>> {
        let execution = self
            .store
            .read(|txn| load(&txn.open_table(EXECUTIONS)?, id))?;
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
            .read(|txn| {
                let executions = txn.open_table(EXECUTIONS)?;
                let index = txn.open_table(EXECUTIONS_BY_ORG)?;
                let prefix = format!("{org_id}/");
                let start = match starting_after {
                    Some(cursor) => {
                        match load(&executions, cursor)?.filter(|e| e.organization_id == org_id) {
                            Some(after) => by_org_key(&after) + "\u{0}",
                            None => {
                                return Ok(Err(ApiError::invalid(
                                    "starting_after",
                                    DetailCode::InvalidValue,
                                    "no such execution",
                                )));
                            }
                        }
                    }
                    None => prefix.clone(),
                };
                let page = store::page(
                    &index,
                    &executions,
                    &prefix,
                    &start,
                    limit,
                    |e: &Execution| {
                        status.is_none_or(|s| s == e.status) && model.is_none_or(|m| m == e.model)
                    },
                )?;
                Ok(Ok(page))
            })
            .map_err(ApiError::from)?
    }

    /// Waits until `id` is terminal or `timeout` passes; returns its latest state.
    pub async fn wait_terminal(
        &self,
        org_id: &str,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<Option<Execution>> {
        let _ = tokio::time::timeout(timeout, self.ended(id)).await;
        self.get(org_id, id)
    }

    /// Resolves once `id` is terminal (at once if it is already, or unknown).
    pub async fn ended(&self, id: &str) {
        // Subscribed before the read, so no change between the two is missed.
        let mut changes = self.subscribe(id);
        match self.store_get(id) {
            Ok(Some(execution)) if !execution.status.is_terminal() => {}
            Ok(_) => {
                // No change will come to clean up a watch made for an ended execution.
                drop(changes);
                let mut watchers = self.watchers.lock().expect("watchers poisoned");
                if watchers.get(id).is_some_and(|w| w.receiver_count() == 0) {
                    watchers.remove(id);
                }
                return;
            }
            // Unreadable now: the change notifications still tell.
            Err(error) => tracing::warn!(execution = %id, %error, "reading an execution failed"),
        }
        while !changes.borrow_and_update().is_terminal() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    fn subscribe(&self, id: &str) -> watch::Receiver<Status> {
        let mut watchers = self.watchers.lock().expect("watchers poisoned");
        watchers
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(Status::Pending).0)
            .subscribe()
    }

    fn lock_streams(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<StreamMessage>>> {
        self.streams.lock().expect("streams poisoned")
    }

    /// Sends a piece of output text to the execution's stream, if it has one.
    pub fn publish_delta(&self, id: &str, text: String) {
        if let Some(stream) = self.lock_streams().get(id) {
            let _ = stream.send(StreamMessage::Delta(text));
        }
    }

    /// Tells a `STREAMING` client that the deltas it has are void (their attempt
    /// failed; a retry streams its text from the start).
    pub fn publish_reset(&self, id: &str) {
        if let Some(stream) = self.lock_streams().get(id) {
            let _ = stream.send(StreamMessage::Reset);
        }
    }

    /// Tells waiters that `execution` changed.
    fn notify(&self, execution: &Execution) {
        {
            let mut streams = self.lock_streams();
            if let Some(stream) = streams.get(&execution.id) {
                let _ = stream.send(StreamMessage::Status(execution.status));
                if execution.status.is_terminal() {
                    streams.remove(&execution.id);
                }
            }
        }
        let mut watchers = self.watchers.lock().expect("watchers poisoned");
        if let Some(sender) = watchers.get(&execution.id) {
            sender.send_replace(execution.status);
            if execution.status.is_terminal() || sender.receiver_count() == 0 {
                watchers.remove(&execution.id);
            }
        }
    }

    /// Applies `change` to a non-terminal execution in one transaction (a
    /// compare-and-set: a terminal execution never changes again), with the webhook
    /// events the change causes. Leaving the execution terminal removes it from the
    /// dispatcher's queue. Returns the new
    /// state, or `None` when the execution was already terminal.
    pub async fn update<F>(&self, id: &str, change: F) -> Result<Option<Execution>>
    where
        F: FnOnce(&mut Execution, &redb::WriteTransaction) -> Result<()> + Send + 'static,
    {
        let id = id.to_string();
        let updated = self
            .store
            .write(move |txn| {
                let Some(mut execution) = load(&txn.open_table(EXECUTIONS)?, &id)? else {
                    return Ok(None);
                };
                if execution.status.is_terminal() {
                    return Ok(None);
                }
                let was_started = execution.started_at.is_some();
                change(&mut execution, txn)?;
                let queued = match webhooks::lifecycle_event(was_started, &execution) {
                    Some(event) => webhooks::enqueue(txn, &execution, event)?,
                    None => false,
                };
                save(txn, &execution)?;
                Ok(Some((execution, queued)))
            })
            .await?;
        let Some((execution, queued)) = updated else {
            return Ok(None);
        };
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
            let (status, outcome) = match ending {
                Ending::Completed {
                    cost,
                    output,
                    files,
                } => {
                    let origin = crate::files::Origin {
                        actor: execution.id.clone(),
                        address: None,
                    };
                    for record in &files {
                        crate::files::insert(txn, record)?;
                        let entry = AuditEntry::new(record, Action::Output, &origin);
                        crate::files::audit::record(txn, &entry)?;
                    }
                    let charged = billing::settle(
                        txn,
                        &execution.organization_id,
                        execution.hold_amount,
                        cost,
                        &execution.id,
                    )?;
                    execution.cost = Some(charged);
                    execution.output = Some(output);
                    (Status::Completed, "completed".to_string())
                }
                Ending::Failed { code, detail } => {
                    execution.error = Some(model::ExecutionError::new(code));
                    (Status::Failed, detail)
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
            let executions = txn.open_table(EXECUTIONS)?;
            let mut open_holds: std::collections::BTreeMap<String, u64> = Default::default();
            for row in txn.open_table(ACTIVE_EXECUTIONS)?.iter()? {
                let (key, _) = row?;
                let Some((id, _)) = parse_active_key(key.value()) else {
                    continue;
                };
                if let Some(execution) = load(&executions, &id)? {
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

    /// Ids of every non-terminal execution with its deadline, soonest first.
    pub fn active(&self) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
        self.store.read(|txn| {
            let mut active = Vec::new();
            for row in txn.open_table(ACTIVE_EXECUTIONS)?.iter()? {
                let (key, _) = row?;
                active.extend(parse_active_key(key.value()));
            }
            Ok(active)
        })
    }
}

/// An input schema, compiled.
struct InputRules {
    validator: jsonschema::Validator,
    /// properties that name files
    files: Vec<FileField>,
}

impl InputRules {
    fn validate(&self, input: &Value) -> Result<(), ApiError> {
        let details: Vec<Detail> = self
            .validator
            .iter_errors(input)
            .flat_map(schema_details)
            .collect();
        if details.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(details))
        }
    }
}

/// What [`Executions::verify_ledger`] found.
#[derive(Debug, Serialize)]
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

/// What [`Executions::accept`] did.
pub enum CreateOutcome {
    Created(Execution),
    Replayed(Execution),
    KeyReused,
    InsufficientBalance { hold: Micros, available: Micros },
}

/// What an earlier use of `key` by `org_id` decides for a request hashed
/// `request_hash`: a replay or a conflict while the earlier claim lives, else (the
/// key is new, or its uses have lapsed) the id a new execution takes.
fn earlier_use(
    executions: &impl ReadableTable<&'static str, &'static [u8]>,
    id_key: &[u8],
    org_id: &str,
    key: &str,
    request_hash: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Result<CreateOutcome, String>> {
    for generation in 0.. {
        let id = keyed_id(id_key, org_id, key, generation);
        let Some(existing) = load(executions, &id)? else {
            return Ok(Err(id));
        };
        if let Some(claim) = existing.claim.as_ref().filter(|c| c.expires_at > now) {
            return Ok(Ok(if claim.request_hash == request_hash {
                CreateOutcome::Replayed(existing)
            } else {
                CreateOutcome::KeyReused
            }));
        }
    }
    unreachable!("a key is used fewer than 2^32 times")
}

/// A new execution's stored form and index keys.
struct Prepared {
    record: Vec<u8>,
    active: String,
    by_org: String,
}

impl Prepared {
    fn of(execution: &Execution) -> Result<Prepared> {
        Ok(Prepared {
            record: store::encode(execution)?,
            active: active_key(execution),
            by_org: by_org_key(execution),
        })
    }
}

/// The id of the execution an organization creates with an idempotency key: a
/// version-4 UUID made of HMAC-SHA256 bits, so it reveals nothing of the key.
/// `generation` counts earlier uses of the key whose 24 hours have lapsed.
fn keyed_id(secret: &[u8], org_id: &str, key: &str, generation: u32) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    for part in [org_id.as_bytes(), key.as_bytes(), &generation.to_be_bytes()] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    let digest = mac.finalize().into_bytes();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    format!(
        "exec_{}",
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    )
}

/// `{org}/{newest-first key}/{id}`: inverted creation time sorts newest first.
fn by_org_key(execution: &Execution) -> String {
    let inverted = i64::MAX - execution.created_at.timestamp_micros();
    format!(
        "{}/{inverted:020}/{}",
        execution.organization_id, execution.id
    )
}

fn load(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Execution>> {
    store::get(table, id)
}

/// Writes the record; a terminal execution leaves the active queue.
fn save(txn: &redb::WriteTransaction, execution: &Execution) -> Result<()> {
    txn.open_table(EXECUTIONS)?
        .insert(execution.id.as_str(), store::encode(execution)?.as_slice())?;
    if execution.status.is_terminal() {
        txn.open_table(ACTIVE_EXECUTIONS)?
            .remove(active_key(execution).as_str())?;
    }
    Ok(())
}

/// `{expires_at ms:020}/{id}`: new entries append (ids are random, deadlines are
/// not), which keeps a batch of accepts on few pages, and the queue reads in
/// deadline order.
fn active_key(execution: &Execution) -> String {
    format!(
        "{:020}/{}",
        execution.expires_at.timestamp_millis().max(0),
        execution.id
    )
}

/// Parses an [`active_key`].
fn parse_active_key(key: &str) -> Option<(String, chrono::DateTime<chrono::Utc>)> {
    let (millis, id) = key.split_once('/')?;
    let expires = chrono::DateTime::from_timestamp_millis(millis.parse().ok()?)?;
    Some((id.to_string(), expires))
}

/// The hash that tells "same request" from "different request" for idempotency:
/// method, path and the canonical (key-sorted) JSON body.
pub fn request_hash(method: &str, path: &str, body: &Value) -> String {
    hex::encode(Sha256::digest(format!("{method} {path}\n{body}")))
}

/// The usage `candidate`'s adapter expects `input` to consume.
async fn estimate(
    candidate: &routing::Candidate,
    input: &Value,
) -> Result<routing::Units, ApiError> {
    let input_text = input.to_string();
    let (slug, provider_model) = (
        candidate.model.slug.clone(),
        candidate.model.provider_model.clone(),
    );
    let usage = candidate
        .plugin
        .call_async("estimate", move |adapter, store| {
            adapter.call_estimate(store, &slug, &provider_model, &input_text)
        })
        .await
        .map_err(|error| {
            tracing::error!(%error, "estimate failed");
            ApiError::internal()
        })?
        .map_err(|failure| failure_to_api(&failure))?;
    Ok(routing::Units::from(&usage))
}

/// A failure an adapter reported before anything ran (e.g. while estimating).
fn failure_to_api(failure: &wit::Failure) -> ApiError {
    let code = Code::from(failure.code);
    tracing::info!(%code, message = %failure.message, "adapter refused the input");
    ApiError::new(code, code.client_message())
}

/// One `details` entry per schema violation, named by its path in the input.
fn schema_details(error: jsonschema::ValidationError<'_>) -> Vec<Detail> {
    use jsonschema::error::ValidationErrorKind as Kind;
    let path = error.instance_path().as_str().replace('/', ".");
    let field = format!("input{path}");
    // A message names the offending value; a long one only by a short prefix.
    let message = match error.instance().as_ref() {
        Value::String(text) => error.masked_with(quote(text)).to_string(),
        other => {
            let text = other.to_string();
            if text.len() <= 40 {
                error.to_string()
            } else {
                error.masked_with(quote(&text)).to_string()
            }
        }
    };
    match error.kind() {
        Kind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            vec![Detail::new(
                format!("{field}.{name}"),
                DetailCode::Required,
                format!("{name} is required"),
            )]
        }
        Kind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|name| {
                Detail::new(
                    format!("{field}.{name}"),
                    DetailCode::UnknownField,
                    format!("unknown field {name}"),
                )
            })
            .collect(),
        Kind::Type { .. } => vec![Detail::new(field, DetailCode::InvalidType, message)],
        Kind::Minimum { .. }
        | Kind::Maximum { .. }
        | Kind::ExclusiveMinimum { .. }
        | Kind::ExclusiveMaximum { .. }
        | Kind::MinLength { .. }
        | Kind::MaxLength { .. }
        | Kind::MinItems { .. }
        | Kind::MaxItems { .. }
        | Kind::MultipleOf { .. } => vec![Detail::new(field, DetailCode::OutOfRange, message)],
        _ => vec![Detail::new(field, DetailCode::InvalidValue, message)],
    }
}

impl Executions {
    /// The execution regardless of organization (the dispatcher's and operators' view).
    pub fn store_get(&self, id: &str) -> Result<Option<Execution>> {
        self.store
            .read(|txn| load(&txn.open_table(EXECUTIONS)?, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_ids_are_version_4_uuids_private_to_an_organization_and_a_generation() {
        let id = keyed_id(b"secret", "org_a", "key-1", 0);
        let uuid = uuid::Uuid::parse_str(id.strip_prefix("exec_").unwrap()).unwrap();
        assert_eq!(uuid.get_version(), Some(uuid::Version::Random));
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(id, keyed_id(b"secret", "org_a", "key-1", 0));
        for other in [
            keyed_id(b"other secret", "org_a", "key-1", 0),
            keyed_id(b"secret", "org_b", "key-1", 0),
            keyed_id(b"secret", "org_a", "key-2", 0),
            keyed_id(b"secret", "org_a", "key-1", 1),
            // Lengths are part of the input: moving a byte across fields changes it.
            keyed_id(b"secret", "org_ak", "ey-1", 0),
        ] {
            assert_ne!(id, other);
        }
    }
}
