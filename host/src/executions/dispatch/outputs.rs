//! A completion turned into canonical output: assets fetched and stored as the
//! organization's files, then the execution completed and its hold settled.

use anyhow::Result;
use serde_json::{Value, json};

use super::*;
use crate::executions::Ending;
use crate::executions::model::Execution;
use crate::files::FileRecord;
use crate::plugins::types;
use crate::routing::{self, Candidate};

impl Dispatcher {
    /// Stores the outputs and ends the execution `COMPLETED`, settling the hold.
    /// Returns a failure when the outputs could not be stored (the attempt failed).
    pub(super) async fn complete(
        &self,
        execution: &Execution,
        candidate: &Candidate,
        mut completion: types::Completion,
    ) -> Result<Option<AttemptFailure>> {
        let text_bytes = completion.text.as_ref().map_or(0, String::len)
            + completion
                .tool_calls
                .iter()
                .map(|c| c.id.len() + c.name.len() + c.arguments.len())
                .sum::<usize>();
        if text_bytes > MAX_TEXT_OUTPUT {
            let message = format!("the text output exceeds {MAX_TEXT_OUTPUT} bytes");
            return Ok(Some(AttemptFailure {
                retry: false,
                ..AttemptFailure::new(Kind::BadOutput, message)
            }));
        }
        // A text answer whose provider did not count it (a stream without its usage
        // chunk) is counted by the host's rule, reported and charged alike.
        if completion.usage.is_empty() && completion.text.is_some() {
            completion.usage = completion.estimated_text_usage(&execution.usage_estimate);
        }
        let (output, records) = match self.store_outputs(execution, candidate, &completion).await {
            Ok(stored) => stored,
            Err(failure) => return Ok(Some(failure)),
        };
        // Usage that counts nothing the price charges for (a provider that does not
        // report usage, or an adapter reporting images for a per-megapixel price)
        // is charged the estimate: money must not hang on an adapter's footnote.
        let mut units = completion.usage;
        let price = &candidate.model.price;
        if units.is_empty() || !units.meet(price) {
            if !units.is_empty() {
                tracing::warn!(execution = %execution.id, plugin = %candidate.plugin.name, ?units, "the reported usage counts nothing the price charges for: the estimate is charged");
            }
            units = execution.usage_estimate.max_requests(units.requests);
        }
        let cost = routing::cost(price, &units);
        let file_ids: Vec<String> = records.iter().map(|r| r.file_id.clone()).collect();
        if let Some(text) = &completion.text {
            self.executions.publish_final(&execution.id, text);
        }
        let completed = self
            .executions
            .finish(
                &execution.id,
                Ending::Completed {
                    cost,
                    output,
                    files: records,
                },
            )
            .await?;
        if completed.is_none() {
            tracing::info!(execution = %execution.id, "late provider result discarded: the execution had already ended");
            self.files.discard(file_ids).await;
        }
        Ok(None)
    }

    /// Copies every asset into the organization's files and builds the canonical
    /// output. On failure nothing is left behind.
    pub(super) async fn store_outputs(
        &self,
        execution: &Execution,
        candidate: &Candidate,
        completion: &types::Completion,
    ) -> Result<(Value, Vec<FileRecord>), AttemptFailure> {
        let allowed = candidate.provider.allowed_hosts(&candidate.plugin);
        let mut records: Vec<FileRecord> = Vec::new();
        let mut entries: Vec<(types::Modality, Value)> = Vec::new();
        for asset in &completion.assets {
            let org = &execution.organization_id;
            let max = self.settings.max_asset_bytes;
            let stored = match &asset.source {
                types::AssetSource::Inline(bytes) => {
                    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(
                        bytes::Bytes::copy_from_slice(bytes),
                    )]);
                    self.files
                        .ingest_output(org, body, max)
                        .await
                        .map_err(|e| e.to_string())
                }
                types::AssetSource::Url(url) => match self.upstream.fetch(&allowed, url).await {
                    Ok(response) => self
                        .files
                        .ingest_output(org, response.bytes_stream(), max)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(error) => Err(error.to_string()),
                },
            };
            let (record, ingested) = match stored {
                Ok(stored) => stored,
                Err(error) => {
                    let ids: Vec<String> = records.iter().map(|r| r.file_id.clone()).collect();
                    self.files.discard(ids).await;
                    return Err(AttemptFailure::new(
                        Kind::BadOutput,
                        format!("storing an output failed: {error}"),
                    ));
                }
            };
            let entry = match asset.modality {
                types::Modality::Image => json!({
                    "file_id": record.file_id,
                    "format": ingested.format,
                    "width": ingested.dimensions.map(|d| d.0),
                    "height": ingested.dimensions.map(|d| d.1),
                }),
                types::Modality::Video | types::Modality::Audio | types::Modality::Text => {
                    // Providers that do not report a length produced what was asked.
                    let requested = execution.usage_estimate.seconds_milli;
                    let duration_ms = asset.duration_ms.or((requested > 0).then_some(requested));
                    json!({
                        "file_id": record.file_id,
                        "format": ingested.format,
                        "duration_s": duration_ms.map(|ms| ms as f64 / 1000.0),
                    })
                }
            };
            entries.push((asset.modality, entry));
            records.push(record);
        }
        Ok((canonical_output(completion, entries), records))
    }
}

/// The canonical output of SPEC §4, one shape per modality.
fn canonical_output(
    completion: &types::Completion,
    entries: Vec<(types::Modality, Value)>,
) -> Value {
    let mut output = serde_json::Map::new();
    for (modality, entry) in entries {
        let key = match modality {
            types::Modality::Image => "images",
            types::Modality::Video => "videos",
            types::Modality::Audio => "audio",
            types::Modality::Text => "files",
        };
        output
            .entry(key)
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("output lists are arrays")
            .push(entry);
    }
    // A text answer: its text (empty when the model only called tools), usage, why
    // it stopped, and the tool calls when there are any.
    if completion.text.is_some() || !completion.tool_calls.is_empty() {
        let text = completion.text.as_deref().unwrap_or_default();
        output.insert("text".into(), json!(text));
        output.insert(
            "usage".into(),
            json!({
                "input_tokens": completion.usage.input_tokens,
                "output_tokens": completion.usage.output_tokens,
            }),
        );
        output.insert("finish_reason".into(), json!(completion.finish_reason()));
        if !completion.tool_calls.is_empty() {
            let calls = completion.tool_calls.iter().map(types::ToolCall::canonical);
            output.insert("tool_calls".into(), calls.collect());
        }
    }
    Value::Object(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: Option<&str>) -> types::Completion {
        types::Completion {
            text: text.map(Into::into),
            assets: Vec::new(),
            usage: types::Usage {
                requests: 1,
                input_tokens: 3,
                output_tokens: 1,
                ..types::Usage::default()
            },
            finish_reason: None,
            tool_calls: Vec::new(),
        }
    }

    #[test]
    fn text_completions_carry_text_token_usage_and_why_they_stopped() {
        assert_eq!(
            canonical_output(&text(Some("hello")), Vec::new()),
            json!({"text": "hello", "usage": {"input_tokens": 3, "output_tokens": 1}, "finish_reason": "stop"})
        );
        let cut = types::Completion {
            finish_reason: Some(types::FinishReason::Length),
            ..text(Some("hel"))
        };
        assert_eq!(
            canonical_output(&cut, Vec::new())["finish_reason"],
            "length"
        );
    }

    #[test]
    fn tool_calls_come_out_in_openais_shape_with_their_finish_reason() {
        let called = types::Completion {
            tool_calls: vec![types::ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            }],
            ..text(None)
        };
        assert_eq!(
            canonical_output(&called, Vec::new()),
            json!({
                "text": "",
                "usage": {"input_tokens": 3, "output_tokens": 1},
                "finish_reason": "tool_calls",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}],
            })
        );
    }

    #[test]
    fn outputs_without_text_have_no_text_fields() {
        assert_eq!(canonical_output(&text(None), Vec::new()), json!({}));
    }
}
