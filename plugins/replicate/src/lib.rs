//! Replicate's predictions API: create a prediction, poll `urls.get`, cancel with
//! `urls.cancel`; `status` is starting / processing / succeeded / failed / canceled.

use modelroute_sdk::canonical;
use modelroute_sdk::*;

#[derive(Default)]
struct Replicate;

/// Image editing; the other models are text to image.
const KONTEXT: &str = "flux-kontext-pro";

/// $0.04 an image.
const PER_IMAGE: Price = Price::per_image(40_000);

impl Adapter for Replicate {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "replicate".into(),
            version: "0.1.0".into(),
            default_base_url: "https://api.replicate.com".into(),
            allowed_hosts: vec!["api.replicate.com".into(), "replicate.delivery".into()],
            auth: AuthScheme::Bearer,
            capabilities: Capabilities {
                cancel: true,
                webhooks: true,
                streaming: false,
                inline_files: false,
                idempotent_submit: false,
            },
            declared_inputs: Vec::new(),
            models: vec![
                canonical::model("flux-1.1-pro", "black-forest-labs/flux-1.1-pro", PER_IMAGE),
                canonical::model(KONTEXT, "black-forest-labs/flux-kontext-pro", PER_IMAGE),
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
        let mut model_input = if ctx.slug == KONTEXT {
            edit_input(ctx, prompt, input)?
        } else {
            let (width, height) = canonical::image_size(input);
            json!({
                "prompt": prompt,
                "width": width,
                "height": height,
                "aspect_ratio": "custom",
                "output_format": "png",
            })
        };
        if let Some(seed) = input.get("seed") {
            model_input["seed"] = seed.clone();
        }
        ctx.resolve_files(&mut model_input);
        let mut body = json!({ "input": model_input });
        if let Some(callback) = &ctx.callback_url {
            body["webhook"] = json!(callback);
            body["webhook_events_filter"] = json!(["completed"]);
        }
        let url = ctx.url(&format!("/v1/models/{}/predictions", ctx.provider_model));
        Ok(HttpRequest::post_json(url, &body))
    }

    fn parse_response(
        &self,
        _ctx: &CallContext,
        _answered: Answered<'_>,
        response: &HttpResponse,
    ) -> Result<Outcome, Failure> {
        if !response.is_success() {
            return Err(problem(response));
        }
        Ok(classify(&response.json()?))
    }

    fn build_poll(&self, ctx: &CallContext, job: &Job) -> Result<HttpRequest, Failure> {
        let url = job_url(&job.state, "get")
            .unwrap_or_else(|| ctx.url(&format!("/v1/predictions/{}", job.id)));
        Ok(HttpRequest::get(url))
    }

    fn build_cancel(&self, ctx: &CallContext, job: &Job) -> Option<HttpRequest> {
        let url = job_url(&job.state, "cancel")
            .unwrap_or_else(|| ctx.url(&format!("/v1/predictions/{}/cancel", job.id)));
        Some(HttpRequest::new(Method::Post, url))
    }

    /// The prediction as it stands: a finished one (or a body we cannot read) is
    /// polled now, a running one is left to its schedule.
    fn parse_webhook(
        &self,
        _ctx: &CallContext,
        _job: &Job,
        _headers: &[(String, String)],
        body: &[u8],
    ) -> CallbackVerdict {
        match serde_json::from_slice::<Value>(body).map(|prediction| classify(&prediction)) {
            Ok(Outcome::Pending(_)) => CallbackVerdict::KeepWaiting,
            _ => CallbackVerdict::PollNow,
        }
    }
}

/// Image editing: the image goes to Replicate as the URL of this attempt's grant,
/// which Replicate downloads when the prediction is created.
fn edit_input(ctx: &CallContext, prompt: &str, input: &Value) -> Result<Value, Failure> {
    let Some(file_id) = input["image"].as_str() else {
        return Err(Failure::new(
            ErrorCode::InputValidationError,
            "image is required",
        ));
    };
    let grant = ctx.file_grant(file_id)?;
    Ok(json!({
        "prompt": prompt,
        "input_image": grant.url,
        "aspect_ratio": input["aspect_ratio"].as_str().unwrap_or("match_input_image"),
        "output_format": "png",
    }))
}

/// The job state keeps the prediction's `urls`.
fn job_url(state: &str, which: &str) -> Option<String> {
    let urls: Value = serde_json::from_str(state).ok()?;
    urls[which].as_str().map(str::to_string)
}

/// A prediction object, whatever request it answered.
fn classify(prediction: &Value) -> Outcome {
    let (Some(id), Some(status)) = (prediction["id"].as_str(), prediction["status"].as_str())
    else {
        return Outcome::failed(
            ErrorCode::GenerationFailed,
            "the prediction has no id or status",
        );
    };
    match status {
        "starting" | "processing" => {
            let poll_after_ms = if status == "starting" { 500 } else { 1000 };
            Outcome::pending(id, prediction["urls"].to_string(), poll_after_ms)
        }
        "succeeded" => {
            let urls: Vec<String> = match &prediction["output"] {
                Value::String(url) => vec![url.clone()],
                Value::Array(items) => items
                    .iter()
                    .filter_map(|u| u.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            if urls.is_empty() {
                return Outcome::failed(
                    ErrorCode::GenerationFailed,
                    "the prediction succeeded without output",
                );
            }
            // Both models are billed per image.
            let usage = Usage {
                images: urls.len() as u32,
                ..Usage::default()
            };
            Outcome::Completed(Completion::assets(Modality::Image, urls, usage))
        }
        "failed" => {
            let error = prediction["error"]
                .as_str()
                .unwrap_or("the prediction failed");
            let lowered = error.to_ascii_lowercase();
            let flagged = ["nsfw", "sensitive", "flagged", "e005"]
                .iter()
                .any(|w| lowered.contains(w));
            // Anything else, a failed download of an input file included, is a
            // retryable generation failure: the next attempt gets a fresh grant.
            let code = if flagged {
                ErrorCode::ContentModerationRejected
            } else {
                ErrorCode::GenerationFailed
            };
            Outcome::failed(code, error)
        }
        "canceled" | "aborted" => Outcome::Failed(Failure {
            retryable: false,
            ..Failure::new(ErrorCode::GenerationFailed, "canceled at the provider")
        }),
        other => Outcome::failed(
            ErrorCode::GenerationFailed,
            format!("unknown prediction status {other:?}"),
        ),
    }
}

/// Replicate's errors are problem+json: `{"title", "detail", "status"}`.
fn problem(response: &HttpResponse) -> Failure {
    let detail = response
        .json()
        .ok()
        .and_then(|body| {
            body["detail"]
                .as_str()
                .or(body["title"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| response.text());
    Failure::from_status(response, detail)
}

export_adapter!(Replicate);

#[cfg(test)]
mod tests {
    use super::*;

    /// The adapter's reading as the host takes it: an `Err` is a failed outcome.
    fn parse(ctx: &CallContext, job: Option<&Job>, response: &HttpResponse) -> Outcome {
        let input = json!({});
        let answered = job.map_or(Answered::Submit(&input), Answered::Poll);
        Replicate
            .parse_response(ctx, answered, response)
            .unwrap_or_else(Outcome::Failed)
    }

    fn ctx() -> CallContext {
        CallContext {
            slug: "flux-1.1-pro".into(),
            input: "text-to-image".into(),
            provider_model: "black-forest-labs/flux-1.1-pro".into(),
            base_url: "https://api.replicate.com".into(),
            attempt_id: "att_1".into(),
            callback_url: None,
            files: Vec::new(),
            stream: false,
        }
    }

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![("retry-after".into(), "3".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn submit_posts_the_input_to_the_model_predictions_endpoint() {
        let request = Replicate
            .build_submit(&ctx(), &json!({"prompt": "a cat", "width": 512, "seed": 7}))
            .unwrap();
        assert_eq!(
            request.url,
            "https://api.replicate.com/v1/models/black-forest-labs/flux-1.1-pro/predictions"
        );
        let body: Value = serde_json::from_slice(request.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["input"]["prompt"], "a cat");
        assert_eq!(body["input"]["width"], 512);
        assert_eq!(body["input"]["height"], 1024);
        assert_eq!(body["input"]["seed"], 7);
        assert!(body.get("webhook").is_none());
    }

    fn kontext_ctx(files: Vec<FileGrant>) -> CallContext {
        CallContext {
            slug: KONTEXT.into(),
            input: "image-edit".into(),
            provider_model: "black-forest-labs/flux-kontext-pro".into(),
            files,
            ..ctx()
        }
    }

    const FILE: &str = "file_3f2b8c1e-6a4d-4b7e-9c1a-2d5e8f0a1b2c";

    fn grant() -> FileGrant {
        FileGrant {
            file_id: FILE.into(),
            url: "https://modelroute.example/files/grant/x?attempt=att_1&signature=s".into(),
            content_type: "image/png".into(),
            bytes: None,
        }
    }

    #[test]
    fn an_edit_sends_the_grant_url_never_the_file_id() {
        let input = json!({"prompt": "make it night", "image": FILE, "seed": 3});
        let request = Replicate
            .build_submit(&kontext_ctx(vec![grant()]), &input)
            .unwrap();
        assert_eq!(
            request.url,
            "https://api.replicate.com/v1/models/black-forest-labs/flux-kontext-pro/predictions"
        );
        let body: Value = serde_json::from_slice(request.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            body["input"],
            json!({
                "prompt": "make it night",
                "input_image": grant().url,
                "aspect_ratio": "match_input_image",
                "output_format": "png",
                "seed": 3,
            })
        );
        assert!(!body.to_string().contains(FILE));

        let input = json!({"prompt": "x", "image": FILE, "aspect_ratio": "16:9"});
        let request = Replicate
            .build_submit(&kontext_ctx(vec![grant()]), &input)
            .unwrap();
        let body: Value = serde_json::from_slice(request.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["input"]["aspect_ratio"], "16:9");
    }

    #[test]
    fn an_edit_without_a_grant_is_file_not_found() {
        let input = json!({"prompt": "make it night", "image": FILE});
        let failure = Replicate
            .build_submit(&kontext_ctx(Vec::new()), &input)
            .unwrap_err();
        assert_eq!(failure.code, ErrorCode::FileNotFound);
        assert!(!failure.retryable);
    }

    #[test]
    fn a_failed_input_download_is_a_retryable_generation_failure() {
        let body = r#"{"id":"p1","status":"failed","output":null,"error":"Prediction failed: could not download input_image (HTTP 404)","urls":{}}"#;
        let Outcome::Failed(failure) = parse(&kontext_ctx(Vec::new()), None, &response(200, body))
        else {
            panic!("expected a failure");
        };
        assert_eq!(failure.code, ErrorCode::GenerationFailed);
        assert!(failure.retryable);
    }

    #[test]
    fn a_started_prediction_is_a_job_polled_at_its_get_url() {
        let body = r#"{"id":"p1","status":"starting","output":null,"error":null,
            "urls":{"get":"https://api.replicate.com/v1/predictions/p1","cancel":"https://api.replicate.com/v1/predictions/p1/cancel"}}"#;
        let Outcome::Pending(pending) = parse(&ctx(), None, &response(201, body)) else {
            panic!("expected a pending job");
        };
        assert_eq!(pending.job.id, "p1");
        let poll = Replicate.build_poll(&ctx(), &pending.job).unwrap();
        assert_eq!(poll.url, "https://api.replicate.com/v1/predictions/p1");
        let cancel = Replicate.build_cancel(&ctx(), &pending.job).unwrap();
        assert_eq!(
            cancel.url,
            "https://api.replicate.com/v1/predictions/p1/cancel"
        );
    }

    #[test]
    fn a_succeeded_prediction_yields_its_output_urls() {
        for output in [
            r#""https://replicate.delivery/a.png""#,
            r#"["https://replicate.delivery/a.png"]"#,
        ] {
            let body = format!(
                r#"{{"id":"p1","status":"succeeded","output":{output},"error":null,"urls":{{}}}}"#
            );
            let Outcome::Completed(completion) = parse(&ctx(), None, &response(200, &body)) else {
                panic!("expected a completion");
            };
            assert_eq!(completion.usage.images, 1);
            assert!(
                matches!(&completion.assets[0].source, AssetSource::Url(u) if u == "https://replicate.delivery/a.png")
            );
        }
    }

    #[test]
    fn failures_are_classified() {
        let flagged = r#"{"id":"p1","status":"failed","error":"E005: The input or output was flagged as sensitive.","urls":{}}"#;
        let Outcome::Failed(failure) = parse(&ctx(), None, &response(200, flagged)) else {
            panic!()
        };
        assert_eq!(failure.code, ErrorCode::ContentModerationRejected);
        assert!(!failure.retryable);

        let cases = [
            (
                422,
                r#"{"title":"Input validation failed","detail":"prompt is required","status":422}"#,
                ErrorCode::InputValidationError,
            ),
            (
                429,
                r#"{"title":"Request was throttled.","detail":"Expected available in 1 second.","status":429}"#,
                ErrorCode::RateLimited,
            ),
            (
                401,
                r#"{"title":"Unauthenticated","detail":"You did not pass a valid authentication token","status":401}"#,
                ErrorCode::ServiceUnavailable,
            ),
            (
                404,
                r#"{"title":"Not found","status":404}"#,
                ErrorCode::ModelUnavailable,
            ),
            (500, "<html>oops</html>", ErrorCode::ServiceUnavailable),
            (200, "{not json", ErrorCode::GenerationFailed),
            (
                200,
                r#"{"status":"processing"}"#,
                ErrorCode::GenerationFailed,
            ),
        ];
        for (status, body, code) in cases {
            let Outcome::Failed(failure) = parse(&ctx(), None, &response(status, body)) else {
                panic!("{status} {body}");
            };
            assert_eq!(failure.code, code, "{status} {body}");
        }
        let Outcome::Failed(throttled) = parse(&ctx(), None, &response(429, "{}")) else {
            panic!()
        };
        assert_eq!(throttled.retry_after_ms, Some(3000));
    }
}
