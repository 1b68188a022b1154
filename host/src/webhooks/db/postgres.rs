//! Endpoints and the outbox on PostgreSQL: `webhook_endpoints`,
//! `webhook_signing_secrets`, `webhook_events` and `webhook_deliveries` (due in the
//! order of its index by next attempt).

use anyhow::Result;
use chrono::{DateTime, Utc};
use postgres::types::Json;
use std::ops::ControlFlow;

use super::super::{Delivery, Endpoint, StoredEvent};
use crate::store::Session;
use crate::store::postgres::{self as pg, from_bigint, record, walk};

pub fn endpoint(pg: &Session, id: &str) -> Result<Option<Endpoint>> {
    let sql = format!(
        "SELECT record FROM webhook_endpoints WHERE id = $1{}",
        pg.for_update()
    );
    pg.query_opt(&sql, &[&id])?
        .map(|row| record(&row))
        .transpose()
}

pub fn page_of_org(
    pg: &Session,
    org_id: &str,
    after: Option<&Endpoint>,
    limit: usize,
) -> Result<(Vec<Endpoint>, bool)> {
    let after = after.map(|after| (after.created_at, after.id.clone()));
    pg::page_newest_first(
        pg,
        "webhook_endpoints",
        org_id,
        after,
        limit,
        |_: &Endpoint| true,
    )
}

/// The key of an organization's endpoints among the reads a batch remembers.
fn endpoints_key(org_id: &str) -> String {
    format!("webhook_endpoints/{org_id}")
}

pub fn endpoints_of(pg: &Session, org_id: &str) -> Result<Vec<Endpoint>> {
    pg.read_once(&endpoints_key(org_id), || {
        Ok(page_of_org(pg, org_id, None, usize::MAX)?.0)
    })
}

pub fn count_endpoints(pg: &Session, org_id: &str) -> Result<usize> {
    let row = pg
        .query_opt(
            "SELECT count(*) FROM webhook_endpoints WHERE organization_id = $1",
            &[&org_id],
        )?
        .expect("an aggregate has a row");
    Ok(from_bigint(row.get(0))? as usize)
}

pub fn save_endpoint(pg: &Session, endpoint: &Endpoint) -> Result<()> {
    pg.reread(&endpoints_key(&endpoint.organization_id));
    pg.execute(
        "INSERT INTO webhook_endpoints (id, organization_id, url, is_active, created_at, record) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, \
         is_active = EXCLUDED.is_active, record = EXCLUDED.record",
        &[
            &endpoint.id,
            &endpoint.organization_id,
            &endpoint.url,
            &endpoint.is_active,
            &endpoint.created_at,
            &Json(endpoint),
        ],
    )?;
    Ok(())
}

pub fn remove_endpoint(pg: &Session, endpoint: &Endpoint) -> Result<()> {
    pg.reread(&endpoints_key(&endpoint.organization_id));
    pg.execute(
        "DELETE FROM webhook_endpoints WHERE id = $1",
        &[&endpoint.id],
    )?;
    Ok(())
}

/// The organization's default secret. It never changes once made, so a write reads
/// it without locking it (hosts sending deliveries at once would queue on the row).
pub fn default_secret(pg: &Session, org_id: &str) -> Result<Option<String>> {
    let sql = "SELECT secret FROM webhook_signing_secrets WHERE organization_id = $1";
    Ok(pg.query_opt(sql, &[&org_id])?.map(|row| row.get(0)))
}

pub fn put_default_secret(pg: &Session, org_id: &str, secret: &str) -> Result<()> {
    pg.execute(
        "INSERT INTO webhook_signing_secrets (organization_id, secret) VALUES ($1, $2) \
         ON CONFLICT (organization_id) DO NOTHING",
        &[&org_id, &secret],
    )?;
    Ok(())
}

pub fn event(pg: &Session, event_id: &str) -> Result<Option<StoredEvent>> {
    let sql = format!(
        "SELECT organization_id, event_type, body, pending FROM webhook_events WHERE id = $1{}",
        pg.for_update()
    );
    Ok(pg.query_opt(&sql, &[&event_id])?.map(|row| StoredEvent {
        organization_id: row.get(0),
        event_type: row.get(1),
        body: row.get(2),
        pending: row.get::<_, i32>(3) as u32,
    }))
}

pub fn put_event(pg: &Session, event_id: &str, event: &StoredEvent) -> Result<()> {
    pg.execute(
        "INSERT INTO webhook_events (id, organization_id, event_type, body, pending) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET pending = EXCLUDED.pending",
        &[
            &event_id,
            &event.organization_id,
            &event.event_type,
            &event.body,
            &i32::try_from(event.pending)?,
        ],
    )?;
    Ok(())
}

pub fn remove_event(pg: &Session, event_id: &str) -> Result<()> {
    pg.execute("DELETE FROM webhook_events WHERE id = $1", &[&event_id])?;
    Ok(())
}

pub fn delivery(pg: &Session, id: &str) -> Result<Option<Delivery>> {
    let sql = format!(
        "SELECT record FROM webhook_deliveries WHERE id = $1{}",
        pg.for_update()
    );
    pg.query_opt(&sql, &[&id])?
        .map(|row| record(&row))
        .transpose()
}

/// Delivery `id` if it is due at `now`, locked; `None` when another host holds it.
pub fn due_delivery(pg: &Session, id: &str, now: DateTime<Utc>) -> Result<Option<Delivery>> {
    pg.query_opt(
        "SELECT record FROM webhook_deliveries WHERE id = $1 AND next_attempt_at <= $2 \
         FOR UPDATE SKIP LOCKED",
        &[&id, &now],
    )?
    .map(|row| record(&row))
    .transpose()
}

pub fn pending_deliveries(pg: &Session) -> Result<u64> {
    let row = pg
        .query_opt("SELECT count(*) FROM webhook_deliveries", &[])?
        .expect("an aggregate has a row");
    from_bigint(row.get(0))
}

pub fn save_delivery(pg: &Session, delivery: &Delivery) -> Result<()> {
    pg.execute(
        "INSERT INTO webhook_deliveries (id, event_id, organization_id, attempts, \
         next_attempt_at, record) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE \
         SET attempts = EXCLUDED.attempts, next_attempt_at = EXCLUDED.next_attempt_at, \
         record = EXCLUDED.record",
        &[
            &delivery.id,
            &delivery.event_id,
            &delivery.organization_id,
            &i32::try_from(delivery.attempts)?,
            &delivery.next_attempt_at,
            &Json(delivery),
        ],
    )?;
    Ok(())
}

pub fn remove_delivery(pg: &Session, delivery: &Delivery) -> Result<()> {
    pg.execute(
        "DELETE FROM webhook_deliveries WHERE id = $1",
        &[&delivery.id],
    )?;
    Ok(())
}

pub fn due(
    pg: &Session,
    now: DateTime<Utc>,
    limit: usize,
    skip: impl Fn(&str) -> bool,
) -> Result<(Vec<String>, Option<DateTime<Utc>>)> {
    let mut due = Vec::new();
    let mut next_at = None;
    walk(
        None,
        |row| (row.get::<_, DateTime<Utc>>(1), row.get::<_, String>(0)),
        |after, chunk| match after {
            None => pg.query(
                "SELECT id, next_attempt_at FROM webhook_deliveries \
                 ORDER BY next_attempt_at, id LIMIT $1",
                &[&chunk],
            ),
            Some((at, id)) => pg.query(
                "SELECT id, next_attempt_at FROM webhook_deliveries \
                 WHERE (next_attempt_at, id) > ($1, $2) ORDER BY next_attempt_at, id LIMIT $3",
                &[at, id, &chunk],
            ),
        },
        |row| {
            let id: String = row.get(0);
            let at: DateTime<Utc> = row.get(1);
            if skip(&id) {
                return Ok(ControlFlow::Continue(()));
            }
            if at > now {
                next_at = Some(at);
                return Ok(ControlFlow::Break(()));
            }
            due.push(id);
            Ok(if due.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        },
    )?;
    Ok((due, next_at))
}
