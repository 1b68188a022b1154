//! Webhook endpoints: an organization's receivers, their secrets, and the rules
//! their changes follow (at most [`MAX_ENDPOINTS`], a cleared failure count on
//! reactivation). Handlers call these; only this module opens the endpoint tables.

use anyhow::Result;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use std::collections::BTreeMap;

use super::{Endpoint, MAX_ENDPOINTS, new_secret};
use super::{WEBHOOK_ENDPOINTS, WEBHOOK_ENDPOINTS_BY_ORG};
use crate::ids::has_prefix;
use crate::store::{self, META, Store};

/// Why an endpoint was not created.
#[derive(Debug, PartialEq, Eq)]
pub struct AtLimit;

/// Stores a new endpoint unless its organization has [`MAX_ENDPOINTS`] already
/// (counted in the transaction that inserts, so concurrent creates cannot pass the
/// limit together).
pub async fn create(store: &Store, endpoint: Endpoint) -> Result<Result<Endpoint, AtLimit>> {
    store
        .write(move |txn| {
            if count_endpoints(txn, &endpoint.organization_id)? >= MAX_ENDPOINTS {
                return Ok(Err(AtLimit));
            }
            insert_endpoint(txn, &endpoint)?;
            Ok(Ok(endpoint))
        })
        .await
}

/// The endpoint `id` of `org_id` (another organization's is not found).
pub fn get(store: &Store, org_id: &str, id: &str) -> Result<Option<Endpoint>> {
    store.read(|txn| endpoint(&txn.open_table(WEBHOOK_ENDPOINTS)?, org_id, id))
}

/// A page of `org_id`'s endpoints, newest first, after `starting_after`.
pub fn list(
    store: &Store,
    org_id: &str,
    limit: usize,
    starting_after: Option<&Endpoint>,
) -> Result<(Vec<Endpoint>, bool)> {
    store.read(|txn| list_endpoints(txn, org_id, limit, starting_after))
}

/// What a `PATCH` changes; `None` leaves a property as it is.
#[derive(Debug, Default)]
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
            let Some(mut endpoint) = endpoint(&txn.open_table(WEBHOOK_ENDPOINTS)?, &org_id, &id)?
            else {
                return Ok(None);
            };
            changes.apply(&mut endpoint);
            save_endpoint(txn, &endpoint)?;
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
            let endpoint = endpoint(&txn.open_table(WEBHOOK_ENDPOINTS)?, &org_id, &id)?;
            if let Some(endpoint) = &endpoint {
                remove_endpoint(txn, endpoint)?;
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

/// `{org}/{newest-first key}/{endpoint}`.
fn by_org_key(endpoint: &Endpoint) -> String {
    crate::ids::newest_first_key(&endpoint.organization_id, endpoint.created_at, &endpoint.id)
}

pub(super) fn endpoints_of(txn: &WriteTransaction, org_id: &str) -> Result<Vec<Endpoint>> {
    let endpoints = txn.open_table(WEBHOOK_ENDPOINTS)?;
    let index = txn.open_table(WEBHOOK_ENDPOINTS_BY_ORG)?;
    let prefix = format!("{org_id}/");
    let (all, _) = store::page(
        &index,
        &endpoints,
        &prefix,
        &prefix,
        usize::MAX,
        |_: &Endpoint| true,
    )?;
    Ok(all)
}

/// How many endpoints `org_id` has (inside a write transaction).
fn count_endpoints(txn: &WriteTransaction, org_id: &str) -> Result<usize> {
    let index = txn.open_table(WEBHOOK_ENDPOINTS_BY_ORG)?;
    let prefix = format!("{org_id}/");
    let mut count = 0;
    for row in index.range(prefix.as_str()..)? {
        let (key, _) = row?;
        if !key.value().starts_with(&prefix) {
            break;
        }
        count += 1;
    }
    Ok(count)
}

/// The organization's default secret, which signs deliveries to per-execution
/// `webhook_url`s; made on first use.
pub fn default_secret(txn: &WriteTransaction, org_id: &str) -> Result<String> {
    let name = format!("webhook-secret/{org_id}");
    let mut meta = txn.open_table(META)?;
    if let Some(secret) = store::get::<String>(&meta, &name)? {
        return Ok(secret);
    }
    let secret = new_secret();
    meta.insert(name.as_str(), store::encode(&secret)?.as_slice())?;
    Ok(secret)
}

fn insert_endpoint(txn: &WriteTransaction, endpoint: &Endpoint) -> Result<()> {
    save_endpoint(txn, endpoint)?;
    txn.open_table(WEBHOOK_ENDPOINTS_BY_ORG)?
        .insert(by_org_key(endpoint).as_str(), [].as_slice())?;
    Ok(())
}

pub fn save_endpoint(txn: &WriteTransaction, endpoint: &Endpoint) -> Result<()> {
    txn.open_table(WEBHOOK_ENDPOINTS)?
        .insert(endpoint.id.as_str(), store::encode(endpoint)?.as_slice())?;
    Ok(())
}

fn remove_endpoint(txn: &WriteTransaction, endpoint: &Endpoint) -> Result<()> {
    txn.open_table(WEBHOOK_ENDPOINTS)?
        .remove(endpoint.id.as_str())?;
    txn.open_table(WEBHOOK_ENDPOINTS_BY_ORG)?
        .remove(by_org_key(endpoint).as_str())?;
    Ok(())
}

/// The endpoint `id` of `org_id` (another organization's is not found).
fn endpoint(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    org_id: &str,
    id: &str,
) -> Result<Option<Endpoint>> {
    if !has_prefix(id, "wh") {
        return Ok(None);
    }
    let endpoint: Option<Endpoint> = store::get(table, id)?;
    Ok(endpoint.filter(|e| e.organization_id == org_id))
}

/// Newest first, after `starting_after`.
fn list_endpoints(
    txn: &ReadTransaction,
    org_id: &str,
    limit: usize,
    starting_after: Option<&Endpoint>,
) -> Result<(Vec<Endpoint>, bool)> {
    let endpoints = txn.open_table(WEBHOOK_ENDPOINTS)?;
    let index = txn.open_table(WEBHOOK_ENDPOINTS_BY_ORG)?;
    let prefix = format!("{org_id}/");
    let start = starting_after.map_or(prefix.clone(), |after| by_org_key(after) + "\u{0}");
    store::page(
        &index,
        &endpoints,
        &prefix,
        &start,
        limit,
        |_: &Endpoint| true,
    )
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
