//! The delivery worker: sends due deliveries from the outbox, signs each attempt,
//! and reschedules failures 2, 4, 8, 16 and 30 minutes later (by the service
//! clock), giving up after those five retries or 24 hours. Ten failed deliveries in
//! a row (each given up after its retries) deactivate an endpoint; its pending
//! deliveries wait, and resume if it is reactivated within their 24 hours. Every
//! attempt re-checks the URL against the SSRF policy (the guarded client checks
//! resolved addresses at connect time). Names are resolved asynchronously within
//! the resolver's timeout: a name that does not resolve in time is a failed
//! attempt, retried on the schedule.

use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, Semaphore};

use super::{Delivery, Target, db, default_secret, retire_delivery};
use crate::clock;
use crate::metrics::DeliveryOutcome;
use crate::netguard::Guard;
use crate::store::Store;

/// Waits before each retry: five retries after the first attempt.
pub const RETRY_SCHEDULE_MINUTES: [i64; 5] = [2, 4, 8, 16, 30];
/// Nothing is delivered later than this after the event.
const GIVE_UP_AFTER_HOURS: i64 = 24;
/// Failed deliveries in a row that deactivate an endpoint.
pub const DEACTIVATE_AFTER_FAILURES: u32 = 10;
/// How often a delivery to a deactivated endpoint looks whether it is active again.
const PAUSED_RECHECK_MINUTES: i64 = 5;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 32;
const USER_AGENT: &str = "ModelRoute-Webhooks/1.0";

pub struct Webhooks {
    store: Store,
    guard: Guard,
    client: reqwest::Client,
    /// rung after a commit that queued events, and when a delivery finishes
    wake: Arc<Notify>,
    in_flight: Mutex<HashSet<String>>,
    permits: Arc<Semaphore>,
    /// how long an attempt holds its delivery from other hosts (see
    /// [`db::claim_delivery`]): longer than any attempt takes
    claim: Duration,
}

/// The outbox as an operator sees it. Nothing is due and nothing in flight means
/// the worker is idle until `next_attempt_at` (by the service clock).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = WebhookBacklog)]
pub struct Backlog {
    /// deliveries not yet delivered nor given up
    pub pending: u64,
    /// of those, due now and not yet being sent
    pub due: usize,
    /// being sent now, their outcome not yet recorded
    pub in_flight: usize,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// How an attempt ended.
enum Attempted {
    Sent(SendResult),
    /// nothing was sent: the endpoint is deactivated, for now
    Paused,
    /// nothing was sent: the delivery can never be made
    Abandoned(&'static str),
}

/// What one send achieved.
#[derive(Debug)]
pub struct SendResult {
    pub status: Option<u16>,
    pub error: Option<String>,
}

impl SendResult {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

impl Webhooks {
    pub fn new(
        store: Store,
        guard: Guard,
        timeout: std::time::Duration,
        wake: Arc<Notify>,
    ) -> Result<Arc<Webhooks>> {
        Ok(Arc::new(Webhooks {
            store,
            client: guard.client(timeout, USER_AGENT)?,
            guard,
            wake,
            in_flight: Mutex::default(),
            permits: Arc::new(Semaphore::new(CONCURRENCY)),
            claim: Duration::from_std(timeout * 2)? + Duration::seconds(5),
        }))
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Starts the worker: it first picks up whatever a previous run left due.
    pub fn start(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let next = match this.dispatch_due().await {
                    Ok(next) => next,
                    Err(error) => {
                        tracing::error!(error = format!("{error:#}"), "webhook outbox read failed");
                        Some(clock::now() + Duration::seconds(1))
                    }
                };
                let deadline = next.unwrap_or_else(|| clock::now() + Duration::hours(1));
                tokio::select! {
                    _ = this.wake.notified() => {}
                    _ = clock::sleep_until(deadline, std::time::Duration::from_secs(60)) => {}
                }
            }
        });
    }

    /// The outbox now. A delivery stays due until its outcome is recorded and leaves
    /// the in-flight set only after that, so reading the set first never misses one.
    pub fn backlog(&self) -> Result<Backlog> {
        let in_flight = self.in_flight.lock().expect("in-flight poisoned").clone();
        let now = clock::now();
        self.store.read(|snapshot| {
            let (due, next_attempt_at) =
                db::due(snapshot, now, usize::MAX, |id| in_flight.contains(id))?;
            Ok(Backlog {
                pending: db::pending_deliveries(snapshot)?,
                due: due.len(),
                in_flight: in_flight.len(),
                next_attempt_at,
            })
        })
    }

    /// Starts every due delivery not already in flight; returns when the next
    /// pending one is due.
    async fn dispatch_due(self: &Arc<Self>) -> Result<Option<DateTime<Utc>>> {
        let now = clock::now();
        let (due, next) = self.store.read(|snapshot| {
            let in_flight = self.in_flight.lock().expect("in-flight poisoned");
            db::due(snapshot, now, CONCURRENCY * 4, |id| in_flight.contains(id))
        })?;
        for id in due {
            let permit = self.permits.clone().acquire_owned().await?;
            self.in_flight
                .lock()
                .expect("in-flight poisoned")
                .insert(id.clone());
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(error) = this.attempt(&id).await {
                    tracing::error!(delivery = %id, error = format!("{error:#}"), "webhook delivery failed to record");
                }
                this.in_flight
                    .lock()
                    .expect("in-flight poisoned")
                    .remove(&id);
                drop(permit);
                this.wake.notify_one();
            });
        }
        Ok(next)
    }

    /// One attempt of delivery `id`, and its outcome recorded.
    async fn attempt(&self, id: &str) -> Result<()> {
        // An event leaves only once it is on disk (it was committed before it was
        // due): with `batched` durability a crash never takes back an event a
        // receiver has seen. Waited for before the claim, which it would outlast.
        self.store.durable().await;
        let id = id.to_string();
        let now = clock::now();
        let claimed_until = now + self.claim;
        let loaded = {
            let id = id.clone();
            self.store
                .write(move |txn| {
                    let Some(delivery) = db::claim_delivery(txn, &id, now, claimed_until)? else {
                        return Ok(None);
                    };
                    let event = db::event(txn, &delivery.event_id)?;
                    let (url, secret, headers) = match &delivery.target {
                        Target::Url(url) => (
                            Some(url.clone()),
                            default_secret(txn, &delivery.organization_id)?,
                            Default::default(),
                        ),
                        Target::Endpoint(endpoint_id) => match db::endpoint(txn, endpoint_id)? {
                            Some(e) if !e.is_active => {
                                return Ok(Some((
                                    delivery,
                                    None,
                                    None,
                                    String::new(),
                                    Default::default(),
                                    true,
                                )));
                            }
                            Some(e) => (Some(e.url), e.secret, e.headers),
                            None => (None, String::new(), Default::default()),
                        },
                    };
                    Ok(Some((delivery, event, url, secret, headers, false)))
                })
                .await?
        };
        let Some((delivery, event, url, secret, headers, paused)) = loaded else {
            return Ok(());
        };
        let now = clock::now();
        let expired = now > delivery.created_at + Duration::hours(GIVE_UP_AFTER_HOURS);
        if paused && !expired {
            return self.record(delivery, Attempted::Paused).await;
        }
        let (Some(event), Some(url), false) = (event, url, expired) else {
            let reason = if expired {
                "undelivered after 24 hours"
            } else {
                "the endpoint was deleted"
            };
            return self.record(delivery, Attempted::Abandoned(reason)).await;
        };
        let result = self.send(&url, &secret, &headers, &event.body).await;
        self.record(delivery, Attempted::Sent(result)).await
    }

    /// Sends one signed POST of `body` to `url` (after the SSRF checks).
    pub async fn send(
        &self,
        url: &str,
        secret: &str,
        headers: &std::collections::BTreeMap<String, String>,
        body: &str,
    ) -> SendResult {
        let url = match self.guard.policy().check_url(url) {
            Ok(url) => url,
            Err(refusal) => {
                return SendResult {
                    status: None,
                    error: Some(format!("refused: {refusal}")),
                };
            }
        };
        let timestamp = clock::now().timestamp();
        let mut request = self.client.post(url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .header("content-type", "application/json")
            .header("x-signature-timestamp", timestamp.to_string())
            .header("x-signature", sign(secret, timestamp, body))
            .body(body.to_string());
        match request.send().await {
            Ok(response) => SendResult {
                status: Some(response.status().as_u16()),
                error: (!response.status().is_success())
                    .then(|| format!("the receiver answered {}", response.status())),
            },
            Err(error) => SendResult {
                status: None,
                error: Some(describe(&error)),
            },
        }
    }

    /// Records an attempt's outcome: delivered, rescheduled, or dead; and the
    /// endpoint's health. Once committed, the outcome is counted in the metrics.
    async fn record(&self, delivery: Delivery, attempted: Attempted) -> Result<()> {
        let now = clock::now();
        let outcome = self
            .store
            .write(move |txn| {
                // Re-read: only a still-pending delivery with the same count changes.
                let Some(mut current) = db::delivery(txn, &delivery.id)? else {
                    return Ok(None);
                };
                if current.attempts != delivery.attempts {
                    return Ok(None);
                }
                let (status, error) = match &attempted {
                    Attempted::Paused => {
                        let at = now + Duration::minutes(PAUSED_RECHECK_MINUTES);
                        let previous_due = std::mem::replace(&mut current.next_attempt_at, at);
                        db::save_delivery(txn, &current, Some(previous_due))?;
                        return Ok(None);
                    }
                    Attempted::Abandoned(reason) => {
                        current.last_error = Some(reason.to_string());
                        tracing::warn!(delivery = %current.id, event = %current.event_id, reason, "webhook delivery given up");
                        retire_delivery(txn, &current)?;
                        return Ok(Some(DeliveryOutcome::Abandoned));
                    }
                    Attempted::Sent(result) => (result.status, result.error.clone()),
                };
                let delivered = status.is_some_and(|s| (200..300).contains(&s));
                current.attempts += 1;
                current.last_attempt_at = Some(now);
                current.last_status = status;
                current.last_error = error;
                let retry = (!delivered)
                    .then(|| RETRY_SCHEDULE_MINUTES.get(current.attempts as usize - 1))
                    .flatten()
                    .map(|minutes| now + Duration::minutes(*minutes))
                    .filter(|at| *at <= current.created_at + Duration::hours(GIVE_UP_AFTER_HOURS));
                let dead = !delivered && retry.is_none();
                match retry {
                    Some(at) => {
                        let previous_due = std::mem::replace(&mut current.next_attempt_at, at);
                        db::save_delivery(txn, &current, Some(previous_due))?;
                    }
                    None => {
                        if dead {
                            tracing::warn!(delivery = %current.id, event = %current.event_id, attempts = current.attempts, error = ?current.last_error, "webhook delivery given up");
                        }
                        retire_delivery(txn, &current)?;
                    }
                }
                if let Target::Endpoint(endpoint_id) = &current.target
                    && let Some(mut endpoint) = db::endpoint(txn, endpoint_id)?
                {
                        if delivered {
                            endpoint.failure_count = 0;
                            endpoint.last_success = Some(now);
                        } else {
                            endpoint.last_failure = Some(now);
                        }
                        if dead {
                            endpoint.failure_count += 1;
                            if endpoint.failure_count >= DEACTIVATE_AFTER_FAILURES
                                && endpoint.is_active
                            {
                                endpoint.is_active = false;
                                tracing::warn!(endpoint = %endpoint.id, "webhook endpoint deactivated after repeated failed deliveries");
                            }
                        }
                    db::save_endpoint(txn, &endpoint)?;
                }
                Ok(Some(if delivered {
                    DeliveryOutcome::Delivered
                } else if dead {
                    DeliveryOutcome::GivenUp
                } else {
                    DeliveryOutcome::Failed
                }))
            })
            .await?;
        if let Some(outcome) = outcome {
            crate::metrics::metrics().webhook_delivery(outcome);
        }
        Ok(())
    }
}

/// `hex(HMAC-SHA256(secret, "{timestamp}.{body}"))`
pub fn sign(secret: &str, timestamp: i64, body: &str) -> String {
    crate::mac::hmac_hex(secret.as_bytes(), &format!("{timestamp}.{body}"))
}

/// A transport error in words a client can act on (with the guard's refusal, when
/// that was the cause).
fn describe(error: &reqwest::Error) -> String {
    let mut message = if error.is_timeout() {
        "no answer within the timeout".to_string()
    } else if error.is_connect() {
        "could not connect".to_string()
    } else {
        "the request failed".to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_the_timestamp_and_the_exact_body() {
        let signature = sign("whsec_test", 1_700_000_000, r#"{"a":1}"#);
        assert_eq!(signature.len(), 64);
        assert_eq!(signature, sign("whsec_test", 1_700_000_000, r#"{"a":1}"#));
        assert_ne!(signature, sign("whsec_test", 1_700_000_001, r#"{"a":1}"#));
        assert_ne!(signature, sign("whsec_test", 1_700_000_000, r#"{"a": 1}"#));
        assert_ne!(signature, sign("whsec_other", 1_700_000_000, r#"{"a":1}"#));
    }
}
