//! Provider callbacks: the URLs handed to adapters whose providers can call back
//! (`/v1/provider-webhooks/{provider}/{token}`), and their verification.
//!
//! A token names the execution and attempt and carries an HMAC over them and the
//! provider, with a key only this server knows, so a callback cannot be forged or
//! redirected to another execution. A verified callback only wakes the attempt's
//! poll loop: the provider's answer to that poll stays the source of truth.

use subtle::ConstantTimeEq;

use crate::store::{self, Store};

/// Hex characters of the MAC kept in a token (128 bits).
const MAC_HEX: usize = 32;

pub struct CallbackSigner {
    key: Vec<u8>,
    public_url: String,
}

/// What a verified token names.
#[derive(Debug, PartialEq, Eq)]
pub struct CallbackTarget {
    pub execution_id: String,
    pub attempt_id: String,
}

impl CallbackSigner {
    /// Loads the signing key, creating it on first start.
    pub async fn load(store: &Store, public_url: &str) -> anyhow::Result<CallbackSigner> {
        let key = store::signing_key(store, "provider-callback-key").await?;
        Ok(CallbackSigner {
            key,
            public_url: public_url.to_string(),
        })
    }

    fn mac(&self, provider: &str, execution_id: &str, attempt_id: &str) -> String {
        let message = format!("{provider}/{execution_id}/{attempt_id}");
        crate::mac::hmac_hex(&self.key, &message)[..MAC_HEX].to_string()
    }

    /// The callback URL for one attempt at `provider`.
    pub fn url(&self, provider: &str, execution_id: &str, attempt_id: &str) -> String {
        let mac = self.mac(provider, execution_id, attempt_id);
        format!(
            "{}/v1/provider-webhooks/{provider}/{execution_id}.{attempt_id}.{mac}",
            self.public_url
        )
    }

    pub fn verify(&self, provider: &str, token: &str) -> Option<CallbackTarget> {
        let mut parts = token.split('.');
        let (execution_id, attempt_id, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let expected = self.mac(provider, execution_id, attempt_id);
        let valid: bool = expected.as_bytes().ct_eq(mac.as_bytes()).into();
        valid.then(|| CallbackTarget {
            execution_id: execution_id.to_string(),
            attempt_id: attempt_id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_verify_only_for_their_provider_execution_and_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db.redb"),
            crate::store::Commits::Durable,
            crate::store::TEST_CACHE,
        )
        .unwrap();
        let signer = CallbackSigner::load(&store, "https://api.example")
            .await
            .unwrap();
        let url = signer.url("replicate-a", "exec_1", "att_1");
        let token = url.rsplit('/').next().unwrap();
        assert!(url.starts_with("https://api.example/v1/provider-webhooks/replicate-a/"));
        assert_eq!(
            signer.verify("replicate-a", token),
            Some(CallbackTarget {
                execution_id: "exec_1".into(),
                attempt_id: "att_1".into()
            })
        );
        assert_eq!(
            signer.verify("replicate-b", token),
            None,
            "another provider"
        );
        let forged = token.replace("exec_1", "exec_2");
        assert_eq!(signer.verify("replicate-a", &forged), None);
        assert_eq!(signer.verify("replicate-a", "exec_1.att_1"), None);
        // The key survives a restart.
        let again = CallbackSigner::load(&store, "https://api.example")
            .await
            .unwrap();
        assert!(again.verify("replicate-a", token).is_some());
    }
}
