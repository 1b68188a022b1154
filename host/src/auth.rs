//! Organizations, API keys and the operator token (SPEC §3).
//!
//! A secret is `sk_<64 lowercase hex>_<8 lowercase hex>`, the last part the CRC32 of
//! the first, so malformed keys are refused without touching the store. Only the
//! SHA-256 of a secret is stored: the secret has 256 bits of entropy, so a slow hash
//! would buy nothing.

use anyhow::Result;
use chrono::{DateTime, Utc};
use rand::RngCore;
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::new_short_id;
use crate::store::{self, API_KEYS, ORGANIZATIONS};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// SHA-256 of the secret, hex
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Who is calling: resolved from a valid, live key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub org_id: String,
    pub key_id: String,
    pub scope: Scope,
}

impl Caller {
    pub fn has(&self, needed: Scope) -> bool {
        self.scope == Scope::Full || self.scope == needed
    }
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

/// Creates an organization (inside a write transaction).
pub fn create_organization(txn: &WriteTransaction, name: &str) -> Result<Organization> {
    let org = Organization {
        id: new_short_id("org"),
        name: name.to_string(),
        created_at: Utc::now(),
    };
    txn.open_table(ORGANIZATIONS)?
        .insert(org.id.as_str(), store::encode(&org)?.as_slice())?;
    Ok(org)
}

/// Creates a key for `org_id` and returns it with its secret (shown once).
pub fn create_key(txn: &WriteTransaction, org_id: &str, scope: Scope) -> Result<(ApiKey, String)> {
    let secret = generate_secret();
    let key = ApiKey {
        id: new_short_id("key"),
        org_id: org_id.to_string(),
        scope,
        secret_hash: hash_secret(&secret),
        created_at: Utc::now(),
        revoked_at: None,
        expires_at: None,
    };
    txn.open_table(API_KEYS)?
        .insert(key.secret_hash.as_str(), store::encode(&key)?.as_slice())?;
    Ok((key, secret))
}

/// The caller a bearer secret stands for, if it is well formed, known and live.
pub fn authenticate(txn: &ReadTransaction, secret: &str, now: DateTime<Utc>) -> Result<Option<Caller>> {
    if !well_formed(secret) {
        return Ok(None);
    }
    let hash = hash_secret(secret);
    let keys = txn.open_table(API_KEYS)?;
    let Some(key) = store::get::<ApiKey>(&keys, &hash)? else {
        return Ok(None);
    };
    // The table is keyed by the hash, so this compare is belt and braces against a
    // corrupted row; it is constant-time like every secret comparison here.
    let matches: bool = key.secret_hash.as_bytes().ct_eq(hash.as_bytes()).into();
    let live = key.revoked_at.is_none() && key.expires_at.is_none_or(|at| at > now);
    Ok((matches && live).then(|| Caller {
        org_id: key.org_id,
        key_id: key.id,
        scope: key.scope,
    }))
}

/// The operator token guarding `/admin/v1`, compared in constant time.
#[derive(Clone)]
pub struct OperatorToken(String);

impl OperatorToken {
    pub fn new(token: String) -> Self {
        OperatorToken(token)
    }

    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        OperatorToken(format!("op_{}", hex::encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_well_formed_and_76_chars() {
        for _ in 0..50 {
            let secret = generate_secret();
            assert_eq!(secret.len(), 76);
            assert!(well_formed(&secret), "{secret}");
        }
    }

    #[test]
    fn malformed_truncated_and_wrong_crc_secrets_are_refused() {
        let secret = generate_secret();
        assert!(!well_formed(&secret[..75]));
        assert!(!well_formed(&secret.to_uppercase()));
        assert!(!well_formed(&secret.replacen("sk_", "pk_", 1)));
        let mut wrong_crc = secret.clone();
        let last = if wrong_crc.ends_with('0') { "1" } else { "0" };
        wrong_crc.replace_range(75..76, last);
        assert!(!well_formed(&wrong_crc));
        assert!(!well_formed(""));
    }
}
