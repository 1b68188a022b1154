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
//!
//! On PostgreSQL, where many hosts serve one platform, the buckets are shared: each
//! is a row of the database ([`db`]), counted in one statement, so a key gets its
//! rate across all the hosts it reaches, not on each. When the database does not
//! answer, each host limits alone with its own table until it answers again.

mod db;

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::RateLimitSettings;
use crate::store::Store;

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
    /// Limits kept in this process (redb: one host), or shared through `store` when
    /// other hosts share it.
    pub fn new(settings: &RateLimitSettings, store: &Store) -> Limits {
        let mut limits = Limits::local(settings);
        if store.host().is_some() {
            limits.keys.shared = Some(Shared::new(store, "key"));
            limits.addresses.shared = Some(Shared::new(store, "address"));
        }
        limits
    }

    fn local(settings: &RateLimitSettings) -> Limits {
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

    /// What a request is told that finds its bucket booked `before` ahead of now,
    /// and, when it passes, the bucket's new booking.
    fn decide(&self, before: Duration) -> (Decision, Option<Duration>) {
        let after = before + self.interval;
        if after > self.tolerance() {
            (self.refused(before), None)
        } else {
            (self.allowed(after), Some(after))
        }
    }

    /// What a request would be told that finds its bucket booked `before` ahead of
    /// now, without counting it: the state as it is.
    fn peek(&self, before: Duration) -> Decision {
        match self.decide(before) {
            (refused, None) => refused,
            (mut decision, Some(_)) => {
                decision.remaining = (decision.remaining + 1).min(self.burst);
                decision.reset = unix_after(before);
                decision
            }
        }
    }

    /// A request passed; its bucket is booked `booked` ahead of now.
    fn allowed(&self, booked: Duration) -> Decision {
        let used = booked.as_nanos().div_ceil(self.interval.as_nanos().max(1));
        Decision {
            limit: self.burst,
            remaining: self.burst.saturating_sub(used.min(u32::MAX as u128) as u32),
            reset: unix_after(booked),
            retry_after: None,
        }
    }

    /// A request was refused; its bucket is booked `booked` ahead of now.
    fn refused(&self, booked: Duration) -> Decision {
        let wait = (booked + self.interval).saturating_sub(self.tolerance());
        Decision {
            limit: self.burst,
            remaining: 0,
            reset: unix_after(booked),
            retry_after: Some(wait.max(Duration::from_millis(1))),
        }
    }
}

/// Buckets kept in the database that other hosts share (see [`db`]).
struct Shared {
    store: Store,
    /// what the buckets count (`key`, `address`): their rows' prefix
    kind: &'static str,
    /// whether the last attempt to reach them failed (logged once per outage)
    failing: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn new(store: &Store, kind: &'static str) -> Shared {
        Shared {
            store: store.clone(),
            kind,
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Counts one request of `key`: its decision, or `None` when the database
    /// does not answer.
    fn check(&self, key: &impl Display, quota: &Quota) -> Option<Decision> {
        let row = format!("{}:{key}", self.kind);
        let counted = self
            .store
            .autocommit(|pg| db::count(pg, &row, quota.interval, quota.tolerance()));
        Some(match self.answered(counted)? {
            Ok(after) => quota.allowed(after),
            Err(before) => quota.refused(before),
        })
    }

    /// What a request of `key` would be told, without counting it.
    fn peek(&self, key: &impl Display, quota: &Quota) -> Option<Decision> {
        let row = format!("{}:{key}", self.kind);
        let booked = self.store.autocommit(|pg| db::booked(pg, &row));
        Some(quota.peek(self.answered(booked)?))
    }

    fn prune(&self) {
        let pruned = self.store.autocommit(db::prune);
        self.answered(pruned);
    }

    /// The database's answer, or `None` (logged once) when it gave none.
    fn answered<T>(&self, answer: Option<anyhow::Result<T>>) -> Option<T> {
        use std::sync::atomic::Ordering;
        match answer? {
            Ok(value) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(kind = self.kind, "shared rate limits answer again");
                }
                Some(value)
            }
            Err(error) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        kind = self.kind,
                        error = format!("{error:#}"),
                        "shared rate limits do not answer: this host limits alone meanwhile"
                    );
                }
                None
            }
        }
    }
}

/// A GCRA limiter: each key's bucket is its theoretical arrival time (TAT), the
/// moment at which its bucket is full again.
struct Buckets<K> {
    quota: Quota,
    capacity: usize,
    table: Mutex<Table<K>>,
    /// the buckets other hosts share, when there are other hosts
    shared: Option<Shared>,
}

struct Table<K> {
    full_at: HashMap<K, Instant>,
    last_sweep: Option<Instant>,
}

impl<K: Eq + Hash + Clone + Display> Buckets<K> {
    fn new(quota: Quota, capacity: usize) -> Buckets<K> {
        Buckets {
            quota,
            capacity,
            table: Mutex::new(Table {
                full_at: HashMap::new(),
                last_sweep: None,
            }),
            shared: None,
        }
    }

    /// Counts one request of `key` at `now`.
    fn check(&self, key: &K, now: Instant) -> Decision {
        if let Some(decision) = self.shared.as_ref().and_then(|s| s.check(key, &self.quota)) {
            return decision;
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let booked = table.full_at.get(key).copied();
        let before = booked.map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        let (decision, after) = self.quota.decide(before);
        let Some(after) = after else {
            return decision;
        };
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
                return self.quota.refused(self.quota.tolerance());
            }
        }
        table.full_at.insert(key.clone(), now + after);
        decision
    }

    /// What a request of `key` at `now` would be told, without counting it.
    fn peek(&self, key: &K, now: Instant) -> Decision {
        if let Some(decision) = self.shared.as_ref().and_then(|s| s.peek(key, &self.quota)) {
            return decision;
        }
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let before = table
            .full_at
            .get(key)
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        self.quota.peek(before)
    }

    /// Forgets buckets that are full again (they are the same as no bucket).
    fn prune(&self, now: Instant) {
        if let Some(shared) = &self.shared {
            shared.prune();
        }
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
        let limits = Limits::local(&settings(1, 3));
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
        let limits = Limits::local(&settings(1, 1));
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
