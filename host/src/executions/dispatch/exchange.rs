//! One request to a provider through the host: sent, read whole or streamed, and
//! classified by the adapter.

use anyhow::Result;
use std::time::Instant;

use super::*;
use crate::clock;
use crate::plugins::types;
use crate::routing::Candidate;
use crate::upstream;

impl Dispatcher {
    /// Sends `request` and has the adapter classify the answer. The flag says whether
    /// the provider answered with a success status (so a failure is the job's own).
    /// When `ctx.stream` is set and the provider answers with an event stream, each
    /// event goes through the adapter and text deltas reach the client as they come.
    ///
    /// `None` when the execution ended (cancelled, expired) first: a request waiting
    /// for the provider's bulkhead is dropped, and so is one in flight, closing its
    /// connection, unless it is a submit to a provider that can cancel jobs: that one
    /// is let answer, so the job it started can be stopped.
    pub(super) async fn exchange(
        &self,
        candidate: &Candidate,
        ctx: &types::CallContext,
        answered: &types::Answered,
        request: &types::HttpRequest,
        execution_id: &str,
    ) -> Option<(Answer, bool)> {
        let Some(mut admission) = candidate.provider.admit(clock::instant()) else {
            let open =
                AttemptFailure::new(Kind::BreakerOpen, "the provider's circuit breaker is open");
            return Some((Answer::Failed(open), false));
        };
        // Returning early drops the admission, which gives the breaker's turn back.
        let ended = self.executions.ended(execution_id);
        tokio::pin!(ended);
        tokio::select! {
            () = admission.take_slot(execution_id) => {}
            () = &mut ended => {
                tracing::info!(execution = %execution_id, provider = %candidate.provider.name, "stopped waiting for the provider's bulkhead: the execution ended");
                return None;
            }
        }
        let started = Instant::now();
        let sent = self.send(candidate, ctx, answered, request, execution_id);
        let submit = matches!(answered, types::Answered::Submit(_));
        let result = if submit && candidate.plugin.manifest.capabilities.cancel {
            sent.await
        } else {
            tokio::select! {
                result = sent => result,
                () = &mut ended => {
                    tracing::info!(execution = %execution_id, "provider request dropped: the execution ended");
                    return None;
                }
            }
        };
        Some(match result {
            Ok((outcome, answered)) => {
                // A provider that answers, even "no" to a bad input, is healthy.
                let healthy = !matches!(&outcome, Answer::Failed(f) if f.retry);
                admission.record(healthy, Some(started.elapsed()));
                (outcome, answered)
            }
            Err(error) => {
                admission.record(false, None);
                (Answer::Failed(error.into()), false)
            }
        })
    }

    /// [`Dispatcher::exchange`]'s request and the adapter's reading of the answer.
    pub(super) async fn send(
        &self,
        candidate: &Candidate,
        ctx: &types::CallContext,
        answered: &types::Answered,
        request: &types::HttpRequest,
        execution_id: &str,
    ) -> Result<(Answer, bool), upstream::UpstreamError> {
        let allowed = candidate.provider.allowed_hosts(&candidate.plugin);
        let target = target(candidate, &allowed);
        let response = self.upstream.open(&target, request).await?;
        let success = response.status().is_success();
        let streamed = ctx.stream
            && success
            && response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
        let outcome = if streamed {
            self.consume_stream(candidate, ctx, execution_id, response)
                .await
        } else {
            let response = upstream::read(response).await?;
            candidate
                .plugin
                .parse_response(ctx, answered, response)
                .await
                .into()
        };
        Ok((outcome, success))
    }

    /// Reads a provider's server-sent events through the adapter, forwarding text
    /// deltas to the client's stream, and ends with the completed text and usage.
    pub(super) async fn consume_stream(
        &self,
        candidate: &Candidate,
        ctx: &types::CallContext,
        execution_id: &str,
        response: reqwest::Response,
    ) -> Answer {
        let mut forwarded = false;
        let outcome = self
            .read_stream(candidate, ctx, execution_id, response, &mut forwarded)
            .await;
        if forwarded && matches!(outcome, Answer::Failed(_)) {
            // The client saw text of an attempt that failed: tell it to drop that
            // text before a retry streams its own.
            self.executions.publish_reset(execution_id);
        }
        outcome
    }

    /// [`Dispatcher::consume_stream`]'s reading; `forwarded` is set once a delta
    /// reached the client.
    pub(super) async fn read_stream(
        &self,
        candidate: &Candidate,
        ctx: &types::CallContext,
        execution_id: &str,
        response: reqwest::Response,
        forwarded: &mut bool,
    ) -> Answer {
        use eventsource_stream::Eventsource;
        use futures_util::StreamExt;
        let mut events = response.bytes_stream().eventsource();
        let mut text = String::new();
        let mut usage: Option<types::Usage> = None;
        let mut finished = false;
        while let Some(event) = events.next().await {
            let data = match event {
                Ok(event) => event.data,
                Err(error) => {
                    let message = format!("the provider's stream broke: {error}");
                    return Answer::Failed(AttemptFailure::new(Kind::StreamBroken, message));
                }
            };
            match candidate.plugin.parse_stream_event(ctx, data).await {
                types::StreamEvent::Delta(delta) => {
                    text.push_str(&delta);
                    self.executions.publish_delta(execution_id, delta);
                    *forwarded = true;
                }
                types::StreamEvent::Done(completion) => {
                    finished = true;
                    if let Some(full) = completion.text {
                        text = full;
                    }
                    // A closing marker without usage keeps what an earlier event reported.
                    if usage.is_none() || !completion.usage.is_empty() {
                        usage = Some(completion.usage);
                    }
                }
                types::StreamEvent::Skip => {}
                types::StreamEvent::Failed(failure) => return Answer::Failed(failure.into()),
            }
        }
        if !finished {
            // Cut off: what arrived is not the answer, and is not billed.
            return Answer::Failed(AttemptFailure::new(
                Kind::StreamCut,
                "the provider's stream ended before it finished",
            ));
        }
        let usage = usage.unwrap_or(types::Usage {
            requests: 1,
            images: 0,
            megapixels_milli: 0,
            seconds_milli: 0,
            input_tokens: 0,
            // Four characters a token, when the provider reported no usage.
            output_tokens: (text.chars().count() as u64).div_ceil(4),
        });
        Answer::Completed(types::Completion {
            text: Some(text),
            assets: Vec::new(),
            usage,
        })
    }
}
