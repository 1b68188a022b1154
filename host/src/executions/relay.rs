//! What a streamed answer has delivered, and what may still be delivered: the
//! hold-back rule that keeps a stream from ever ending as a truncated or spliced
//! success (SPEC §12). Pure: no I/O, no clock. The platform keeps one per
//! `STREAMING` execution (what its readers have been sent); a reader of the
//! OpenAI-compatible door keeps its own (what its client has received).
//!
//! * Deltas of the attempt running now are forwarded as they come.
//! * When the platform resets an attempt after text went out (its provider failed
//!   and a retry starts over), the new attempt's deltas are held back until they
//!   have reproduced exactly the text already delivered; then only what goes beyond
//!   it is forwarded. A new attempt that says something else has **diverged**.
//! * A reader that fell behind the platform's broadcast has lost deltas of the
//!   current attempt: it forwards nothing more of that attempt (text after a gap
//!   would be spliced), and at the end delivers what the final output has beyond
//!   what was delivered, if the delivered text is a prefix of it (else: diverged).

/// The new attempt's text is not the text already delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diverged;

#[derive(Debug, Default)]
pub struct Relay {
    /// the text the client has received
    delivered: String,
    /// how much of `delivered` the running attempt has reproduced (bytes); equal to
    /// `delivered.len()` while the attempt streams live
    matched: usize,
    /// the running attempt's deltas were missed: wait for the final text
    blind: bool,
}

impl Relay {
    /// The text delivered so far.
    pub fn delivered(&self) -> &str {
        &self.delivered
    }

    /// A delta of the running attempt; what of it to send now, if anything.
    pub fn delta(&mut self, text: &str) -> Result<Option<String>, Diverged> {
        if self.blind {
            return Ok(None);
        }
        let behind = &self.delivered.as_bytes()[self.matched..];
        let common = behind.len().min(text.len());
        if behind[..common] != text.as_bytes()[..common] {
            return Err(Diverged);
        }
        self.matched += common;
        // `text[..common]` equals whole characters of `delivered`, so `common` is a
        // character boundary of `text`.
        let fresh = text.get(common..).ok_or(Diverged)?;
        if fresh.is_empty() {
            return Ok(None);
        }
        self.delivered.push_str(fresh);
        self.matched = self.delivered.len();
        Ok(Some(fresh.to_string()))
    }

    /// The running attempt failed; the next one starts its text from the beginning.
    pub fn reset(&mut self) {
        self.matched = 0;
        self.blind = false;
    }

    /// The running attempt has diverged at `text` (a delta [`Relay::delta`]
    /// refused): its text so far becomes the delivered text, which the caller
    /// sends anew after telling its readers to drop theirs. Returns that text.
    pub fn restart(&mut self, text: &str) -> String {
        let mut attempt = self.delivered[..self.matched].to_string();
        attempt.push_str(text);
        self.delivered = attempt.clone();
        self.matched = self.delivered.len();
        self.blind = false;
        attempt
    }

    /// Deltas of the running attempt were lost.
    pub fn lagged(&mut self) {
        self.blind = true;
    }

    /// The execution completed with `text`: what is left to send.
    pub fn finish(&mut self, text: &str) -> Result<String, Diverged> {
        let rest = text.strip_prefix(self.delivered.as_str()).ok_or(Diverged)?;
        self.delivered.push_str(rest);
        self.matched = self.delivered.len();
        Ok(rest.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(relay: &mut Relay, deltas: &[&str]) -> Result<String, Diverged> {
        let mut sent = String::new();
        for delta in deltas {
            if let Some(text) = relay.delta(delta)? {
                sent.push_str(&text);
            }
        }
        Ok(sent)
    }

    #[test]
    fn a_live_attempt_is_forwarded_as_it_comes() {
        let mut relay = Relay::default();
        assert_eq!(
            feed(&mut relay, &["Echo: ", "", "three ", "two"]).unwrap(),
            "Echo: three two"
        );
        assert_eq!(relay.finish("Echo: three two").unwrap(), "");
        assert_eq!(relay.delivered(), "Echo: three two");
    }

    #[test]
    fn a_retry_is_held_back_until_it_reproduces_the_delivered_text() {
        let mut relay = Relay::default();
        assert_eq!(
            feed(&mut relay, &["Echo: ", "three "]).unwrap(),
            "Echo: three "
        );
        relay.reset();
        // Pieces cut differently from the first attempt's, one straddling the end.
        assert_eq!(feed(&mut relay, &["Ec", "ho: th"]).unwrap(), "");
        assert_eq!(feed(&mut relay, &["ree two ", "one"]).unwrap(), "two one");
        assert_eq!(relay.finish("Echo: three two one").unwrap(), "");
        assert_eq!(relay.delivered(), "Echo: three two one");
    }

    #[test]
    fn a_retry_that_says_something_else_diverges() {
        let mut relay = Relay::default();
        feed(&mut relay, &["Hello there"]).unwrap();
        relay.reset();
        assert_eq!(relay.delta("Hello"), Ok(None));
        assert_eq!(relay.delta(" world"), Err(Diverged));

        let mut relay = Relay::default();
        feed(&mut relay, &["abc"]).unwrap();
        relay.reset();
        assert_eq!(relay.delta("abX and more"), Err(Diverged));
    }

    #[test]
    fn a_retry_that_ends_short_of_the_delivered_text_cannot_finish() {
        let mut relay = Relay::default();
        feed(&mut relay, &["Echo: three two"]).unwrap();
        relay.reset();
        feed(&mut relay, &["Echo: three"]).unwrap();
        assert_eq!(relay.finish("Echo: three"), Err(Diverged));
    }

    #[test]
    fn lost_deltas_are_made_up_from_the_final_text() {
        let mut relay = Relay::default();
        feed(&mut relay, &["Echo: "]).unwrap();
        relay.lagged();
        // What follows a gap is never forwarded: it would splice the text.
        assert_eq!(relay.delta("two"), Ok(None));
        assert_eq!(relay.finish("Echo: three two").unwrap(), "three two");
        // A final text that does not extend what was delivered is no success.
        let mut relay = Relay::default();
        feed(&mut relay, &["Echo: x"]).unwrap();
        relay.lagged();
        assert_eq!(relay.finish("Echo: y"), Err(Diverged));
        // A reset after a lag streams the new attempt again.
        let mut relay = Relay::default();
        feed(&mut relay, &["ab"]).unwrap();
        relay.lagged();
        relay.reset();
        assert_eq!(feed(&mut relay, &["abc"]).unwrap(), "c");
    }

    #[test]
    fn a_diverged_attempt_restarts_from_its_own_text() {
        let mut relay = Relay::default();
        feed(&mut relay, &["Hello there"]).unwrap();
        relay.reset();
        assert_eq!(relay.delta("Hello"), Ok(None));
        assert_eq!(relay.delta(" world"), Err(Diverged));
        assert_eq!(relay.restart(" world"), "Hello world");
        assert_eq!(relay.delivered(), "Hello world");
        assert_eq!(feed(&mut relay, &["!"]).unwrap(), "!");
    }

    #[test]
    fn multibyte_text_is_compared_and_cut_on_character_boundaries() {
        let mut relay = Relay::default();
        feed(&mut relay, &["héllo ", "wörld"]).unwrap();
        relay.reset();
        assert_eq!(feed(&mut relay, &["hé", "llo wö", "rld ✓"]).unwrap(), " ✓");
        relay.reset();
        // Same first byte, different character.
        assert_eq!(relay.delta("hê"), Err(Diverged));
    }
}
