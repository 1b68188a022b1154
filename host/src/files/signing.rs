//! The HMAC behind every URL the platform serves without an API key: signed upload
//! and download URLs, and the grants minted for provider attempts.
//!
//! A [`UrlSigner`] holds only the key: verifying a URL reads nothing from the store,
//! so a forged or lapsed URL is refused before any record is loaded or decoded. The
//! proof it hands back ([`Verified`], [`VerifiedGrant`]) is what the serving code
//! needs to go on.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::error::{ApiError, Code};
use crate::ids::has_prefix;

/// The query of a signed upload or download URL.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Signature {
    /// when the URL lapses (unix seconds)
    pub expires: i64,
    pub signature: String,
}

/// The query of a grant URL.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GrantQuery {
    /// the execution and attempt the grant was minted for
    pub execution: String,
    pub attempt: String,
    pub expires: i64,
    pub signature: String,
}

/// A file URL the platform signed, not yet lapsed (whatever became of the file).
#[derive(Debug)]
pub struct Verified {
    pub file_id: String,
}

/// A grant the platform minted, not yet lapsed (whatever became of its attempt).
#[derive(Debug)]
pub struct VerifiedGrant {
    pub file_id: String,
    pub execution_id: String,
    pub attempt_id: String,
}

pub struct UrlSigner {
    key: Vec<u8>,
}

impl UrlSigner {
    pub fn new(key: Vec<u8>) -> UrlSigner {
        UrlSigner { key }
    }

    /// The `expires` and `signature` of a `kind` (`upload`, `download`) URL of
    /// `file_id`. File ids are unique, so the id binds the URL to the file's
    /// organization too.
    pub fn sign_file(&self, kind: &str, file_id: &str, expires: DateTime<Utc>) -> (i64, String) {
        let expires = expires.timestamp();
        (expires, self.mac(&file_message(kind, file_id, expires)))
    }

    /// Checks a `kind` URL of `file_id` at `now`: a forged or lapsed one is `401`.
    pub fn verify_file(
        &self,
        kind: &str,
        file_id: &str,
        signature: &Signature,
        now: DateTime<Utc>,
    ) -> Result<Verified, ApiError> {
        let message = file_message(kind, file_id, signature.expires);
        if signature.expires < now.timestamp()
            || !has_prefix(file_id, "file")
            || !self.holds(&message, &signature.signature)
        {
            return Err(refused());
        }
        Ok(Verified {
            file_id: file_id.to_string(),
        })
    }

    /// The signature of a grant of `file_id` for one attempt of an execution.
    pub fn sign_grant(
        &self,
        file_id: &str,
        execution_id: &str,
        attempt_id: &str,
        expires: i64,
    ) -> String {
        self.mac(&grant_message(file_id, execution_id, attempt_id, expires))
    }

    /// Checks a grant URL at `now`: a forged or lapsed one is `401`.
    pub fn verify_grant(
        &self,
        file_id: &str,
        query: &GrantQuery,
        now: DateTime<Utc>,
    ) -> Result<VerifiedGrant, ApiError> {
        let message = grant_message(file_id, &query.execution, &query.attempt, query.expires);
        if query.expires < now.timestamp() || !self.holds(&message, &query.signature) {
            return Err(refused());
        }
        Ok(VerifiedGrant {
            file_id: file_id.to_string(),
            execution_id: query.execution.clone(),
            attempt_id: query.attempt.clone(),
        })
    }

    fn mac(&self, message: &str) -> String {
        crate::mac::hmac_hex(&self.key, message)
    }

    fn holds(&self, message: &str, signature: &str) -> bool {
        self.mac(message)
            .as_bytes()
            .ct_eq(signature.as_bytes())
            .into()
    }
}

/// A signed URL that is forged, lapsed or malformed.
pub fn refused() -> ApiError {
    ApiError::new(Code::Unauthorized, "The signed URL is invalid or expired.")
}

fn file_message(kind: &str, file_id: &str, expires: i64) -> String {
    format!("{kind}\n{file_id}\n{expires}")
}

fn grant_message(file_id: &str, execution_id: &str, attempt_id: &str, expires: i64) -> String {
    format!("grant\n{file_id}\n{execution_id}\n{attempt_id}\n{expires}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    /// Verification needs the key alone: there is no store here to read from, so a
    /// forged grant cannot have cost a record lookup.
    #[test]
    fn a_forged_or_lapsed_grant_is_refused_without_any_store_access() {
        let signer = UrlSigner::new(b"key".to_vec());
        let now = Utc::now();
        let file = crate::ids::new_id("file");
        let expires = (now + Duration::minutes(10)).timestamp();
        let genuine = GrantQuery {
            execution: "exec_1".into(),
            attempt: "att_1".into(),
            expires,
            signature: signer.sign_grant(&file, "exec_1", "att_1", expires),
        };
        let verified = signer.verify_grant(&file, &genuine, now).unwrap();
        assert_eq!(
            (verified.execution_id.as_str(), verified.attempt_id.as_str()),
            ("exec_1", "att_1")
        );
        let forged = [
            GrantQuery {
                execution: "exec_2".into(),
                ..genuine.clone()
            },
            GrantQuery {
                signature: "00".repeat(32),
                ..genuine.clone()
            },
            GrantQuery {
                expires: expires + 1,
                ..genuine.clone()
            },
        ];
        for query in &forged {
            let refusal = signer.verify_grant(&file, query, now).unwrap_err();
            assert_eq!(refusal.code, Code::Unauthorized, "{query:?}");
        }
        let later = now + Duration::minutes(11);
        assert_eq!(
            signer
                .verify_grant(&file, &genuine, later)
                .unwrap_err()
                .code,
            Code::Unauthorized
        );
        let other = UrlSigner::new(b"another key".to_vec());
        assert!(other.verify_grant(&file, &genuine, now).is_err());
    }

    #[test]
    fn a_file_url_is_bound_to_its_kind_file_and_expiry() {
        let signer = UrlSigner::new(b"key".to_vec());
        let now = Utc::now();
        let file = crate::ids::new_id("file");
        let (expires, signature) = signer.sign_file("download", &file, now + Duration::hours(1));
        let genuine = Signature { expires, signature };
        assert!(signer.verify_file("download", &file, &genuine, now).is_ok());
        assert!(signer.verify_file("upload", &file, &genuine, now).is_err());
        let another = crate::ids::new_id("file");
        assert!(
            signer
                .verify_file("download", &another, &genuine, now)
                .is_err()
        );
        let later = now + Duration::hours(2);
        assert!(
            signer
                .verify_file("download", &file, &genuine, later)
                .is_err()
        );
    }
}
