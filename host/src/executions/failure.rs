//! Why an attempt failed, typed where it happened, and the one mapping of attempt
//! failures to the contract's codes.
//!
//! An attempt fails either because the adapter read the provider's answer as a
//! failure ([`Kind::Reported`], in the adapter's own code) or because of something
//! the host saw itself: a breaker, the network, a stream, a restart, an output. Each
//! carries its side (whose fault), the retry loop's verdict, and its code.
//!
//! Two meanings of "retryable" meet here and stay apart on purpose: [`retry`] is the
//! verdict for the retry loop (may another attempt, now, at this provider or another,
//! succeed?), while the `retryable` a client reads is its code's
//! ([`Code::retryable`]): may the client, resubmitting later, succeed?
//!
//! [`retry`]: AttemptFailure::retry

use crate::error::Code;
use crate::plugins::types;
use crate::upstream::UpstreamError;

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// the input: another provider would refuse it too
    Client,
    /// the provider: another attempt, or another provider, may do better
    Provider,
    /// ModelRoute itself
    Platform,
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// the adapter's reading of the provider's answer, in its code
    Reported(Code),
    /// no adapter serves the model
    NoProvider,
    /// the provider's circuit breaker refuses traffic
    BreakerOpen,
    /// the provider did not answer in time
    Timeout,
    /// the provider could not be reached
    Unreachable,
    /// an answer larger than the host reads
    TooLarge,
    /// the host refused the adapter's request: a host it may not call, a bad URL
    RequestRefused,
    /// the provider's event stream broke
    StreamBroken,
    /// the provider's event stream ended before its end
    StreamCut,
    /// the attempt's input files could not be prepared
    InputFiles,
    /// a restart cut the attempt before the provider acknowledged it
    Interrupted,
    /// the provider of a job a restart interrupted is no longer configured
    ProviderGone,
    /// the completion's outputs could not be kept (fetched, checked, stored)
    BadOutput,
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptFailure {
    pub kind: Kind,
    /// for operators' logs and the attempt record; clients see the code's message
    pub message: String,
    /// the retry loop's verdict
    pub retry: bool,
    /// the provider's `Retry-After`, honoured by a retry that goes back to it
    pub retry_after_ms: Option<u32>,
}

impl AttemptFailure {
    /// A failure the host saw, with its kind's retry verdict.
    pub fn new(kind: Kind, message: impl Into<String>) -> AttemptFailure {
        let retry = !matches!(kind, Kind::NoProvider | Kind::InputFiles);
        AttemptFailure {
            kind,
            message: message.into(),
            retry,
            retry_after_ms: None,
        }
    }

    /// The code a client sees for this failure: the one mapping.
    pub fn code(&self) -> Code {
        match self.kind {
            Kind::Reported(code) => code,
            Kind::NoProvider => Code::ModelUnavailable,
            Kind::BreakerOpen
            | Kind::Unreachable
            | Kind::StreamBroken
            | Kind::Interrupted
            | Kind::ProviderGone => Code::ServiceUnavailable,
            Kind::Timeout => Code::GenerationTimeout,
            Kind::TooLarge | Kind::StreamCut | Kind::BadOutput => Code::GenerationFailed,
            Kind::RequestRefused | Kind::InputFiles => Code::InternalError,
        }
    }

    pub fn side(&self) -> Side {
        match self.kind {
            Kind::Reported(
                Code::InputValidationError
                | Code::ContentModerationRejected
                | Code::FileNotFound
                | Code::FileFormatUnsupported,
            ) => Side::Client,
            Kind::Reported(Code::InternalError | Code::InsufficientBalance)
            | Kind::NoProvider
            | Kind::RequestRefused
            | Kind::InputFiles
            | Kind::Interrupted
            | Kind::ProviderGone => Side::Platform,
            _ => Side::Provider,
        }
    }

    /// The attempt record's line: the code by its API name, then the message.
    pub fn detail(&self) -> String {
        format!("{}: {}", self.code(), self.message)
    }
}

/// The adapter's classification, with its own retry verdict and `Retry-After`.
impl From<types::Failure> for AttemptFailure {
    fn from(failure: types::Failure) -> AttemptFailure {
        AttemptFailure {
            kind: Kind::Reported(failure.code),
            message: failure.message,
            retry: failure.retryable,
            retry_after_ms: failure.retry_after_ms,
        }
    }
}

/// A request the host could not complete; another attempt may do better.
impl From<UpstreamError> for AttemptFailure {
    fn from(error: UpstreamError) -> AttemptFailure {
        let kind = match &error {
            UpstreamError::Timeout => Kind::Timeout,
            UpstreamError::Connection(_) => Kind::Unreachable,
            UpstreamError::TooLarge(_) => Kind::TooLarge,
            UpstreamError::HostNotAllowed(_) | UpstreamError::BadUrl(_) => Kind::RequestRefused,
        };
        AttemptFailure {
            retry: true,
            ..AttemptFailure::new(kind, error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_failures_map_to_the_codes_clients_have_always_seen() {
        let code = |kind| AttemptFailure::new(kind, "").code();
        assert_eq!(code(Kind::NoProvider), Code::ModelUnavailable);
        assert_eq!(code(Kind::BreakerOpen), Code::ServiceUnavailable);
        assert_eq!(code(Kind::StreamBroken), Code::ServiceUnavailable);
        assert_eq!(code(Kind::StreamCut), Code::GenerationFailed);
        assert_eq!(code(Kind::InputFiles), Code::InternalError);
        let upstream = |error| AttemptFailure::from(error).code();
        assert_eq!(upstream(UpstreamError::Timeout), Code::GenerationTimeout);
        assert_eq!(
            upstream(UpstreamError::Connection("refused".into())),
            Code::ServiceUnavailable
        );
        assert_eq!(upstream(UpstreamError::TooLarge(1)), Code::GenerationFailed);
        assert_eq!(
            upstream(UpstreamError::HostNotAllowed("evil.example".into())),
            Code::InternalError
        );
    }

    #[test]
    fn the_retry_verdict_and_the_clients_retryable_are_distinct() {
        // The adapter says another attempt is pointless, though the code is one a
        // client may retry later.
        let reported = AttemptFailure::from(types::Failure {
            code: Code::RateLimited,
            message: "daily quota".into(),
            retryable: false,
            retry_after_ms: Some(3000),
        });
        assert!(!reported.retry && reported.code().retryable());
        assert_eq!(reported.retry_after_ms, Some(3000));
        assert_eq!(reported.side(), Side::Provider);
        assert!(!AttemptFailure::new(Kind::NoProvider, "").retry);
        assert!(AttemptFailure::from(UpstreamError::BadUrl("x".into())).retry);
    }

    #[test]
    fn sides_follow_whose_fault_it_is() {
        let reported = |code| AttemptFailure::new(Kind::Reported(code), "").side();
        assert_eq!(reported(Code::InputValidationError), Side::Client);
        assert_eq!(reported(Code::ModelOverloaded), Side::Provider);
        assert_eq!(reported(Code::InternalError), Side::Platform);
        assert_eq!(
            AttemptFailure::new(Kind::Interrupted, "").side(),
            Side::Platform
        );
    }

    /// Regression: the attempt record printed Rust debug names (`RateLimited`).
    #[test]
    fn the_detail_names_the_code_as_the_api_does() {
        let failure = AttemptFailure::new(Kind::Reported(Code::RateLimited), "slow down");
        assert_eq!(failure.detail(), "RATE_LIMITED: slow down");
    }
}
