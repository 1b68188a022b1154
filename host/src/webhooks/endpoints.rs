//! Webhook endpoints: an organization's receivers, their secrets, and the rules
//! their changes follow (at most [`MAX_ENDPOINTS`], a cleared failure count on
//! reactivation). Handlers call these; only this module opens the endpoint tables.

use anyhow::Result;
use std::collections::BTreeMap;

use super::{Endpoint, MAX_ENDPOINTS, db, new_secret};
use crate::ids::has_prefix;
use crate::store::{Reader, Store, Txn};

/// Why an endpoint was not created.
#[derive(Debug, PartialEq, Eq)]
pub struct AtLimit;

/// Stores a new endpoint unless its organization has [`MAX_ENDPOINTS`] already
/// (counted in the transaction that inserts, so concurrent creates cannot pass the
/// limit together).
pub async fn create(store: &Store, endpoint: Endpoint) -> Result<Result<Endpoint, AtLimit>> {
    store
        .write(move |txn| {
            if db::count_endpoints(txn, &endpoint.organization_id)? >= MAX_ENDPOINTS {
                return Ok(Err(AtLimit));
            }
            db::insert_endpoint(txn, &endpoint)?;
            Ok(Ok(endpoint.clone()))
        })
        .await
}

/// The endpoint `id` of `org_id` (another organization's is not found).
pub fn get(store: &Store, org_id: &str, id: &str) -> Result<Option<Endpoint>> {
    store.read(|snapshot| endpoint(snapshot, org_id, id))
}

/// A page of `org_id`'s endpoints, newest first, after `starting_after`.
pub fn list(
    store: &Store,
    org_id: &str,
    limit: usize,
    starting_after: Option<&Endpoint>,
) -> Result<(Vec<Endpoint>, bool)> {
    store.read(|snapshot| db::page_of_org(snapshot, org_id, starting_after, limit))
}

/// What a `PATCH` changes; `None` leaves a property as it is.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    pub url: Option<String>,
    pub description: Option<Option<String>>,
    pub events: Option<Vec<String>>,
    pub headers: Option<BTreeMap<String, String>>,
    pub is_active: Option<bool>,
}

impl Changes {
    /// Applies the changes; reactivating an endpoint clears its failure count.
    fn apply(self, endpoint: &mut Endpoint) {
        if let Some(url) = self.url {
            endpoint.url = url;
        }
        if let Some(description) = self.description {
            endpoint.description = description;
        }
        if let Some(events) = self.events {
            endpoint.events = events;
        }
        if let Some(headers) = self.headers {
            endpoint.headers = headers;
        }
        if let Some(active) = self.is_active {
            if active && !endpoint.is_active {
                endpoint.failure_count = 0;
            }
            endpoint.is_active = active;
        }
    }
}

/// Changes the endpoint `id` of `org_id`; `None` when there is no such endpoint.
pub async fn update(
    store: &Store,
    org_id: &str,
    id: &str,
    changes: Changes,
) -> Result<Option<Endpoint>> {
    let (org_id, id) = (org_id.to_string(), id.to_string());
    store
        .write(move |txn| {
            let Some(mut endpoint) = endpoint(txn, &org_id, &id)? else {
                return Ok(None);
            };
            changes.clone().apply(&mut endpoint);
            db::save_endpoint(txn, &endpoint)?;
            Ok(Some(endpoint))
        })
        .await
}

/// Removes the endpoint `id` of `org_id` (its undelivered events are dropped as
/// their turn comes); answers what it removed.
pub async fn delete(store: &Store, org_id: &str, id: &str) -> Result<Option<Endpoint>> {
    let (org_id, id) = (org_id.to_string(), id.to_string());
    store
        .write(move |txn| {
            let endpoint = endpoint(txn, &org_id, &id)?;
            if let Some(endpoint) = &endpoint {
                db::remove_endpoint(txn, endpoint)?;
            }
            Ok(endpoint)
        })
        .await
}

/// The organization's default secret ([`default_secret`]), made on first use.
pub async fn organization_secret(store: &Store, org_id: &str) -> Result<String> {
    let org_id = org_id.to_string();
    store.write(move |txn| default_secret(txn, &org_id)).await
}

/// The organization's default secret, which signs deliveries to per-execution
/// `webhook_url`s; made on first use.
pub fn default_secret(txn: &Txn, org_id: &str) -> Result<String> {
    if let Some(secret) = db::default_secret(txn, org_id)? {
        return Ok(secret);
    }
    db::put_default_secret(txn, org_id, &new_secret())?;
    db::default_secret(txn, org_id)?
        .ok_or_else(|| anyhow::anyhow!("the default secret was not kept"))
}

/// The endpoint `id` of `org_id` (another organization's is not found).
fn endpoint(reader: &impl Reader, org_id: &str, id: &str) -> Result<Option<Endpoint>> {
    if !has_prefix(id, "wh") {
        return Ok(None);
    }
    Ok(db::endpoint(reader, id)?.filter(|e| e.organization_id == org_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactivating_clears_the_failure_count_and_other_changes_keep_it() {
        let mut endpoint: Endpoint = serde_json::from_value(serde_json::json!({
            "id": "wh_1", "organization_id": "org_1", "url": "https://a.example/h",
            "description": null, "events": [], "headers": {}, "secret": "whsec_x",
            "is_active": false, "created_at": "2026-11-24T10:00:00Z", "failure_count": 10
        }))
        .unwrap();
        Changes {
            description: Some(Some("renamed".into())),
            ..Changes::default()
        }
        .apply(&mut endpoint);
        assert_eq!((endpoint.failure_count, endpoint.is_active), (10, false));
        assert_eq!(endpoint.description.as_deref(), Some("renamed"));
        Changes {
            is_active: Some(true),
            ..Changes::default()
        }
        .apply(&mut endpoint);
        assert_eq!((endpoint.failure_count, endpoint.is_active), (0, true));
    }
}
