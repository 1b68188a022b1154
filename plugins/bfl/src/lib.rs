//! Black Forest Labs' API: `POST /v1/{model}` answers `{id, polling_url}`; polling
//! `polling_url` answers `status` Pending / Ready (with `result.sample`, a URL) /
//! Error / Content Moderated / Request Moderated / Task not found. The key goes in
//! the `x-key` header.
//!
//! Image editing (`flux-kontext-pro`) sends the input image inline, base64-encoded in
//! `input_image`: the manifest asks the host for file bytes (`inline_files`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use modelroute_sdk::canonical;
use modelroute_sdk::*;

#[derive(Default)]
struct Bfl;

/// Image editing; the other models are text to image.
const KONTEXT: &str = "flux-kontext-pro";

/// $0.04 an image.
const PER_IMAGE: Price = Price::per_image(40_000);

impl Adapter for Bfl {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "bfl".into(),
            version: "0.1.0".into(),
            default_base_url: "https://api.bfl.ai".into(),
            allowed_hosts: vec![
                "api.bfl.ai".into(),
                "api.us1.bfl.ai".into(),
                "api.eu1.bfl.ai".into(),
                "delivery-us1.bfl.ai".into(),
                "delivery-eu1.bfl.ai".into(),
            ],
            auth: AuthScheme::Header(HeaderAuth {
                name: "x-key".into(),
                prefix: String::new(),
            }),
            capabilities: Capabilities {
                cancel: false,
                webhooks: false,
                streaming: false,
                inline_files: true,
                idempotent_submit: false,
            },
            declared_inputs: Vec::new(),
            models: vec![
                canonical::model("flux-1.1-pro", "flux-pro-1.1", PER_IMAGE),
                canonical::model(KONTEXT, "flux-kontext-pro", PER_IMAGE),
            ],
        }
    }

    fn estimate(&self, model: &ModelRef, input: &Value) -> Result<Usage, Failure> {
        if model.slug == KONTEXT {
            // One image of about a megapixel, whatever the input's size.
            return Ok(Usage::images(1, 1024, 1024));
        }
        Ok(canonical::image_estimate(input))
    }

    fn build_submit(&self, ctx: &CallContext, input: &Value) -> Result<HttpRequest, Failure> {
        let Some(prompt) = input["prompt"].as_str() else {
            return Err(Failure::new(
                ErrorCode::InputValidationError,
                "prompt is required",
            ));
        };
        let mut body = if ctx.slug == KONTEXT {
            edit_body(ctx, prompt, input)?
        } else {
            let (width, height) = canonical::image_size(input);
            json!({"prompt": prompt, "width": width, "height": height, "output_format": "png"})
        };
        if let Some(seed) = input.get("seed") {
            body["seed"] = seed.clone();
        }
        Ok(HttpRequest::post_json(
            ctx.url(&format!("/v1/{}", ctx.provider_model)),
            &body,
        ))
    }

    fn parse_response(
        &self,
        _ctx: &CallContext,
        answered: Answered<'_>,
        response: &HttpResponse,
    ) -> Result<Outcome, Failure> {
        if !response.is_success() {
            return Err(error(response));
        }
        let body = response.json()?;
        let Some(job) = answered.job() else {
            // The submit answer: a task to poll at its `polling_url`.
            return match (body["id"].as_str(), body["polling_url"].as_str()) {
                (Some(id), Some(url)) => Ok(Outcome::pending(id, url, 500)),
                _ => Err(Failure::new(
                    ErrorCode::GenerationFailed,
                    "the answer has no id or polling_url",
                )),
            };
        };
        let id = body["id"].as_str().unwrap_or_default();
        match body["status"].as_str().unwrap_or_default() {
            "Ready" => match body["result"]["sample"].as_str() {
                Some(url) => Ok(Outcome::Completed(Completion::assets(
                    Modality::Image,
                    [url.to_string()],
                    Usage {
                        images: 1,
                        ..Usage::default()
                    },
                ))),
                None => Err(Failure::new(
                    ErrorCode::GenerationFailed,
                    "a ready task without a sample",
                )),
            },
            "Pending" | "Queued" => Ok(Outcome::pending(id, job.state.clone(), 1000)),
            "Content Moderated" | "Request Moderated" => Err(Failure::new(
                ErrorCode::ContentModerationRejected,
                "moderated by the provider",
            )),
            "Task not found" => Err(Failure::new(
                ErrorCode::GenerationFailed,
                "the provider lost the task",
            )),
            other => Err(Failure::new(
                ErrorCode::GenerationFailed,
                format!("task status {other:?}"),
            )),
        }
    }

    fn build_poll(&self, _ctx: &CallContext, job: &Job) -> Result<HttpRequest, Failure> {
        Ok(HttpRequest::get(job.state.clone()))
    }
}

/// Image editing: `input_image` is the image's bytes in base64 (or, should the host
/// have sent no bytes, the grant's URL, which BFL accepts too).
fn edit_body(ctx: &CallContext, prompt: &str, input: &Value) -> Result<Value, Failure> {
    let Some(file_id) = input["image"].as_str() else {
        return Err(Failure::new(
            ErrorCode::InputValidationError,
            "image is required",
        ));
    };
    let grant = ctx.file_grant(file_id)?;
    let image = match &grant.bytes {
        Some(bytes) => BASE64.encode(bytes),
        None => grant.url.clone(),
    };
    let mut body = json!({"prompt": prompt, "input_image": image, "output_format": "png"});
    if let Some(ratio) = input["aspect_ratio"].as_str() {
        body["aspect_ratio"] = json!(ratio);
    }
    Ok(body)
}

/// BFL's errors: FastAPI `{"detail": ...}`; 402 means our account is out of credit.
fn error(response: &HttpResponse) -> Failure {
    let detail = response
        .json()
        .map(|body| body["detail"].to_string())
        .unwrap_or_else(|_| response.text());
    if response.status == 402 {
        return Failure::new(
            ErrorCode::ServiceUnavailable,
            format!("insufficient credits: {detail}"),
        );
    }
    Failure::from_status(response, detail)
}

export_adapter!(Bfl);

#[cfg(test)]
mod tests {
    use super::*;

    /// The adapter's reading as the host takes it: an `Err` is a failed outcome.
    fn parse(ctx: &CallContext, job: Option<&Job>, response: &HttpResponse) -> Outcome {
        let input = json!({});
        let answered = job.map_or(Answered::Submit(&input), Answered::Poll);
        Bfl.parse_response(ctx, answered, response)
            .unwrap_or_else(Outcome::Failed)
    }

    fn ctx() -> CallContext {
        CallContext {
            slug: "flux-1.1-pro".into(),
            input: "text-to-image".into(),
            provider_model: "flux-pro-1.1".into(),
            base_url: "https://api.bfl.ai".into(),
            attempt_id: "att_1".into(),
            callback_url: None,
            files: Vec::new(),
            stream: false,
        }
    }

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn submit_then_poll_the_polling_url_until_ready() {
        let request = Bfl
            .build_submit(&ctx(), &json!({"prompt": "a cat", "width": 512}))
            .unwrap();
        assert_eq!(request.url, "https://api.bfl.ai/v1/flux-pro-1.1");
        let submitted = r#"{"id":"t1","polling_url":"https://api.us1.bfl.ai/v1/get_result?id=t1"}"#;
        let Outcome::Pending(pending) = parse(&ctx(), None, &response(200, submitted)) else {
            panic!()
        };
        assert_eq!(
            Bfl.build_poll(&ctx(), &pending.job).unwrap().url,
            "https://api.us1.bfl.ai/v1/get_result?id=t1"
        );
        let waiting = r#"{"id":"t1","status":"Pending","result":null,"progress":0.4}"#;
        assert!(matches!(
            parse(&ctx(), Some(&pending.job), &response(200, waiting)),
            Outcome::Pending(_)
        ));
        let ready = r#"{"id":"t1","status":"Ready","result":{"sample":"https://delivery-us1.bfl.ai/results/t1/sample.png","prompt":"a cat"}}"#;
        let Outcome::Completed(done) = parse(&ctx(), Some(&pending.job), &response(200, ready))
        else {
            panic!()
        };
        assert_eq!(done.usage.images, 1);
    }

    const FILE: &str = "file_3f2b8c1e-6a4d-4b7e-9c1a-2d5e8f0a1b2c";

    fn kontext_ctx(bytes: Option<Vec<u8>>) -> CallContext {
        CallContext {
            slug: KONTEXT.into(),
            input: "image-edit".into(),
            provider_model: "flux-kontext-pro".into(),
            files: vec![FileGrant {
                file_id: FILE.into(),
                url: "https://modelroute.example/files/grant/x?signature=s".into(),
                content_type: "image/png".into(),
                bytes,
            }],
            ..ctx()
        }
    }

    fn sent(request: &HttpRequest) -> Value {
        serde_json::from_slice(request.body.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn the_manifest_asks_for_inline_files() {
        let manifest = Bfl.manifest();
        assert!(manifest.capabilities.inline_files);
        assert!(manifest.models.iter().any(|m| m.slug == KONTEXT));
    }

    #[test]
    fn an_edit_sends_the_bytes_in_base64() {
        let bytes = b"\x89PNG\r\n\x1a\n not really".to_vec();
        let input =
            json!({"prompt": "make it night", "image": FILE, "aspect_ratio": "4:3", "seed": 9});
        let request = Bfl
            .build_submit(&kontext_ctx(Some(bytes.clone())), &input)
            .unwrap();
        assert_eq!(request.url, "https://api.bfl.ai/v1/flux-kontext-pro");
        assert_eq!(
            sent(&request),
            json!({
                "prompt": "make it night",
                "input_image": BASE64.encode(&bytes),
                "aspect_ratio": "4:3",
                "seed": 9,
                "output_format": "png",
            })
        );
        assert!(!sent(&request).to_string().contains(FILE));
    }

    #[test]
    fn an_edit_without_bytes_sends_the_grant_url() {
        let input = json!({"prompt": "make it night", "image": FILE});
        let request = Bfl.build_submit(&kontext_ctx(None), &input).unwrap();
        let body = sent(&request);
        assert_eq!(
            body["input_image"],
            "https://modelroute.example/files/grant/x?signature=s"
        );
        assert!(body.get("aspect_ratio").is_none());
    }

    #[test]
    fn an_edit_without_a_grant_is_file_not_found() {
        let ctx = CallContext {
            files: Vec::new(),
            ..kontext_ctx(None)
        };
        let input = json!({"prompt": "make it night", "image": FILE});
        let failure = Bfl.build_submit(&ctx, &input).unwrap_err();
        assert_eq!(failure.code, ErrorCode::FileNotFound);
        assert!(!failure.retryable);
    }

    #[test]
    fn moderation_and_errors_are_classified() {
        let job = Job {
            id: "t1".into(),
            state: "https://api.bfl.ai/v1/get_result?id=t1".into(),
        };
        for status in ["Content Moderated", "Request Moderated"] {
            let body = format!(r#"{{"id":"t1","status":"{status}","result":null}}"#);
            let Outcome::Failed(f) = parse(&ctx(), Some(&job), &response(200, &body)) else {
                panic!()
            };
            assert_eq!(f.code, ErrorCode::ContentModerationRejected);
        }
        for (status, body, code) in [
            (
                422,
                r#"{"detail":[{"loc":["body","width"],"msg":"too large","type":"value_error"}]}"#,
                ErrorCode::InputValidationError,
            ),
            (
                429,
                r#"{"detail":"You have exceeded the number of active tasks."}"#,
                ErrorCode::RateLimited,
            ),
            (
                402,
                r#"{"detail":"Insufficient credits"}"#,
                ErrorCode::ServiceUnavailable,
            ),
            (200, "{oops", ErrorCode::GenerationFailed),
        ] {
            let Outcome::Failed(f) = parse(&ctx(), None, &response(status, body)) else {
                panic!("{status}")
            };
            assert_eq!(f.code, code, "{status}");
        }
    }
}
