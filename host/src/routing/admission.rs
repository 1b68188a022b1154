//! Leave to send one request to a provider: a turn from its circuit breaker, then a
//! slot in its bulkhead (`max_concurrency`). The dispatcher asks for one, sends, and
//! reports the outcome; an admission dropped without an outcome (the execution
//! ended first) gives its turn back, so an abandoned half-open probe does not keep
//! the breaker from probing again.

use std::time::{Duration, Instant};
use tokio::sync::SemaphorePermit;

use super::{Pass, Provider};
use crate::clock;

#[must_use]
pub struct Admission<'a> {
    provider: &'a Provider,
    /// the breaker's turn, until the outcome is recorded
    pass: Option<Pass>,
    slot: Option<SemaphorePermit<'a>>,
}

impl Provider {
    /// The breaker's leave for one request now, or `None` while it refuses (open, or
    /// half-open with its one probe in flight). The first probe after a cool-down
    /// logs the open → half-open transition.
    pub fn admit(&self, now: Instant) -> Option<Admission<'_>> {
        let pass = self.breaker.try_acquire(now)?;
        if pass.half_opened {
            super::log_transition(&self.name, super::Transition::HalfOpened);
        }
        Some(Admission {
            provider: self,
            pass: Some(pass),
            slot: None,
        })
    }
}

impl Admission<'_> {
    /// Waits for a slot in the provider's bulkhead. A wait is something operators
    /// should see: it is logged when it starts and when it ends, with its length.
    pub async fn take_slot(&mut self, execution_id: &str) {
        let provider = self.provider;
        if let Ok(slot) = provider.bulkhead.try_acquire() {
            self.slot = Some(slot);
            return;
        }
        let since = Instant::now();
        tracing::info!(execution = %execution_id, provider = %provider.name, "waiting for the provider's bulkhead: max_concurrency requests are in flight");
        // The bulkhead is never closed.
        self.slot = provider.bulkhead.acquire().await.ok();
        tracing::info!(execution = %execution_id, provider = %provider.name, waited_ms = since.elapsed().as_millis() as u64, "the provider's bulkhead let the request through");
    }

    /// Records the request's outcome in the breaker (and its latency, for ranking),
    /// logging the transition it caused, if any; frees the slot.
    pub fn record(mut self, healthy: bool, latency: Option<Duration>) {
        self.pass = None;
        if let Some(transition) = self
            .provider
            .breaker
            .record(healthy, latency, clock::instant())
        {
            super::log_transition(&self.provider.name, transition);
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Some(pass) = self.pass.take() {
            self.provider.breaker.release(pass);
        }
    }
}
