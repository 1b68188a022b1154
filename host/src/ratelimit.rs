//! Per-API-key rate limits (SPEC §10), a GCRA limiter from `governor`.
//!
//! Keyed by the SHA-256 of the presented secret, so limiting needs no store lookup;
//! requests without a well-formed key share one anonymous bucket.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::RateLimitSettings;

type KeyedLimiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub struct Limits {
    limiter: KeyedLimiter,
    quota: Quota,
}

/// What the `X-RateLimit-*` headers say about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub limit: u32,
    pub remaining: u32,
    /// unix seconds when the bucket is full again
    pub reset: u64,
    /// set when the request is refused
    pub retry_after: Option<Duration>,
}

impl Limits {
    pub fn new(settings: &RateLimitSettings) -> Limits {
        let per_second = NonZeroU32::new(settings.requests_per_second.max(1)).expect("non-zero");
        let burst = NonZeroU32::new(settings.burst.max(1)).expect("non-zero");
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Limits {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            quota,
        }
    }

    /// Counts one request against `key`.
    pub fn check(&self, key: &str) -> Decision {
        let limit = self.quota.burst_size().get();
        let interval = self.quota.replenish_interval();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        match self.limiter.check_key(&key.to_string()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let refill = interval * (limit - remaining.min(limit));
                Decision {
                    limit,
                    remaining,
                    reset: (now + refill).as_secs_f64().ceil() as u64,
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Decision {
                    limit,
                    remaining: 0,
                    reset: (now + interval * limit).as_secs_f64().ceil() as u64,
                    retry_after: Some(wait),
                }
            }
        }
    }

    /// Forgets keys whose buckets are full again (bounded memory).
    pub fn shrink(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_passes_then_requests_are_refused_with_a_retry_after() {
        let limits = Limits::new(&RateLimitSettings {
            requests_per_second: 1,
            burst: 3,
        });
        let decisions: Vec<Decision> = (0..4).map(|_| limits.check("k")).collect();
        assert_eq!(
            decisions.iter().map(|d| d.remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0]
        );
        assert!(
            decisions[..3]
                .iter()
                .all(|d| d.retry_after.is_none() && d.limit == 3)
        );
        let refused = decisions[3].retry_after.expect("refused");
        assert!(refused <= Duration::from_secs(1) && refused > Duration::ZERO);
        // Another key has its own bucket.
        assert_eq!(limits.check("other").remaining, 2);
    }
}
