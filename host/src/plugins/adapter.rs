//! The typed face of a loaded adapter: one async method per contract function, each
//! run on the adapters' own threads under the call budget. A call that produces no
//! answer (a trap, an overrun, a full pool) is logged here and comes back as the
//! answer a failing adapter would give, so callers handle one kind of failure.

use std::sync::Arc;

use super::{CallError, LoadedPlugin, wit};

/// What a call that produced no answer becomes: a retryable `INTERNAL_ERROR`, so the
/// attempt fails and another provider may serve.
fn no_answer(error: CallError) -> wit::Failure {
    tracing::warn!(%error, "plugin call failed");
    wit::Failure {
        code: wit::ErrorCode::InternalError,
        message: error.to_string(),
        retryable: true,
        retry_after_ms: None,
    }
}

impl LoadedPlugin {
    /// Usage `input` (canonical JSON text) is expected to consume.
    pub async fn estimate(
        self: &Arc<Self>,
        model: &wit::Model,
        input: String,
    ) -> Result<wit::Usage, wit::Failure> {
        let (slug, provider_model) = (model.slug.clone(), model.provider_model.clone());
        self.call_async("estimate", move |adapter, store| {
            adapter.call_estimate(store, &slug, &provider_model, &input)
        })
        .await
        .map_err(no_answer)?
    }

    /// The request that starts a generation from `input` (canonical JSON text).
    pub async fn build_submit(
        self: &Arc<Self>,
        ctx: &wit::CallContext,
        input: String,
    ) -> Result<wit::HttpRequest, wit::Failure> {
        let ctx = ctx.clone();
        self.call_async("build-submit", move |adapter, store| {
            adapter.call_build_submit(store, &ctx, &input)
        })
        .await
        .map_err(no_answer)?
    }

    /// The adapter's reading of a whole response to the submit or to a poll.
    pub async fn parse_response(
        self: &Arc<Self>,
        ctx: &wit::CallContext,
        answered: wit::Answered,
        response: wit::HttpResponse,
    ) -> wit::Outcome {
        let ctx = ctx.clone();
        self.call_async("parse-response", move |adapter, store| {
            adapter.call_parse_response(store, &ctx, &answered, &response)
        })
        .await
        .unwrap_or_else(|error| wit::Outcome::Failed(no_answer(error)))
    }

    /// The request that asks how `job` is doing.
    pub async fn build_poll(
        self: &Arc<Self>,
        ctx: &wit::CallContext,
        job: &wit::Job,
    ) -> Result<wit::HttpRequest, wit::Failure> {
        let (ctx, job) = (ctx.clone(), job.clone());
        self.call_async("build-poll", move |adapter, store| {
            adapter.call_build_poll(store, &ctx, &job)
        })
        .await
        .map_err(no_answer)?
    }

    /// The request that stops `job`; `None` when the provider cannot, or the adapter
    /// gave no answer (a cancel is best effort).
    pub async fn build_cancel(
        self: &Arc<Self>,
        ctx: &wit::CallContext,
        job: wit::Job,
    ) -> Option<wit::HttpRequest> {
        let ctx = ctx.clone();
        self.call_async("build-cancel", move |adapter, store| {
            adapter.call_build_cancel(store, &ctx, &job)
        })
        .await
        .unwrap_or_else(|error| {
            no_answer(error);
            None
        })
    }

    /// Whether a provider's callback about `job` means the job moved on. An adapter
    /// that gives no answer wakes the job: a poll costs little and asks the provider.
    pub async fn parse_webhook(
        self: &Arc<Self>,
        ctx: &wit::CallContext,
        job: wit::Job,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> wit::CallbackVerdict {
        let ctx = ctx.clone();
        self.call_async("parse-webhook", move |adapter, store| {
            adapter.call_parse_webhook(store, &ctx, &job, &headers, &body)
        })
        .await
        .unwrap_or_else(|error| {
            no_answer(error);
            wit::CallbackVerdict::PollNow
        })
    }

    /// The adapter's reading of one server-sent event's `data`.
    pub async fn parse_stream_event(
        self: &Arc<Self>,
        ctx: &wit::CallContext,
        data: String,
    ) -> wit::StreamEvent {
        let ctx = ctx.clone();
        self.call_async("parse-stream-event", move |adapter, store| {
            adapter.call_parse_stream_event(store, &ctx, &data)
        })
        .await
        .unwrap_or_else(|error| wit::StreamEvent::Failed(no_answer(error)))
    }
}
