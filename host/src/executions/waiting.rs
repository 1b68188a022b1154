//! Waiting on executions: status watchers for `SYNC` clients and polling waits,
//! and the event streams of `STREAMING` executions.

use anyhow::Result;
use std::collections::HashMap;
use tokio::sync::{broadcast, watch};

use super::{Execution, Executions, Status};

/// What a `STREAMING` client is told as the execution runs.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamMessage {
    Status(Status),
    Delta(String),
    /// the deltas so far are void
    Reset,
}

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
        let _ = tokio::time::timeout(timeout, self.ended(id)).await;
        self.get(org_id, id)
    }

    /// Resolves once `id` is terminal (at once if it is already, or unknown).
    pub async fn ended(&self, id: &str) {
        // Subscribed before the read, so no change between the two is missed.
        let mut changes = self.subscribe(id);
        match self.store_get(id) {
            Ok(Some(execution)) if !execution.status.is_terminal() => {}
            Ok(_) => {
                // No change will come to clean up a watch made for an ended execution.
                drop(changes);
                let mut watchers = self.watchers.lock().expect("watchers poisoned");
                if watchers.get(id).is_some_and(|w| w.receiver_count() == 0) {
                    watchers.remove(id);
                }
                return;
            }
            // Unreadable now: the change notifications still tell.
            Err(error) => tracing::warn!(execution = %id, %error, "reading an execution failed"),
        }
        while !changes.borrow_and_update().is_terminal() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    fn subscribe(&self, id: &str) -> watch::Receiver<Status> {
        let mut watchers = self.watchers.lock().expect("watchers poisoned");
        watchers
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(Status::Pending).0)
            .subscribe()
    }

    pub(super) fn lock_streams(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<StreamMessage>>> {
        self.streams.lock().expect("streams poisoned")
    }

    /// Sends a piece of output text to the execution's stream, if it has one.
    pub fn publish_delta(&self, id: &str, text: String) {
        if let Some(stream) = self.lock_streams().get(id) {
            let _ = stream.send(StreamMessage::Delta(text));
        }
    }

    /// Tells a `STREAMING` client that the deltas it has are void (their attempt
    /// failed; a retry streams its text from the start).
    pub fn publish_reset(&self, id: &str) {
        if let Some(stream) = self.lock_streams().get(id) {
            let _ = stream.send(StreamMessage::Reset);
        }
    }

    /// Tells waiters that `execution` changed.
    pub(super) fn notify(&self, execution: &Execution) {
        {
            let mut streams = self.lock_streams();
            if let Some(stream) = streams.get(&execution.id) {
                let _ = stream.send(StreamMessage::Status(execution.status));
                if execution.status.is_terminal() {
                    streams.remove(&execution.id);
                }
            }
        }
        let mut watchers = self.watchers.lock().expect("watchers poisoned");
        if let Some(sender) = watchers.get(&execution.id) {
            sender.send_replace(execution.status);
            if execution.status.is_terminal() || sender.receiver_count() == 0 {
                watchers.remove(&execution.id);
            }
        }
    }
}
