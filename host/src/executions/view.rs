//! What clients see of an execution (SPEC §4): typed views, so that the API
//! document (`GET /openapi.json`) is derived from the very types the answers are
//! rendered from.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::model::{Execution, ExecutionError, Status};
use crate::money::Micros;

/// The execution object.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Execution)]
pub struct ExecutionView<'a> {
    #[schema(example = "exec_4b0c2f9e-3f1a-4c55-9d5e-0d8f1c2b7a61")]
    pub id: &'a str,
    /// always `execution`
    pub object: &'static str,
    pub status: Status,
    /// the model that served it (a fallback's, when it went on with one)
    pub model: &'a str,
    /// the client's own key-value pairs, as sent
    #[schema(value_type = Object)]
    pub metadata: &'a Value,
    pub hold_amount: Micros,
    pub estimated_cost: Micros,
    /// what it cost, once settled
    pub cost: Option<Micros>,
    /// from creation to completion
    pub latency_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    /// present once `COMPLETED`
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub result: Option<ExecutionResult<'a>>,
    /// present once `FAILED`, `CANCELLED` or `EXPIRED` for a reason
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub error: Option<&'a ExecutionError>,
    /// the fallback models it was created with, in order
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub fallback_models: Vec<&'a str>,
}

/// `result` of a completed execution.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionResult<'a> {
    /// the canonical output of the model's modality (SPEC §4)
    #[schema(value_type = Object)]
    pub output: &'a Value,
}

/// The `202` answer to a create that has not finished.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AcceptedExecution)]
pub struct AcceptedView<'a> {
    pub id: &'a str,
    pub status: Status,
    pub model: &'a str,
    pub hold_amount: Micros,
    pub estimated_cost: Micros,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub fallback_models: Vec<&'a str>,
}

/// `GET /v1/executions/{id}/result` of a completed execution.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ExecutionOutcome)]
pub struct ResultView<'a> {
    pub execution_id: &'a str,
    pub status: Status,
    #[schema(value_type = Object)]
    pub output: Option<&'a Value>,
    pub cost: Option<Micros>,
    pub latency_ms: Option<i64>,
}

impl Execution {
    /// The execution object of SPEC §4.
    pub fn view(&self) -> ExecutionView<'_> {
        ExecutionView {
            id: &self.id,
            object: "execution",
            status: self.status,
            model: &self.model,
            metadata: &self.metadata,
            hold_amount: self.hold_amount,
            estimated_cost: self.estimated_cost,
            cost: self.cost,
            latency_ms: self.latency_ms(),
            created_at: self.created_at,
            started_at: self.started_at,
            completed_at: self.completed_at,
            expires_at: self.expires_at,
            result: self
                .output
                .as_ref()
                .map(|output| ExecutionResult { output }),
            error: self.error.as_ref(),
            fallback_models: self.fallback_slugs(),
        }
    }

    /// The `202` answer to a create.
    pub fn accepted_view(&self) -> AcceptedView<'_> {
        AcceptedView {
            id: &self.id,
            status: self.status,
            model: &self.model,
            hold_amount: self.hold_amount,
            estimated_cost: self.estimated_cost,
            expires_at: self.expires_at,
            created_at: self.created_at,
            fallback_models: self.fallback_slugs(),
        }
    }

    /// The answer of `GET /v1/executions/{id}/result`.
    pub fn result_view(&self) -> ResultView<'_> {
        ResultView {
            execution_id: &self.id,
            status: self.status,
            output: self.output.as_ref(),
            cost: self.cost,
            latency_ms: self.latency_ms(),
        }
    }

    fn fallback_slugs(&self) -> Vec<&str> {
        self.fallbacks.iter().map(|f| f.model.as_str()).collect()
    }
}
