//! Identifiers (SPEC §2): a prefix and a random UUID v4.

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::new_v4())
}

/// Compact ids where hyphens would only add length (request ids, attempts).
pub fn new_short_id(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::new_v4().simple())
}

/// The id of attempt number `index` of execution `execution_id`: derived, not
/// drawn, so that an attempt whose start a crash lost (`batched` durability) is
/// started again under the same id, which providers that dedupe on it (the
/// submit's idempotency key) treat as the job they already have.
pub fn attempt_id(execution_id: &str, index: usize) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{execution_id}/{index}"));
    format!("att_{}", hex::encode(&digest[..16]))
}

/// `{owner}/{newest-first key}/{id}`: the key of a per-owner listing index, where
/// inverted creation time makes a forward scan list newest first.
pub fn newest_first_key(owner: &str, created_at: DateTime<Utc>, id: &str) -> String {
    let inverted = i64::MAX - created_at.timestamp_micros();
    format!("{owner}/{inverted:020}/{id}")
}

/// Whether `id` looks like `<prefix>_<uuid>`; lookups of anything else are a plain 404.
pub fn has_prefix(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|rest| Uuid::parse_str(rest).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_id_is_the_same_for_the_same_attempt_and_unique_otherwise() {
        let execution = "exe_9f1c1b2e-3d4a-4b5c-8d6e-7f8091a2b3c4";
        let first = attempt_id(execution, 0);
        assert_eq!(first, attempt_id(execution, 0));
        assert_ne!(first, attempt_id(execution, 1));
        assert_ne!(
            first,
            attempt_id("exe_0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d", 0)
        );
        assert!(
            first.starts_with("att_") && first.len() == 4 + 32,
            "{first}"
        );
    }

    #[test]
    fn ids_carry_their_prefix_and_a_uuid() {
        let id = new_id("exec");
        assert!(has_prefix(&id, "exec"));
        assert!(!has_prefix(&id, "file"));
        assert!(!has_prefix("exec_not-a-uuid", "exec"));
    }
}
