//! Where endpoints and the outbox are kept: the only code that knows their tables
//! (redb here, PostgreSQL in [`postgres`]).

use anyhow::Result;
use chrono::{DateTime, Utc};
use redb::{ReadableTable, ReadableTableMetadata};

use super::{Delivery, Endpoint, StoredEvent};
use crate::store::{self, META, Reader, Txn};

mod postgres;

store::table!(WEBHOOK_ENDPOINTS = "webhook_endpoints");
store::table! {
    /// `{org}/{newest-first sort key}/{endpoint}` → empty
    WEBHOOK_ENDPOINTS_BY_ORG = "webhook_endpoints_by_org"
}
store::table! {
    /// `evt_…` → the event's exact body, kept for redeliveries
    WEBHOOK_EVENTS = "webhook_events"
}
store::table! {
    /// `dlv_…` → one event's delivery to one URL
    WEBHOOK_DELIVERIES = "webhook_deliveries"
}
store::table! {
    /// `{next attempt ms:020}/{delivery}` → empty: the durable outbox
    WEBHOOK_DUE = "webhook_due"
}

pub fn endpoint(reader: &impl Reader, id: &str) -> Result<Option<Endpoint>> {
    if let Some(pg) = reader.postgres() {
        return postgres::endpoint(pg, id);
    }
    store::get(&reader.open_table(WEBHOOK_ENDPOINTS)?, id)
}

/// Up to `limit` of the organization's endpoints, newest first, after `after` when
/// given, and whether more follow.
pub fn page_of_org(
    reader: &impl Reader,
    org_id: &str,
    after: Option<&Endpoint>,
    limit: usize,
) -> Result<(Vec<Endpoint>, bool)> {
    if let Some(pg) = reader.postgres() {
        return postgres::page_of_org(pg, org_id, after, limit);
    }
    let prefix = format!("{org_id}/");
    let start = after.map_or(prefix.clone(), |after| by_org_key(after) + "\u{0}");
    store::page(
        &reader.open_table(WEBHOOK_ENDPOINTS_BY_ORG)?,
        &reader.open_table(WEBHOOK_ENDPOINTS)?,
        &prefix,
        &start,
        limit,
        |_: &Endpoint| true,
    )
}

/// Every endpoint of the organization, newest first. On PostgreSQL, read once per
/// write batch (see `Session::read_once`): every lifecycle event written in a
/// batch reads them.
pub fn endpoints_of(reader: &impl Reader, org_id: &str) -> Result<Vec<Endpoint>> {
    if let Some(pg) = reader.postgres() {
        return postgres::endpoints_of(pg, org_id);
    }
    Ok(page_of_org(reader, org_id, None, usize::MAX)?.0)
}

/// How many endpoints `org_id` has.
pub fn count_endpoints(reader: &impl Reader, org_id: &str) -> Result<usize> {
    if let Some(pg) = reader.postgres() {
        return postgres::count_endpoints(pg, org_id);
    }
    let prefix = format!("{org_id}/");
    let mut count = 0;
    for row in reader
        .open_table(WEBHOOK_ENDPOINTS_BY_ORG)?
        .range(prefix.as_str()..)?
    {
        let (key, _) = row?;
        if !key.value().starts_with(&prefix) {
            break;
        }
        count += 1;
    }
    Ok(count)
}

pub fn insert_endpoint(txn: &Txn, endpoint: &Endpoint) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::save_endpoint(pg, endpoint);
    }
    save_endpoint(txn, endpoint)?;
    txn.open_table(WEBHOOK_ENDPOINTS_BY_ORG)?
        .insert(by_org_key(endpoint).as_str(), [].as_slice())?;
    Ok(())
}

pub fn save_endpoint(txn: &Txn, endpoint: &Endpoint) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::save_endpoint(pg, endpoint);
    }
    txn.open_table(WEBHOOK_ENDPOINTS)?
        .insert(endpoint.id.as_str(), store::encode(endpoint)?.as_slice())?;
    Ok(())
}

pub fn remove_endpoint(txn: &Txn, endpoint: &Endpoint) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::remove_endpoint(pg, endpoint);
    }
    txn.open_table(WEBHOOK_ENDPOINTS)?
        .remove(endpoint.id.as_str())?;
    txn.open_table(WEBHOOK_ENDPOINTS_BY_ORG)?
        .remove(by_org_key(endpoint).as_str())?;
    Ok(())
}

/// The organization's default signing secret, once made.
pub fn default_secret(reader: &impl Reader, org_id: &str) -> Result<Option<String>> {
    if let Some(pg) = reader.postgres() {
        return postgres::default_secret(pg, org_id);
    }
    store::get(&reader.open_table(META)?, &secret_key(org_id))
}

/// Makes the organization's default secret `secret` unless it has one (another
/// host may have made it meanwhile: read it again).
pub fn put_default_secret(txn: &Txn, org_id: &str, secret: &str) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::put_default_secret(pg, org_id, secret);
    }
    txn.open_table(META)?.insert(
        secret_key(org_id).as_str(),
        store::encode(&secret)?.as_slice(),
    )?;
    Ok(())
}

pub fn event(reader: &impl Reader, event_id: &str) -> Result<Option<StoredEvent>> {
    if let Some(pg) = reader.postgres() {
        return postgres::event(pg, event_id);
    }
    store::get(&reader.open_table(WEBHOOK_EVENTS)?, event_id)
}

pub fn put_event(txn: &Txn, event_id: &str, event: &StoredEvent) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::put_event(pg, event_id, event);
    }
    txn.open_table(WEBHOOK_EVENTS)?
        .insert(event_id, store::encode(event)?.as_slice())?;
    Ok(())
}

pub fn remove_event(txn: &Txn, event_id: &str) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::remove_event(pg, event_id);
    }
    txn.open_table(WEBHOOK_EVENTS)?.remove(event_id)?;
    Ok(())
}

pub fn delivery(reader: &impl Reader, id: &str) -> Result<Option<Delivery>> {
    if let Some(pg) = reader.postgres() {
        return postgres::delivery(pg, id);
    }
    store::get(&reader.open_table(WEBHOOK_DELIVERIES)?, id)
}

/// Claims delivery `id` for one attempt of this host's, if it is due at `now`.
/// On PostgreSQL, where other hosts deliver from the same outbox, the claim skips
/// a delivery another host is claiming and moves the next attempt to `until`: no
/// other host sends it meanwhile, and should this one die before recording the
/// attempt, another sends it after `until`. (On redb, one host delivers, and its
/// set of deliveries in flight is the claim.)
pub fn claim_delivery(
    txn: &Txn,
    id: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Option<Delivery>> {
    let Some(pg) = txn.postgres() else {
        return delivery(txn, id);
    };
    let Some(mut delivery) = postgres::due_delivery(pg, id, now)? else {
        return Ok(None);
    };
    delivery.next_attempt_at = until;
    postgres::save_delivery(pg, &delivery)?;
    Ok(Some(delivery))
}

/// How many deliveries are pending (the outbox holds only work to do).
pub fn pending_deliveries(reader: &impl Reader) -> Result<u64> {
    if let Some(pg) = reader.postgres() {
        return postgres::pending_deliveries(pg);
    }
    Ok(reader.open_table(WEBHOOK_DELIVERIES)?.len()?)
}

/// Writes a delivery and keeps the outbox's due order in step (`previous_due`: the
/// time it was due before this change).
pub fn save_delivery(
    txn: &Txn,
    delivery: &Delivery,
    previous_due: Option<DateTime<Utc>>,
) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::save_delivery(pg, delivery);
    }
    let mut due = txn.open_table(WEBHOOK_DUE)?;
    if let Some(previous) = previous_due {
        due.remove(due_key(previous, &delivery.id).as_str())?;
    }
    due.insert(
        due_key(delivery.next_attempt_at, &delivery.id).as_str(),
        [].as_slice(),
    )?;
    txn.open_table(WEBHOOK_DELIVERIES)?
        .insert(delivery.id.as_str(), store::encode(delivery)?.as_slice())?;
    Ok(())
}

/// Takes a delivery out of the outbox.
pub fn remove_delivery(txn: &Txn, delivery: &Delivery) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::remove_delivery(pg, delivery);
    }
    txn.open_table(WEBHOOK_DUE)?
        .remove(due_key(delivery.next_attempt_at, &delivery.id).as_str())?;
    txn.open_table(WEBHOOK_DELIVERIES)?
        .remove(delivery.id.as_str())?;
    Ok(())
}

/// Up to `limit` deliveries due at `now`, soonest first, leaving out those `skip`
/// names; and when the next one that is not yet due is.
pub fn due(
    reader: &impl Reader,
    now: DateTime<Utc>,
    limit: usize,
    skip: impl Fn(&str) -> bool,
) -> Result<(Vec<String>, Option<DateTime<Utc>>)> {
    if let Some(pg) = reader.postgres() {
        return postgres::due(pg, now, limit, skip);
    }
    let horizon = format!("{:020}/~", now.timestamp_millis().max(0));
    let mut due = Vec::new();
    for row in reader.open_table(WEBHOOK_DUE)?.iter()? {
        let (key, _) = row?;
        let key = key.value();
        let (at, id) = key.split_once('/').unwrap_or_default();
        if skip(id) {
            continue;
        }
        if key > horizon.as_str() {
            let next = at
                .parse::<i64>()
                .ok()
                .and_then(DateTime::<Utc>::from_timestamp_millis);
            return Ok((due, next));
        }
        due.push(id.to_string());
        if due.len() >= limit {
            break;
        }
    }
    Ok((due, None))
}

/// `{org}/{newest-first key}/{endpoint}`.
fn by_org_key(endpoint: &Endpoint) -> String {
    crate::ids::newest_first_key(&endpoint.organization_id, endpoint.created_at, &endpoint.id)
}

fn due_key(at: DateTime<Utc>, delivery_id: &str) -> String {
    format!("{:020}/{delivery_id}", at.timestamp_millis().max(0))
}

fn secret_key(org_id: &str) -> String {
    format!("webhook-secret/{org_id}")
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// How many rows the outbox holds: (events, deliveries, due entries).
    pub fn outbox_rows(reader: &impl Reader) -> (u64, u64, u64) {
        let count = |table| reader.open_table(table).unwrap().len().unwrap();
        (
            count(WEBHOOK_EVENTS),
            count(WEBHOOK_DELIVERIES),
            count(WEBHOOK_DUE),
        )
    }

    /// Some delivery in the outbox.
    pub fn any_delivery(reader: &impl Reader) -> Delivery {
        let table = reader.open_table(WEBHOOK_DELIVERIES).unwrap();
        let (_, value) = table.first().unwrap().unwrap();
        store::decode(value.value()).unwrap()
    }
}
