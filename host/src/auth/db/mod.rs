//! Where organizations and API keys are kept: the only code that knows their tables
//! (redb here, PostgreSQL in [`postgres`]).

use anyhow::Result;
use redb::ReadableTable;

use super::{ApiKey, Organization};
use crate::store::{self, Reader, Txn};

mod postgres;

store::table!(ORGANIZATIONS = "organizations");
store::table! {
    /// API keys by the hex SHA-256 of their secret.
    API_KEYS = "api_keys"
}
store::table! {
    /// `{org}/{key id}` → secret hash
    API_KEYS_BY_ORG = "api_keys_by_org"
}
store::table! {
    /// hex SHA-256 of a rotated key's previous secret → `{org}/{key id}`
    API_KEY_PREVIOUS_SECRETS = "api_key_previous_secrets"
}

pub fn organization(reader: &impl Reader, id: &str) -> Result<Option<Organization>> {
    if let Some(pg) = reader.postgres() {
        return postgres::organization(pg, id);
    }
    store::get(&reader.open_table(ORGANIZATIONS)?, id)
}

pub fn put_organization(txn: &Txn, org: &Organization) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::put_organization(pg, org);
    }
    txn.open_table(ORGANIZATIONS)?
        .insert(org.id.as_str(), store::encode(org)?.as_slice())?;
    Ok(())
}

/// The key whose current secret hashes to `hash`.
pub fn key_by_hash(reader: &impl Reader, hash: &str) -> Result<Option<ApiKey>> {
    if let Some(pg) = reader.postgres() {
        return postgres::key_where(pg, "secret_hash", hash);
    }
    store::get(&reader.open_table(API_KEYS)?, hash)
}

/// The key whose previous (rotated) secret hashes to `hash`.
pub fn key_by_previous_hash(reader: &impl Reader, hash: &str) -> Result<Option<ApiKey>> {
    if let Some(pg) = reader.postgres() {
        return postgres::key_where(pg, "previous_secret_hash", hash);
    }
    let previous_secrets = reader.open_table(API_KEY_PREVIOUS_SECRETS)?;
    let Some(index_key) = previous_secrets.get(hash)? else {
        return Ok(None);
    };
    let index = reader.open_table(API_KEYS_BY_ORG)?;
    let Some(current) = index.get(std::str::from_utf8(index_key.value())?)? else {
        return Ok(None);
    };
    key_by_hash(reader, std::str::from_utf8(current.value())?)
}

/// Every key of `org_id`, in no particular order.
pub fn keys_of(reader: &impl Reader, org_id: &str) -> Result<Vec<ApiKey>> {
    if let Some(pg) = reader.postgres() {
        return postgres::keys_of(pg, org_id);
    }
    let prefix = format!("{org_id}/");
    let index = reader.open_table(API_KEYS_BY_ORG)?;
    let keys = reader.open_table(API_KEYS)?;
    let mut found = Vec::new();
    for row in index.range(prefix.as_str()..)? {
        let (name, hash) = row?;
        if !name.value().starts_with(&prefix) {
            break;
        }
        found.extend(store::get::<ApiKey>(
            &keys,
            std::str::from_utf8(hash.value())?,
        )?);
    }
    Ok(found)
}

/// The key `key_id` of `org_id`.
pub fn find_key(reader: &impl Reader, org_id: &str, key_id: &str) -> Result<Option<ApiKey>> {
    if let Some(pg) = reader.postgres() {
        return postgres::find_key(pg, org_id, key_id);
    }
    let index = reader.open_table(API_KEYS_BY_ORG)?;
    let Some(hash) = index.get(format!("{org_id}/{key_id}").as_str())? else {
        return Ok(None);
    };
    key_by_hash(reader, std::str::from_utf8(hash.value())?)
}

/// Stores a new key.
pub fn insert_key(txn: &Txn, key: &ApiKey) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::save_key(pg, key);
    }
    save_key(txn, key)?;
    txn.open_table(API_KEYS_BY_ORG)?
        .insert(index_key(key).as_str(), key.secret_hash.as_bytes())?;
    Ok(())
}

/// Stores a changed key whose secret is unchanged.
pub fn save_key(txn: &Txn, key: &ApiKey) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::save_key(pg, key);
    }
    txn.open_table(API_KEYS)?
        .insert(key.secret_hash.as_str(), store::encode(key)?.as_slice())?;
    Ok(())
}

/// Stores a key that has a new secret: `key.previous` holds the one it replaced,
/// which stays findable by [`key_by_previous_hash`]; `retired` is the previous secret
/// before this rotation, which no longer is.
pub fn save_rotated_key(txn: &Txn, key: &ApiKey, retired: Option<&str>) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::save_key(pg, key);
    }
    let index_key = index_key(key);
    let mut previous_secrets = txn.open_table(API_KEY_PREVIOUS_SECRETS)?;
    if let Some(retired) = retired {
        previous_secrets.remove(retired)?;
    }
    if let Some(previous) = &key.previous {
        previous_secrets.insert(previous.hash.as_str(), index_key.as_bytes())?;
        txn.open_table(API_KEYS)?.remove(previous.hash.as_str())?;
    }
    save_key(txn, key)?;
    txn.open_table(API_KEYS_BY_ORG)?
        .insert(index_key.as_str(), key.secret_hash.as_bytes())?;
    Ok(())
}

fn index_key(key: &ApiKey) -> String {
    format!("{}/{}", key.org_id, key.id)
}
