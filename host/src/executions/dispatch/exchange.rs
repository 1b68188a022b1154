//! One request to a provider through the host: sent, read whole or streamed, and
//! classified by the adapter.

use anyhow::Result;
use std::time::{Duration, Instant};

use super::*;
use crate::clock;
use crate::config::StreamTimeouts;
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
            _ = &mut ended => {
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
                _ = &mut ended => {
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
        // A streamed answer's first token is due within the model's timeout of the
        // request, headers included: a silent provider fails the attempt early.
        let timeouts = self.settings.stream_timeouts(&ctx.slug);
        let first_due = Instant::now() + timeouts.first_token;
        let opened = self.upstream.open(&target, request);
        let response = if ctx.stream {
            match tokio::time::timeout_at(first_due.into(), opened).await {
                Ok(response) => response?,
                Err(_) => return Ok((Answer::Failed(silent(timeouts.first_token, false)), false)),
            }
        } else {
            opened.await?
        };
        let success = response.status().is_success();
        let streamed = ctx.stream
            && success
            && response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
        let outcome = if streamed {
            self.consume_stream(
                candidate,
                ctx,
                execution_id,
                response,
                (first_due, timeouts),
            )
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

    /// Reads a provider's server-sent events through the adapter, passing text
    /// deltas to the execution's stream, and ends with the completed text and usage.
    /// An event that carries something is due by `first_due`, then within the idle
    /// timeout of the one before (keep-alives do not count). A failure leaves the
    /// text the stream's readers got as it is, for the next attempt to reproduce or
    /// continue.
    pub(super) async fn consume_stream(
        &self,
        candidate: &Candidate,
        ctx: &types::CallContext,
        execution_id: &str,
        response: reqwest::Response,
        (first_due, timeouts): (Instant, StreamTimeouts),
    ) -> Answer {
        use eventsource_stream::Eventsource;
        use futures_util::StreamExt;
        let mut events = response.bytes_stream().eventsource();
        let mut answer = Assembled::default();
        let mut due = first_due;
        let mut started = false;
        loop {
            let event = match tokio::time::timeout_at(due.into(), events.next()).await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(_) if started => return Answer::Failed(silent(timeouts.idle, true)),
                Err(_) => return Answer::Failed(silent(timeouts.first_token, false)),
            };
            let data = match event {
                Ok(event) => event.data,
                Err(error) => {
                    let message = format!("the provider's stream broke: {error}");
                    return Answer::Failed(AttemptFailure::new(Kind::StreamBroken, message));
                }
            };
            let event = candidate.plugin.parse_stream_event(ctx, data).await;
            if !matches!(event, types::StreamEvent::Skip) {
                started = true;
                due = Instant::now() + timeouts.idle;
            }
            match event {
                types::StreamEvent::Delta(delta) => {
                    if !delta.text.is_empty() {
                        self.executions.publish_delta(execution_id, &delta.text);
                    }
                    answer.add(delta);
                }
                types::StreamEvent::Done(completion) => answer.finish(completion),
                types::StreamEvent::Skip => {}
                types::StreamEvent::Failed(failure) => return Answer::Failed(failure.into()),
            }
        }
        // The body ended cleanly: an answer the model finished is complete even
        // when the provider left out its end-of-stream marker.
        match answer.completion() {
            Some(completion) => Answer::Completed(completion),
            // Cut off: what arrived is not the answer, and is not billed.
            None => Answer::Failed(AttemptFailure::new(
                Kind::StreamCut,
                "the provider's stream ended before it finished",
            )),
        }
    }
}

/// A provider that went silent: no first token within `waited`, or (`started`) no
/// event for `waited` after some. Not retried on the same provider before the
/// others (a retry prefers a provider not tried yet).
fn silent(waited: Duration, started: bool) -> AttemptFailure {
    let message = if started {
        format!(
            "the provider's stream stalled: no event for {} ms",
            waited.as_millis()
        )
    } else {
        format!(
            "the provider sent no first token within {} ms",
            waited.as_millis()
        )
    };
    AttemptFailure::new(Kind::Timeout, message)
}

/// A streamed answer put together from its events: text, tool calls joined from
/// their fragments by index, the finish reason and the usage.
#[derive(Debug, Default)]
struct Assembled {
    text: String,
    tool_calls: std::collections::BTreeMap<u32, types::ToolCall>,
    finish_reason: Option<types::FinishReason>,
    /// as the provider reported it (none reported: empty, and the host charges the
    /// estimate)
    usage: types::Usage,
    /// the adapter saw the stream's end
    finished: bool,
}

impl Assembled {
    fn add(&mut self, delta: types::StreamDelta) {
        self.text.push_str(&delta.text);
        for fragment in delta.tool_calls {
            let call = self
                .tool_calls
                .entry(fragment.index)
                .or_insert_with(|| types::ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
            if let Some(id) = fragment.id.filter(|id| !id.is_empty()) {
                call.id = id;
            }
            if let Some(name) = fragment.name.filter(|name| !name.is_empty()) {
                call.name = name;
            }
            call.arguments.push_str(&fragment.arguments);
        }
        if delta.finish_reason.is_some() {
            self.finish_reason = delta.finish_reason;
        }
    }

    /// The stream's end; what it states replaces what the deltas assembled.
    fn finish(&mut self, completion: types::Completion) {
        self.finished = true;
        if let Some(full) = completion.text {
            self.text = full;
        }
        if !completion.tool_calls.is_empty() {
            self.tool_calls = (0..).zip(completion.tool_calls).collect();
        }
        if completion.finish_reason.is_some() {
            self.finish_reason = completion.finish_reason;
        }
        // A closing marker without usage keeps what an earlier event reported.
        if !completion.usage.is_empty() {
            self.usage = completion.usage;
        }
    }

    /// The completed answer; `None` when the stream never finished: neither its
    /// end nor why the model stopped came.
    fn completion(self) -> Option<types::Completion> {
        if !self.finished && self.finish_reason.is_none() {
            return None;
        }
        Some(types::Completion {
            text: Some(self.text),
            assets: Vec::new(),
            usage: self.usage,
            finish_reason: self.finish_reason,
            tool_calls: self.tool_calls.into_values().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(
        index: u32,
        id: Option<&str>,
        name: Option<&str>,
        arguments: &str,
    ) -> types::ToolCallDelta {
        types::ToolCallDelta {
            index,
            id: id.map(Into::into),
            name: name.map(Into::into),
            arguments: arguments.into(),
        }
    }

    fn delta(text: &str, tool_calls: Vec<types::ToolCallDelta>) -> types::StreamDelta {
        types::StreamDelta {
            text: text.into(),
            tool_calls,
            finish_reason: None,
        }
    }

    fn end() -> types::Completion {
        types::Completion {
            text: None,
            assets: Vec::new(),
            usage: types::Usage::default(),
            finish_reason: None,
            tool_calls: Vec::new(),
        }
    }

    #[test]
    fn tool_call_fragments_are_joined_by_index_in_order() {
        let mut answer = Assembled::default();
        answer.add(delta(
            "",
            vec![fragment(0, Some("call_a"), Some("get_weather"), "")],
        ));
        answer.add(delta(
            "",
            vec![fragment(1, Some("call_b"), Some("get_time"), "{}")],
        ));
        answer.add(delta("", vec![fragment(0, None, None, "{\"city\":")]));
        answer.add(delta("", vec![fragment(0, None, None, "\"Paris\"}")]));
        answer.add(types::StreamDelta {
            finish_reason: Some(types::FinishReason::ToolCalls),
            ..delta("", Vec::new())
        });
        answer.finish(end());
        let completion = answer.completion().unwrap();
        assert_eq!(completion.text.as_deref(), Some(""));
        assert_eq!(
            completion.finish_reason,
            Some(types::FinishReason::ToolCalls)
        );
        let calls: Vec<(&str, &str, &str)> = completion
            .tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("call_a", "get_weather", "{\"city\":\"Paris\"}"),
                ("call_b", "get_time", "{}")
            ]
        );
    }

    #[test]
    fn the_end_of_a_stream_overrides_what_deltas_said_and_a_stream_without_it_is_cut() {
        let mut answer = Assembled::default();
        answer.add(delta("Hel", Vec::new()));
        answer.add(delta("lo", Vec::new()));
        let cut = std::mem::take(&mut answer);
        assert!(cut.completion().is_none());

        // Why the model stopped, then the body's end without the provider's marker.
        let mut answer = Assembled::default();
        answer.add(delta("Hello", Vec::new()));
        answer.add(types::StreamDelta {
            finish_reason: Some(types::FinishReason::Stop),
            ..delta("", Vec::new())
        });
        let completion = answer.completion().unwrap();
        assert_eq!(completion.text.as_deref(), Some("Hello"));
        assert!(completion.usage.is_empty());

        let mut answer = Assembled::default();
        answer.add(delta("Hel", Vec::new()));
        answer.finish(types::Completion {
            text: Some("Hello".into()),
            finish_reason: Some(types::FinishReason::Length),
            ..end()
        });
        let completion = answer.completion().unwrap();
        assert_eq!(completion.text.as_deref(), Some("Hello"));
        assert_eq!(completion.finish_reason, Some(types::FinishReason::Length));
        assert!(completion.tool_calls.is_empty());
    }
}
