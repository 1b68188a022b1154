//! Waiting on executions: status watchers for `SYNC` clients and polling waits,
//! and the event streams of `STREAMING` executions.
//!
//! A stream carries one answer even when attempts fail mid-answer (SPEC §12): the
//! platform keeps the text its readers have received ([`Relay`]), holds back a
//! retry until it has reproduced that text, and lets a provider that accepts an
//! assistant prefill continue it. Only a retry that says something else resets the
//! readers' text.

use anyhow::Result;
use std::collections::{HashMap, HashSet};
use tokio::sync::{broadcast, watch};

use super::relay::{Diverged, Relay};
use super::{Execution, Executions, Status};

/// What a `STREAMING` client is told as the execution runs.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamMessage {
    Status(Status),
    Delta(String),
    /// the deltas so far are void: a retry could not reproduce them, and its own
    /// text follows
    Reset,
}

/// The event stream of a running `STREAMING` execution and the answer it carries.
pub(super) struct LiveStream {
    sender: broadcast::Sender<StreamMessage>,
    relay: Relay,
    /// providers that refused to continue this answer from a prefill
    no_prefill: HashSet<String>,
}

impl LiveStream {
    pub(super) fn new(sender: broadcast::Sender<StreamMessage>) -> LiveStream {
        LiveStream {
            sender,
            relay: Relay::default(),
            no_prefill: HashSet::new(),
        }
    }

    fn send(&self, message: StreamMessage) {
        let _ = self.sender.send(message);
    }
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

    pub(super) fn lock_streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveStream>> {
        self.streams.lock().expect("streams poisoned")
    }

    /// A piece of the running attempt's text, for the execution's stream if it has
    /// one: sent once it goes beyond what the readers have. A retry whose text is
    /// not what they have resets them and sends its own.
    pub fn publish_delta(&self, id: &str, text: &str) {
        let mut streams = self.lock_streams();
        let Some(stream) = streams.get_mut(id) else {
            return;
        };
        match stream.relay.delta(text) {
            Ok(Some(fresh)) => stream.send(StreamMessage::Delta(fresh)),
            Ok(None) => {}
            Err(Diverged) => {
                tracing::info!(execution = %id, "a retried stream diverged from the text delivered: its readers are reset");
                let attempt_text = stream.relay.restart(text);
                stream.send(StreamMessage::Reset);
                stream.send(StreamMessage::Delta(attempt_text));
            }
        }
    }

    /// The answer's final text, before its completion is told: what the readers of
    /// a streamed answer lack of it is sent (a reset first when it does not extend
    /// their text). An answer that streamed nothing comes whole with the completion.
    pub fn publish_final(&self, id: &str, text: &str) {
        let mut streams = self.lock_streams();
        let Some(stream) = streams
            .get_mut(id)
            .filter(|stream| !stream.relay.delivered().is_empty())
        else {
            return;
        };
        match stream.relay.finish(text) {
            Ok(rest) if rest.is_empty() => {}
            Ok(rest) => stream.send(StreamMessage::Delta(rest)),
            Err(Diverged) => {
                stream.relay.reset();
                let text = stream.relay.restart(text);
                stream.send(StreamMessage::Reset);
                stream.send(StreamMessage::Delta(text));
            }
        }
    }

    /// How a new attempt at `provider` joins the text the stream's readers have:
    /// `Some(text)` to continue it from an assistant prefill (`accepts_prefill`: the
    /// attempt's model does, and the provider has not refused one here), else
    /// `None`, and the attempt's text starts anew, held back until it passes theirs.
    pub fn join_attempt(&self, id: &str, provider: &str, accepts_prefill: bool) -> Option<String> {
        let mut streams = self.lock_streams();
        let stream = streams.get_mut(id)?;
        let delivered = stream.relay.delivered();
        if accepts_prefill && !delivered.is_empty() && !stream.no_prefill.contains(provider) {
            return Some(delivered.to_string());
        }
        stream.relay.reset();
        None
    }

    /// `provider` failed an attempt that continued from a prefill: the next attempt
    /// there starts anew.
    pub fn refuse_prefill(&self, id: &str, provider: &str) {
        if let Some(stream) = self.lock_streams().get_mut(id) {
            stream.no_prefill.insert(provider.to_string());
        }
    }

    /// Tells waiters that `execution` changed.
    pub(super) fn notify(&self, execution: &Execution) {
        {
            let mut streams = self.lock_streams();
            if let Some(stream) = streams.get(&execution.id) {
                stream.send(StreamMessage::Status(execution.status));
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
