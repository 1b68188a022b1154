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
use crate::store::{self, API_KEY_PREVIOUS_SECRETS, API_KEYS, API_KEYS_BY_ORG, ORGANIZATIONS};

/// Most keys an organization may have active at once.
pub const MAX_ACTIVE_KEYS: usize = 20;
/// How long a rotated key keeps working.
pub const ROTATION_GRACE: chrono::Duration = chrono::Duration::hours(1);

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
        created_at: crate::clock::now(),
        file_ttl_days: None,
    };
    txn.open_table(ORGANIZATIONS)?
        .insert(org.id.as_str(), store::encode(&org)?.as_slice())?;
    Ok(org)
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
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "expires_at": self.expires_at,
            "previous_key_valid_until": self.previous_valid_until(crate::clock::now()),
        })
    }
}

/// Creates a key for `org_id` and returns it with its secret (shown once).
pub fn create_key(txn: &WriteTransaction, org_id: &str, scope: Scope) -> Result<(ApiKey, String)> {
    create_named_key(txn, org_id, scope, None)
}

fn create_named_key(
    txn: &WriteTransaction,
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
    save_key(txn, &key)?;
    txn.open_table(API_KEYS_BY_ORG)?.insert(
        format!("{org_id}/{}", key.id).as_str(),
        key.secret_hash.as_bytes(),
    )?;
    Ok((key, secret))
}

fn save_key(txn: &WriteTransaction, key: &ApiKey) -> Result<()> {
    txn.open_table(API_KEYS)?
        .insert(key.secret_hash.as_str(), store::encode(key)?.as_slice())?;
    Ok(())
}

/// Every key of `org_id`, oldest first.
pub fn keys_of(txn: &ReadTransaction, org_id: &str) -> Result<Vec<ApiKey>> {
    let prefix = format!("{org_id}/");
    let index = txn.open_table(API_KEYS_BY_ORG)?;
    let keys = txn.open_table(API_KEYS)?;
    let mut found = Vec::new();
    for row in index.range(prefix.as_str()..)? {
        let (name, hash) = row?;
        if !name.value().starts_with(&prefix) {
            break;
        }
        let hash = std::str::from_utf8(hash.value())?;
        if let Some(key) = store::get::<ApiKey>(&keys, hash)? {
            found.push(key);
        }
    }
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
    txn: &WriteTransaction,
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

fn active_keys(txn: &WriteTransaction, org_id: &str, now: DateTime<Utc>) -> Result<usize> {
    let prefix = format!("{org_id}/");
    let index = txn.open_table(API_KEYS_BY_ORG)?;
    let keys = txn.open_table(API_KEYS)?;
    let mut active = 0;
    for row in redb::ReadableTable::range(&index, prefix.as_str()..)? {
        let (name, hash) = row?;
        if !name.value().starts_with(&prefix) {
            break;
        }
        let key: Option<ApiKey> = store::get(&keys, std::str::from_utf8(hash.value())?)?;
        active += key.is_some_and(|k| k.is_live(now)) as usize;
    }
    Ok(active)
}

fn find_key(txn: &WriteTransaction, org_id: &str, key_id: &str) -> Result<Option<ApiKey>> {
    let index = txn.open_table(API_KEYS_BY_ORG)?;
    let Some(hash) = redb::ReadableTable::get(&index, format!("{org_id}/{key_id}").as_str())?
    else {
        return Ok(None);
    };
    let hash = std::str::from_utf8(hash.value())?.to_string();
    store::get(&txn.open_table(API_KEYS)?, &hash)
}

/// Revokes a key at once. Revoking a revoked key is harmless.
pub fn revoke_key(
    txn: &WriteTransaction,
    org_id: &str,
    key_id: &str,
) -> Result<Result<ApiKey, KeyRefusal>> {
    let Some(mut key) = find_key(txn, org_id, key_id)? else {
        return Ok(Err(KeyRefusal::NotFound));
    };
    key.revoked_at.get_or_insert(crate::clock::now());
    save_key(txn, &key)?;
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
pub fn rotate_key(
    txn: &WriteTransaction,
    org_id: &str,
    key_id: &str,
) -> Result<Result<Rotated, KeyRefusal>> {
    let now = crate::clock::now();
    let Some(mut key) = find_key(txn, org_id, key_id)?.filter(|k| k.is_live(now)) else {
        return Ok(Err(KeyRefusal::NotFound));
    };
    let mut previous_secrets = txn.open_table(API_KEY_PREVIOUS_SECRETS)?;
    if let Some(earlier) = &key.previous {
        previous_secrets.remove(earlier.hash.as_str())?;
    }
    let index_key = format!("{org_id}/{key_id}");
    previous_secrets.insert(key.secret_hash.as_str(), index_key.as_bytes())?;
    txn.open_table(API_KEYS)?.remove(key.secret_hash.as_str())?;

    let secret = generate_secret();
    let valid_until = now + ROTATION_GRACE;
    key.previous = Some(PreviousSecret {
        hash: std::mem::replace(&mut key.secret_hash, hash_secret(&secret)),
        valid_until,
    });
    save_key(txn, &key)?;
    txn.open_table(API_KEYS_BY_ORG)?
        .insert(index_key.as_str(), key.secret_hash.as_bytes())?;
    Ok(Ok(Rotated {
        key,
        secret,
        previous_valid_until: valid_until,
    }))
}

/// The caller a bearer secret stands for, if it is well formed, known and live.
/// An empty secret is never anyone's.
pub fn authenticate(
    txn: &ReadTransaction,
    secret: &str,
    now: DateTime<Utc>,
) -> Result<Option<Caller>> {
    if secret.is_empty() || !well_formed(secret) {
        return Ok(None);
    }
    let hash = hash_secret(secret);
    let keys = txn.open_table(API_KEYS)?;
    // The tables are keyed by the hash, so the compares below are belt and braces
    // against a corrupted row; constant-time like every secret comparison here.
    let matches = |stored: &str| -> bool { stored.as_bytes().ct_eq(hash.as_bytes()).into() };
    let live = match store::get::<ApiKey>(&keys, &hash)? {
        Some(key) => Some(key).filter(|key| matches(&key.secret_hash)),
        // A rotated key's previous secret, during its grace.
        None => previous_secret_owner(txn, &keys, &hash)?.filter(|key| {
            key.previous
                .as_ref()
                .is_some_and(|previous| matches(&previous.hash) && previous.valid_until > now)
        }),
    };
    let Some(key) = live.filter(|key| key.is_live(now)) else {
        return Ok(None);
    };
    Ok(Some(Caller {
        org_id: key.org_id,
        key_id: key.id,
        scope: key.scope,
    }))
}

/// The key whose previous secret hashes to `hash`, if any.
fn previous_secret_owner(
    txn: &ReadTransaction,
    keys: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    hash: &str,
) -> Result<Option<ApiKey>> {
    let Some(index_key) = txn.open_table(API_KEY_PREVIOUS_SECRETS)?.get(hash)? else {
        return Ok(None);
    };
    let index = txn.open_table(API_KEYS_BY_ORG)?;
    let Some(current) = index.get(std::str::from_utf8(index_key.value())?)? else {
        return Ok(None);
    };
    store::get(keys, std::str::from_utf8(current.value())?)
}

/// Fewest characters an operator token may have: a short token can be guessed, and
/// an empty one (a truncated file, an empty mounted secret) would match an empty
/// credential.
pub const MIN_OPERATOR_TOKEN_CHARS: usize = 32;

/// The operator token guarding `/admin/v1`, compared in constant time. It is never
/// empty or short: [`OperatorToken::parse`] refuses such a token.
#[derive(Clone)]
pub struct OperatorToken(String);

impl OperatorToken {
    /// The token written in `source` (a file or a variable, named in the error),
    /// without surrounding whitespace: at least [`MIN_OPERATOR_TOKEN_CHARS`] visible
    /// ASCII characters, as a `Bearer` credential can carry them.
    pub fn parse(text: &str, source: &str) -> Result<OperatorToken> {
        let token = text.trim();
        if token.is_empty() {
            anyhow::bail!("the operator token in {source} is empty");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            anyhow::bail!("the operator token in {source} has characters other than visible ASCII");
        }
        if token.len() < MIN_OPERATOR_TOKEN_CHARS {
            anyhow::bail!(
                "the operator token in {source} has {} characters; it needs at least {MIN_OPERATOR_TOKEN_CHARS}",
                token.len()
            );
        }
        Ok(OperatorToken(token.to_string()))
    }

    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        OperatorToken(format!("op_{}", hex::encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the token; an empty credential never is.
    pub fn matches(&self, presented: &str) -> bool {
        !presented.is_empty() && bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rotated_secret_works_for_one_hour_then_stops() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("db.redb")).unwrap();
        let (old, key_id) = store
            .write(|txn| {
                let (key, secret) = create_key(txn, "org_a", Scope::Full)?;
                Ok((secret, key.id))
            })
            .await
            .unwrap();
        let rotated = store
            .write(move |txn| rotate_key(txn, "org_a", &key_id))
            .await
            .unwrap()
            .ok()
            .unwrap();
        let now = crate::clock::now();
        let at = |secret: &str, when| {
            store
                .read(|txn| authenticate(txn, secret, when))
                .unwrap()
                .is_some()
        };
        assert!(at(&old, now + chrono::Duration::minutes(59)));
        assert!(!at(&old, now + chrono::Duration::minutes(61)));
        assert!(at(&rotated.secret, now + chrono::Duration::days(30)));
        assert!(rotated.previous_valid_until <= now + ROTATION_GRACE);
    }

    /// Regression: rotation minted a key with a new id, so a client that stored the
    /// id could neither revoke nor rotate the key it now used.
    #[tokio::test]
    async fn a_rotated_key_keeps_its_id_and_revoking_it_ends_both_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("db.redb")).unwrap();
        let (first, key_id) = store
            .write(|txn| {
                let (key, secret) = create_key(txn, "org_a", Scope::Execution)?;
                Ok((secret, key.id))
            })
            .await
            .unwrap();
        let rotate = |id: String| {
            let store = store.clone();
            async move {
                store
                    .write(move |txn| rotate_key(txn, "org_a", &id))
                    .await
                    .unwrap()
                    .ok()
                    .unwrap()
            }
        };
        let second = rotate(key_id.clone()).await;
        assert_eq!(second.key.id, key_id);
        assert_eq!(second.key.scope, Scope::Execution);
        let now = crate::clock::now();
        let caller = |secret: &str| {
            store
                .read(|txn| authenticate(txn, secret, now))
                .unwrap()
                .map(|caller| caller.key_id)
        };
        assert_eq!(caller(&first).as_deref(), Some(key_id.as_str()));
        assert_eq!(caller(&second.secret).as_deref(), Some(key_id.as_str()));

        // Rotating again: the newest two secrets work, the first one no longer.
        let third = rotate(key_id.clone()).await;
        assert_eq!(third.key.id, key_id);
        assert_eq!(caller(&first), None);
        assert!(caller(&second.secret).is_some() && caller(&third.secret).is_some());
        let keys = store.read(|txn| keys_of(txn, "org_a")).unwrap();
        assert_eq!(keys.len(), 1, "rotation never adds a key");

        let id = key_id.clone();
        store
            .write(move |txn| revoke_key(txn, "org_a", &id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(caller(&second.secret), None);
        assert_eq!(caller(&third.secret), None);
    }

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

    #[test]
    fn an_empty_short_or_unprintable_operator_token_is_refused() {
        for text in ["", " \n", "\t\n  \n", "op_short\n", &"x".repeat(31)] {
            let refused = OperatorToken::parse(text, "/data/admin-token")
                .err()
                .expect(text);
            assert!(
                refused.to_string().contains("/data/admin-token"),
                "{refused}"
            );
        }
        let spaced = format!("{} {}", "a".repeat(20), "b".repeat(20));
        assert!(OperatorToken::parse(&spaced, "x").is_err());
        let generated = OperatorToken::generate();
        let read = OperatorToken::parse(&format!("{}\n", generated.as_str()), "x").unwrap();
        assert_eq!(read.as_str(), generated.as_str());
        assert!(read.matches(generated.as_str()));
        assert!(!read.matches(""));
        assert!(!read.matches(&generated.as_str()[1..]));
    }
}
