//! One attempt: the provider chosen, its submit, and its job followed by polling
//! (or resumed after a restart) until it ends.

use anyhow::Result;
use std::time::Duration;

use super::retry::backoff;
use super::*;
use crate::clock;
use crate::executions::model::{Attempt, Execution, JobRecord, Status};
use crate::files::grants::AttemptRef;
use crate::plugins::catalogue::{self, PREFILL};
use crate::plugins::types;
use crate::routing::Candidate;

/// The provider an attempt of `execution` goes to now: the best of `ranked` not
/// tried yet, else the best, among those whose breaker lets traffic through.
pub fn pick<'a>(
    ranked: &'a [Candidate],
    execution: &Execution,
    now: std::time::Instant,
) -> Option<&'a Candidate> {
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
    untried.or(ready.first()).copied()
}

impl Dispatcher {
    /// Starts an attempt at the best provider that takes traffic now, or defers.
    /// `waiting` is when the execution began waiting for a provider (kept by the
    /// caller across deferrals), so the wait is logged once when it starts, with
    /// what it waits for, and once when it ends, with how long it took.
    pub(super) async fn start_attempt(
        &self,
        execution: &Execution,
        waiting: &mut Option<std::time::Instant>,
    ) -> Result<AttemptEnd> {
        let ranked = self
            .router
            .ranked(&execution.model, &execution.usage_estimate);
        if ranked.is_empty() {
            return Ok(AttemptEnd::Failed(AttemptFailure::new(
                Kind::NoProvider,
                "no loaded adapter serves this model",
            )));
        }
        let now = clock::instant();
        let Some(candidate) = pick(&ranked, execution, now).cloned() else {
            if waiting.is_none() {
                *waiting = Some(now);
                let waiting_for: Vec<String> = ranked
                    .iter()
                    .map(|c| {
                        let why = c
                            .provider
                            .unavailable_because(now)
                            .unwrap_or_else(|| "available".into());
                        format!("{}: {why}", c.provider.name)
                    })
                    .collect();
                let expires_in_s = (execution.expires_at - clock::now()).num_seconds();
                tracing::warn!(
                    execution = %execution.id,
                    model = %execution.model,
                    waiting_for = %waiting_for.join("; "),
                    expires_in_s,
                    "execution waits: no provider of its model takes traffic now; it looks again every {DEFER_MS} ms until one does or it expires"
                );
            }
            return Ok(AttemptEnd::Deferred);
        };
        if let Some(since) = waiting.take() {
            tracing::info!(
                execution = %execution.id,
                provider = %candidate.provider.name,
                waited_ms = now.saturating_duration_since(since).as_millis() as u64,
                "execution stopped waiting: a provider takes traffic again"
            );
        }
        let now = clock::now();
        let attempt = Attempt::begin(execution, &candidate, now);
        let attempt_id = attempt.id.clone();
        let started = self
            .executions
            .update(&execution.id, move |execution, _| {
                Attempt::start(execution, attempt.clone(), now);
                Ok(())
            })
            .await?;
        if started.is_none() {
            return Ok(AttemptEnd::Abandoned);
        }
        self.run_attempt(execution, candidate, &attempt_id).await
    }

    /// Runs the attempt `attempt_id`, recorded as started at `candidate`: its
    /// submit, and its job followed to its end.
    pub(super) async fn run_attempt(
        &self,
        execution: &Execution,
        candidate: Candidate,
        attempt_id: &str,
    ) -> Result<AttemptEnd> {
        let prefill = self.executions.join_attempt(
            &execution.id,
            &candidate.provider.name,
            candidate.model.accepts_prefill,
        );
        let provider = candidate.provider.name.clone();
        let span = attempt_span(attempt_id, &provider, &execution.model);
        let submitted = self.submit(execution, candidate, attempt_id, prefill.as_deref());
        let end = tracing::Instrument::instrument(submitted, span).await?;
        Ok(match (end, prefill) {
            // The continuation of the text the stream's readers have: the answer.
            (AttemptEnd::Completed(mut completion, candidate), Some(prefill)) => {
                let text = completion.text.take().unwrap_or_default();
                completion.text = Some(prefill + &text);
                AttemptEnd::Completed(completion, candidate)
            }
            // A provider that refuses a continuation outright may not take prefills
            // after all (it refused the input we made, not the client's): it may
            // still answer anew.
            (AttemptEnd::Failed(mut failure), Some(_)) if !failure.retry => {
                tracing::info!(execution = %execution.id, %provider, detail = %failure.detail(), "a provider refused to continue from a prefill: the next attempt there starts anew");
                self.executions.refuse_prefill(&execution.id, &provider);
                failure.retry = true;
                AttemptEnd::Failed(failure)
            }
            (end, _) => end,
        })
    }

    /// Sends the attempt's submit to its provider and follows the job to its end.
    /// With a `prefill`, the input asks the model to continue that text (SPEC §12),
    /// and the answer is what follows it.
    pub(super) async fn submit(
        &self,
        execution: &Execution,
        candidate: Candidate,
        attempt_id: &str,
        prefill: Option<&str>,
    ) -> Result<AttemptEnd> {
        let mut ctx = context(execution, &candidate, attempt_id, &self.callbacks);
        let inline = candidate.plugin.manifest.capabilities.inline_files;
        let schema = &candidate.model.input_schema;
        ctx.files = match self
            .files
            .mint_grants(
                &AttemptRef {
                    organization_id: execution.organization_id.clone(),
                    execution_id: execution.id.clone(),
                    attempt_id: attempt_id.to_string(),
                },
                &execution.input,
                schema,
                inline,
            )
            .await
        {
            Ok(grants) => grants,
            Err(error) => {
                let message = format!("preparing the input files failed: {error:#}");
                return Ok(AttemptEnd::Failed(AttemptFailure::new(
                    Kind::InputFiles,
                    message,
                )));
            }
        };
        let input = match prefill {
            Some(prefill) => continuation(&execution.input, prefill).to_string(),
            None => execution.input.to_string(),
        };
        let request = match candidate.plugin.build_submit(&ctx, input.clone()).await {
            Ok(request) => request,
            Err(failure) => return Ok(AttemptEnd::Failed(failure.into())),
        };
        // Inline bytes were for building the request only.
        for grant in &mut ctx.files {
            grant.bytes = None;
        }
        // A host whose lease lapsed (another may be resuming this attempt) sends
        // nothing: it stops here.
        self.executions.check_lease();
        let Some((outcome, _)) = self
            .exchange(
                &candidate,
                &ctx,
                &types::Answered::Submit(input),
                &request,
                &execution.id,
            )
            .await
        else {
            return Ok(AttemptEnd::Abandoned);
        };
        match outcome {
            Answer::Completed(completion) => {
                Ok(AttemptEnd::Completed(completion, Box::new(candidate)))
            }
            Answer::Failed(failure) => Ok(AttemptEnd::Failed(failure)),
            Answer::Pending(pending) => {
                let job = JobRecord {
                    id: pending.job.id.clone(),
                    state: pending.job.state.clone(),
                };
                let recorded = self
                    .executions
                    .update(&execution.id, move |execution, _| {
                        if let Some(attempt) = execution.open_attempt_mut() {
                            attempt.job = Some(job.clone());
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
    pub(super) async fn resume(
        &self,
        execution: &Execution,
        attempt: Attempt,
    ) -> Result<AttemptEnd> {
        let span = attempt_span(&attempt.id, &attempt.provider, &execution.model);
        tracing::Instrument::instrument(self.resume_attempt(execution, attempt), span).await
    }

    async fn resume_attempt(&self, execution: &Execution, attempt: Attempt) -> Result<AttemptEnd> {
        let candidate = self
            .router
            .candidates(&execution.model)
            .into_iter()
            .find(|c| c.provider.name == attempt.provider);
        match (attempt.job, candidate) {
            (Some(job), Some(candidate)) => {
                tracing::info!(execution = %execution.id, job = %job.id, "resuming a provider job");
                let ctx = context(execution, &candidate, &attempt.id, &self.callbacks);
                let job = types::Job {
                    id: job.id,
                    state: job.state,
                };
                self.poll(&execution.id, &candidate, &ctx, job, 0).await
            }
            (Some(_), None) => Ok(AttemptEnd::Failed(AttemptFailure::new(
                Kind::ProviderGone,
                "the provider of an interrupted job is no longer configured",
            ))),
            // Cut before the submit's answer was recorded, at a provider that
            // de-duplicates by the attempt id: sending it again cannot start a
            // second job.
            (None, Some(candidate)) if candidate.plugin.manifest.capabilities.idempotent_submit => {
                tracing::info!(execution = %execution.id, attempt = %attempt.id, "re-sending an interrupted submit under its idempotency key");
                self.submit(execution, candidate, &attempt.id, None).await
            }
            // Otherwise nothing to poll, so the attempt ends and the next one starts
            // afresh (a restart is not the provider's failure: it spends none of the
            // execution's attempts).
            (None, _) => Ok(AttemptEnd::Interrupted(AttemptFailure::new(
                Kind::Interrupted,
                "attempt interrupted before the provider accepted it",
            ))),
        }
    }

    /// Polls `job` until it completes, fails, or the execution ends.
    pub(super) async fn poll(
        &self,
        id: &str,
        candidate: &Candidate,
        ctx: &types::CallContext,
        mut job: types::Job,
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
            let request = match candidate.plugin.build_poll(ctx, &job).await {
                Ok(request) => request,
                Err(failure) => return Ok(AttemptEnd::Failed(failure.into())),
            };
            let polled_job = types::Answered::Poll(job.clone());
            let Some((outcome, answered)) = self
                .exchange(candidate, ctx, &polled_job, &request, id)
                .await
            else {
                return Ok(AttemptEnd::Abandoned);
            };
            match outcome {
                Answer::Completed(completion) => {
                    return Ok(AttemptEnd::Completed(
                        completion,
                        Box::new(candidate.clone()),
                    ));
                }
                Answer::Pending(pending) => {
                    errors = 0;
                    delay_ms = pending.poll_after_ms;
                    polled = Some(job.state.clone());
                    job = pending.job;
                }
                // The provider answered that the job itself failed.
                Answer::Failed(failure) if answered => {
                    return Ok(AttemptEnd::Failed(failure));
                }
                // The poll failed, not (necessarily) the job: ask again later.
                Answer::Failed(failure) => {
                    errors += 1;
                    if errors >= MAX_POLL_ERRORS || !failure.retry {
                        return Ok(AttemptEnd::Failed(failure));
                    }
                    delay_ms = backoff(errors, failure.retry_after_ms).as_millis() as u32;
                }
            }
        }
    }
}

/// The chat input that asks a model to continue `prefill`: the client's input with
/// the prefill, and a `max_tokens` less the prefill's tokens (a token per four
/// characters, as the usage estimate counts), so that the whole answer stays
/// within what the client asked for.
fn continuation(input: &serde_json::Value, prefill: &str) -> serde_json::Value {
    let asked = input["max_tokens"].as_u64().or_else(|| {
        catalogue::preset(catalogue::CHAT)?["properties"]["max_tokens"]["default"].as_u64()
    });
    let mut input = input.clone();
    input[PREFILL] = prefill.into();
    if let Some(asked) = asked {
        let spent = (prefill.chars().count() as u64).div_ceil(4);
        input["max_tokens"] = asked.saturating_sub(spent).max(1).into();
    }
    input
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_continuation_carries_the_prefill_and_the_tokens_left() {
        let asked = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10});
        let continued = continuation(&asked, "Echo: three two");
        assert_eq!(continued["prefill"], "Echo: three two");
        assert_eq!(continued["max_tokens"], 6, "15 characters are 4 tokens");
        assert_eq!(continued["messages"], asked["messages"]);
        // Never below one; the schema's default when the client gave none.
        assert_eq!(continuation(&asked, &"x".repeat(400))["max_tokens"], 1);
        let default = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(continuation(&default, "abcd")["max_tokens"], 255);
    }
}
