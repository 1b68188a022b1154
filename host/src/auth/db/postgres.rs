//! Organizations and API keys on PostgreSQL: `organizations` and `api_keys`. A key
//! is one row whatever its rotations: its current secret's hash and its previous
//! one's are unique columns.

use anyhow::Result;
use postgres::types::Json;

use super::super::{ApiKey, Organization};
use crate::store::Session;
use crate::store::postgres::{label, record, records};

pub fn organization(pg: &Session, id: &str) -> Result<Option<Organization>> {
    let sql = format!(
        "SELECT record FROM organizations WHERE id = $1{}",
        pg.for_update()
    );
    pg.query_opt(&sql, &[&id])?
        .map(|row| record(&row))
        .transpose()
}

pub fn put_organization(pg: &Session, org: &Organization) -> Result<()> {
    pg.execute(
        "INSERT INTO organizations (id, name, created_at, file_ttl_days, record) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, \
         file_ttl_days = EXCLUDED.file_ttl_days, record = EXCLUDED.record",
        &[
            &org.id,
            &org.name,
            &org.created_at,
            &org.file_ttl_days.map(|days| days as i32),
            &Json(org),
        ],
    )?;
    Ok(())
}

/// The key whose `column` (a secret hash column) is `hash`.
pub fn key_where(pg: &Session, column: &'static str, hash: &str) -> Result<Option<ApiKey>> {
    let sql = format!(
        "SELECT record FROM api_keys WHERE {column} = $1{}",
        pg.for_update()
    );
    pg.query_opt(&sql, &[&hash])?
        .map(|row| record(&row))
        .transpose()
}

pub fn keys_of(pg: &Session, org_id: &str) -> Result<Vec<ApiKey>> {
    records(pg.query(
        "SELECT record FROM api_keys WHERE organization_id = $1 ORDER BY id",
        &[&org_id],
    )?)
}

pub fn find_key(pg: &Session, org_id: &str, key_id: &str) -> Result<Option<ApiKey>> {
    let sql = format!(
        "SELECT record FROM api_keys WHERE organization_id = $1 AND id = $2{}",
        pg.for_update()
    );
    pg.query_opt(&sql, &[&org_id, &key_id])?
        .map(|row| record(&row))
        .transpose()
}

/// Writes the key: new, changed, or with a new secret (its previous one stays
/// findable until the next rotation replaces it).
pub fn save_key(pg: &Session, key: &ApiKey) -> Result<()> {
    pg.execute(
        "INSERT INTO api_keys (id, organization_id, scope, secret_hash, previous_secret_hash, \
         created_at, revoked_at, expires_at, record) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (id) DO UPDATE SET scope = EXCLUDED.scope, \
         secret_hash = EXCLUDED.secret_hash, previous_secret_hash = EXCLUDED.previous_secret_hash, \
         revoked_at = EXCLUDED.revoked_at, expires_at = EXCLUDED.expires_at, \
         record = EXCLUDED.record",
        &[
            &key.id,
            &key.org_id,
            &label(&key.scope)?,
            &key.secret_hash,
            &key.previous.as_ref().map(|previous| &previous.hash),
            &key.created_at,
            &key.revoked_at,
            &key.expires_at,
            &Json(key),
        ],
    )?;
    Ok(())
}
