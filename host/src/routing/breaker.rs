//! A per-provider circuit breaker over a sliding window of recent outcomes, and an
//! exponentially weighted moving average of latency.
//!
//! Closed: traffic flows; once the window holds enough outcomes and too many failed,
//! it opens. Open: the provider is skipped until the cool-down passes. Half-open:
//! one probe goes through; its success closes the breaker, its failure reopens it.
//! Time is passed in, so tests drive it.
//!
//! Each change of state is reported once, as a [`Transition`], by the call that
//! makes or first observes it ([`Breaker::record`], or [`Breaker::try_acquire`] for
//! the lazy open → half-open), so the caller logs it once, not per request.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Outcomes remembered.
const WINDOW: usize = 20;
/// Outcomes needed before the breaker may open.
pub(super) const MIN_SAMPLES: usize = 5;
/// Failure ratio that opens the breaker.
pub(super) const OPEN_RATIO: f64 = 0.5;
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

/// A change of the breaker's state, reported once by the call that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// closed → open: `failures` of the last `samples` outcomes (of a window of
    /// `window`) failed
    Opened {
        failures: usize,
        samples: usize,
        window: usize,
    },
    /// open → half-open: the cool-down passed and a probe goes through
    HalfOpened,
    /// half-open (or open, by a request sent before it opened) → closed: it succeeded
    Closed,
    /// half-open → open: the probe failed
    Reopened,
}

/// Leave from [`Breaker::try_acquire`] to send one request.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Pass {
    probe: bool,
    /// the first probe since the breaker opened: the open → half-open transition
    pub half_opened: bool,
}

#[derive(Debug)]
struct Inner {
    outcomes: VecDeque<bool>,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
    /// a probe was let through since the breaker last opened
    probed: bool,
    latency_ms: Option<f64>,
}

impl Inner {
    fn state(&self, now: Instant) -> State {
        match self.opened_at {
            None => State::Closed,
            Some(at) if now.saturating_duration_since(at) < COOL_DOWN => State::Open,
            Some(_) => State::HalfOpen,
        }
    }

    fn open(&mut self, now: Instant) {
        self.opened_at = Some(now);
        self.probed = false;
    }
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
                probed: false,
                latency_ms: None,
            }),
        }
    }
}

impl Breaker {
    pub fn state(&self, now: Instant) -> State {
        self.inner.lock().expect("breaker poisoned").state(now)
    }

    /// How much of the cool-down is left while the breaker is open.
    pub fn cool_down_left(&self, now: Instant) -> Option<Duration> {
        let inner = self.inner.lock().expect("breaker poisoned");
        match inner.state(now) {
            State::Open => inner
                .opened_at
                .map(|at| COOL_DOWN.saturating_sub(now.saturating_duration_since(at))),
            _ => None,
        }
    }

    /// Whether [`Breaker::try_acquire`] would let a request go now.
    pub fn would_allow(&self, now: Instant) -> bool {
        let inner = self.inner.lock().expect("breaker poisoned");
        match inner.state(now) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => !inner.probe_in_flight,
        }
    }

    /// Leave for a request to go now, or `None`. In half-open, only one probe at a
    /// time: its outcome must be [`Breaker::record`]ed, or the pass given back with
    /// [`Breaker::release`] when the request is abandoned unanswered. The first probe
    /// after a cool-down says so ([`Pass::half_opened`]).
    pub fn try_acquire(&self, now: Instant) -> Option<Pass> {
        let mut inner = self.inner.lock().expect("breaker poisoned");
        match inner.state(now) {
            State::Closed => Some(Pass {
                probe: false,
                half_opened: false,
            }),
            State::Open => None,
            State::HalfOpen if inner.probe_in_flight => None,
            State::HalfOpen => {
                inner.probe_in_flight = true;
                let half_opened = !inner.probed;
                inner.probed = true;
                Some(Pass {
                    probe: true,
                    half_opened,
                })
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

    /// Records a request's outcome; the state change it caused, if any.
    pub fn record(
        &self,
        success: bool,
        latency: Option<Duration>,
        now: Instant,
    ) -> Option<Transition> {
        let mut inner = self.inner.lock().expect("breaker poisoned");
        if let Some(latency) = latency {
            let sample = latency.as_secs_f64() * 1000.0;
            inner.latency_ms = Some(match inner.latency_ms {
                Some(average) => average + EWMA_ALPHA * (sample - average),
                None => sample,
            });
        }
        match inner.state(now) {
            state @ (State::HalfOpen | State::Open) => {
                inner.probe_in_flight = false;
                if success {
                    inner.opened_at = None;
                    inner.outcomes.clear();
                    Some(Transition::Closed)
                } else if state == State::HalfOpen {
                    inner.open(now);
                    Some(Transition::Reopened)
                } else {
                    // Already open (a request sent before it opened): the cool-down
                    // starts again, which is no new state.
                    inner.opened_at = Some(now);
                    None
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
                    inner.open(now);
                    inner.outcomes.clear();
                    return Some(Transition::Opened {
                        failures,
                        samples,
                        window: WINDOW,
                    });
                }
                None
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

    /// Each state change is reported once, by the call that makes it, so it is
    /// logged once and not per request.
    #[test]
    fn every_transition_is_reported_once() {
        let breaker = Breaker::default();
        let start = Instant::now();
        for _ in 0..4 {
            assert_eq!(breaker.record(false, None, start), None);
        }
        assert_eq!(
            breaker.record(false, None, start),
            Some(Transition::Opened {
                failures: 5,
                samples: 5,
                window: WINDOW
            })
        );
        let early = start + Duration::from_secs(3);
        assert_eq!(
            breaker.cool_down_left(early),
            Some(COOL_DOWN - Duration::from_secs(3))
        );
        // A late answer to a request sent before it opened changes no state.
        assert_eq!(breaker.record(false, None, start), None);

        let later = start + COOL_DOWN;
        assert_eq!(breaker.cool_down_left(later), None);
        let probe = breaker.try_acquire(later).expect("one probe");
        assert!(
            probe.half_opened,
            "the first probe reports open → half-open"
        );
        breaker.release(probe);
        let probe = breaker.try_acquire(later).expect("the next probe");
        assert!(!probe.half_opened, "a second probe is no new transition");
        assert_eq!(
            breaker.record(false, None, later),
            Some(Transition::Reopened)
        );

        let again = later + COOL_DOWN;
        let probe = breaker.try_acquire(again).expect("a probe");
        assert!(
            probe.half_opened,
            "reopened, so half-open again after its cool-down"
        );
        assert_eq!(breaker.record(true, None, again), Some(Transition::Closed));
        let pass = breaker.try_acquire(again).expect("closed");
        assert!(!pass.half_opened);
        assert_eq!(
            breaker.record(true, None, again),
            None,
            "closed stays closed"
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
