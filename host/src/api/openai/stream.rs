//! A streamed chat completion: `text/event-stream` of `chat.completion.chunk`s,
//! ending `data: [DONE]`, relayed from the execution's event stream (the one the
//! native `STREAMING` mode reads).
//!
//! * Headers go out only once a provider has answered: the first text, or the end.
//!   An execution that fails before that is an ordinary HTTP error.
//! * No delta is lost and none is spliced ([`Relay`]): a reset attempt is held back
//!   until it has reproduced the delivered text; a reader that lagged behind makes up
//!   the text from the final output.
//! * A stream never ends as a truncated success: after text went out, a failure,
//!   a divergent retry or a timeout is one in-band `data: {"error": …}` and the
//!   stream closes without `[DONE]`.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

use super::{HangUp, RequestId, chat, deadline, ended_error, errors, finished, timed_out};
use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, Code};
use crate::executions::relay::{Diverged, Relay};
use crate::executions::{Created, Execution, Status, StreamMessage};

/// Frames a slow client may be behind by before the relay waits for it (and the
/// platform's broadcast, which does not wait, may leave it behind).
const FRAMES_BUFFERED: usize = 64;

/// What the execution did next, as the stream shows it.
enum Step {
    /// text to send
    Text(String),
    /// it ended
    Ended(Box<Execution>),
    /// a retry's text is not what was delivered
    Diverged,
    /// the wait is over
    TimedOut,
    /// reading the store failed
    Failed(ApiError),
}

/// The chunks of one answer.
struct Chunks {
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
}

impl Chunks {
    fn of(execution: &Execution, include_usage: bool) -> Chunks {
        Chunks {
            id: execution.id.clone(),
            created: execution.created_at.timestamp(),
            model: execution.model.clone(),
            include_usage,
        }
    }

    fn frame(value: &Value) -> Bytes {
        Bytes::from(format!("data: {value}\n\n"))
    }

    fn chunk(&self, choices: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn delta(&self, delta: Value, finish_reason: Value) -> Bytes {
        Self::frame(&self.chunk(json!([{
            "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason,
        }])))
    }

    fn role(&self) -> Bytes {
        self.delta(json!({"role": "assistant", "content": ""}), Value::Null)
    }

    fn text(&self, text: &str) -> Bytes {
        self.delta(json!({ "content": text }), Value::Null)
    }

    /// What a completed execution still owes the client, through `[DONE]`: the text
    /// beyond what was delivered, its tool calls, the finish, and the usage if asked.
    fn ending(&self, relay: &mut Relay, execution: &Execution) -> Result<Vec<Bytes>, Diverged> {
        let output = execution.output.clone().unwrap_or(Value::Null);
        let rest = relay.finish(output["text"].as_str().unwrap_or_default())?;
        let mut frames = Vec::new();
        if !rest.is_empty() {
            frames.push(self.text(&rest));
        }
        if let Some(calls) = chat::tool_calls(&output) {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(index, call)| {
                    let mut call = call.clone();
                    call["index"] = json!(index);
                    call
                })
                .collect();
            frames.push(self.delta(json!({ "tool_calls": calls }), Value::Null));
        }
        frames.push(self.delta(json!({}), json!(chat::finish_reason(&output))));
        if self.include_usage {
            let mut last = self.chunk(json!([]));
            last["usage"] = json!(chat::usage(&output));
            frames.push(Self::frame(&last));
        }
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        Ok(frames)
    }
}

/// The in-band error event of a stream whose headers went out.
fn error_frame(error: &ApiError, request_id: &RequestId) -> Bytes {
    Chunks::frame(&errors::envelope(error, &request_id.0).0)
}

/// The answer that cannot be completed: its text and a retry's differ.
fn diverged() -> ApiError {
    ApiError::new(
        Code::GenerationFailed,
        "The answer was interrupted and could not be completed as it began; retry the request.",
    )
}

/// Reads an execution's events through the relay until its end or the deadline.
struct Session {
    app: Arc<App>,
    org_id: String,
    id: String,
    events: broadcast::Receiver<StreamMessage>,
    relay: Relay,
    deadline: tokio::time::Instant,
    hang_up: HangUp,
    keyed: bool,
}

impl Session {
    async fn next(&mut self) -> Step {
        loop {
            let message = tokio::time::timeout_at(self.deadline, self.events.recv()).await;
            match message {
                Err(_) => return Step::TimedOut,
                Ok(Ok(StreamMessage::Delta(text))) => match self.relay.delta(&text) {
                    Ok(Some(fresh)) => return Step::Text(fresh),
                    Ok(None) => {}
                    Err(Diverged) => return Step::Diverged,
                },
                Ok(Ok(StreamMessage::Reset)) => self.relay.reset(),
                Ok(Ok(StreamMessage::Status(status))) if status.is_terminal() => {
                    return self.ended().await;
                }
                Ok(Ok(StreamMessage::Status(_))) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    tracing::info!(execution = %self.id, missed, "a stream reader fell behind: the rest of this attempt comes from the final output");
                    self.relay.lagged();
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return self.ended().await,
            }
        }
    }

    async fn ended(&mut self) -> Step {
        let wait = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        match self
            .app
            .executions
            .wait_terminal(&self.org_id, &self.id, wait)
            .await
        {
            Ok(Some(execution)) if execution.status.is_terminal() => {
                self.hang_up.disarm();
                Step::Ended(Box::new(execution))
            }
            Ok(_) => Step::TimedOut,
            Err(error) => Step::Failed(ApiError::from(error)),
        }
    }

    /// Ends an execution whose answer the client will not get whole: cancelled
    /// unless a replay (same `Idempotency-Key`) can still fetch it.
    async fn give_up(&mut self) {
        self.hang_up.disarm();
        if !self.keyed
            && let Err(error) = self.app.dispatcher.cancel(&self.org_id, &self.id).await
        {
            tracing::warn!(execution = %self.id, error = format!("{error:#}"), "cancelling an abandoned stream failed");
        }
    }
}

/// Answers a streamed chat request whose execution was created (or replayed).
pub async fn respond(
    app: Arc<App>,
    caller: Caller,
    request_id: RequestId,
    created: Created,
    include_usage: bool,
    keyed: bool,
) -> Result<Response, ApiError> {
    let chunks = Chunks::of(&created.execution, include_usage);
    let Some(events) = created.events else {
        // A replay: its events have passed; the whole answer goes as one delta.
        let execution = finished(&app, &caller, created.execution, keyed).await?;
        let mut frames = vec![chunks.role()];
        let ending = chunks.ending(&mut Relay::default(), &execution);
        frames.extend(ending.map_err(|_| diverged())?);
        let (sender, body) = channel();
        for frame in frames {
            let _ = sender.try_send(frame);
        }
        return Ok(sse(body, &execution, true));
    };
    let execution = created.execution;
    let mut session = Session {
        hang_up: HangUp::new(&app, &caller.org_id, &execution.id, !keyed),
        app: app.clone(),
        org_id: caller.org_id.clone(),
        id: execution.id.clone(),
        events,
        relay: Relay::default(),
        deadline: deadline(&execution),
        keyed,
    };
    // Nothing is sent until a provider has answered.
    let mut shown = execution.clone();
    let (first, done) = match session.next().await {
        Step::Text(text) => (vec![chunks.role(), chunks.text(&text)], false),
        Step::Ended(ended) if ended.status == Status::Completed => {
            let mut frames = vec![chunks.role()];
            frames.extend(
                chunks
                    .ending(&mut session.relay, &ended)
                    .map_err(|_| diverged())?,
            );
            // Ended before the headers: they can tell its cost.
            shown = *ended;
            (frames, true)
        }
        Step::Ended(ended) => return Err(ended_error(&ended)),
        Step::Diverged => {
            session.give_up().await;
            return Err(diverged());
        }
        Step::TimedOut => {
            session.hang_up.disarm();
            return Err(timed_out(&app, &caller.org_id, &execution.id).await);
        }
        Step::Failed(error) => return Err(error),
    };
    let (sender, body) = channel();
    tokio::spawn(async move {
        for frame in first {
            if sender.send(frame).await.is_err() {
                return;
            }
        }
        if done {
            return;
        }
        relay(session, chunks, sender, request_id).await;
    });
    Ok(sse(body, &shown, false))
}

/// Sends the rest of the stream, until its end or the client hangs up (then the
/// session's [`HangUp`] cancels an execution without a key).
async fn relay(
    mut session: Session,
    chunks: Chunks,
    sender: mpsc::Sender<Bytes>,
    request_id: RequestId,
) {
    loop {
        let step = tokio::select! {
            step = session.next() => step,
            () = sender.closed() => return,
        };
        let (frames, done) = match step {
            Step::Text(text) => (vec![chunks.text(&text)], false),
            Step::Ended(ended) if ended.status == Status::Completed => {
                match chunks.ending(&mut session.relay, &ended) {
                    Ok(frames) => (frames, true),
                    Err(Diverged) => {
                        tracing::warn!(execution = %session.id, "the final output does not extend the streamed text");
                        (vec![error_frame(&diverged(), &request_id)], true)
                    }
                }
            }
            Step::Ended(ended) => (vec![error_frame(&ended_error(&ended), &request_id)], true),
            Step::Diverged => {
                tracing::info!(execution = %session.id, "a retried stream diverged from the text delivered");
                session.give_up().await;
                (vec![error_frame(&diverged(), &request_id)], true)
            }
            Step::TimedOut => {
                session.hang_up.disarm();
                let error = timed_out(&session.app, &session.org_id, &session.id).await;
                (vec![error_frame(&error, &request_id)], true)
            }
            Step::Failed(error) => (vec![error_frame(&error, &request_id)], true),
        };
        for frame in frames {
            if sender.send(frame).await.is_err() {
                return;
            }
        }
        if done {
            return;
        }
    }
}

fn channel() -> (mpsc::Sender<Bytes>, Body) {
    let (sender, receiver) = mpsc::channel::<Bytes>(FRAMES_BUFFERED);
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let frame = receiver.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(frame), receiver))
    });
    (sender, Body::from_stream(stream))
}

fn sse(body: Body, execution: &Execution, replayed: bool) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    super::with_execution_headers(response, execution, replayed)
}
