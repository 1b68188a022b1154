//! A complete adapter for a simple synchronous text API: `POST {base}/v1/generate
//! {"model", "prompt", "max_tokens"}` → `{"text", "usage": {"input_tokens",
//! "output_tokens"}, "stop_reason"}`, `"max_tokens"` when the limit cut the text. It
//! answers a repeated `Idempotency-Key` with the first request's result. Copy this
//! folder, rename the crate, and change the four methods.

use modelroute_sdk::*;

#[derive(Default)]
struct Template;

const SCHEMA: &str = r#"{
  "type": "object",
  "additionalProperties": false,
  "required": ["prompt"],
  "properties": {
    "prompt": {"type": "string", "minLength": 1},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 4096}
  }
}"#;

impl Adapter for Template {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "template".into(),
            version: "0.1.0".into(),
            default_base_url: "https://api.example.com".into(),
            allowed_hosts: vec!["api.example.com".into()],
            auth: AuthScheme::Bearer,
            capabilities: Capabilities {
                cancel: false,
                webhooks: false,
                streaming: false,
                inline_files: false,
                idempotent_submit: true,
            },
            declared_inputs: Vec::new(),
            models: vec![Model {
                slug: "template-text".into(),
                provider_model: "example-small".into(),
                modality: Modality::Text,
                description: "An example text model.".into(),
                input_schema: SCHEMA.into(),
                example_input: r#"{"prompt":"Say hello"}"#.into(),
                price: Price {
                    per_million_input_tokens: 100_000,
                    per_million_output_tokens: 200_000,
                    ..Price::default()
                },
                accepts_prefill: false,
            }],
        }
    }

    fn estimate(&self, _model: &ModelRef, input: &Value) -> Result<Usage, Failure> {
        let prompt = input["prompt"].as_str().unwrap_or_default();
        let max_tokens = input["max_tokens"].as_u64().unwrap_or(256);
        Ok(Usage::tokens(approx_tokens(prompt), max_tokens))
    }

    fn build_submit(&self, ctx: &CallContext, input: &Value) -> Result<HttpRequest, Failure> {
        let body = json!({
            "model": ctx.provider_model,
            "prompt": input["prompt"],
            "max_tokens": input["max_tokens"].as_u64().unwrap_or(256),
        });
        Ok(HttpRequest::post_json(ctx.url("/v1/generate"), &body)
            .header("Idempotency-Key", &ctx.attempt_id))
    }

    fn parse_response(
        &self,
        _ctx: &CallContext,
        _answered: Answered<'_>,
        response: &HttpResponse,
    ) -> Result<Outcome, Failure> {
        if !response.is_success() {
            return Err(Failure::from_status(response, response.text()));
        }
        let body = response.json()?;
        let text = body["text"].as_str();
        let text = text.ok_or_else(|| Failure::new(ErrorCode::GenerationFailed, "no text"))?;
        let usage = Usage::tokens(
            body["usage"]["input_tokens"].as_u64().unwrap_or(0),
            body["usage"]["output_tokens"].as_u64().unwrap_or(0),
        );
        // Say why it stopped when the API does (else the host reports `stop`).
        let cut = (body["stop_reason"] == "max_tokens").then_some(FinishReason::Length);
        Ok(Outcome::Completed(
            Completion::text(text, usage).with_finish_reason(cut),
        ))
    }

    // An API that answers with a job to poll: return `Outcome::pending(id, state, poll_after_ms)`
    // and implement `build_poll`. `state` is yours, handed back with every poll: carry in it
    // what the final answer will not repeat, e.g. the size asked (`answered.input()`).
}

export_adapter!(Template);
