//! The typed face of a loaded adapter: one async method per contract function, each
//! run on the calling task under the call budget. A call that produces no
//! answer (a trap, an overrun, a full pool) is logged here and comes back as the
//! answer a failing adapter would give, so callers handle one kind of failure.

use std::sync::Arc;

use super::types::{
    Answered, CallContext, CallbackVerdict, Failure, HttpRequest, HttpResponse, Job, Model,
    Outcome, StreamEvent, Usage,
};
use super::{CallError, LoadedPlugin, wit};
use crate::error::Code;

/// What a call that produced no answer becomes: a retryable `INTERNAL_ERROR`, so the
/// attempt fails and another provider may serve.
fn no_answer(error: CallError) -> Failure {
    tracing::warn!(%error, "plugin call failed");
    Failure {
        code: Code::InternalError,
        message: error.to_string(),
        retryable: true,
        retry_after_ms: None,
    }
}

impl LoadedPlugin {
    /// Usage `input` (canonical JSON text) is expected to consume.
    pub async fn estimate(
        self: &Arc<Self>,
        model: &Model,
        input: String,
    ) -> Result<Usage, Failure> {
        let model = wit::ModelRef::from(model);
        self.call_async("estimate", move |adapter, store| {
            Box::pin(async move { adapter.call_estimate(store, &model, &input).await })
        })
        .await
        .map_err(no_answer)?
        .map(Usage::from)
        .map_err(Failure::from)
    }

    /// The request that starts a generation from `input` (canonical JSON text).
    pub async fn build_submit(
        self: &Arc<Self>,
        ctx: &CallContext,
        input: String,
    ) -> Result<HttpRequest, Failure> {
        let ctx = wit::CallContext::from(ctx);
        self.call_async("build-submit", move |adapter, store| {
            Box::pin(async move { adapter.call_build_submit(store, &ctx, &input).await })
        })
        .await
        .map_err(no_answer)?
        .map(HttpRequest::from)
        .map_err(Failure::from)
    }

    /// The adapter's reading of a whole response to the submit or to a poll.
    pub async fn parse_response(
        self: &Arc<Self>,
        ctx: &CallContext,
        answered: &Answered,
        response: HttpResponse,
    ) -> Outcome {
        let ctx = wit::CallContext::from(ctx);
        let answered = wit::Answered::from(answered);
        let response = wit::HttpResponse::from(response);
        self.call_async("parse-response", move |adapter, store| {
            Box::pin(async move {
                adapter
                    .call_parse_response(store, &ctx, &answered, &response)
                    .await
            })
        })
        .await
        .map_or_else(|error| Outcome::Failed(no_answer(error)), Outcome::from)
    }

    /// The request that asks how `job` is doing.
    pub async fn build_poll(
        self: &Arc<Self>,
        ctx: &CallContext,
        job: &Job,
    ) -> Result<HttpRequest, Failure> {
        let (ctx, job) = (wit::CallContext::from(ctx), wit::Job::from(job));
        self.call_async("build-poll", move |adapter, store| {
            Box::pin(async move { adapter.call_build_poll(store, &ctx, &job).await })
        })
        .await
        .map_err(no_answer)?
        .map(HttpRequest::from)
        .map_err(Failure::from)
    }

    /// The request that stops `job`; `None` when the provider cannot, or the adapter
    /// gave no answer (a cancel is best effort).
    pub async fn build_cancel(
        self: &Arc<Self>,
        ctx: &CallContext,
        job: &Job,
    ) -> Option<HttpRequest> {
        let (ctx, job) = (wit::CallContext::from(ctx), wit::Job::from(job));
        self.call_async("build-cancel", move |adapter, store| {
            Box::pin(async move { adapter.call_build_cancel(store, &ctx, &job).await })
        })
        .await
        .unwrap_or_else(|error| {
            no_answer(error);
            None
        })
        .map(HttpRequest::from)
    }

    /// Whether a provider's callback about `job` means the job moved on. An adapter
    /// that gives no answer wakes the job: a poll costs little and asks the provider.
    pub async fn parse_webhook(
        self: &Arc<Self>,
        ctx: &CallContext,
        job: &Job,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> CallbackVerdict {
        let (ctx, job) = (wit::CallContext::from(ctx), wit::Job::from(job));
        self.call_async("parse-webhook", move |adapter, store| {
            Box::pin(async move {
                adapter
                    .call_parse_webhook(store, &ctx, &job, &headers, &body)
                    .await
            })
        })
        .await
        .map_or_else(
            |error| {
                no_answer(error);
                CallbackVerdict::PollNow
            },
            CallbackVerdict::from,
        )
    }

    /// The adapter's reading of one server-sent event's `data`.
    pub async fn parse_stream_event(
        self: &Arc<Self>,
        ctx: &CallContext,
        data: String,
    ) -> StreamEvent {
        let ctx = wit::CallContext::from(ctx);
        self.call_async("parse-stream-event", move |adapter, store| {
            Box::pin(async move { adapter.call_parse_stream_event(store, &ctx, &data).await })
        })
        .await
        .map_or_else(
            |error| StreamEvent::Failed(no_answer(error)),
            StreamEvent::from,
        )
    }
}
