//! API keys: the secret's format and hash, creation under the active-key cap,
//! revocation and rotation with a grace period.

use anyhow::Result;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::db;
use crate::ids::new_short_id;
use crate::store::{Reader, Txn};

/// Most keys an organization may have active at once.
pub const MAX_ACTIVE_KEYS: usize = 20;
/// How long a rotated key keeps working.
pub const ROTATION_GRACE: chrono::Duration = chrono::Duration::hours(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// everything
    Full,
    /// executions and files only
    Execution,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub org_id: String,
    pub scope: Scope,
    #[serde(default)]
    pub name: Option<String>,
    /// SHA-256 of the secret, hex
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// the secret a rotation replaced, still accepted until `valid_until`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousSecret>,
}

/// A rotated key's previous secret, indexed in [`API_KEY_PREVIOUS_SECRETS`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// SHA-256 of the secret, hex
    pub hash: String,
    pub valid_until: DateTime<Utc>,
}

/// A fresh secret in the contract's format.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let body = hex::encode(bytes);
    let crc = crc32fast::hash(body.as_bytes());
    format!("sk_{body}_{crc:08x}")
}

/// Whether `secret` has the contract's shape and a matching checksum.
pub fn well_formed(secret: &str) -> bool {
    let is_lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let Some(rest) = secret.strip_prefix("sk_") else {
        return false;
    };
    if secret.len() != 76 {
        return false;
    }
    let Some((body, crc)) = rest.split_once('_') else {
        return false;
    };
    body.len() == 64
        && crc.len() == 8
        && is_lower_hex(body)
        && is_lower_hex(crc)
        && format!("{:08x}", crc32fast::hash(body.as_bytes())) == crc
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl ApiKey {
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }

    /// When the previous secret stops working, while it still works.
    fn previous_valid_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.previous
            .as_ref()
            .map(|previous| previous.valid_until)
            .filter(|until| *until > now)
    }

    /// What listing shows: never the secret or its hash.
    pub fn view(&self) -> KeyView<'_> {
        KeyView {
            id: &self.id,
            name: self.name.as_deref(),
            scope: self.scope,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
            expires_at: self.expires_at,
            previous_key_valid_until: self.previous_valid_until(crate::clock::now()),
            key: None,
        }
    }
}

/// An API key as clients see it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = ApiKey)]
pub struct KeyView<'a> {
    #[schema(example = "key_8c1f0e2a9b")]
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub scope: Scope,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// until when the secret it had before its last rotation still works
    pub previous_key_valid_until: Option<DateTime<Utc>>,
    /// the secret: only in the answer to its creation, shown that once
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub key: Option<&'a str>,
}

/// Creates a key for `org_id` and returns it with its secret (shown once).
pub fn create_key(txn: &Txn, org_id: &str, scope: Scope) -> Result<(ApiKey, String)> {
    create_named_key(txn, org_id, scope, None)
}

fn create_named_key(
    txn: &Txn,
    org_id: &str,
    scope: Scope,
    name: Option<String>,
) -> Result<(ApiKey, String)> {
    let secret = generate_secret();
    let key = ApiKey {
        id: new_short_id("key"),
        org_id: org_id.to_string(),
        scope,
        name,
        secret_hash: hash_secret(&secret),
        created_at: crate::clock::now(),
        revoked_at: None,
        expires_at: None,
        previous: None,
    };
    db::insert_key(txn, &key)?;
    Ok((key, secret))
}

/// Every key of `org_id`, oldest first.
pub fn keys_of(reader: &impl Reader, org_id: &str) -> Result<Vec<ApiKey>> {
    let mut found = db::keys_of(reader, org_id)?;
    found.sort_by_key(|k| k.created_at);
    Ok(found)
}

/// Why a key operation was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    NotFound,
    TooManyActive,
}

/// Creates a key unless the organization already has [`MAX_ACTIVE_KEYS`] active
/// (live) ones. Rotation keeps a key's id, so it never changes the count.
pub fn create_key_checked(
    txn: &Txn,
    org_id: &str,
    scope: Scope,
    name: Option<String>,
) -> Result<Result<(ApiKey, String), KeyRefusal>> {
    let now = crate::clock::now();
    if active_keys(txn, org_id, now)? >= MAX_ACTIVE_KEYS {
        return Ok(Err(KeyRefusal::TooManyActive));
    }
    Ok(Ok(create_named_key(txn, org_id, scope, name)?))
}

fn active_keys(txn: &Txn, org_id: &str, now: DateTime<Utc>) -> Result<usize> {
    let keys = db::keys_of(txn, org_id)?;
    Ok(keys.iter().filter(|k| k.is_live(now)).count())
}

/// Revokes a key at once. Revoking a revoked key is harmless.
pub fn revoke_key(txn: &Txn, org_id: &str, key_id: &str) -> Result<Result<ApiKey, KeyRefusal>> {
    let Some(mut key) = db::find_key(txn, org_id, key_id)? else {
        return Ok(Err(KeyRefusal::NotFound));
    };
    key.revoked_at.get_or_insert(crate::clock::now());
    db::save_key(txn, &key)?;
    Ok(Ok(key))
}

/// A rotated key: the key (same id), its new secret, and when the old one stops.
pub struct Rotated {
    pub key: ApiKey,
    pub secret: String,
    pub previous_valid_until: DateTime<Utc>,
}

/// Gives the key a new secret; it keeps its id, name and scope, and the secret it
/// had keeps working for [`ROTATION_GRACE`] more. A key has at most two working
/// secrets: rotating again ends the grace of the secret the last rotation replaced.
pub fn rotate_key(txn: &Txn, org_id: &str, key_id: &str) -> Result<Result<Rotated, KeyRefusal>> {
    let now = crate::clock::now();
    let Some(mut key) = db::find_key(txn, org_id, key_id)?.filter(|k| k.is_live(now)) else {
        return Ok(Err(KeyRefusal::NotFound));
    };
    let secret = generate_secret();
    let valid_until = now + ROTATION_GRACE;
    let retired = key.previous.replace(PreviousSecret {
        hash: std::mem::replace(&mut key.secret_hash, hash_secret(&secret)),
        valid_until,
    });
    db::save_rotated_key(txn, &key, retired.as_ref().map(|r| r.hash.as_str()))?;
    Ok(Ok(Rotated {
        key,
        secret,
        previous_valid_until: valid_until,
    }))
}
