//! Organizations, API keys and the operator token (SPEC §3).
//!
//! A secret is `sk_<64 lowercase hex>_<8 lowercase hex>`, the last part the CRC32 of
//! the first, so malformed keys are refused without touching the store. Only the
//! SHA-256 of a secret is stored: the secret has 256 bits of entropy, so a slow hash
//! would buy nothing.

mod db;
mod keys;
mod operator;
mod organizations;

pub use keys::{
    ApiKey, KeyRefusal, KeyView, MAX_ACTIVE_KEYS, PreviousSecret, ROTATION_GRACE, Rotated, Scope,
    create_key, create_key_checked, generate_secret, hash_secret, keys_of, revoke_key, rotate_key,
    well_formed,
};
pub use operator::{MIN_OPERATOR_TOKEN_CHARS, OperatorToken};
pub use organizations::{
    Organization, create_organization, file_ttl_days, organization, organization_exists,
    set_file_ttl,
};

use anyhow::Result;
use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

use crate::store::Reader;

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

/// The caller a bearer secret stands for, if it is well formed, known and live.
/// An empty secret is never anyone's.
pub fn authenticate(
    reader: &impl Reader,
    secret: &str,
    now: DateTime<Utc>,
) -> Result<Option<Caller>> {
    if secret.is_empty() || !well_formed(secret) {
        return Ok(None);
    }
    let hash = hash_secret(secret);
    // The tables are keyed by the hash, so the compares below are belt and braces
    // against a corrupted row; constant-time like every secret comparison here.
    let matches = |stored: &str| -> bool { stored.as_bytes().ct_eq(hash.as_bytes()).into() };
    let live = match db::key_by_hash(reader, &hash)? {
        Some(key) => Some(key).filter(|key| matches(&key.secret_hash)),
        // A rotated key's previous secret, during its grace.
        None => db::key_by_previous_hash(reader, &hash)?.filter(|key| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rotated_secret_works_for_one_hour_then_stops() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(
            &dir.path().join("db.redb"),
            crate::store::Commits::Durable,
            crate::store::TEST_CACHE,
        )
        .unwrap();
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
        let store = crate::store::Store::open(
            &dir.path().join("db.redb"),
            crate::store::Commits::Durable,
            crate::store::TEST_CACHE,
        )
        .unwrap();
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
