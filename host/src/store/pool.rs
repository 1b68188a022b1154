//! The PostgreSQL sessions a host reads with: at most `size` of them open at once.
//!
//! A read takes an idle session, or opens one while fewer than `size` are open, or
//! waits for one to come back. Unbounded, a burst of requests (every one reading on
//! a thread of its own) opened a connection each, up to the server's
//! `max_connections` (100 by default, shared by every host), past which a host's
//! lease renewal could find no connection.

use anyhow::{Result, bail};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::postgres::Session;

/// How long a read waits for a session when all are busy before it fails.
const WAIT: Duration = Duration::from_secs(10);

pub struct Pool {
    url: String,
    size: usize,
    state: Mutex<State>,
    returned: Condvar,
}

#[derive(Default)]
struct State {
    idle: Vec<Session>,
    /// sessions open: idle, lent, or being connected
    open: usize,
}

impl Pool {
    /// A pool of at most `size` sessions to `url` (none opened yet).
    pub fn new(url: &str, size: usize) -> Pool {
        Pool {
            url: url.to_string(),
            size: size.max(1),
            state: Mutex::new(State::default()),
            returned: Condvar::new(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `f` on a session outside any transaction (each statement commits by
    /// itself).
    pub fn autocommit<T>(&self, f: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
        let session = self.take(false)?;
        let value = self.lend(|| f(&session));
        self.give_back(session);
        value
    }

    /// Whether the database answers.
    pub fn check(&self) -> Result<()> {
        self.snapshot(|session| {
            let answer = session.query_opt("SELECT 1", &[]).map(drop);
            (session, answer)
        })
    }

    /// Runs `f` on a session outside any transaction. An idle connection the
    /// server closed meanwhile is found by `f`'s failure (there is no `BEGIN` to
    /// find it first): `f` runs once more on a new connection.
    pub fn latest<T>(&self, f: impl Fn(Box<Session>) -> (Box<Session>, Result<T>)) -> Result<T> {
        let session = self.take(false)?;
        let (session, value) = self.lend(|| f(session));
        let lost = session.is_closed();
        self.give_back(session);
        if !lost || value.is_ok() {
            return value;
        }
        let session = self.take(true)?;
        let (session, value) = self.lend(|| f(session));
        self.give_back(session);
        value
    }

    /// Runs `f` in a `REPEATABLE READ, READ ONLY` snapshot.
    pub fn snapshot<T>(
        &self,
        f: impl FnOnce(Box<Session>) -> (Box<Session>, Result<T>),
    ) -> Result<T> {
        const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";
        let mut session = self.take(false)?;
        if session.batch(BEGIN).is_err() {
            // Closed by the server meanwhile (a restart, an operator's
            // pg_terminate_backend): a new connection is made.
            self.give_back(session);
            session = self.take(true)?;
            if let Err(error) = session.batch(BEGIN) {
                self.give_back(session);
                return Err(error);
            }
        }
        let (session, value) = self.lend(|| f(session));
        if session.batch("COMMIT").is_ok() {
            self.give_back(session);
        } else {
            // Maybe still in the transaction: not lent again.
            drop(session);
            self.forget_one();
        }
        value
    }

    /// A session: an idle one unless `fresh`, else a new one while fewer than
    /// `size` are open, else the first given back within [`WAIT`].
    fn take(&self, fresh: bool) -> Result<Box<Session>> {
        let deadline = Instant::now() + WAIT;
        let mut state = self.lock();
        loop {
            if !fresh && let Some(session) = state.idle.pop() {
                return Ok(Box::new(session));
            }
            if state.open == self.size && fresh {
                // Room for a new connection in place of an idle one.
                if let Some(stale) = state.idle.pop() {
                    state.open -= 1;
                    drop(stale);
                }
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                return match Session::connect(&self.url, None) {
                    Ok(session) => Ok(Box::new(session)),
                    Err(error) => {
                        self.forget_one();
                        Err(error)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "all {} of the store's connections stayed busy for {} s",
                    self.size,
                    WAIT.as_secs()
                );
            }
            state = self
                .returned
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Runs `f`, which holds a lent session; if it panics, that session (dropped
    /// as the panic unwinds) no longer counts as open, so no slot leaks.
    fn lend<R>(&self, f: impl FnOnce() -> R) -> R {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(value) => value,
            Err(panic) => {
                self.forget_one();
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Keeps `session` for the next read, or closes it if its connection was lost.
    fn give_back(&self, session: Box<Session>) {
        if session.is_closed() {
            drop(session);
            self.forget_one();
            return;
        }
        self.lock().idle.push(*session);
        self.returned.notify_one();
    }

    /// One lent session is gone: room for another.
    fn forget_one(&self) {
        self.lock().open -= 1;
        self.returned.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Pool {
    /// Each connection runs its own small runtime, which must not be dropped on an
    /// async runtime's thread: the idle ones are closed on a thread of their own.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.lock().idle);
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("store-pool-close".into())
                .spawn(move || drop(idle));
        }
    }
}
