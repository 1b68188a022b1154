//! Organizations: creation, lookup and the file lifetime their operator sets.

use anyhow::Result;
use chrono::{DateTime, Utc};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::ORGANIZATIONS;
use crate::ids::new_short_id;
use crate::store;
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// how long its files live when an upload does not say (1–365; operator-set)
    #[serde(default)]
    pub file_ttl_days: Option<u32>,
}

/// Whether the organization `id` exists (inside a write transaction).
pub fn organization_exists(txn: &WriteTransaction, id: &str) -> Result<bool> {
    Ok(redb::ReadableTable::get(&txn.open_table(ORGANIZATIONS)?, id)?.is_some())
}

/// Sets how long `id`'s files live when an upload does not say (`None`: the
/// server's default); answers the organization, or `None` when there is none.
pub fn set_file_ttl(
    txn: &WriteTransaction,
    id: &str,
    ttl_days: Option<Option<u32>>,
) -> Result<Option<Organization>> {
    let mut table = txn.open_table(ORGANIZATIONS)?;
    let Some(mut org) = organization(&table, id)? else {
        return Ok(None);
    };
    if let Some(ttl_days) = ttl_days {
        org.file_ttl_days = ttl_days;
        table.insert(org.id.as_str(), store::encode(&org)?.as_slice())?;
    }
    Ok(Some(org))
}

/// How long `id`'s files live when an upload does not say, if its operator set it.
pub fn file_ttl_days(txn: &ReadTransaction, id: &str) -> Result<Option<u32>> {
    Ok(organization(&txn.open_table(ORGANIZATIONS)?, id)?.and_then(|org| org.file_ttl_days))
}

/// The organization `id`, if it exists.
pub fn organization(
    table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Organization>> {
    store::get(table, id)
}

/// Creates an organization (inside a write transaction).
pub fn create_organization(txn: &WriteTransaction, name: &str) -> Result<Organization> {
    let org = Organization {
        id: new_short_id("org"),
        name: name.to_string(),
        created_at: crate::clock::now(),
        file_ttl_days: None,
    };
    txn.open_table(ORGANIZATIONS)?
        .insert(org.id.as_str(), store::encode(&org)?.as_slice())?;
    Ok(org)
}
