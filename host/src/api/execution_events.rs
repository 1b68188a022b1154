//! A `STREAMING` execution's answer: its events as server-sent events.

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::StreamExt;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::broadcast;

use crate::App;
use crate::executions::{Execution, StreamMessage};

/// A `STREAMING` answer: server-sent events `execution` (the accepted execution),
/// `status` (each change), `delta` (output text as the provider produces it),
/// `reset` (the text so far is void: its attempt failed, a retry streams anew) and
/// finally `done` (the terminal execution object), after which the stream ends.
pub(super) fn stream(
    app: Arc<App>,
    org_id: String,
    execution: Execution,
    events: broadcast::Receiver<StreamMessage>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let first = Event::default()
        .event("execution")
        .data(json!(execution.accepted_view()).to_string());
    let id = execution.id.clone();
    let start = Some((events, execution.status));
    let rest = futures_util::stream::unfold(start, move |state| {
        let (app, org_id, id) = (app.clone(), org_id.clone(), id.clone());
        async move {
            let (mut events, mut shown) = state?;
            loop {
                match events.recv().await {
                    Ok(StreamMessage::Delta(text)) => {
                        let event = Event::default()
                            .event("delta")
                            .data(json!({ "text": text }).to_string());
                        return Some((Ok(event), Some((events, shown))));
                    }
                    Ok(StreamMessage::Reset) => {
                        let event = Event::default()
                            .event("reset")
                            .data(json!({ "id": id }).to_string());
                        return Some((Ok(event), Some((events, shown))));
                    }
                    Ok(StreamMessage::Status(status)) if status.is_terminal() => break,
                    // Retries and attempt records notify too; the client sees changes.
                    Ok(StreamMessage::Status(status)) if status == shown => continue,
                    Ok(StreamMessage::Status(status)) => {
                        shown = status;
                        let event = Event::default()
                            .event("status")
                            .data(json!({ "id": id, "status": status }).to_string());
                        return Some((Ok(event), Some((events, shown))));
                    }
                    // A slow reader missed some deltas; the final object has the text.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            let done = match app.executions.get(&org_id, &id) {
                Ok(Some(execution)) => json!(execution.view()),
                _ => json!({ "id": id }),
            };
            Some((
                Ok(Event::default().event("done").data(done.to_string())),
                None,
            ))
        }
    });
    Sse::new(futures_util::stream::once(async move { Ok(first) }).chain(rest))
        .keep_alive(KeepAlive::default())
}
