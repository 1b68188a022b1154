//! Waiting on executions: their endings for `SYNC` clients, polling waits and
//! the dispatcher ([`super::watchers`]), and the event streams of `STREAMING`
//! executions ([`LiveStream`]).

use anyhow::Result;
use std::collections::HashMap;
use std::sync::Arc;

use super::live::LiveStream;
use super::{Execution, Executions};

/// Messages a slow streaming client may fall behind by before it misses some.
pub(super) const STREAM_BUFFER: usize = 1024;

impl Executions {
    /// Waits until `id` is terminal or `timeout` passes; returns its latest state.
    pub async fn wait_terminal(
        &self,
        org_id: &str,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<Option<Execution>> {
        match tokio::time::timeout(timeout, self.ended(id)).await {
            Ok(Some(ended)) => Ok(Some(ended).filter(|e| e.organization_id == org_id)),
            _ => self.get(org_id, id),
        }
    }

    /// Resolves once `id` is terminal (at once if it is already, or unknown), with
    /// its terminal state when it is known.
    pub async fn ended(&self, id: &str) -> Option<Execution> {
        // Subscribed before the read, so no change between the two is missed.
        let (mut ending, accepted) = self.watchers.subscribe(id);
        if !accepted {
            match self.store_get(id) {
                Ok(Some(execution)) if !execution.status.is_terminal() => {}
                Ok(found) => {
                    drop(ending);
                    self.watchers.forget_ended(id);
                    return found;
                }
                // Unreadable now: the change notifications still tell.
                Err(error) => {
                    tracing::warn!(execution = %id, %error, "reading an execution failed")
                }
            }
        }
        loop {
            if let Some(execution) = ending.borrow_and_update().clone() {
                return Some(Arc::unwrap_or_clone(execution));
            }
            if ending.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Hears of executions that ended on other hosts (on PostgreSQL), for the
    /// clients of this one waiting on them.
    pub fn hear_other_hosts(self: &std::sync::Arc<Self>) -> Result<()> {
        let executions = std::sync::Arc::downgrade(self);
        self.store.listen(super::db::ENDED, move |ended| {
            let Some(executions) = executions.upgrade() else {
                return;
            };
            let ids = match ended {
                Some(id) => vec![id],
                // Some may have been missed: every waited-on execution is read again.
                None => executions.watchers.ids(),
            };
            for id in ids {
                executions.ended_elsewhere(&id);
            }
        })
    }

    /// Execution `id` ended, maybe on another host: its waiters here are told.
    fn ended_elsewhere(&self, id: &str) {
        if self.watchers.heard_ending(id) {
            self.tell_stored(id);
        }
    }

    /// Tells `id`'s waiters of its state as stored.
    pub(super) fn tell_stored(&self, id: &str) {
        match self.store_get(id) {
            Ok(Some(execution)) => self.notify(&execution),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(execution = %id, error = format!("{error:#}"), "reading an execution that ended elsewhere failed");
            }
        }
    }

    pub(super) fn lock_streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveStream>> {
        self.streams.lock().expect("streams poisoned")
    }

    /// A piece of the running attempt's text, for the execution's stream if it has
    /// one (see [`LiveStream::delta`]).
    pub fn publish_delta(&self, id: &str, text: &str) {
        if let Some(stream) = self.lock_streams().get_mut(id) {
            stream.delta(id, text);
        }
    }

    /// The answer's final text, before its completion is told (see
    /// [`LiveStream::finish`]).
    pub fn publish_final(&self, id: &str, text: &str) {
        if let Some(stream) = self.lock_streams().get_mut(id) {
            stream.finish(text);
        }
    }

    /// How a new attempt at `provider` joins the text the stream's readers have: the
    /// prefill to continue, or `None` to start anew (see [`LiveStream::join`]).
    pub fn join_attempt(&self, id: &str, provider: &str, accepts_prefill: bool) -> Option<String> {
        self.lock_streams()
            .get_mut(id)?
            .join(provider, accepts_prefill)
    }

    /// `provider` refused to continue this answer from a prefill.
    pub fn refuse_prefill(&self, id: &str, provider: &str) {
        if let Some(stream) = self.lock_streams().get_mut(id) {
            stream.refuse_prefill(provider);
        }
    }

    /// Tells waiters that `execution` changed.
    pub(super) fn notify(&self, execution: &Execution) {
        {
            let mut streams = self.lock_streams();
            if let Some(stream) = streams.get(&execution.id) {
                stream.status(execution.status);
                if execution.status.is_terminal() {
                    streams.remove(&execution.id);
                }
            }
        }
        self.watchers.changed(execution);
    }
}
