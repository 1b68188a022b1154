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
    fn ids_carry_their_prefix_and_a_uuid() {
        let id = new_id("exec");
        assert!(has_prefix(&id, "exec"));
        assert!(!has_prefix(&id, "file"));
        assert!(!has_prefix("exec_not-a-uuid", "exec"));
    }
}
