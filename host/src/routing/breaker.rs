//! A per-provider circuit breaker over a sliding window of recent outcomes, and an
//! exponentially weighted moving average of latency.
//!
//! Closed: traffic flows; once the window holds enough outcomes and too many failed,
//! it opens. Open: the provider is skipped until the cool-down passes. Half-open:
//! one probe goes through; its success closes the breaker, its failure reopens it.
//! Time is passed in, so tests drive it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Outcomes remembered.
const WINDOW: usize = 20;
/// Outcomes needed before the breaker may open.
const MIN_SAMPLES: usize = 5;
/// Failure ratio that opens the breaker.
const OPEN_RATIO: f64 = 0.5;
/// How long an open breaker refuses traffic before a probe.
pub const COOL_DOWN: Duration = Duration::from_secs(10);
/// Weight of the newest latency sample.
const EWMA_ALPHA: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

/// Leave from [`Breaker::try_acquire`] to send one request.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Pass {
    probe: bool,
}

#[derive(Debug)]
struct Inner {
    outcomes: VecDeque<bool>,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
    latency_ms: Option<f64>,
}

#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            inner: Mutex::new(Inner {
                outcomes: VecDeque::with_capacity(WINDOW),
                opened_at: None,
                probe_in_flight: false,
                latency_ms: None,
            }),
        }
    }
}

impl Breaker {
    pub fn state(&self, now: Instant) -> State {
        let inner = self.inner.lock().expect("breaker poisoned");
        match inner.opened_at {
            None => State::Closed,
            Some(at) if now.duration_since(at) < COOL_DOWN => State::Open,
            Some(_) => State::HalfOpen,
        }
    }

    /// Whether [`Breaker::try_acquire`] would let a request go now.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => !self.inner.lock().expect("breaker poisoned").probe_in_flight,
        }
    }

    /// Leave for a request to go now, or `None`. In half-open, only one probe at a
    /// time: its outcome must be [`Breaker::record`]ed, or the pass given back with
    /// [`Breaker::release`] when the request is abandoned unanswered.
    pub fn try_acquire(&self, now: Instant) -> Option<Pass> {
        let state = self.state(now);
        let mut inner = self.inner.lock().expect("breaker poisoned");
        match state {
            State::Closed => Some(Pass { probe: false }),
            State::Open => None,
            State::HalfOpen if inner.probe_in_flight => None,
            State::HalfOpen => {
                inner.probe_in_flight = true;
                Some(Pass { probe: true })
            }
        }
    }

    /// Gives back a pass whose request was abandoned before any outcome: a probe's
    /// turn goes to the next request.
    pub fn release(&self, pass: Pass) {
        if pass.probe {
            self.inner.lock().expect("breaker poisoned").probe_in_flight = false;
        }
    }

    pub fn record(&self, success: bool, latency: Option<Duration>, now: Instant) {
        let state = self.state(now);
        let mut inner = self.inner.lock().expect("breaker poisoned");
        if let Some(latency) = latency {
            let sample = latency.as_secs_f64() * 1000.0;
            inner.latency_ms = Some(match inner.latency_ms {
                Some(average) => average + EWMA_ALPHA * (sample - average),
                None => sample,
            });
        }
        match state {
            State::HalfOpen | State::Open => {
                inner.probe_in_flight = false;
                if success {
                    inner.opened_at = None;
                    inner.outcomes.clear();
                } else {
                    inner.opened_at = Some(now);
                }
            }
            State::Closed => {
                if inner.outcomes.len() == WINDOW {
                    inner.outcomes.pop_front();
                }
                inner.outcomes.push_back(success);
                let failures = inner.outcomes.iter().filter(|ok| !**ok).count();
                let samples = inner.outcomes.len();
                if samples >= MIN_SAMPLES && failures as f64 / samples as f64 >= OPEN_RATIO {
                    inner.opened_at = Some(now);
                    inner.outcomes.clear();
                }
            }
        }
    }

    /// Average latency of recent successful exchanges, if any.
    pub fn latency_ms(&self) -> Option<f64> {
        self.inner.lock().expect("breaker poisoned").latency_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_storm_opens_then_a_probe_closes_after_the_cool_down() {
        let breaker = Breaker::default();
        let start = Instant::now();
        for _ in 0..4 {
            breaker.record(false, None, start);
        }
        assert_eq!(
            breaker.state(start),
            State::Closed,
            "too few samples to judge"
        );
        breaker.record(false, None, start);
        assert_eq!(breaker.state(start), State::Open);
        assert!(!breaker.would_allow(start + Duration::from_secs(1)));
        assert!(
            breaker
                .try_acquire(start + Duration::from_secs(1))
                .is_none()
        );

        let later = start + COOL_DOWN;
        assert_eq!(breaker.state(later), State::HalfOpen);
        assert!(breaker.would_allow(later));
        let probe = breaker.try_acquire(later).expect("one probe");
        assert!(!breaker.would_allow(later), "the probe is out");
        assert!(
            breaker.try_acquire(later).is_none(),
            "only one probe at a time"
        );
        breaker.release(probe);
        assert!(
            breaker.would_allow(later),
            "an abandoned probe gives its turn back"
        );
        let _probe = breaker.try_acquire(later).expect("the next probe");
        breaker.record(false, None, later);
        assert_eq!(breaker.state(later), State::Open, "a failed probe reopens");

        let again = later + COOL_DOWN;
        let _probe = breaker
            .try_acquire(again)
            .expect("a probe after the cool-down");
        breaker.record(true, Some(Duration::from_millis(40)), again);
        assert_eq!(breaker.state(again), State::Closed);
        let closed = breaker
            .try_acquire(again)
            .expect("closed lets traffic through");
        breaker.release(closed);
        assert!(
            breaker.would_allow(again),
            "releasing a plain pass changes nothing"
        );
    }

    #[test]
    fn occasional_failures_keep_it_closed_and_latency_is_averaged() {
        let breaker = Breaker::default();
        let now = Instant::now();
        for i in 0..40 {
            breaker.record(i % 4 != 0, Some(Duration::from_millis(100)), now);
        }
        assert_eq!(breaker.state(now), State::Closed);
        breaker.record(true, Some(Duration::from_millis(200)), now);
        let average = breaker.latency_ms().unwrap();
        assert!((average - 120.0).abs() < 1e-6, "{average}");
    }
}
