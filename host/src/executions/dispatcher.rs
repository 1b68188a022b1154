//! Drives accepted executions to a terminal state: picks a provider, runs the
//! adapter's requests through the host, polls provider jobs, retries and fails over,
//! stores outputs, settles the hold. Everything it decides is written to the store
//! before it acts on it, so a restart resumes every non-terminal execution: pending
//! ones start, ones with a provider job are polled again, and an attempt cut before
//! its job id was recorded is closed and retried.

use anyhow::Result;
use rand::Rng;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

use super::model::{Attempt, Execution, JobRecord, Status};
use super::{Ending, Executions};
use crate::callbacks::CallbackSigner;
use crate::clock;
use crate::config::ExecutionSettings;
use crate::error::Code;
use crate::files::{FileRecord, Files};
use crate::ids::new_short_id;
use crate::plugins::{CallError, wit};
use crate::routing::{self, Candidate, Router};
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
}

/// How an attempt ended.
enum AttemptEnd {
    /// with the candidate that produced it (its provider, plugin and price)
    Completed(wit::Completion, Box<Candidate>),
    Failed(wit::Failure),
    /// cut by a restart before the provider acknowledged it: a failure of ours,
    /// which does not spend the execution's attempts
    Interrupted(wit::Failure),
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

fn failure(code: wit::ErrorCode, message: impl Into<String>, retryable: bool) -> wit::Failure {
    wit::Failure {
        code,
        message: message.into(),
        retryable,
        retry_after_ms: None,
    }
}

/// A plugin that traps or overruns fails its attempt; another provider may serve.
fn plugin_failure(error: CallError) -> wit::Failure {
    tracing::warn!(%error, "plugin call failed");
    failure(wit::ErrorCode::InternalError, error.to_string(), true)
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
        })
    }

    fn waker(&self, id: &str) -> Arc<Notify> {
        self.wakers
            .lock()
            .expect("wakers poisoned")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// A provider called back for `provider` with `token`: checks the token, has the
    /// adapter read the callback, and wakes the attempt's poll loop unless the job is
    /// still running. `false` when the token does not verify.
    pub async fn provider_callback(
        &self,
        provider: &str,
        token: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<bool> {
        let Some(target) = self.callbacks.verify(provider, token) else {
            return Ok(false);
        };
        let Some(execution) = self.executions.store_get(&target.execution_id)? else {
            return Ok(false);
        };
        let attempt = execution
            .open_attempt()
            .filter(|a| a.id == target.attempt_id && a.provider == provider)
            .cloned();
        let (Some(attempt), Some(candidate)) = (
            attempt,
            self.router
                .candidates(&execution.model)
                .into_iter()
                .find(|c| c.provider.name == provider),
        ) else {
            tracing::info!(execution = %execution.id, "late provider callback ignored");
            return Ok(true);
        };
        let Some(job) = attempt.job else {
            // Faster than the submit answer's record: the permit left on the waker
            // makes the first poll of the job go at once instead of at its interval.
            self.waker(&execution.id).notify_one();
            return Ok(true);
        };
        let ctx = context(&execution, &candidate, &attempt.id, &self.callbacks);
        let job = wit::Job {
            id: job.id,
            state: job.state,
        };
        let outcome = candidate
            .plugin
            .call_async("parse-webhook", move |adapter, store| {
                adapter.call_parse_webhook(store, &ctx, &job, &headers, &body)
            })
            .await;
        if !matches!(outcome, Ok(wit::Outcome::Pending(_))) {
            self.waker(&execution.id).notify_one();
        }
        Ok(true)
    }

    /// Resumes every non-terminal execution, then serves newly accepted ones, and
    /// runs the expiry sweeper.
    pub fn start(self: &Arc<Self>, mut accepted: mpsc::UnboundedReceiver<String>) -> Result<()> {
        for (id, _) in self.executions.active()? {
            self.spawn(id);
        }
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(id) = accepted.recv().await {
                this.spawn(id);
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EXPIRY_SWEEP).await;
                if let Err(error) = this.expire_overdue().await {
                    tracing::error!(error = format!("{error:#}"), "expiry sweep failed");
                }
            }
        });
        Ok(())
    }

    fn spawn(self: &Arc<Self>, id: String) {
        if !self
            .running
            .lock()
            .expect("running set poisoned")
            .insert(id.clone())
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            // A failed store write (its whole commit batch was refused) is retried
            // from what the store holds, as a restart would; the deadline bounds it.
            let mut pause = Duration::from_secs(1);
            while let Err(error) = this.drive(&id).await {
                tracing::error!(execution = %id, error = format!("{error:#}"), retry_in = ?pause, "dispatch failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(DISPATCH_RETRY_MAX);
            }
            this.running
                .lock()
                .expect("running set poisoned")
                .remove(&id);
            this.wakers.lock().expect("wakers poisoned").remove(&id);
        });
    }

    /// Cancels a non-terminal execution (releasing its hold) and asks the provider,
    /// best effort, to stop its job. Cancelling a cancelled execution is harmless;
    /// any other terminal state is a conflict, answered with that state.
    /// `None` when the organization has no such execution.
    pub async fn cancel(
        self: &Arc<Self>,
        org_id: &str,
        id: &str,
    ) -> Result<Option<Result<Execution, Status>>> {
        if self.executions.get(org_id, id)?.is_none() {
            return Ok(None);
        }
        let cancelled = self.executions.finish(id, Ending::Cancelled).await?;
        let Some(execution) = self.executions.get(org_id, id)? else {
            return Ok(None);
        };
        if let Some(ended) = cancelled.filter(|e| e.status == Status::Cancelled) {
            self.stop_provider_job(ended);
        }
        Ok(Some(match execution.status {
            Status::Cancelled => Ok(execution),
            other => Err(other),
        }))
    }

    async fn cancel_at_provider(&self, execution: &Execution, attempt: &Attempt, job: JobRecord) {
        let Some(candidate) = self
            .router
            .candidates(&execution.model)
            .into_iter()
            .find(|c| c.provider.name == attempt.provider)
        else {
            return;
        };
        let ctx = context(execution, &candidate, &attempt.id, &self.callbacks);
        let job = wit::Job {
            id: job.id,
            state: job.state,
        };
        self.cancel_job(&execution.id, &candidate, &ctx, job).await;
    }

    /// Asks the provider, best effort, to stop `job`.
    async fn cancel_job(
        &self,
        execution_id: &str,
        candidate: &Candidate,
        ctx: &wit::CallContext,
        job: wit::Job,
    ) {
        let ctx = ctx.clone();
        let request = match candidate
            .plugin
            .call_async("build-cancel", move |adapter, store| {
                adapter.call_build_cancel(store, &ctx, &job)
            })
            .await
        {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "building the provider cancel failed");
                return;
            }
        };
        let allowed = candidate.provider.allowed_hosts(&candidate.plugin);
        let target = target(candidate, &allowed);
        match self.upstream.send(&target, &request).await {
            Ok(response) => {
                tracing::info!(execution = %execution_id, status = response.status, "provider cancel sent")
            }
            Err(error) => {
                tracing::warn!(execution = %execution_id, %error, "provider cancel failed")
            }
        }
    }

    /// Asks the provider, best effort and in the background, to stop the job of an
    /// execution that just ended early (cancelled or expired).
    fn stop_provider_job(self: &Arc<Self>, ended: Execution) {
        if let Some(attempt) = ended.attempts.last().cloned()
            && let Some(job) = attempt.job.clone()
        {
            let this = self.clone();
            tokio::spawn(async move { this.cancel_at_provider(&ended, &attempt, job).await });
        }
    }

    async fn expire_overdue(self: &Arc<Self>) -> Result<()> {
        let now = clock::now();
        for (id, expires_at) in self.executions.active()? {
            if expires_at <= now
                && let Some(expired) = self.executions.finish(&id, Ending::Expired).await?
            {
                tracing::info!(execution = %id, "expired");
                self.stop_provider_job(expired);
            }
        }
        Ok(())
    }

    async fn drive(&self, id: &str) -> Result<()> {
        loop {
            let Some(execution) = self.executions.store_get(id)? else {
                return Ok(());
            };
            if execution.status.is_terminal() {
                return Ok(());
            }
            let end = match execution.open_attempt().cloned() {
                Some(attempt) => self.resume(&execution, attempt).await?,
                None => self.start_attempt(&execution).await?,
            };
            let (failure, counts) = match end {
                AttemptEnd::Abandoned => return Ok(()),
                AttemptEnd::Deferred => {
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

    /// Records the failed attempt; then either waits out the backoff and returns true
    /// (try again), or ends the execution `FAILED` and returns false. An attempt that
    /// `counts` spends one of the execution's `max_attempts`.
    async fn retry_or_fail(
        &self,
        execution: &Execution,
        failure: wit::Failure,
        counts: bool,
    ) -> Result<bool> {
        // The snapshot predates the attempt that just failed.
        let Some(execution) = self.executions.store_get(&execution.id)? else {
            return Ok(false);
        };
        let spent = execution
            .attempts
            .iter()
            .filter(|a| a.failure.is_some())
            .count() as u32
            + u32::from(counts);
        let now = clock::now();
        // A provider's Retry-After holds back only a retry that goes back to it.
        let ready = clock::instant();
        let elsewhere = self
            .router
            .ranked(&execution.model, &execution.usage_estimate)
            .iter()
            .any(|c| {
                c.provider.would_allow(ready)
                    && !execution
                        .attempts
                        .iter()
                        .any(|a| a.provider == c.provider.name)
            });
        let retry_after = failure.retry_after_ms.filter(|_| !elsewhere);
        let delay = backoff(spent.max(1), retry_after);
        let time_left = execution.expires_at - now;
        let retry = failure.retryable
            && spent < self.settings.max_attempts
            && chrono::Duration::from_std(delay).is_ok_and(|d| d < time_left);
        tracing::info!(execution = %execution.id, code = ?failure.code, message = %failure.message, retry, "attempt failed");
        let detail = format!("{:?}: {}", failure.code, failure.message);
        let code = Code::from(failure.code);
        let updated = if retry {
            self.executions
                .update(&execution.id, move |execution, _| {
                    execution.close_attempt(&detail, counts.then_some(code), now);
                    Ok(())
                })
                .await?
        } else {
            let code = execution.final_failure(code);
            self.executions
                .finish(&execution.id, Ending::Failed { code, detail })
                .await?
        };
        if retry && updated.is_some() {
            tokio::time::sleep(delay).await;
        }
        Ok(retry && updated.is_some())
    }

    async fn start_attempt(&self, execution: &Execution) -> Result<AttemptEnd> {
        let ranked = self
            .router
            .ranked(&execution.model, &execution.usage_estimate);
        if ranked.is_empty() {
            return Ok(AttemptEnd::Failed(failure(
                wit::ErrorCode::ModelUnavailable,
                "no loaded adapter serves this model",
                false,
            )));
        }
        // A retry prefers the best provider not tried yet, among those whose breaker
        // lets traffic through.
        let now = clock::instant();
        let ready: Vec<&Candidate> = ranked
            .iter()
            .filter(|c| c.provider.would_allow(now))
            .collect();
        let untried = ready.iter().find(|c| {
            !execution
                .attempts
                .iter()
                .any(|a| a.provider == c.provider.name)
        });
        let Some(candidate) = untried.or(ready.first()).map(|c| (*c).clone()) else {
            return Ok(AttemptEnd::Deferred);
        };
        let now = clock::now();
        let attempt = Attempt {
            id: new_short_id("att"),
            provider: candidate.provider.name.clone(),
            plugin: candidate.plugin.name.clone(),
            plugin_version: candidate.plugin.version.clone(),
            plugin_sha256: candidate.plugin.sha256.clone(),
            started_at: now,
            ended_at: None,
            job: None,
            outcome: None,
            failure: None,
        };
        let attempt_id = attempt.id.clone();
        let started = self
            .executions
            .update(&execution.id, move |execution, _| {
                execution.started_at.get_or_insert(now);
                if execution.status != Status::Processing {
                    execution.set_status(Status::Processing, now);
                }
                execution.attempts.push(attempt);
                Ok(())
            })
            .await?;
        if started.is_none() {
            return Ok(AttemptEnd::Abandoned);
        }
        self.submit(execution, candidate, &attempt_id).await
    }

    /// Sends the attempt's submit to its provider and follows the job to its end.
    async fn submit(
        &self,
        execution: &Execution,
        candidate: Candidate,
        attempt_id: &str,
    ) -> Result<AttemptEnd> {
        let mut ctx = context(execution, &candidate, attempt_id, &self.callbacks);
        let inline = candidate.plugin.manifest.capabilities.inline_files;
        let schema = &candidate.model.input_schema;
        ctx.files = match self
            .files
            .mint_grants(execution, schema, attempt_id, inline)
            .await
        {
            Ok(grants) => grants,
            Err(error) => {
                let message = format!("preparing the input files failed: {error:#}");
                return Ok(AttemptEnd::Failed(failure(
                    wit::ErrorCode::InternalError,
                    message,
                    false,
                )));
            }
        };
        let input = execution.input.to_string();
        let submit_ctx = ctx.clone();
        let request = match candidate
            .plugin
            .call_async("build-submit", move |adapter, store| {
                adapter.call_build_submit(store, &submit_ctx, &input)
            })
            .await
        {
            Ok(Ok(request)) => request,
            Ok(Err(failure)) => return Ok(AttemptEnd::Failed(failure)),
            Err(error) => return Ok(AttemptEnd::Failed(plugin_failure(error))),
        };
        // Inline bytes were for building the request only.
        for grant in &mut ctx.files {
            grant.bytes = None;
        }
        let Some((outcome, _)) = self
            .exchange(&candidate, &ctx, None, &request, &execution.id)
            .await
        else {
            return Ok(AttemptEnd::Abandoned);
        };
        match outcome {
            wit::Outcome::Completed(completion) => {
                Ok(AttemptEnd::Completed(completion, Box::new(candidate)))
            }
            wit::Outcome::Failed(failure) => Ok(AttemptEnd::Failed(failure)),
            wit::Outcome::Pending(pending) => {
                let job = JobRecord {
                    id: pending.job.id.clone(),
                    state: pending.job.state.clone(),
                };
                let recorded = self
                    .executions
                    .update(&execution.id, move |execution, _| {
                        if let Some(attempt) = execution.open_attempt_mut() {
                            attempt.job = Some(job);
                        }
                        execution.set_status(Status::AwaitingWebhook, clock::now());
                        Ok(())
                    })
                    .await?;
                if recorded.is_none() {
                    // The execution ended while the provider was starting the job.
                    self.cancel_job(&execution.id, &candidate, &ctx, pending.job)
                        .await;
                    return Ok(AttemptEnd::Abandoned);
                }
                self.poll(
                    &execution.id,
                    &candidate,
                    &ctx,
                    pending.job,
                    pending.poll_after_ms,
                )
                .await
            }
        }
    }

    /// Picks up an attempt a restart interrupted.
    async fn resume(&self, execution: &Execution, attempt: Attempt) -> Result<AttemptEnd> {
        let candidate = self
            .router
            .candidates(&execution.model)
            .into_iter()
            .find(|c| c.provider.name == attempt.provider);
        match (attempt.job, candidate) {
            (Some(job), Some(candidate)) => {
                tracing::info!(execution = %execution.id, job = %job.id, "resuming a provider job");
                let ctx = context(execution, &candidate, &attempt.id, &self.callbacks);
                let job = wit::Job {
                    id: job.id,
                    state: job.state,
                };
                self.poll(&execution.id, &candidate, &ctx, job, 0).await
            }
            (Some(_), None) => Ok(AttemptEnd::Failed(failure(
                wit::ErrorCode::ServiceUnavailable,
                "the provider of an interrupted job is no longer configured",
                true,
            ))),
            // Cut before the submit's answer was recorded, at a provider that
            // de-duplicates by the attempt id: sending it again cannot start a
            // second job.
            (None, Some(candidate)) if candidate.plugin.manifest.capabilities.idempotent_submit => {
                tracing::info!(execution = %execution.id, attempt = %attempt.id, "re-sending an interrupted submit under its idempotency key");
                self.submit(execution, candidate, &attempt.id).await
            }
            // Otherwise nothing to poll, so the attempt ends and the next one starts
            // afresh (a restart is not the provider's failure: it spends none of the
            // execution's attempts).
            (None, _) => Ok(AttemptEnd::Interrupted(failure(
                wit::ErrorCode::ServiceUnavailable,
                "attempt interrupted before the provider accepted it",
                true,
            ))),
        }
    }

    /// Polls `job` until it completes, fails, or the execution ends.
    async fn poll(
        &self,
        id: &str,
        candidate: &Candidate,
        ctx: &wit::CallContext,
        mut job: wit::Job,
        mut delay_ms: u32,
    ) -> Result<AttemptEnd> {
        let mut errors = 0;
        let waker = self.waker(id);
        // A provider that will call back is polled once as asked, then only as a
        // fallback (a restart polls at once: a callback may have come meanwhile).
        let fallback = ctx
            .callback_url
            .as_ref()
            .map(|_| self.settings.callback_fallback_poll_ms.min(u32::MAX as u64) as u32);
        // The job as last seen; `None` before the first poll. A job that moved on
        // (new state, e.g. "fetch the result now") is polled when the adapter asks.
        let mut polled: Option<String> = None;
        loop {
            let wait = match fallback {
                Some(fallback) if polled.as_deref() == Some(job.state.as_str()) => {
                    fallback.max(delay_ms)
                }
                _ => delay_ms,
            };
            let wait = Duration::from_millis(wait as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = waker.notified() => {}
            }
            match self.executions.store_get(id)? {
                Some(execution) if !execution.status.is_terminal() => {}
                _ => return Ok(AttemptEnd::Abandoned),
            }
            let poll_ctx = ctx.clone();
            let poll_job = job.clone();
            let request = match candidate
                .plugin
                .call_async("build-poll", move |adapter, store| {
                    adapter.call_build_poll(store, &poll_ctx, &poll_job)
                })
                .await
            {
                Ok(Ok(request)) => request,
                Ok(Err(failure)) => return Ok(AttemptEnd::Failed(failure)),
                Err(error) => return Ok(AttemptEnd::Failed(plugin_failure(error))),
            };
            let Some((outcome, answered)) = self
                .exchange(candidate, ctx, Some(&job), &request, id)
                .await
            else {
                return Ok(AttemptEnd::Abandoned);
            };
            match outcome {
                wit::Outcome::Completed(completion) => {
                    return Ok(AttemptEnd::Completed(
                        completion,
                        Box::new(candidate.clone()),
                    ));
                }
                wit::Outcome::Pending(pending) => {
                    errors = 0;
                    delay_ms = pending.poll_after_ms;
                    polled = Some(job.state.clone());
                    job = pending.job;
                }
                // The provider answered that the job itself failed.
                wit::Outcome::Failed(failure) if answered => {
                    return Ok(AttemptEnd::Failed(failure));
                }
                // The poll failed, not (necessarily) the job: ask again later.
                wit::Outcome::Failed(failure) => {
                    errors += 1;
                    if errors >= MAX_POLL_ERRORS || !failure.retryable {
                        return Ok(AttemptEnd::Failed(failure));
                    }
                    delay_ms = backoff(errors, failure.retry_after_ms).as_millis() as u32;
                }
            }
        }
    }

    /// Sends `request` and has the adapter classify the answer. The flag says whether
    /// the provider answered with a success status (so a failure is the job's own).
    /// When `ctx.stream` is set and the provider answers with an event stream, each
    /// event goes through the adapter and text deltas reach the client as they come.
    ///
    /// `None` when the execution ended (cancelled, expired) first: a request waiting
    /// for the provider's bulkhead is dropped, and so is one in flight, closing its
    /// connection, unless it is a submit to a provider that can cancel jobs: that one
    /// is let answer, so the job it started can be stopped.
    async fn exchange(
        &self,
        candidate: &Candidate,
        ctx: &wit::CallContext,
        job: Option<&wit::Job>,
        request: &wit::HttpRequest,
        execution_id: &str,
    ) -> Option<(wit::Outcome, bool)> {
        let provider = &candidate.provider;
        let Some(pass) = provider.breaker.try_acquire(clock::instant()) else {
            let open = failure(
                wit::ErrorCode::ServiceUnavailable,
                "the provider's circuit breaker is open",
                true,
            );
            return Some((wit::Outcome::Failed(open), false));
        };
        let ended = self.executions.ended(execution_id);
        tokio::pin!(ended);
        let _permit = tokio::select! {
            permit = provider.bulkhead.acquire() => permit,
            () = &mut ended => {
                provider.breaker.release(pass);
                return None;
            }
        };
        let started = Instant::now();
        let sent = self.send(candidate, ctx, job, request, execution_id);
        let result = if job.is_none() && candidate.plugin.manifest.capabilities.cancel {
            sent.await
        } else {
            tokio::select! {
                result = sent => result,
                () = &mut ended => {
                    tracing::info!(execution = %execution_id, "provider request dropped: the execution ended");
                    provider.breaker.release(pass);
                    return None;
                }
            }
        };
        Some(match result {
            Ok((outcome, answered)) => {
                // A provider that answers, even "no" to a bad input, is healthy.
                let healthy = !matches!(&outcome, wit::Outcome::Failed(f) if f.retryable);
                provider
                    .breaker
                    .record(healthy, Some(started.elapsed()), clock::instant());
                (outcome, answered)
            }
            Err(error) => {
                provider.breaker.record(false, None, clock::instant());
                (wit::Outcome::Failed(error.failure()), false)
            }
        })
    }

    /// [`Dispatcher::exchange`]'s request and the adapter's reading of the answer.
    async fn send(
        &self,
        candidate: &Candidate,
        ctx: &wit::CallContext,
        job: Option<&wit::Job>,
        request: &wit::HttpRequest,
        execution_id: &str,
    ) -> Result<(wit::Outcome, bool), upstream::UpstreamError> {
        let allowed = candidate.provider.allowed_hosts(&candidate.plugin);
        let target = target(candidate, &allowed);
        let response = self.upstream.open(&target, request).await?;
        let answered = response.status().is_success();
        let streamed = ctx.stream
            && answered
            && response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
        let outcome = if streamed {
            self.consume_stream(candidate, ctx, execution_id, response)
                .await
        } else {
            parse(candidate, ctx, job, upstream::read(response).await?).await
        };
        Ok((outcome, answered))
    }

    /// Reads a provider's server-sent events through the adapter, forwarding text
    /// deltas to the client's stream, and ends with the completed text and usage.
    async fn consume_stream(
        &self,
        candidate: &Candidate,
        ctx: &wit::CallContext,
        execution_id: &str,
        response: reqwest::Response,
    ) -> wit::Outcome {
        let mut forwarded = false;
        let outcome = self
            .read_stream(candidate, ctx, execution_id, response, &mut forwarded)
            .await;
        if forwarded && matches!(outcome, wit::Outcome::Failed(_)) {
            // The client saw text of an attempt that failed: tell it to drop that
            // text before a retry streams its own.
            self.executions.publish_reset(execution_id);
        }
        outcome
    }

    /// [`Dispatcher::consume_stream`]'s reading; `forwarded` is set once a delta
    /// reached the client.
    async fn read_stream(
        &self,
        candidate: &Candidate,
        ctx: &wit::CallContext,
        execution_id: &str,
        response: reqwest::Response,
        forwarded: &mut bool,
    ) -> wit::Outcome {
        use eventsource_stream::Eventsource;
        use futures_util::StreamExt;
        let mut events = response.bytes_stream().eventsource();
        let mut text = String::new();
        let mut usage: Option<wit::Usage> = None;
        let mut finished = false;
        while let Some(event) = events.next().await {
            let data = match event {
                Ok(event) => event.data,
                Err(error) => {
                    let message = format!("the provider's stream broke: {error}");
                    return wit::Outcome::Failed(failure(
                        wit::ErrorCode::ServiceUnavailable,
                        message,
                        true,
                    ));
                }
            };
            let event_ctx = ctx.clone();
            let parsed = candidate
                .plugin
                .call_async("parse-stream-event", move |adapter, store| {
                    adapter.call_parse_stream_event(store, &event_ctx, &data)
                })
                .await;
            match parsed {
                Ok(wit::StreamEvent::Delta(delta)) => {
                    text.push_str(&delta);
                    self.executions.publish_delta(execution_id, delta);
                    *forwarded = true;
                }
                Ok(wit::StreamEvent::Done(completion)) => {
                    finished = true;
                    if let Some(full) = completion.text {
                        text = full;
                    }
                    // A closing marker without usage keeps what an earlier event reported.
                    if usage.is_none() || !routing::Units::from(&completion.usage).is_empty() {
                        usage = Some(completion.usage);
                    }
                }
                Ok(wit::StreamEvent::Skip) => {}
                Ok(wit::StreamEvent::Failed(failure)) => return wit::Outcome::Failed(failure),
                Err(error) => return wit::Outcome::Failed(plugin_failure(error)),
            }
        }
        if !finished {
            // Cut off: what arrived is not the answer, and is not billed.
            return wit::Outcome::Failed(failure(
                wit::ErrorCode::GenerationFailed,
                "the provider's stream ended before it finished",
                true,
            ));
        }
        let usage = usage.unwrap_or(wit::Usage {
            requests: 1,
            images: 0,
            megapixels_milli: 0,
            seconds_milli: 0,
            input_tokens: 0,
            // Four characters a token, when the provider reported no usage.
            output_tokens: (text.chars().count() as u64).div_ceil(4),
        });
        wit::Outcome::Completed(wit::Completion {
            text: Some(text),
            assets: Vec::new(),
            usage,
        })
    }

    /// Stores the outputs and ends the execution `COMPLETED`, settling the hold.
    /// Returns a failure when the outputs could not be stored (the attempt failed).
    async fn complete(
        &self,
        execution: &Execution,
        candidate: &Candidate,
        completion: wit::Completion,
    ) -> Result<Option<wit::Failure>> {
        if completion
            .text
            .as_ref()
            .is_some_and(|t| t.len() > MAX_TEXT_OUTPUT)
        {
            let message = format!("the text output exceeds {MAX_TEXT_OUTPUT} bytes");
            return Ok(Some(failure(
                wit::ErrorCode::GenerationFailed,
                message,
                false,
            )));
        }
        let (output, records) = match self.store_outputs(execution, candidate, &completion).await {
            Ok(stored) => stored,
            Err(failure) => return Ok(Some(failure)),
        };
        // An adapter that reports nothing billable beyond the request itself (a
        // provider that does not report usage) is charged the estimate.
        let mut units = routing::Units::from(&completion.usage);
        if units.is_empty() {
            units = execution.usage_estimate.max_requests(units.requests);
        }
        let cost = routing::cost(&candidate.model.price, &units);
        let file_ids: Vec<String> = records.iter().map(|r| r.file_id.clone()).collect();
        let completed = self
            .executions
            .finish(
                &execution.id,
                Ending::Completed {
                    cost,
                    output,
                    files: records,
                },
            )
            .await?;
        if completed.is_none() {
            tracing::info!(execution = %execution.id, "late provider result discarded: the execution had already ended");
            self.files.discard(file_ids).await;
        }
        Ok(None)
    }

    /// Copies every asset into the organization's files and builds the canonical
    /// output. On failure nothing is left behind.
    async fn store_outputs(
        &self,
        execution: &Execution,
        candidate: &Candidate,
        completion: &wit::Completion,
    ) -> Result<(Value, Vec<FileRecord>), wit::Failure> {
        let allowed = candidate.provider.allowed_hosts(&candidate.plugin);
        let mut records: Vec<FileRecord> = Vec::new();
        let mut entries: Vec<(wit::Modality, Value)> = Vec::new();
        for asset in &completion.assets {
            let org = &execution.organization_id;
            let max = self.settings.max_asset_bytes;
            let stored = match &asset.source {
                wit::AssetSource::Inline(bytes) => {
                    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(
                        bytes::Bytes::copy_from_slice(bytes),
                    )]);
                    self.files
                        .ingest_output(org, body, max)
                        .await
                        .map_err(|e| e.to_string())
                }
                wit::AssetSource::Url(url) => match self.upstream.fetch(&allowed, url).await {
                    Ok(response) => self
                        .files
                        .ingest_output(org, response.bytes_stream(), max)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(error) => Err(error.to_string()),
                },
            };
            let (record, ingested) = match stored {
                Ok(stored) => stored,
                Err(error) => {
                    let ids: Vec<String> = records.iter().map(|r| r.file_id.clone()).collect();
                    self.files.discard(ids).await;
                    return Err(failure(
                        wit::ErrorCode::GenerationFailed,
                        format!("storing an output failed: {error}"),
                        true,
                    ));
                }
            };
            let entry = match asset.modality {
                wit::Modality::Image => json!({
                    "file_id": record.file_id,
                    "format": ingested.format,
                    "width": ingested.dimensions.map(|d| d.0),
                    "height": ingested.dimensions.map(|d| d.1),
                }),
                wit::Modality::Video | wit::Modality::Audio | wit::Modality::Text => {
                    // Providers that do not report a length produced what was asked.
                    let requested = execution.usage_estimate.seconds_milli;
                    let duration_ms = asset.duration_ms.or((requested > 0).then_some(requested));
                    json!({
                        "file_id": record.file_id,
                        "format": ingested.format,
                        "duration_s": duration_ms.map(|ms| ms as f64 / 1000.0),
                    })
                }
            };
            entries.push((asset.modality, entry));
            records.push(record);
        }
        Ok((canonical_output(completion, entries), records))
    }
}

impl Executions {
    /// The execution regardless of organization (the dispatcher's and operators' view).
    pub fn store_get(&self, id: &str) -> Result<Option<Execution>> {
        self.store
            .read(|txn| super::load(&txn.open_table(crate::store::EXECUTIONS)?, id))
    }
}

/// The canonical output of SPEC §4, one shape per modality.
fn canonical_output(completion: &wit::Completion, entries: Vec<(wit::Modality, Value)>) -> Value {
    let mut output = serde_json::Map::new();
    for (modality, entry) in entries {
        let key = match modality {
            wit::Modality::Image => "images",
            wit::Modality::Video => "videos",
            wit::Modality::Audio => "audio",
            wit::Modality::Text => "files",
        };
        output
            .entry(key)
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("output lists are arrays")
            .push(entry);
    }
    if let Some(text) = &completion.text {
        output.insert("text".into(), json!(text));
        output.insert(
            "usage".into(),
            json!({
                "input_tokens": completion.usage.input_tokens,
                "output_tokens": completion.usage.output_tokens,
            }),
        );
    }
    Value::Object(output)
}

/// Has the adapter classify a whole response.
async fn parse(
    candidate: &Candidate,
    ctx: &wit::CallContext,
    job: Option<&wit::Job>,
    response: wit::HttpResponse,
) -> wit::Outcome {
    let ctx = ctx.clone();
    let job = job.cloned();
    match candidate
        .plugin
        .call_async("parse-response", move |adapter, store| {
            adapter.call_parse_response(store, &ctx, job.as_ref(), &response)
        })
        .await
    {
        Ok(outcome) => outcome,
        Err(error) => wit::Outcome::Failed(plugin_failure(error)),
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
) -> wit::CallContext {
    let callback_url = candidate
        .plugin
        .manifest
        .capabilities
        .webhooks
        .then(|| callbacks.url(&candidate.provider.name, &execution.id, attempt_id));
    wit::CallContext {
        slug: execution.model.clone(),
        provider_model: candidate.model.provider_model.clone(),
        base_url: candidate.provider.base_url(&candidate.plugin),
        attempt_id: attempt_id.to_string(),
        callback_url,
        files: Vec::new(),
        stream: execution.mode == super::Mode::Streaming
            && candidate.plugin.manifest.capabilities.streaming,
    }
}

/// Exponential backoff with jitter (200 ms × 2ⁿ⁻¹, ±20 %, at most 5 s), or the
/// provider's Retry-After when longer (at most 30 s).
fn backoff(failures: u32, retry_after_ms: Option<u32>) -> Duration {
    let base = 200u64
        .saturating_mul(1 << failures.saturating_sub(1).min(10))
        .min(5_000);
    let jittered = (base as f64 * rand::rng().random_range(0.8..1.2)) as u64;
    let requested = retry_after_ms
        .map(|ms| (ms as u64).min(30_000))
        .unwrap_or(0);
    Duration::from_millis(jittered.max(requested))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let first = backoff(1, None).as_millis();
        assert!((160..=240).contains(&first), "{first}");
        assert!(backoff(20, None).as_millis() <= 6_000);
        assert_eq!(backoff(1, Some(2_000)).as_millis(), 2_000);
        assert_eq!(backoff(1, Some(120_000)).as_millis(), 30_000);
    }

    #[test]
    fn text_completions_carry_text_and_token_usage() {
        let completion = wit::Completion {
            text: Some("hello".into()),
            assets: Vec::new(),
            usage: wit::Usage {
                requests: 1,
                images: 0,
                megapixels_milli: 0,
                seconds_milli: 0,
                input_tokens: 3,
                output_tokens: 1,
            },
        };
        assert_eq!(
            canonical_output(&completion, Vec::new()),
            json!({"text": "hello", "usage": {"input_tokens": 3, "output_tokens": 1}})
        );
    }
}
