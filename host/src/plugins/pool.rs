//! The threads adapter calls run on. They are apart from tokio's shared blocking
//! pool (file I/O, name lookups), so no other blocking work can starve adapters,
//! and bounded: a call holds a thread from the moment it is handed over until it
//! ends, and at most `max_waiting` calls wait for one; beyond that a call is
//! refused at once, so a flood cannot grow without limit.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use tokio::sync::{Semaphore, oneshot};

type Job = Box<dyn FnOnce() + Send>;

pub(super) struct CallPool {
    /// One permit per thread: a call takes one before it is queued and gives it
    /// back when it ends, so a queued job always finds a thread at once.
    free: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    jobs: mpsc::Sender<Job>,
}

/// Why the pool ran nothing (or nothing came back).
#[derive(Debug, thiserror::Error)]
pub(super) enum PoolError {
    #[error("every adapter thread is busy and {0} calls already wait for one")]
    Full(usize),
    #[error("the adapter call panicked")]
    Panicked,
    #[error("the adapter threads have stopped")]
    Stopped,
}

impl CallPool {
    /// Starts `threads` threads. Each enters the current tokio runtime, if any: the
    /// WASI host functions run their futures on the ambient runtime.
    pub(super) fn new(threads: usize, max_waiting: usize) -> std::io::Result<CallPool> {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let runtime = tokio::runtime::Handle::try_current().ok();
        for index in 0..threads {
            let receiver = receiver.clone();
            let runtime = runtime.clone();
            std::thread::Builder::new()
                .name(format!("adapter-call-{index}"))
                .spawn(move || {
                    let _entered = runtime.as_ref().map(|handle| handle.enter());
                    loop {
                        let job = receiver.lock().expect("adapter pool poisoned").recv();
                        match job {
                            Ok(job) => job(),
                            // The pool was dropped.
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(CallPool {
            free: Arc::new(Semaphore::new(threads)),
            waiting: AtomicUsize::new(0),
            max_waiting,
            jobs,
        })
    }

    /// Runs `f` on a pool thread once one is free. Dropping the future while it
    /// waits gives up its place; once `f` runs, it runs to its end (the epoch
    /// deadline bounds an adapter call) and only then frees its thread.
    pub(super) async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, PoolError> {
        let permit = match self.free.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let _waiting = Waiting::enter(&self.waiting, self.max_waiting)?;
                self.free
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| PoolError::Stopped)?
            }
        };
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(f));
            drop(permit);
            let _ = answer.send(result);
        });
        self.jobs.send(job).map_err(|_| PoolError::Stopped)?;
        answered
            .await
            .map_err(|_| PoolError::Stopped)?
            .map_err(|_| PoolError::Panicked)
    }
}

/// A place among the calls waiting for a thread, given back when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(waiting: &'a AtomicUsize, max: usize) -> Result<Waiting<'a>, PoolError> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| Waiting(waiting))
            .map_err(PoolError::Full)
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
    async fn a_full_pool_refuses_calls_beyond_its_queue_and_serves_them_afterwards() {
        let pool = Arc::new(CallPool::new(1, 1).unwrap());
        let (release, released) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(move || released.recv().is_ok()).await.unwrap() }
        });
        // The one thread is taken once the permit is: wait for that.
        while pool.free.available_permits() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(|| 7).await.unwrap() }
        });
        while pool.waiting.load(Ordering::Acquire) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(matches!(pool.run(|| 8).await, Err(PoolError::Full(1))));

        release.send(()).unwrap();
        assert!(busy.await.unwrap());
        assert_eq!(queued.await.unwrap(), 7);
        assert_eq!(pool.run(|| 9).await.unwrap(), 9);
        assert!(matches!(
            pool.run(|| panic!("on purpose")).await,
            Err(PoolError::Panicked)
        ));
        assert_eq!(
            pool.run(|| 10).await.unwrap(),
            10,
            "a panic kills no thread"
        );
    }
}
