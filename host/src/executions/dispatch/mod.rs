//! Drives accepted executions to a terminal state: picks a provider, runs the
//! adapter's requests through the host, polls provider jobs, retries and fails over,
//! stores outputs, settles the hold. Everything it decides is written to the store
//! before it acts on it, so a restart resumes every non-terminal execution: pending
//! ones start, ones with a provider job are polled again, and an attempt cut before
//! its job id was recorded is closed and retried.
//!
//! [`attempt`] starts and follows one attempt, [`exchange`] sends its requests and
//! reads streams, [`outputs`] turns a completion into stored files and settles,
//! [`retry`] decides what a failure (typed in [`super::failure`]) leads to, [`cancel`] ends early, [`callbacks`]
//! hears providers.

mod attempt;

pub use attempt::pick;
mod callbacks;
mod cancel;
mod exchange;
mod fallback;
mod outputs;
mod retry;

use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

use super::failure::{AttemptFailure, Kind};

use super::model::Execution;
use super::{Accepted, Executions};
use crate::callbacks::CallbackSigner;
use crate::clock;
use crate::config::ExecutionSettings;
use crate::files::Files;
use crate::plugins::types;
use crate::routing::{Candidate, Router};
use crate::upstream::{self, Target, Upstream};

/// Consecutive failed polls of one job (provider errors, not job failures) before
/// the attempt is given up.
const MAX_POLL_ERRORS: u32 = 5;
/// Largest text output kept in an execution (larger ones fail the attempt).
const MAX_TEXT_OUTPUT: usize = 1024 * 1024;
/// How often the expiry sweeper looks for executions past their deadline.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

pub struct Dispatcher {
    executions: Arc<Executions>,
    router: Arc<Router>,
    upstream: Upstream,
    files: Arc<Files>,
    settings: ExecutionSettings,
    callbacks: CallbackSigner,
    running: Mutex<HashSet<String>>,
    /// wakes the poll loop of an execution whose provider called back
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    /// when the expiry sweeper last ran: its loop ticking says the dispatcher runs
    swept: Mutex<Option<std::time::Instant>>,
}

/// How an attempt ended.
enum AttemptEnd {
    /// with the candidate that produced it (its provider, plugin and price)
    Completed(types::Completion, Box<Candidate>),
    Failed(AttemptFailure),
    /// cut by a restart before the provider acknowledged it: a failure of ours,
    /// which does not spend the execution's attempts
    Interrupted(AttemptFailure),
    /// no attempt was made: every provider's breaker refuses traffic for now
    Deferred,
    /// the execution became terminal meanwhile (cancelled, expired)
    Abandoned,
}

/// Longest pause before driving an execution again after a store failure.
const DISPATCH_RETRY_MAX: Duration = Duration::from_secs(60);

/// How long an execution whose providers' breakers are all open waits before it
/// looks again.
const DEFER_MS: u64 = 500;

/// A provider's answer as an attempt reads it.
enum Answer {
    Completed(types::Completion),
    Pending(types::Pending),
    Failed(AttemptFailure),
}

impl From<types::Outcome> for Answer {
    fn from(outcome: types::Outcome) -> Answer {
        match outcome {
            types::Outcome::Completed(completion) => Answer::Completed(completion),
            types::Outcome::Pending(pending) => Answer::Pending(pending),
            types::Outcome::Failed(failure) => Answer::Failed(failure.into()),
        }
    }
}

impl Dispatcher {
    pub fn new(
        executions: Arc<Executions>,
        router: Arc<Router>,
        upstream: Upstream,
        files: Arc<Files>,
        settings: ExecutionSettings,
        callbacks: CallbackSigner,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            executions,
            router,
            upstream,
            files,
            settings,
            callbacks,
            running: Mutex::default(),
            wakers: Mutex::default(),
            swept: Mutex::default(),
        })
    }

    pub(super) fn waker(&self, id: &str) -> Arc<Notify> {
        self.wakers
            .lock()
            .expect("wakers poisoned")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Resumes every non-terminal execution no other host drives, then serves newly
    /// accepted ones, and runs the expiry sweeper.
    pub async fn start(
        self: &Arc<Self>,
        mut accepted: mpsc::UnboundedReceiver<Accepted>,
    ) -> Result<()> {
        while !self.adopt().await? {}
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(Accepted { execution, started }) = accepted.recv().await {
                this.spawn(execution.id.clone(), started, Some(execution));
            }
        });
        self.tick();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EXPIRY_SWEEP).await;
                if let Err(error) = this.expire_overdue().await {
                    tracing::error!(error = format!("{error:#}"), "expiry sweep failed");
                }
                this.tick();
            }
        });
        Ok(())
    }

    /// Drives executions that no living host drives (see [`Executions::adopt`]);
    /// whether that was all of them.
    pub async fn adopt(self: &Arc<Self>) -> Result<bool> {
        let adopted = self.executions.adopt().await?;
        let all = self.executions.adopted_all(adopted.len());
        if !adopted.is_empty() && self.executions.is_shared() {
            tracing::info!(
                count = adopted.len(),
                "adopted executions no living host drives"
            );
        }
        for id in adopted {
            self.spawn(id, None, None);
        }
        Ok(all)
    }

    fn tick(&self) {
        *self.swept.lock().expect("sweep time poisoned") = Some(std::time::Instant::now());
    }

    /// Whether the dispatcher was started and its loop has run within `stall`.
    pub fn is_running(&self, stall: Duration) -> bool {
        self.swept
            .lock()
            .expect("sweep time poisoned")
            .is_some_and(|at| at.elapsed() < stall)
    }

    /// Drives `id` in a task of its own (unless one already does), beginning with
    /// the attempt its accept `started`, if any, from the state its accept
    /// committed when it is given (`accepted`), else from the store's.
    pub(super) fn spawn(
        self: &Arc<Self>,
        id: String,
        mut started: Option<(String, Candidate)>,
        mut accepted: Option<Execution>,
    ) {
        if !self
            .running
            .lock()
            .expect("running set poisoned")
            .insert(id.clone())
        {
            return;
        }
        let this = self.clone();
        // One span per execution: every line of its work carries its id.
        let span = tracing::info_span!(parent: None, "execution", execution_id = %id);
        let driven = async move {
            // A failed store write (its whole commit batch was refused) is retried
            // from what the store holds, as a restart would; the deadline bounds it.
            let mut pause = Duration::from_secs(1);
            while let Err(error) = this.drive(&id, started.take(), accepted.take()).await {
                tracing::error!(execution = %id, error = format!("{error:#}"), retry_in = ?pause, "dispatch failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(DISPATCH_RETRY_MAX);
            }
            this.running
                .lock()
                .expect("running set poisoned")
                .remove(&id);
            this.wakers.lock().expect("wakers poisoned").remove(&id);
        };
        tokio::spawn(tracing::Instrument::instrument(driven, span));
    }

    pub(super) async fn drive(
        &self,
        id: &str,
        mut started: Option<(String, Candidate)>,
        mut accepted: Option<Execution>,
    ) -> Result<()> {
        // Since when the execution waits for a provider (see `start_attempt`).
        let mut waiting = None;
        loop {
            // A change committed since the accept (a cancel) is heard as the attempt
            // runs, as one committed just after this read would be.
            let execution = match accepted.take() {
                Some(execution) => execution,
                None => match self.executions.store_get(id)? {
                    Some(execution) => execution,
                    None => return Ok(()),
                },
            };
            if execution.status.is_terminal() {
                return Ok(());
            }
            let end = match (execution.open_attempt().cloned(), started.take()) {
                // Started by the accept and not yet sent: send it now. (After a
                // restart the same attempt is resumed instead, as one cut before its
                // provider acknowledged it.)
                (Some(attempt), Some((started, candidate))) if attempt.id == started => {
                    self.run_attempt(&execution, candidate, &started).await?
                }
                (Some(attempt), _) => self.resume(&execution, attempt).await?,
                (None, _) => self.start_attempt(&execution, &mut waiting).await?,
            };
            let (failure, counts) = match end {
                AttemptEnd::Abandoned => return Ok(()),
                AttemptEnd::Deferred => {
                    // No provider of the model takes traffic: its fallback, if any.
                    if self.fall_back(&execution, None).await? {
                        continue;
                    }
                    // Until a breaker lets a probe through, or the deadline.
                    let wait = Duration::from_millis(DEFER_MS);
                    clock::sleep_until(clock::now() + wait, wait).await;
                    continue;
                }
                AttemptEnd::Completed(completion, candidate) => {
                    match self.complete(&execution, &candidate, completion).await? {
                        None => return Ok(()),
                        Some(failure) => (failure, true),
                    }
                }
                AttemptEnd::Failed(failure) => (failure, true),
                AttemptEnd::Interrupted(failure) => (failure, false),
            };
            if !self.retry_or_fail(&execution, failure, counts).await? {
                return Ok(());
            }
        }
    }
}

/// Where `candidate`'s requests may go (`hosts`, its provider's), and with which
/// credential.
fn target<'a>(candidate: &'a Candidate, hosts: &'a upstream::Hosts) -> Target<'a> {
    Target {
        hosts,
        auth: &candidate.plugin.manifest.auth,
        credential: candidate.provider.credential.as_deref(),
    }
}

fn context(
    execution: &Execution,
    candidate: &Candidate,
    attempt_id: &str,
    callbacks: &CallbackSigner,
) -> types::CallContext {
    let callback_url = candidate
        .plugin
        .manifest
        .capabilities
        .webhooks
        .then(|| callbacks.url(&candidate.provider.name, &execution.id, attempt_id));
    types::CallContext {
        slug: execution.model.clone(),
        provider_model: candidate.model.provider_model.clone(),
        input: candidate.model.input.clone(),
        base_url: candidate.provider.base_url(&candidate.plugin),
        attempt_id: attempt_id.to_string(),
        callback_url,
        files: Vec::new(),
        stream: execution.mode == super::Mode::Streaming
            && candidate.plugin.manifest.capabilities.streaming,
    }
}

/// The span of one attempt, a child of its execution's: every line of its work
/// (its requests, its adapter calls) carries the attempt, provider and model.
pub(super) fn attempt_span(attempt_id: &str, provider: &str, model: &str) -> tracing::Span {
    tracing::info_span!("attempt", attempt_id, provider, model)
}
