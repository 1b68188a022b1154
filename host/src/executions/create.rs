//! Accepting an execution: the input checked against the model's schema, the cost
//! estimated, and the record, its hold, its queue entry and its idempotency claim
//! written in one transaction.

use anyhow::Result;
use chrono::Duration;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::broadcast;

use super::db;
use super::dispatch::pick;
use super::live::LiveStream;
use super::model::Attempt;
use super::waiting::STREAM_BUFFER;
use super::{Claim, Execution, Executions, Mode, Status, StreamMessage};
use super::{failure, input};
use crate::auth::Caller;
use crate::billing::{self, HoldResult};
use crate::clock;
use crate::error::{ApiError, Code, Detail, DetailCode, quote};
use crate::file_fields::{FileField, file_fields};
use crate::ids::new_id;
use crate::money::Micros;
use crate::plugins::types;
use crate::routing::{self};
use crate::store::Reader;
use crate::webhooks;

/// A validated `POST /v1/executions` body.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub model: String,
    pub input: Value,
    pub metadata: Value,
    pub mode: Mode,
    pub webhook_url: Option<String>,
    /// the models to go on with when every provider of `model` has failed; `None`:
    /// the operator's defaults for `model`
    pub fallback_models: Option<Vec<String>>,
}

/// The name of the server's secret for [`keyed_id`].
pub const IDEMPOTENT_ID_KEY: &str = "idempotent-id-key";

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_HOURS: i64 = 24;

/// A new execution, as the dispatcher is handed it: as its accept committed it
/// (the dispatcher need not read it back), with the attempt the accept already
/// started (a synchronous request's), to submit now.
pub struct Accepted {
    pub execution: Execution,
    pub started: Option<(String, routing::Candidate)>,
}

pub struct Created {
    pub execution: Execution,
    /// an earlier request with the same idempotency key created it
    pub replayed: bool,
    /// status changes and output deltas, for a new `STREAMING` execution
    pub events: Option<broadcast::Receiver<StreamMessage>>,
}

/// How many compiled input schemas (one per adapter version and model) are kept.
const COMPILED_SCHEMAS: usize = 1024;

impl Executions {
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
            let earlier = self.store.read(|snapshot| {
                earlier_use(
                    snapshot,
                    &self.id_key,
                    &caller.org_id,
                    key,
                    request_hash,
                    now,
                )
            })?;
            if let Ok(outcome) = earlier {
                return self.respond(outcome, None);
            }
        }
        let Some(first) = self.first_candidate(&request.model) else {
            return Err(ApiError::invalid(
                "model",
                DetailCode::InvalidValue,
                format!(
                    "unknown model {}; see GET /v1/models",
                    quote(&request.model)
                ),
            ));
        };
        if input::depth(&request.input) > input::MAX_DEPTH {
            return Err(ApiError::invalid(
                "input",
                DetailCode::InvalidValue,
                format!("nested more than {} levels deep", input::MAX_DEPTH),
            ));
        }
        let rules = self.input_rules(&first)?;
        rules.validate(&request.input)?;
        let input = input::canonical_numbers(request.input);
        self.files
            .check_input_files(&caller.org_id, &rules.files, &input)?;
        let (units, estimated_cost) = self.price(&first, &input).await?;
        let fallbacks = self
            .fallbacks(caller, &first, request.fallback_models, &input)
            .await?;
        // The hold covers the most expensive model the execution may run.
        let hold_amount = fallbacks
            .iter()
            .map(|(_, cost)| Micros::hold_for(*cost))
            .fold(Micros::hold_for(estimated_cost), Micros::max);
        let fallbacks = fallbacks.into_iter().map(|(f, _)| f).collect();

        let now = clock::now();
        let mut execution = Execution {
            id: new_id("exec"),
            organization_id: caller.org_id.clone(),
            model: request.model.clone(),
            fallbacks,
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
        // A client waits on a synchronous request: its first attempt starts in the
        // accept's commit rather than in one of its own.
        let started = match execution.mode {
            Mode::Sync | Mode::Streaming => self.start_on_accept(&mut execution, now),
            Mode::Async => None,
        };
        let outcome = self.accept(execution, idempotency).await?;
        self.respond(outcome, started)
    }

    /// Starts `execution`'s first attempt at the provider it would go to now, if
    /// one takes traffic; its id and provider, for the dispatcher.
    fn start_on_accept(
        &self,
        execution: &mut Execution,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<(String, routing::Candidate)> {
        let ranked = self
            .router
            .ranked(&execution.model, &execution.usage_estimate);
        let candidate = pick(&ranked, execution, clock::instant())?.clone();
        let attempt = Attempt::begin(execution, &candidate, now);
        let id = attempt.id.clone();
        Attempt::start(execution, attempt, now);
        Some((id, candidate))
    }

    /// The best candidate serving `slug` for an input not yet estimated.
    pub(super) fn first_candidate(&self, slug: &str) -> Option<routing::Candidate> {
        self.router
            .ranked(slug, &types::Usage::default())
            .into_iter()
            .next()
    }

    /// What the input is expected to consume and cost on `model`: the providers are
    /// ranked for it, then it is priced with the adapter of the one that will run it.
    pub(super) async fn price(
        &self,
        first: &routing::Candidate,
        input: &Value,
    ) -> Result<(types::Usage, Micros), ApiError> {
        let mut units = estimate(first, input).await?;
        let chosen = self
            .router
            .ranked(&first.model.slug, &units)
            .into_iter()
            .next()
            .unwrap_or_else(|| first.clone());
        if chosen.plugin.sha256 != first.plugin.sha256 {
            units = estimate(&chosen, input).await?;
        }
        let cost = routing::cost(&chosen.model.price, &units);
        Ok((units, cost))
    }

    /// The answer to a create: the new execution (dispatched), the one an earlier
    /// use of the key created, or why nothing was created.
    fn respond(
        &self,
        outcome: CreateOutcome,
        started: Option<(String, routing::Candidate)>,
    ) -> Result<Created, ApiError> {
        // The request's log lines name the execution it created or replayed.
        if let CreateOutcome::Created(execution) | CreateOutcome::Replayed(execution) = &outcome {
            tracing::Span::current().record("execution_id", execution.id.as_str());
        }
        match outcome {
            CreateOutcome::Created(execution) => {
                // Subscribe before dispatch, so the stream misses nothing.
                let events = (execution.mode == Mode::Streaming).then(|| {
                    let (sender, receiver) = broadcast::channel(STREAM_BUFFER);
                    self.lock_streams()
                        .insert(execution.id.clone(), LiveStream::new(sender));
                    receiver
                });
                let _ = self.dispatch.send(Accepted {
                    execution: execution.clone(),
                    started,
                });
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
        let mut prepared = db::Prepared::of(&execution)?;
        let id_key = self.id_key.clone();
        // A random id is known to no one until the accept answers: a watch made
        // before its commit hears every ending after it, so its waiters need not
        // read it first. (A keyed id may be known already: its waiters read.)
        let watched = key.is_none().then(|| execution.id.clone());
        if let Some(id) = &watched {
            self.watchers.accepting(id);
        }
        let outcome = self
            .store
            .write(move |txn| {
                if let Some((key, request_hash)) = &key {
                    let org = &execution.organization_id;
                    match earlier_use(txn, &id_key, org, key, request_hash, now)? {
                        Ok(outcome) => return Ok((outcome, false)),
                        Err(free) if free != execution.id => {
                            execution.id = free;
                            prepared = db::Prepared::of(&execution)?;
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
                        let refused = CreateOutcome::InsufficientBalance { hold, available };
                        return Ok((refused, false));
                    }
                    HoldResult::Placed => {}
                }
                db::insert(txn, &prepared)?;
                // A synchronous request's first attempt started with it.
                let queued = execution.started_at.is_some()
                    && webhooks::enqueue(
                        txn,
                        webhooks::ExecutionEvent {
                            event_type: "execution.started",
                            organization_id: &execution.organization_id,
                            execution_id: &execution.id,
                            webhook_url: execution.webhook_url.as_deref(),
                            data: &|| serde_json::json!(execution.view()),
                        },
                    )?;
                Ok((CreateOutcome::Created(execution.clone()), queued))
            })
            .await;
        if let Some(id) = watched
            && !matches!(outcome, Ok((CreateOutcome::Created(_), _)))
        {
            self.watchers.forget(&id);
        }
        let (outcome, queued) = outcome?;
        // Its `execution.started` event, written with it, if anyone hears of it.
        if queued {
            self.outbox.notify_one();
        }
        Ok(outcome)
    }

    /// What `candidate`'s schema demands of an input (compiled once per version).
    pub(super) fn input_rules(
        &self,
        candidate: &routing::Candidate,
    ) -> Result<Arc<InputRules>, ApiError> {
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
        // Versions swapped out leave their entries behind: the cache is bounded,
        // and starts over (every entry is rebuilt on demand) when it is full.
        if cache.len() >= COMPILED_SCHEMAS {
            cache.clear();
        }
        cache.insert(key, rules.clone());
        Ok(rules)
    }
}

/// An input schema, compiled.
pub(super) struct InputRules {
    validator: jsonschema::Validator,
    /// properties that name files
    pub(super) files: Vec<FileField>,
}

impl InputRules {
    pub(super) fn validate(&self, input: &Value) -> Result<(), ApiError> {
        let details: Vec<Detail> = self
            .validator
            .iter_errors(input)
            .flat_map(input::schema_details)
            .collect();
        if details.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(details))
        }
    }
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
    reader: &impl Reader,
    id_key: &[u8],
    org_id: &str,
    key: &str,
    request_hash: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Result<CreateOutcome, String>> {
    for generation in 0.. {
        let id = keyed_id(id_key, org_id, key, generation);
        let Some(existing) = db::load(reader, &id)? else {
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

/// The id of the execution an organization creates with an idempotency key: a
/// version-4 UUID made of HMAC-SHA256 bits, so it reveals nothing of the key.
/// `generation` counts earlier uses of the key whose 24 hours have lapsed.
fn keyed_id(secret: &[u8], org_id: &str, key: &str, generation: u32) -> String {
    // Each part length-prefixed, so no two (organization, key) pairs share a message.
    let mut message = Vec::new();
    for part in [org_id.as_bytes(), key.as_bytes(), &generation.to_be_bytes()] {
        message.extend_from_slice(&(part.len() as u64).to_be_bytes());
        message.extend_from_slice(part);
    }
    let digest = crate::mac::hmac_sha256(secret, &[&message]);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    format!(
        "exec_{}",
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    )
}

/// The hash that tells "same request" from "different request" for idempotency:
/// method, path and the canonical (key-sorted) JSON body.
pub fn request_hash(method: &str, path: &str, body: &Value) -> String {
    hex::encode(Sha256::digest(format!("{method} {path}\n{body}")))
}

/// The usage `candidate`'s adapter expects `input` to consume.
async fn estimate(candidate: &routing::Candidate, input: &Value) -> Result<types::Usage, ApiError> {
    let usage = candidate
        .plugin
        .estimate(&candidate.model, input.to_string())
        .await
        .map_err(failure_to_api)?;
    Ok(usage)
}

/// A failure an adapter reported before anything ran (e.g. while estimating).
fn failure_to_api(failure: types::Failure) -> ApiError {
    let failure = failure::AttemptFailure::from(failure);
    let code = failure.code();
    tracing::info!(detail = %failure.detail(), "adapter refused the input");
    ApiError::new(code, code.client_message())
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
