//! Going on with the next fallback model once every provider of the current one has
//! failed (SPEC §11). The execution keeps its id, hold and deadline; its `model`
//! becomes the fallback's, which its answer then names, and the failed attempts
//! cost the client nothing (only a completion settles).

use anyhow::Result;

use super::*;
use crate::clock;
use crate::executions::failure::Side;
use crate::executions::model::Execution;

impl Dispatcher {
    /// Whether a failed attempt ends the current model's turn, when there is a next
    /// model: the model refused the input (its provider said it is too long, or
    /// against its policy: no other provider of the model is asked, but another
    /// model may take it), no adapter serves the model any more, or the failure may
    /// be another model's to overcome and every provider serving the model has now
    /// failed this execution (the running attempt being the last of them).
    pub(super) fn model_exhausted(&self, execution: &Execution, failure: &AttemptFailure) -> bool {
        if execution.next_fallback().is_none() {
            return false;
        }
        let refused = !failure.retry && failure.side() == Side::Client;
        if refused || failure.kind == Kind::NoProvider {
            return true;
        }
        let failed_here = |provider: &str| {
            execution.attempts.iter().any(|a| {
                a.provider == provider
                    && a.ran(&execution.model)
                    && (a.failure.is_some() || a.ended_at.is_none())
            })
        };
        failure.retry
            && self
                .router
                .ranked(&execution.model, &execution.usage_estimate)
                .iter()
                .all(|c| failed_here(&c.provider.name))
    }

    /// Moves the execution on to its next fallback model, closing the attempt that
    /// `failed`, if any. Returns whether it moved (it has a next model and is still
    /// running).
    pub(super) async fn fall_back(
        &self,
        execution: &Execution,
        failed: Option<&AttemptFailure>,
    ) -> Result<bool> {
        let Some(next) = execution.next_fallback().cloned() else {
            return Ok(false);
        };
        let now = clock::now();
        let closing = failed.map(|failure| (failure.detail(), failure.code()));
        let to = next.model.clone();
        let updated = self
            .executions
            .update(&execution.id, move |execution, _| {
                if let Some((detail, code)) = &closing {
                    execution.close_attempt(detail, Some(*code), now);
                }
                execution.model = next.model.clone();
                execution.usage_estimate = next.usage_estimate;
                Ok(())
            })
            .await?;
        if updated.is_some() {
            tracing::info!(execution = %execution.id, from = %execution.model, %to, "no provider of the model can serve the execution: it goes on with its next fallback model");
        }
        Ok(updated.is_some())
    }
}
