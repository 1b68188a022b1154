//! What a failed attempt leads to: another attempt after a backoff, or the end.

use anyhow::Result;
use rand::Rng;
use std::time::Duration;

use super::*;
use crate::clock;
use crate::executions::Ending;
use crate::executions::model::Execution;

impl Dispatcher {
    /// Records the failed attempt; then either waits out the backoff and returns true
    /// (try again), or ends the execution `FAILED` and returns false. An attempt that
    /// `counts` spends one of its model's `max_attempts`; once every provider of the
    /// model has failed, the execution goes on with its next fallback model at once.
    pub(super) async fn retry_or_fail(
        &self,
        execution: &Execution,
        failure: AttemptFailure,
        counts: bool,
    ) -> Result<bool> {
        // The snapshot predates the attempt that just failed.
        let Some(execution) = self.executions.store_get(&execution.id)? else {
            return Ok(false);
        };
        if counts
            && self.model_exhausted(&execution, &failure)
            && self.fall_back(&execution, Some(&failure)).await?
        {
            return Ok(true);
        }
        let spent = execution.failures_of_current_model() + u32::from(counts);
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
        let decision = decide(
            &failure,
            &Spent {
                attempts: spent,
                max_attempts: self.settings.max_attempts,
                other_provider_ready: elsewhere,
                time_left: execution.expires_at - now,
            },
            rand::rng().random_range(JITTER),
        );
        let (retry, delay) = match decision {
            Decision::Retry(delay) => (true, delay),
            Decision::Fail => (false, Duration::ZERO),
        };
        let detail = failure.detail();
        let code = failure.code();
        let (attempt, provider) = execution
            .open_attempt()
            .map(|a| (a.id.as_str(), a.provider.as_str()))
            .unwrap_or_default();
        tracing::info!(execution = %execution.id, attempt, provider, side = ?failure.side(), %detail, retry, retry_in_ms = delay.as_millis() as u64, "attempt failed");
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
}

/// The factor a backoff is multiplied by, drawn afresh for each retry (±20 %).
const JITTER: std::ops::Range<f64> = 0.8..1.2;

/// Where an execution stands after a failed attempt.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spent {
    /// attempts that spent the budget, this one included if it counts
    pub attempts: u32,
    pub max_attempts: u32,
    /// a provider not tried yet would take traffic now
    pub other_provider_ready: bool,
    /// until the execution's deadline
    pub time_left: chrono::Duration,
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// another attempt, after this pause
    Retry(Duration),
    /// the execution fails
    Fail,
}

/// The retry rule, with no clock or randomness of its own: a retryable failure is
/// retried while the budget lasts and the pause ends before the deadline. The pause
/// is the backoff (`jitter` drawn from [`JITTER`]), or the provider's `Retry-After`
/// when longer, but only when the retry goes back to that provider: a failover to
/// another one that would take traffic now is not held back.
pub(super) fn decide(failure: &AttemptFailure, spent: &Spent, jitter: f64) -> Decision {
    let retry_after = failure
        .retry_after_ms
        .filter(|_| !spent.other_provider_ready);
    let delay = backoff_with(spent.attempts.max(1), retry_after, jitter);
    let in_time = chrono::Duration::from_std(delay).is_ok_and(|d| d < spent.time_left);
    if failure.retry && spent.attempts < spent.max_attempts && in_time {
        Decision::Retry(delay)
    } else {
        Decision::Fail
    }
}

/// Exponential backoff with jitter (200 ms × 2ⁿ⁻¹, ±20 %, at most 5 s), or the
/// provider's Retry-After when longer (at most 30 s).
pub(super) fn backoff(failures: u32, retry_after_ms: Option<u32>) -> Duration {
    backoff_with(failures, retry_after_ms, rand::rng().random_range(JITTER))
}

fn backoff_with(failures: u32, retry_after_ms: Option<u32>, jitter: f64) -> Duration {
    let base = 200u64
        .saturating_mul(1 << failures.saturating_sub(1).min(10))
        .min(5_000);
    let jittered = (base as f64 * jitter) as u64;
    let requested = retry_after_ms
        .map(|ms| (ms as u64).min(30_000))
        .unwrap_or(0);
    Duration::from_millis(jittered.max(requested))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let first = backoff(1, None).as_millis();
        assert!((160..=240).contains(&first), "{first}");
        assert!(backoff(20, None).as_millis() <= 6_000);
        assert_eq!(backoff(1, Some(2_000)).as_millis(), 2_000);
        assert_eq!(backoff(1, Some(120_000)).as_millis(), 30_000);
    }

    fn failed(retry: bool, retry_after_ms: Option<u32>) -> AttemptFailure {
        AttemptFailure {
            kind: Kind::Reported(Code::ModelOverloaded),
            message: "busy".into(),
            retry,
            retry_after_ms,
        }
    }

    fn spent(attempts: u32) -> Spent {
        Spent {
            attempts,
            max_attempts: 3,
            other_provider_ready: false,
            time_left: chrono::Duration::minutes(10),
        }
    }

    #[test]
    fn the_backoff_doubles_from_200_ms_within_its_jitter() {
        for (attempts, low, high) in [(1, 160, 240), (2, 320, 480), (3, 640, 960)] {
            let spent = Spent {
                max_attempts: 10,
                ..spent(attempts)
            };
            for jitter in [0.8, 1.0, 1.1999] {
                let Decision::Retry(delay) = decide(&failed(true, None), &spent, jitter) else {
                    panic!("a retryable failure within budget is retried");
                };
                assert!((low..=high).contains(&delay.as_millis()), "{delay:?}");
            }
        }
    }

    #[test]
    fn retry_after_holds_back_only_a_retry_to_the_same_provider_and_is_capped() {
        let overloaded = failed(true, Some(3_000));
        assert_eq!(
            decide(&overloaded, &spent(1), 1.0),
            Decision::Retry(Duration::from_secs(3))
        );
        let elsewhere = Spent {
            other_provider_ready: true,
            ..spent(1)
        };
        assert_eq!(
            decide(&overloaded, &elsewhere, 1.0),
            Decision::Retry(Duration::from_millis(200))
        );
        assert_eq!(
            decide(&failed(true, Some(600_000)), &spent(1), 1.0),
            Decision::Retry(Duration::from_secs(30))
        );
    }

    #[test]
    fn non_retryable_failures_an_exhausted_budget_and_a_near_deadline_fail() {
        assert_eq!(decide(&failed(false, None), &spent(1), 1.0), Decision::Fail);
        assert_eq!(decide(&failed(true, None), &spent(3), 1.0), Decision::Fail);
        let late = Spent {
            time_left: chrono::Duration::milliseconds(100),
            ..spent(1)
        };
        assert_eq!(decide(&failed(true, None), &late, 1.0), Decision::Fail);
    }

    #[test]
    fn an_attempt_that_does_not_count_leaves_the_budget_alone() {
        // Cut before the provider acknowledged it: the caller does not count it,
        // so two real failures out of three still leave a retry.
        assert!(matches!(
            decide(&failed(true, None), &spent(2), 1.0),
            Decision::Retry(_)
        ));
    }
}
