//! The operator token guarding `/admin/v1`.

use anyhow::Result;
use rand::RngCore;
use subtle::ConstantTimeEq;

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
