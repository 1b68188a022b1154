//! Ending early: a client's cancel and the expiry sweep, and stopping the
//! provider's job for either.

use anyhow::Result;
use std::sync::Arc;

use super::*;
use crate::clock;
use crate::executions::Ending;
use crate::executions::model::{Attempt, Execution, JobRecord, Status};
use crate::plugins::types;
use crate::routing::Candidate;

impl Dispatcher {
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

    pub(super) async fn cancel_at_provider(
        &self,
        execution: &Execution,
        attempt: &Attempt,
        job: JobRecord,
    ) {
        let Some(candidate) = self
            .router
            .candidates(&execution.model)
            .into_iter()
            .find(|c| c.provider.name == attempt.provider)
        else {
            return;
        };
        let ctx = context(execution, &candidate, &attempt.id, &self.callbacks);
        let job = types::Job {
            id: job.id,
            state: job.state,
        };
        self.cancel_job(&execution.id, &candidate, &ctx, job).await;
    }

    /// Asks the provider, best effort, to stop `job`.
    pub(super) async fn cancel_job(
        &self,
        execution_id: &str,
        candidate: &Candidate,
        ctx: &types::CallContext,
        job: types::Job,
    ) {
        let Some(request) = candidate.plugin.build_cancel(ctx, &job).await else {
            return;
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
    pub(super) fn stop_provider_job(self: &Arc<Self>, ended: Execution) {
        if let Some(attempt) = ended.attempts.last().cloned()
            && let Some(job) = attempt.job.clone()
        {
            let this = self.clone();
            tokio::spawn(async move { this.cancel_at_provider(&ended, &attempt, job).await });
        }
    }

    pub(super) async fn expire_overdue(self: &Arc<Self>) -> Result<()> {
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
}
