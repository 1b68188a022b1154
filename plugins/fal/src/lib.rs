//! fal's queue API: `POST {base}/{model}` answers `{request_id, status_url,
//! response_url, cancel_url}`; `status_url` says IN_QUEUE / IN_PROGRESS / COMPLETED;
//! then `response_url` holds the model's output. `PUT cancel_url` cancels. With
//! `?fal_webhook=<url>` fal calls back when done. The key goes in
//! `Authorization: Key <key>`.

use modelroute_sdk::canonical;
use modelroute_sdk::*;

#[derive(Default)]
struct Fal;

const VIDEO: &str = "kling-video";

/// What the job state remembers: fal's URLs and which one to poll next.
fn state(urls: &Value, phase: &str) -> String {
    json!({"status_url": urls["status_url"], "response_url": urls["response_url"], "cancel_url": urls["cancel_url"], "phase": phase}).to_string()
}

fn parse_state(job: &Job) -> Value {
    serde_json::from_str(&job.state).unwrap_or(Value::Null)
}

impl Adapter for Fal {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "fal".into(),
            version: "0.1.0".into(),
            default_base_url: "https://queue.fal.run".into(),
            allowed_hosts: vec![
                "queue.fal.run".into(),
                "fal.media".into(),
                "v3.fal.media".into(),
            ],
            auth: AuthScheme::Header(HeaderAuth {
                name: "authorization".into(),
                prefix: "Key ".into(),
            }),
            capabilities: Capabilities {
                cancel: true,
                webhooks: true,
                streaming: false,
                inline_files: false,
                idempotent_submit: false,
            },
            declared_inputs: Vec::new(),
            models: vec![
                canonical::model(
                    "flux-1.1-pro",
                    "fal-ai/flux-pro/v1.1",
                    Price::per_image(40_000),
                ),
                canonical::model(
                    VIDEO,
                    "fal-ai/kling-video/v1/standard/text-to-video",
                    Price {
                        per_second: 50_000,
                        ..Price::default()
                    },
                ),
            ],
        }
    }

    fn estimate(&self, model: &ModelRef, input: &Value) -> Result<Usage, Failure> {
        if model.slug == VIDEO {
            return Ok(Usage::seconds(canonical::video_seconds(input) as f64));
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
        let body = if ctx.slug == VIDEO {
            json!({"prompt": prompt, "duration": canonical::video_seconds(input).to_string()})
        } else {
            let (width, height) = canonical::image_size(input);
            let mut body = json!({"prompt": prompt, "image_size": {"width": width, "height": height}, "output_format": "png"});
            if let Some(seed) = input.get("seed") {
                body["seed"] = seed.clone();
            }
            body
        };
        let mut url = ctx.url(&format!("/{}", ctx.provider_model));
        if let Some(callback) = &ctx.callback_url {
            url = format!("{url}?fal_webhook={}", percent_encode(callback));
        }
        Ok(HttpRequest::post_json(url, &body))
    }

    fn parse_response(
        &self,
        ctx: &CallContext,
        answered: Answered<'_>,
        response: &HttpResponse,
    ) -> Result<Outcome, Failure> {
        if !response.is_success() {
            let detail = response
                .json()
                .map(|b| b["detail"].to_string())
                .unwrap_or_else(|_| response.text());
            return Err(Failure::from_status(response, detail));
        }
        let body = response.json()?;
        let Some(job) = answered.job() else {
            return match body["request_id"].as_str() {
                Some(id) if body["status_url"].is_string() => {
                    Ok(Outcome::pending(id, state(&body, "status"), 500))
                }
                _ => Err(Failure::new(
                    ErrorCode::GenerationFailed,
                    "the answer has no request_id or status_url",
                )),
            };
        };
        let urls = parse_state(job);
        if urls["phase"] == "status" {
            return match body["status"].as_str() {
                Some("COMPLETED") => Ok(Outcome::pending(&job.id, state(&urls, "result"), 0)),
                Some("IN_QUEUE" | "IN_PROGRESS") => {
                    Ok(Outcome::pending(&job.id, job.state.clone(), 1000))
                }
                other => Err(Failure::new(
                    ErrorCode::GenerationFailed,
                    format!("queue status {other:?}"),
                )),
            };
        }
        if ctx.slug == VIDEO {
            let Some(url) = body["video"]["url"].as_str() else {
                return Err(Failure::new(
                    ErrorCode::GenerationFailed,
                    "the result has no video",
                ));
            };
            return Ok(Outcome::Completed(Completion::assets(
                Modality::Video,
                [url.to_string()],
                Usage::default(),
            )));
        }
        if body["has_nsfw_concepts"]
            .as_array()
            .is_some_and(|flags| flags.iter().any(|f| f == true))
        {
            return Err(Failure::new(
                ErrorCode::ContentModerationRejected,
                "flagged as NSFW",
            ));
        }
        let urls: Vec<String> = body["images"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["url"].as_str().map(str::to_string))
            .collect();
        if urls.is_empty() {
            return Err(Failure::new(
                ErrorCode::GenerationFailed,
                "the result has no images",
            ));
        }
        let usage = Usage {
            images: urls.len() as u32,
            ..Usage::default()
        };
        Ok(Outcome::Completed(Completion::assets(
            Modality::Image,
            urls,
            usage,
        )))
    }

    fn build_poll(&self, _ctx: &CallContext, job: &Job) -> Result<HttpRequest, Failure> {
        let urls = parse_state(job);
        let key = if urls["phase"] == "result" {
            "response_url"
        } else {
            "status_url"
        };
        match urls[key].as_str() {
            Some(url) => Ok(HttpRequest::get(url)),
            None => Err(Failure::new(
                ErrorCode::InternalError,
                "the job lost its URLs",
            )),
        }
    }

    fn build_cancel(&self, _ctx: &CallContext, job: &Job) -> Option<HttpRequest> {
        parse_state(job)["cancel_url"]
            .as_str()
            .map(|url| HttpRequest::new(Method::Put, url))
    }

    /// `{request_id, status: "OK" | "ERROR", payload}`: either ends the job, so the
    /// host polls it now (the poll reads the result, or the error, from fal itself).
    fn parse_webhook(
        &self,
        _ctx: &CallContext,
        _job: &Job,
        _headers: &[(String, String)],
        body: &[u8],
    ) -> CallbackVerdict {
        match serde_json::from_slice::<Value>(body) {
            Ok(callback) if matches!(callback["status"].as_str(), Some("OK" | "ERROR")) => {
                CallbackVerdict::PollNow
            }
            _ => CallbackVerdict::KeepWaiting,
        }
    }
}

/// Enough percent-encoding for a URL inside a query parameter.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

export_adapter!(Fal);

#[cfg(test)]
mod tests {
    use super::*;

    /// The adapter's reading as the host takes it: an `Err` is a failed outcome.
    fn parse(ctx: &CallContext, job: Option<&Job>, response: &HttpResponse) -> Outcome {
        let input = json!({});
        let answered = job.map_or(Answered::Submit(&input), Answered::Poll);
        Fal.parse_response(ctx, answered, response)
            .unwrap_or_else(Outcome::Failed)
    }

    fn ctx(slug: &str) -> CallContext {
        CallContext {
            slug: slug.into(),
            input: if slug == VIDEO {
                "text-to-video"
            } else {
                "text-to-image"
            }
            .into(),
            provider_model: "fal-ai/flux-pro/v1.1".into(),
            base_url: "https://queue.fal.run".into(),
            attempt_id: "att_1".into(),
            callback_url: Some("http://h/cb?x=1".into()),
            files: Vec::new(),
            stream: false,
        }
    }

    fn response(status: u16, body: Value) -> HttpResponse {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        }
    }

    /// Regression: fal's `OK` callback was read as "still pending", which the host
    /// takes as no news, so the job waited for its fallback poll instead of waking.
    #[test]
    fn a_finished_jobs_callback_polls_it_now_and_a_ping_does_not() {
        let c = ctx("flux-1.1-pro");
        let job = Job {
            id: "req_1".into(),
            state: String::new(),
        };
        let verdict = |body: Value| Fal.parse_webhook(&c, &job, &[], body.to_string().as_bytes());
        for status in ["OK", "ERROR"] {
            let callback = json!({"request_id": "req_1", "status": status, "payload": null});
            assert_eq!(verdict(callback), CallbackVerdict::PollNow, "{status}");
        }
        assert_eq!(
            verdict(json!({"status": "IN_PROGRESS"})),
            CallbackVerdict::KeepWaiting
        );
    }

    #[test]
    fn submit_status_then_result() {
        let c = ctx("flux-1.1-pro");
        let request = Fal.build_submit(&c, &json!({"prompt": "a cat"})).unwrap();
        assert_eq!(
            request.url,
            "https://queue.fal.run/fal-ai/flux-pro/v1.1?fal_webhook=http%3A%2F%2Fh%2Fcb%3Fx%3D1"
        );
        let queued = json!({"request_id": "r1", "status_url": "https://queue.fal.run/fal-ai/flux-pro/requests/r1/status", "response_url": "https://queue.fal.run/fal-ai/flux-pro/requests/r1", "cancel_url": "https://queue.fal.run/fal-ai/flux-pro/requests/r1/cancel"});
        let Outcome::Pending(pending) = parse(&c, None, &response(200, queued)) else {
            panic!()
        };
        assert!(
            Fal.build_poll(&c, &pending.job)
                .unwrap()
                .url
                .ends_with("/r1/status")
        );
        assert!(
            Fal.build_cancel(&c, &pending.job)
                .unwrap()
                .url
                .ends_with("/r1/cancel")
        );
        let Outcome::Pending(done) = parse(
            &c,
            Some(&pending.job),
            &response(200, json!({"status": "COMPLETED"})),
        ) else {
            panic!()
        };
        assert!(
            Fal.build_poll(&c, &done.job)
                .unwrap()
                .url
                .ends_with("/requests/r1")
        );
        let result = json!({"images": [{"url": "https://v3.fal.media/files/a.png", "width": 1024, "height": 1024}], "has_nsfw_concepts": [false]});
        let Outcome::Completed(completion) = parse(&c, Some(&done.job), &response(200, result))
        else {
            panic!()
        };
        assert_eq!(completion.usage.images, 1);
        let flagged = json!({"images": [{"url": "https://v3.fal.media/files/a.png"}], "has_nsfw_concepts": [true]});
        let Outcome::Failed(f) = parse(&c, Some(&done.job), &response(200, flagged)) else {
            panic!()
        };
        assert_eq!(f.code, ErrorCode::ContentModerationRejected);
    }

    #[test]
    fn video_results_and_errors() {
        let c = ctx(VIDEO);
        let usage = Fal
            .estimate(
                &ModelRef {
                    slug: VIDEO.into(),
                    input: "text-to-video".into(),
                    provider_model: String::new(),
                },
                &json!({"prompt": "x", "duration": 10}),
            )
            .unwrap();
        assert_eq!(usage.seconds_milli, 10_000);
        let job = Job {
            id: "r1".into(),
            state: json!({"phase": "result", "response_url": "u"}).to_string(),
        };
        let video = json!({"video": {"url": "https://v3.fal.media/files/v.mp4", "content_type": "video/mp4"}});
        let Outcome::Completed(completion) = parse(&c, Some(&job), &response(200, video)) else {
            panic!()
        };
        assert_eq!(completion.assets[0].modality, Modality::Video);
        let invalid = json!({"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]});
        let Outcome::Failed(f) = parse(&c, None, &response(422, invalid)) else {
            panic!()
        };
        assert_eq!(f.code, ErrorCode::InputValidationError);
    }
}
