//! The event stream of a running `STREAMING` execution and the one answer it
//! carries, even when attempts fail mid-answer (SPEC §12): the platform keeps the
//! text its readers have been sent ([`Relay`]); a retry that starts anew is held
//! back until it has reproduced that text, and one at a provider that accepts an
//! assistant prefill continues it. Only a retry that says something else resets
//! the readers' text (a `reset` event, then its own).

use std::collections::HashSet;
use tokio::sync::broadcast;

use super::Status;
use super::relay::{Diverged, Relay};

/// What a `STREAMING` client is told as the execution runs.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamMessage {
    Status(Status),
    Delta(String),
    /// the deltas so far are void: a retry could not reproduce them, and its own
    /// text follows
    Reset,
}

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
        // No reader (yet, or any more) is no error: the answer is kept anyway.
        let _ = self.sender.send(message);
    }

    pub(super) fn status(&self, status: Status) {
        self.send(StreamMessage::Status(status));
    }

    /// A piece of the running attempt's text (of execution `id`, for the log): sent
    /// once it goes beyond what the readers have. A retry whose text is not theirs
    /// resets them and sends its own.
    pub(super) fn delta(&mut self, id: &str, text: &str) {
        match self.relay.delta(text) {
            Ok(Some(fresh)) => self.send(StreamMessage::Delta(fresh)),
            Ok(None) => {}
            Err(Diverged) => {
                tracing::info!(execution = %id, "a retried stream diverged from the text delivered: its readers are reset");
                let attempt_text = self.relay.restart(text);
                self.send(StreamMessage::Reset);
                self.send(StreamMessage::Delta(attempt_text));
            }
        }
    }

    /// The answer's final text: what the readers of a streamed answer lack of it is
    /// sent (a reset first when it does not extend their text). An answer that
    /// streamed nothing comes whole with the completion.
    pub(super) fn finish(&mut self, text: &str) {
        if self.relay.delivered().is_empty() {
            return;
        }
        match self.relay.finish(text) {
            Ok(rest) if rest.is_empty() => {}
            Ok(rest) => self.send(StreamMessage::Delta(rest)),
            Err(Diverged) => {
                self.relay.reset();
                let text = self.relay.restart(text);
                self.send(StreamMessage::Reset);
                self.send(StreamMessage::Delta(text));
            }
        }
    }

    /// How a new attempt at `provider` joins the readers' text: `Some(text)` to
    /// continue it from an assistant prefill (`accepts_prefill`: the attempt's model
    /// does, and the provider has not refused one here), else `None`, and the
    /// attempt's text starts anew, held back until it passes theirs.
    pub(super) fn join(&mut self, provider: &str, accepts_prefill: bool) -> Option<String> {
        let delivered = self.relay.delivered();
        if accepts_prefill && !delivered.is_empty() && !self.no_prefill.contains(provider) {
            return Some(delivered.to_string());
        }
        self.relay.reset();
        None
    }

    /// `provider` failed an attempt that continued from a prefill outright: its next
    /// attempt here starts anew.
    pub(super) fn refuse_prefill(&mut self, provider: &str) {
        self.no_prefill.insert(provider.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> (LiveStream, broadcast::Receiver<StreamMessage>) {
        let (sender, receiver) = broadcast::channel(64);
        (LiveStream::new(sender), receiver)
    }

    fn sent(receiver: &mut broadcast::Receiver<StreamMessage>) -> Vec<StreamMessage> {
        std::iter::from_fn(|| receiver.try_recv().ok()).collect()
    }

    fn delta(text: &str) -> StreamMessage {
        StreamMessage::Delta(text.into())
    }

    #[test]
    fn a_continuation_extends_the_text_and_a_restart_is_held_back() {
        let (mut stream, mut readers) = live();
        assert_eq!(stream.join("a", true), None, "nothing to continue yet");
        stream.delta("exec", "Echo: ");
        stream.delta("exec", "three ");
        // The next attempt continues from a prefill: its text only extends.
        assert_eq!(stream.join("b", true).as_deref(), Some("Echo: three "));
        stream.delta("exec", "two");
        // One that cannot continue restarts, held back until it passes the text.
        assert_eq!(stream.join("c", false), None);
        stream.delta("exec", "Echo: three t");
        stream.delta("exec", "wo one");
        stream.finish("Echo: three two one");
        assert_eq!(
            sent(&mut readers),
            [
                delta("Echo: "),
                delta("three "),
                delta("two"),
                delta(" one")
            ]
        );
    }

    #[test]
    fn a_refused_prefill_is_not_asked_of_that_provider_again() {
        let (mut stream, _readers) = live();
        stream.delta("exec", "Hel");
        stream.refuse_prefill("a");
        assert_eq!(stream.join("a", true), None);
        assert_eq!(stream.join("b", true).as_deref(), Some("Hel"));
    }

    #[test]
    fn a_restart_that_diverges_resets_the_readers_and_sends_its_own_text() {
        let (mut stream, mut readers) = live();
        stream.delta("exec", "Hello there");
        stream.join("b", false);
        stream.delta("exec", "Hello");
        stream.delta("exec", " world");
        stream.delta("exec", "!");
        assert_eq!(
            sent(&mut readers),
            [
                delta("Hello there"),
                StreamMessage::Reset,
                delta("Hello world"),
                delta("!")
            ]
        );
        // A final text that does not extend it resets them again.
        stream.finish("Goodbye");
        assert_eq!(sent(&mut readers), [StreamMessage::Reset, delta("Goodbye")]);
    }

    #[test]
    fn an_answer_that_streamed_nothing_is_not_sent_as_a_delta() {
        let (mut stream, mut readers) = live();
        stream.finish("the whole answer");
        assert_eq!(sent(&mut readers), []);
    }
}
