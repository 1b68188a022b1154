//! How many adapter calls run at once. A call runs on the task that makes it (a
//! short, synchronous stretch of guest code that yields at every epoch tick), so
//! no thread hand-off is paid per call; the gate bounds the calls in flight to the
//! pooling allocator's instance slots, and at most `max_waiting` calls wait for a
//! slot; beyond that a call is refused at once, so a flood cannot grow without
//! limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(super) struct CallGate {
    /// One permit per call allowed to run at once, held until the call ends.
    free: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Why a call was not let in.
#[derive(Debug, thiserror::Error)]
pub(super) enum GateError {
    #[error("every adapter call slot is busy and {0} calls already wait for one")]
    Full(usize),
}

impl CallGate {
    pub(super) fn new(concurrent: usize, max_waiting: usize) -> CallGate {
        CallGate {
            free: Arc::new(Semaphore::new(concurrent)),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// A turn to run one call, once one is free. Dropping the future while it
    /// waits gives up its place.
    pub(super) async fn enter(&self) -> Result<OwnedSemaphorePermit, GateError> {
        if let Ok(permit) = self.free.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let _waiting = Waiting::enter(&self.waiting, self.max_waiting).map_err(GateError::Full)?;
        Ok(self
            .free
            .clone()
            .acquire_owned()
            .await
            .expect("the gate's semaphore is never closed"))
    }

    /// How many calls wait for a turn now.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// A place among the calls waiting for a turn, given back when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(waiting: &'a AtomicUsize, max: usize) -> Result<Waiting<'a>, usize> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| Waiting(waiting))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_gate_refuses_calls_beyond_its_queue_and_lets_them_in_afterwards() {
        let gate = Arc::new(CallGate::new(1, 1));
        let running = gate.enter().await.unwrap();
        let queued = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter().await.map(drop).is_ok() }
        });
        while gate.waiting.load(Ordering::Acquire) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(matches!(gate.enter().await, Err(GateError::Full(1))));

        drop(running);
        assert!(queued.await.unwrap());
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
        assert!(gate.enter().await.is_ok(), "the turn was given back");
    }
}
