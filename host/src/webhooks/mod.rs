//! Webhooks to clients (SPEC §9): endpoints, the durable outbox and its delivery.
//!
//! An event is written by [`enqueue`] in the same store transaction as the
//! execution change that causes it, one delivery per receiving URL, so a committed
//! change always has its events and an aborted one never does. The delivery worker
//! ([`delivery`]) sends what is due, signs every attempt, and reschedules failures;
//! a redelivery sends the same stored body with the same `evt_` id.

mod db;
pub mod delivery;
pub mod endpoints;

pub use endpoints::default_secret;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use crate::clock;
use crate::ids::{new_id, new_short_id};
use crate::store::Txn;

pub const EVENT_TYPES: [&str; 5] = [
    "execution.started",
    "execution.completed",
    "execution.failed",
    "execution.cancelled",
    "execution.expired",
];

/// Most webhook endpoints an organization may have (deactivated ones count;
/// deleted ones do not).
pub const MAX_ENDPOINTS: usize = 20;

/// Headers the platform sets on every delivery; an endpoint's own headers may not.
pub const RESERVED_HEADERS: [&str; 7] = [
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "x-signature",
    "x-signature-timestamp",
    "transfer-encoding",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub organization_id: String,
    pub url: String,
    pub description: Option<String>,
    /// empty: every event
    pub events: Vec<String>,
    pub headers: BTreeMap<String, String>,
    pub secret: String,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    /// failed deliveries in a row, each given up after its retries (10 deactivate
    /// the endpoint)
    pub failure_count: u32,
    pub last_success: Option<DateTime<Utc>>,
    pub last_failure: Option<DateTime<Utc>>,
}

/// A webhook endpoint as clients see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WebhookEndpoint)]
pub struct EndpointView<'a> {
    #[schema(example = "wh_5d7b3c1e-8a2f-4e6b-9c0d-1f2e3a4b5c6d")]
    pub id: &'a str,
    /// always `webhook_endpoint`
    pub object: &'static str,
    pub url: &'a str,
    pub description: Option<&'a str>,
    /// the event types it receives; empty: all
    pub events: &'a [String],
    /// custom headers sent with each delivery; values read `[redacted]` after creation
    pub headers: BTreeMap<&'a str, &'a str>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    /// failed deliveries in a row (10 deactivate the endpoint)
    pub failure_count: u32,
    pub last_success: Option<DateTime<Utc>>,
    pub last_failure: Option<DateTime<Utc>>,
    /// the signing secret (`whsec_…`): only in the answer to its creation
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub secret: Option<&'a str>,
}

/// What a custom header's value reads as, after the endpoint's creation.
const REDACTED: &str = "[redacted]";

impl Endpoint {
    /// The endpoint object; the secret, and the custom headers' values (they often
    /// carry credentials), only when it was just created.
    pub fn view(&self, with_secret: bool) -> EndpointView<'_> {
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if with_secret {
                    value.as_str()
                } else {
                    REDACTED
                };
                (name.as_str(), shown)
            })
            .collect();
        EndpointView {
            id: &self.id,
            object: "webhook_endpoint",
            url: &self.url,
            description: self.description.as_deref(),
            events: &self.events,
            headers,
            is_active: self.is_active,
            created_at: self.created_at,
            failure_count: self.failure_count,
            last_success: self.last_success,
            last_failure: self.last_failure,
            secret: with_secret.then_some(self.secret.as_str()),
        }
    }

    fn wants(&self, event_type: &str) -> bool {
        self.is_active && (self.events.is_empty() || self.events.iter().any(|e| e == event_type))
    }
}

/// A signing secret: `whsec_` and 40 alphanumerics.
pub fn new_secret() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    let tail: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("whsec_{tail}")
}

/// Where one delivery goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Endpoint(String),
    /// an execution's own `webhook_url`, signed with the organization's default secret
    Url(String),
}

/// One event's pending delivery to one URL. Delivered and given-up deliveries
/// leave the store ([`retire_delivery`]), so every stored one has work to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub event_id: String,
    pub organization_id: String,
    pub target: Target,
    /// sends so far
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// A stored event: its exact body, so every redelivery is byte-identical. It is
/// kept while any of its deliveries is pending.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    pub organization_id: String,
    pub event_type: String,
    pub body: String,
    /// deliveries not yet delivered or dead
    pub pending: u32,
}

/// An event about an execution, as the executions module describes it.
pub struct ExecutionEvent<'a> {
    pub event_type: &'a str,
    pub organization_id: &'a str,
    pub execution_id: &'a str,
    /// the execution's own `webhook_url`, which gets every event too
    pub webhook_url: Option<&'a str>,
    /// the execution as clients see it, built only when someone is to be told
    pub data: &'a dyn Fn() -> Value,
}

/// Writes `event` into the outbox (inside the transaction that makes the change):
/// one delivery per active endpoint that wants it, and one to the execution's
/// `webhook_url`. Returns whether anything was queued.
pub fn enqueue(txn: &Txn, event: ExecutionEvent<'_>) -> Result<bool> {
    let ExecutionEvent {
        event_type,
        organization_id: org,
        execution_id,
        webhook_url,
        data,
    } = event;
    let mut targets: Vec<Target> = db::endpoints_of(txn, org)?
        .into_iter()
        .filter(|e| e.wants(event_type))
        .map(|e| Target::Endpoint(e.id))
        .collect();
    if let Some(url) = webhook_url {
        targets.push(Target::Url(url.to_string()));
    }
    if targets.is_empty() {
        return Ok(false);
    }
    let now = clock::now();
    let event_id = new_id("evt");
    let body = json!({
        "id": event_id,
        "event_type": event_type,
        "timestamp": now,
        "version": "1.0",
        "organization_id": org,
        "execution_id": execution_id,
        "data": data(),
    });
    let event = StoredEvent {
        organization_id: org.to_string(),
        event_type: event_type.to_string(),
        body: body.to_string(),
        pending: targets.len() as u32,
    };
    db::put_event(txn, &event_id, &event)?;
    for target in targets {
        let delivery = Delivery {
            id: new_short_id("dlv"),
            event_id: event_id.clone(),
            organization_id: org.to_string(),
            target,
            attempts: 0,
            created_at: now,
            next_attempt_at: now,
            last_attempt_at: None,
            last_status: None,
            last_error: None,
        };
        db::save_delivery(txn, &delivery, None)?;
    }
    Ok(true)
}

/// Removes a delivery that reached its end (delivered or dead) from the outbox, and
/// its event once no delivery of it is pending: the outbox holds only work to do.
fn retire_delivery(txn: &Txn, delivery: &Delivery) -> Result<()> {
    db::remove_delivery(txn, delivery)?;
    match db::event(txn, &delivery.event_id)? {
        Some(mut event) if event.pending > 1 => {
            event.pending -= 1;
            db::put_event(txn, &delivery.event_id, &event)
        }
        _ => db::remove_event(txn, &delivery.event_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use db::tests::{any_delivery, outbox_rows};

    fn event(
        event_type: &'static str,
        webhook_url: Option<&'static str>,
    ) -> ExecutionEvent<'static> {
        ExecutionEvent {
            event_type,
            organization_id: "org_1",
            execution_id: "exec_1",
            webhook_url,
            data: &|| json!({"id": "exec_1"}),
        }
    }

    #[tokio::test]
    async fn the_outbox_keeps_only_pending_work() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db.redb"),
            crate::store::Commits::Durable,
            crate::store::TEST_CACHE,
        )
        .unwrap();
        let queued = store
            .write(|txn| {
                let completed = event("execution.completed", Some("https://hooks.example/a"));
                enqueue(txn, completed)
            })
            .await
            .unwrap();
        assert!(queued);
        let rows = || store.read(|snapshot| Ok(outbox_rows(snapshot))).unwrap();
        assert_eq!(rows(), (1, 1, 1));
        let delivery = store.read(|snapshot| Ok(any_delivery(snapshot))).unwrap();
        store
            .write(move |txn| retire_delivery(txn, &delivery))
            .await
            .unwrap();
        assert_eq!(rows(), (0, 0, 0));
    }

    #[tokio::test]
    async fn nothing_is_queued_without_a_receiver() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db.redb"),
            crate::store::Commits::Durable,
            crate::store::TEST_CACHE,
        )
        .unwrap();
        let queued = store
            .write(move |txn| enqueue(txn, event("execution.failed", None)))
            .await
            .unwrap();
        assert!(!queued);
    }

    #[test]
    fn secrets_are_whsec_and_40_alphanumerics() {
        let secret = new_secret();
        let tail = secret.strip_prefix("whsec_").unwrap();
        assert_eq!(tail.len(), 40);
        assert!(tail.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(secret, new_secret());
    }
}
