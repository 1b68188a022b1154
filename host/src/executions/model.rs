//! The execution record and what a client sees of it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Code;
use crate::money::Micros;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(as = ExecutionStatus)]
pub enum Status {
    Pending,
    Processing,
    AwaitingWebhook,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Cancelled | Status::Expired
        )
    }

    /// The name clients see, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Processing => "PROCESSING",
            Status::AwaitingWebhook => "AWAITING_WEBHOOK",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Cancelled => "CANCELLED",
            Status::Expired => "EXPIRED",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        serde_json::from_value(Value::String(text.to_string())).ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    #[default]
    Async,
    Sync,
    Streaming,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutionError {
    pub code: Code,
    pub message: String,
    pub retryable: bool,
}

impl ExecutionError {
    pub fn new(code: Code) -> Self {
        ExecutionError {
            code,
            message: code.client_message().to_string(),
            retryable: code.retryable(),
        }
    }
}

/// A provider job an attempt is waiting on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub state: String,
}

/// One try at one provider. Never shown to clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub id: String,
    /// the model it ran (an execution may fall back to another)
    #[serde(default)]
    pub model: String,
    pub provider: String,
    pub plugin: String,
    pub plugin_version: String,
    pub plugin_sha256: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub job: Option<JobRecord>,
    /// `completed`, or the failure's code and the provider's message (for operators)
    pub outcome: Option<String>,
    /// the normalized code of a failed attempt
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Code>,
}

impl Attempt {
    /// A new attempt of `execution`'s current model at `candidate`, started `now`.
    pub fn begin(
        execution: &Execution,
        candidate: &crate::routing::Candidate,
        now: DateTime<Utc>,
    ) -> Attempt {
        Attempt {
            id: crate::ids::attempt_id(&execution.id, execution.attempts.len()),
            model: execution.model.clone(),
            provider: candidate.provider.name.clone(),
            plugin: candidate.plugin.name.clone(),
            plugin_version: candidate.plugin.version.clone(),
            plugin_sha256: candidate.plugin.sha256.clone(),
            started_at: now,
            ended_at: None,
            job: None,
            outcome: None,
            failure: None,
        }
    }

    /// Starts `attempt`: the execution is `PROCESSING` from `now`.
    pub fn start(execution: &mut Execution, attempt: Attempt, now: DateTime<Utc>) {
        execution.started_at.get_or_insert(now);
        if execution.status != Status::Processing {
            execution.set_status(Status::Processing, now);
        }
        execution.attempts.push(attempt);
    }

    /// Whether it ran `model` (a record from before fallbacks names none: it ran the
    /// only model its execution had).
    pub fn ran(&self, model: &str) -> bool {
        self.model == model || self.model.is_empty()
    }
}

/// A model an execution may go on with when every provider of the one before it
/// has failed, with what the input is expected to consume there (to rank its
/// providers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fallback {
    pub model: String,
    pub usage_estimate: crate::plugins::types::Usage,
}

/// The `Idempotency-Key` an execution was created with: the request it stands for,
/// and until when a request with that key is answered with this execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub request_hash: String,
    pub expires_at: DateTime<Utc>,
}

/// Stored as JSON; absent optional fields are left out (the record is rewritten
/// on every transition, and its size is most of an accept's write).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Execution {
    pub id: String,
    pub organization_id: String,
    /// the model serving it: the one asked for, or the fallback it went on with
    pub model: String,
    /// the models it may fall back to, in order
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<Fallback>,
    pub status: Status,
    pub input: Value,
    pub metadata: Value,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    pub hold_amount: Micros,
    pub estimated_cost: Micros,
    /// what the adapter expects the input to consume (ranks providers on retries)
    #[serde(default)]
    pub usage_estimate: crate::plugins::types::Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Micros>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExecutionError>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// when each status was entered
    pub transitions: Vec<(Status, DateTime<Utc>)>,
}

impl Execution {
    pub fn latency_ms(&self) -> Option<i64> {
        self.completed_at
            .map(|done| (done - self.created_at).num_milliseconds())
    }

    /// The model to go on with when every provider of the current one has failed.
    pub fn next_fallback(&self) -> Option<&Fallback> {
        match self.fallbacks.iter().position(|f| f.model == self.model) {
            Some(current) => self.fallbacks.get(current + 1),
            None => self.fallbacks.first(),
        }
    }

    /// Failed attempts of the model serving now (each model has its own budget).
    pub fn failures_of_current_model(&self) -> u32 {
        self.attempts
            .iter()
            .filter(|a| a.failure.is_some() && a.ran(&self.model))
            .count() as u32
    }

    /// The attempt still running, if any.
    pub fn open_attempt(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.ended_at.is_none())
    }

    pub fn open_attempt_mut(&mut self) -> Option<&mut Attempt> {
        self.attempts.last_mut().filter(|a| a.ended_at.is_none())
    }

    /// Ends the running attempt, if any, with `outcome`.
    pub fn close_attempt(&mut self, outcome: &str, failure: Option<Code>, at: DateTime<Utc>) {
        if let Some(attempt) = self.open_attempt_mut() {
            attempt.ended_at = Some(at);
            attempt.outcome = Some(outcome.to_string());
            attempt.failure = failure;
        }
    }

    /// The code an execution that failed with `last` reports: the most informative of
    /// its attempts' failures, the latest of equals (a failover that ends on "no
    /// provider available" still reports why the first provider failed).
    pub fn final_failure(&self, last: Code) -> Code {
        self.attempts
            .iter()
            .filter_map(|attempt| attempt.failure)
            .chain([last])
            .max_by_key(|code| code.informativeness())
            .unwrap_or(last)
    }

    pub fn set_status(&mut self, status: Status, at: DateTime<Utc>) {
        self.status = status;
        self.transitions.push((status, at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_are_the_serialized_ones() {
        use Status::*;
        for status in [
            Pending,
            Processing,
            AwaitingWebhook,
            Completed,
            Failed,
            Cancelled,
            Expired,
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
    }

    fn failed_attempt(failure: Code) -> Attempt {
        Attempt {
            id: "att_1".into(),
            model: "m".into(),
            provider: "p".into(),
            plugin: "p".into(),
            plugin_version: "1".into(),
            plugin_sha256: "0".into(),
            started_at: Utc::now(),
            ended_at: Some(Utc::now()),
            job: None,
            outcome: Some(failure.to_string()),
            failure: Some(failure),
        }
    }

    #[test]
    fn the_final_failure_is_the_most_informative_and_the_latest_of_equals() {
        let mut execution: Execution = serde_json::from_value(serde_json::json!({
            "id": "exec_1", "organization_id": "org_1", "model": "m", "status": "PROCESSING",
            "input": {}, "metadata": {}, "mode": "ASYNC", "hold_amount": "0.01",
            "estimated_cost": "0.01", "created_at": "2026-11-24T10:00:00Z",
            "expires_at": "2026-11-24T11:00:00Z", "attempts": [], "transitions": [],
        }))
        .unwrap();
        assert_eq!(
            execution.final_failure(Code::ServiceUnavailable),
            Code::ServiceUnavailable
        );
        execution.attempts = vec![
            failed_attempt(Code::ModelOverloaded),
            failed_attempt(Code::GenerationFailed),
        ];
        // The first provider said it was overloaded; the last could not be reached.
        assert_eq!(
            execution.final_failure(Code::ServiceUnavailable),
            Code::ModelOverloaded
        );
        assert_eq!(
            execution.final_failure(Code::GenerationTimeout),
            Code::GenerationTimeout
        );
    }
}
