//! Providers calling back: the token checked, the adapter's reading, the poll woken.

use anyhow::Result;

use super::*;
use crate::plugins::types;

impl Dispatcher {
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
        let job = types::Job {
            id: job.id,
            state: job.state,
        };
        let verdict = candidate
            .plugin
            .parse_webhook(&ctx, &job, headers, body)
            .await;
        if verdict == types::CallbackVerdict::PollNow {
            self.waker(&execution.id).notify_one();
        }
        Ok(true)
    }
}
