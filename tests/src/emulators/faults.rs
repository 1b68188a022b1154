//! Faults an emulator injects into the API requests it receives.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// A fault applied to one incoming API request (output downloads are never faulted).
/// As JSON: `{"kind": "status", "status": 503, "retry_after": 2}`, `{"kind": "delay",
/// "ms": 100}`, `{"kind": "hang"}`, `{"kind": "reset"}`, `{"kind": "malformed"}`,
/// `{"kind": "cut_stream", "after": 2}`, `{"kind": "stall_stream", "after": 0}`,
/// `{"kind": "malformed_stream", "after": 1}`, `{"kind": "no_done"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer `status` with `body`, by default the provider's own error body for it,
    /// and a `Retry-After` header when `retry_after` (seconds) is set.
    Status {
        status: u16,
        #[serde(default)]
        retry_after: Option<u32>,
        #[serde(default)]
        body: Option<String>,
    },
    /// Wait, then answer normally.
    Delay { ms: u64 },
    /// Never answer: the connection stays open until the client gives up.
    Hang,
    /// Close the connection without an HTTP response.
    Reset,
    /// `200` with a truncated JSON body.
    Malformed,
    /// A streamed answer cut off after `after` pieces of text: no finish, no usage,
    /// no `[DONE]`, as when a provider's connection drops mid-answer (emulators
    /// that stream; a request that does not stream is answered normally).
    CutStream { after: usize },
    /// A streamed answer that stops after `after` pieces of text and then sends
    /// nothing more, holding the connection open, as a stalled provider does (with
    /// `after` 0, not even a first token).
    StallStream { after: usize },
    /// A streamed answer whose chunk after `after` pieces of text is not JSON, then
    /// the end of the body, as a provider's proxy garbling a stream does.
    MalformedStream { after: usize },
    /// A streamed answer sent whole up to the chunk that says why it finished, then
    /// a clean end of the body without the usage chunk or `data: [DONE]`.
    NoDone,
}

/// The faults of one emulator: a queue consumed one per API request, in order, then
/// an optional sticky fault for every request until cleared. Clones share the plan.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<FaultPlan>>);

#[derive(Default)]
struct FaultPlan {
    queued: VecDeque<Fault>,
    always: Option<Fault>,
}

impl Faults {
    /// Queues a fault for the next API request without one.
    pub fn push(&self, fault: Fault) {
        self.0.lock().unwrap().queued.push_back(fault);
    }

    /// A fault for every request once the queue is empty (`None` clears it).
    pub fn set_always(&self, fault: Option<Fault>) {
        self.0.lock().unwrap().always = fault;
    }

    /// Empties the queue and clears the sticky fault.
    pub fn clear(&self) {
        *self.0.lock().unwrap() = FaultPlan::default();
    }

    pub(super) fn next(&self) -> Option<Fault> {
        let mut plan = self.0.lock().unwrap();
        plan.queued.pop_front().or_else(|| plan.always.clone())
    }
}
