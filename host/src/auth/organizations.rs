//! Organizations: creation, lookup and the file lifetime their operator sets.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::db;
use crate::ids::new_short_id;
use crate::store::{Reader, Txn};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// how long its files live when an upload does not say (1–365; operator-set)
    #[serde(default)]
    pub file_ttl_days: Option<u32>,
}

/// Whether the organization `id` exists.
pub fn organization_exists(reader: &impl Reader, id: &str) -> Result<bool> {
    Ok(db::organization(reader, id)?.is_some())
}

/// Sets how long `id`'s files live when an upload does not say (`None`: the
/// server's default); answers the organization, or `None` when there is none.
pub fn set_file_ttl(
    txn: &Txn,
    id: &str,
    ttl_days: Option<Option<u32>>,
) -> Result<Option<Organization>> {
    let Some(mut org) = db::organization(txn, id)? else {
        return Ok(None);
    };
    if let Some(ttl_days) = ttl_days {
        org.file_ttl_days = ttl_days;
        db::put_organization(txn, &org)?;
    }
    Ok(Some(org))
}

/// How long `id`'s files live when an upload does not say, if its operator set it.
pub fn file_ttl_days(reader: &impl Reader, id: &str) -> Result<Option<u32>> {
    Ok(db::organization(reader, id)?.and_then(|org| org.file_ttl_days))
}

/// The organization `id`, if it exists.
pub fn organization(reader: &impl Reader, id: &str) -> Result<Option<Organization>> {
    db::organization(reader, id)
}

/// Creates an organization.
pub fn create_organization(txn: &Txn, name: &str) -> Result<Organization> {
    let org = Organization {
        id: new_short_id("org"),
        name: name.to_string(),
        created_at: crate::clock::now(),
        file_ttl_days: None,
    };
    db::put_organization(txn, &org)?;
    Ok(org)
}
