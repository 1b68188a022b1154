//! Rate limits (SPEC §10): per API key once a request has authenticated, and per
//! client address for requests that fail authentication (no key, a malformed,
//! unknown, revoked or expired one).
//!
//! Both are GCRA limiters over a bounded table of buckets. Buckets are keyed by what
//! the server has verified, never by what a client presented: a key's bucket is made
//! only after the key authenticated, so guessing secrets makes no buckets of its own,
//! and costs the guessing address its failure budget. A bucket that is full again is
//! the same as no bucket, so it is forgotten; the table holds at most
//! [`MAX_TRACKED`] buckets, and a request that would need a new bucket while every
//! tracked one is still draining is refused (the limiter fails closed, never grows).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::RateLimitSettings;

/// Most buckets one limiter tracks at once.
pub const MAX_TRACKED: usize = 100_000;
/// How often at most a full table is swept for buckets that are full again.
const SWEEP_WHEN_FULL_EVERY: Duration = Duration::from_millis(100);

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

/// The request rates the server allows.
pub struct Limits {
    keys: Buckets<String>,
    addresses: Buckets<IpAddr>,
}

impl Limits {
    pub fn new(settings: &RateLimitSettings) -> Limits {
        let per_key = Quota::new(
            Duration::from_secs(1),
            settings.requests_per_second,
            settings.burst,
        );
        let failed = &settings.failed_auth;
        let per_address = Quota::new(Duration::from_secs(60), failed.per_minute, failed.burst);
        Limits {
            keys: Buckets::new(per_key, MAX_TRACKED),
            addresses: Buckets::new(per_address, MAX_TRACKED),
        }
    }

    /// Counts one request of the authenticated API key `key_id`.
    pub fn check_key(&self, key_id: &str) -> Decision {
        self.keys.check(&key_id.to_string(), Instant::now())
    }

    /// The refusal for a client whose address has used up its budget of failed
    /// authentications, before its credential is even looked at (so that a valid
    /// guess could not be told from an invalid one); `None` while it has budget.
    pub fn address_refused(&self, address: IpAddr) -> Option<Decision> {
        let decision = self
            .addresses
            .peek(&client_address(address), Instant::now());
        decision.retry_after.is_some().then_some(decision)
    }

    /// Counts one failed authentication of a client address.
    pub fn record_failure(&self, address: IpAddr) -> Decision {
        self.addresses
            .check(&client_address(address), Instant::now())
    }

    /// Forgets buckets that are full again.
    pub fn prune(&self) {
        let now = Instant::now();
        self.keys.prune(now);
        self.addresses.prune(now);
    }
}

/// The address a client is counted by: IPv4 as is (an IPv4-mapped IPv6 address is
/// its IPv4 address), IPv6 by its /64 network, the smallest block a site is given,
/// so that one host cannot count as 2^64 clients.
pub fn client_address(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// `burst` requests at once, then one per `interval`.
#[derive(Debug, Clone, Copy)]
struct Quota {
    interval: Duration,
    burst: u32,
}

impl Quota {
    /// `count` requests per `period` (at least one), with a burst of at least one.
    fn new(period: Duration, count: u32, burst: u32) -> Quota {
        Quota {
            interval: period / count.max(1),
            burst: burst.max(1),
        }
    }

    /// How far ahead of now a bucket may be booked and still take a request.
    fn tolerance(&self) -> Duration {
        self.interval * self.burst
    }
}

/// A GCRA limiter: each key's bucket is its theoretical arrival time (TAT), the
/// moment at which its bucket is full again.
struct Buckets<K> {
    quota: Quota,
    capacity: usize,
    table: Mutex<Table<K>>,
}

struct Table<K> {
    full_at: HashMap<K, Instant>,
    last_sweep: Option<Instant>,
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    fn new(quota: Quota, capacity: usize) -> Buckets<K> {
        Buckets {
            quota,
            capacity,
            table: Mutex::new(Table {
                full_at: HashMap::new(),
                last_sweep: None,
            }),
        }
    }

    /// Counts one request of `key` at `now`.
    fn check(&self, key: &K, now: Instant) -> Decision {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let booked = table.full_at.get(key).copied();
        let start = booked.map_or(now, |at| at.max(now));
        let next = start + self.quota.interval;
        if next - now > self.quota.tolerance() {
            return self.refused(start, now);
        }
        if booked.is_none() && table.full_at.len() >= self.capacity {
            let swept_lately = table
                .last_sweep
                .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_WHEN_FULL_EVERY);
            if !swept_lately {
                table.last_sweep = Some(now);
                table.full_at.retain(|_, at| *at > now);
            }
            if table.full_at.len() >= self.capacity {
                // Every tracked bucket is still draining: refuse rather than grow.
                return self.refused(now + self.quota.tolerance(), now);
            }
        }
        table.full_at.insert(key.clone(), next);
        self.allowed(next, now)
    }

    /// What a request of `key` at `now` would be told, without counting it.
    fn peek(&self, key: &K, now: Instant) -> Decision {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let start = table.full_at.get(key).map_or(now, |at| (*at).max(now));
        let next = start + self.quota.interval;
        if next - now > self.quota.tolerance() {
            self.refused(start, now)
        } else {
            // The state as it is: what a counted request would leave, plus that one.
            let mut decision = self.allowed(next, now);
            decision.remaining = (decision.remaining + 1).min(self.quota.burst);
            decision.reset = unix_after(start - now);
            decision
        }
    }

    fn allowed(&self, full_at: Instant, now: Instant) -> Decision {
        let booked = full_at - now;
        let used = booked
            .as_nanos()
            .div_ceil(self.quota.interval.as_nanos().max(1));
        Decision {
            limit: self.quota.burst,
            remaining: self
                .quota
                .burst
                .saturating_sub(used.min(u32::MAX as u128) as u32),
            reset: unix_after(booked),
            retry_after: None,
        }
    }

    fn refused(&self, full_at: Instant, now: Instant) -> Decision {
        let booked = full_at.saturating_duration_since(now);
        let wait = (booked + self.quota.interval).saturating_sub(self.quota.tolerance());
        Decision {
            limit: self.quota.burst,
            remaining: 0,
            reset: unix_after(booked),
            retry_after: Some(wait.max(Duration::from_millis(1))),
        }
    }

    /// Forgets buckets that are full again (they are the same as no bucket).
    fn prune(&self, now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.full_at.retain(|_, at| *at > now);
        if table.full_at.capacity() > 2 * table.full_at.len() + 1024 {
            table.full_at.shrink_to_fit();
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.lock().unwrap().full_at.len()
    }
}

/// Unix seconds, rounded up, `after` from now.
fn unix_after(after: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + after).as_secs_f64().ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FailedAuthSettings;

    fn settings(per_second: u32, burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            requests_per_second: per_second,
            burst,
            failed_auth: FailedAuthSettings {
                per_minute: 1,
                burst: 2,
            },
        }
    }

    #[test]
    fn the_burst_passes_then_requests_are_refused_with_a_retry_after() {
        let limits = Limits::new(&settings(1, 3));
        let decisions: Vec<Decision> = (0..4).map(|_| limits.check_key("k")).collect();
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
        assert_eq!(limits.check_key("other").remaining, 2);
    }

    #[test]
    fn a_bucket_refills_one_request_per_interval() {
        let buckets = Buckets::new(Quota::new(Duration::from_secs(1), 1, 2), 10);
        let start = Instant::now();
        assert!(buckets.check(&"k", start).retry_after.is_none());
        assert!(buckets.check(&"k", start).retry_after.is_none());
        let refused = buckets.check(&"k", start).retry_after.expect("refused");
        assert_eq!(refused, Duration::from_secs(1));
        let later = start + Duration::from_secs(1);
        assert_eq!(buckets.check(&"k", later).remaining, 0);
        assert!(buckets.check(&"k", later).retry_after.is_some());
    }

    #[test]
    fn peeking_counts_nothing() {
        let limits = Limits::new(&settings(1, 1));
        let address: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(limits.address_refused(address), None);
        }
        assert_eq!(limits.record_failure(address).remaining, 1);
        assert_eq!(limits.address_refused(address), None);
        assert_eq!(limits.record_failure(address).remaining, 0);
        let refused = limits.address_refused(address).expect("refused");
        assert_eq!(refused.remaining, 0);
        assert!(refused.retry_after.unwrap() > Duration::from_secs(50));
        // Failures are counted by address, not by what was presented.
        assert!(limits.record_failure(address).retry_after.is_some());
        assert_eq!(
            limits.address_refused("192.0.2.8".parse().unwrap()),
            None,
            "another address has its own budget"
        );
    }

    #[test]
    fn the_number_of_tracked_buckets_stays_bounded() {
        let buckets = Buckets::new(Quota::new(Duration::from_secs(60), 1, 5), 100);
        let start = Instant::now();
        let refused = (0..10_000)
            .filter(|n| buckets.check(n, start).retry_after.is_some())
            .count();
        assert_eq!(buckets.tracked(), 100);
        assert_eq!(refused, 10_000 - 100, "new keys are refused, not tracked");
        // Keys already tracked keep their own budget while the table is full.
        assert!(buckets.check(&7, start).retry_after.is_none());
        // Once buckets are full again they make room, sweep or no sweep.
        let later = start + Duration::from_secs(61);
        assert!(buckets.check(&123_456, later).retry_after.is_none());
        assert_eq!(buckets.tracked(), 2, "key 7 still drains; 123456 is new");
        buckets.prune(later + Duration::from_secs(61));
        assert_eq!(buckets.tracked(), 0);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_network_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_address(a), client_address(b));
        assert_ne!(client_address(a), client_address(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            client_address(mapped),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
