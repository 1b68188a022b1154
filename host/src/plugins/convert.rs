//! The boundary between the generated bindings and the host's own contract types
//! ([`super::types`]): each value converted one way or the other, field by field,
//! so a contract change shows up here as a compile error.

use super::types::*;
use super::wit;

impl From<wit::Modality> for Modality {
    fn from(modality: wit::Modality) -> Modality {
        match modality {
            wit::Modality::Image => Modality::Image,
            wit::Modality::Video => Modality::Video,
            wit::Modality::Audio => Modality::Audio,
            wit::Modality::Text => Modality::Text,
        }
    }
}

impl From<wit::Method> for Method {
    fn from(method: wit::Method) -> Method {
        match method {
            wit::Method::Get => Method::Get,
            wit::Method::Post => Method::Post,
            wit::Method::Put => Method::Put,
            wit::Method::Patch => Method::Patch,
            wit::Method::Delete => Method::Delete,
        }
    }
}

impl From<wit::AuthScheme> for AuthScheme {
    fn from(auth: wit::AuthScheme) -> AuthScheme {
        match auth {
            wit::AuthScheme::None => AuthScheme::None,
            wit::AuthScheme::Bearer => AuthScheme::Bearer,
            wit::AuthScheme::Header(header) => AuthScheme::Header(HeaderAuth {
                name: header.name,
                prefix: header.prefix,
            }),
        }
    }
}

impl From<wit::Price> for Price {
    fn from(price: wit::Price) -> Price {
        Price {
            per_request: price.per_request,
            per_image: price.per_image,
            per_megapixel: price.per_megapixel,
            per_second: price.per_second,
            per_million_input_tokens: price.per_million_input_tokens,
            per_million_output_tokens: price.per_million_output_tokens,
        }
    }
}

impl From<wit::Usage> for Usage {
    fn from(usage: wit::Usage) -> Usage {
        Usage {
            requests: usage.requests,
            images: usage.images,
            megapixels_milli: usage.megapixels_milli,
            seconds_milli: usage.seconds_milli,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
        }
    }
}

impl From<wit::Model> for Model {
    fn from(model: wit::Model) -> Model {
        Model {
            provider_model: model.provider_model,
            modality: model.modality.into(),
            description: model.description,
            input_schema: model.input_schema,
            example_input: model.example_input,
            price: model.price.into(),
            accepts_prefill: model.accepts_prefill,
            input: super::catalogue::canonical(&model.slug)
                .map(|definition| definition.input.to_string())
                .unwrap_or_default(),
            slug: model.slug,
        }
    }
}

impl From<wit::Manifest> for Manifest {
    fn from(manifest: wit::Manifest) -> Manifest {
        let capabilities = manifest.capabilities;
        Manifest {
            name: manifest.name,
            version: manifest.version,
            default_base_url: manifest.default_base_url,
            allowed_hosts: manifest.allowed_hosts,
            auth: manifest.auth.into(),
            capabilities: Capabilities {
                cancel: capabilities.cancel,
                webhooks: capabilities.webhooks,
                streaming: capabilities.streaming,
                inline_files: capabilities.inline_files,
                idempotent_submit: capabilities.idempotent_submit,
            },
            models: manifest.models.into_iter().map(Model::from).collect(),
            declared_inputs: manifest.declared_inputs,
        }
    }
}

impl From<wit::HttpRequest> for HttpRequest {
    fn from(request: wit::HttpRequest) -> HttpRequest {
        HttpRequest {
            method: request.method.into(),
            url: request.url,
            headers: request.headers,
            body: request.body,
            timeout_ms: request.timeout_ms,
        }
    }
}

impl From<wit::Job> for Job {
    fn from(job: wit::Job) -> Job {
        Job {
            id: job.id,
            state: job.state,
        }
    }
}

impl From<wit::Completion> for Completion {
    fn from(completion: wit::Completion) -> Completion {
        Completion {
            text: completion.text,
            assets: completion
                .assets
                .into_iter()
                .map(|asset| Asset {
                    source: match asset.source {
                        wit::AssetSource::Url(url) => AssetSource::Url(url),
                        wit::AssetSource::Inline(bytes) => AssetSource::Inline(bytes),
                    },
                    modality: asset.modality.into(),
                    duration_ms: asset.duration_ms,
                })
                .collect(),
            usage: completion.usage.into(),
            finish_reason: completion.finish_reason.map(FinishReason::from),
            tool_calls: completion
                .tool_calls
                .into_iter()
                .map(|call| ToolCall {
                    id: call.id,
                    name: call.name,
                    arguments: call.arguments,
                })
                .collect(),
        }
    }
}

impl From<wit::FinishReason> for FinishReason {
    fn from(reason: wit::FinishReason) -> FinishReason {
        match reason {
            wit::FinishReason::Stop => FinishReason::Stop,
            wit::FinishReason::Length => FinishReason::Length,
            wit::FinishReason::ToolCalls => FinishReason::ToolCalls,
            wit::FinishReason::ContentFilter => FinishReason::ContentFilter,
        }
    }
}

impl From<wit::StreamDelta> for StreamDelta {
    fn from(delta: wit::StreamDelta) -> StreamDelta {
        StreamDelta {
            text: delta.text,
            tool_calls: delta
                .tool_calls
                .into_iter()
                .map(|call| ToolCallDelta {
                    index: call.index,
                    id: call.id,
                    name: call.name,
                    arguments: call.arguments,
                })
                .collect(),
            finish_reason: delta.finish_reason.map(FinishReason::from),
        }
    }
}

impl From<wit::Failure> for Failure {
    fn from(failure: wit::Failure) -> Failure {
        Failure {
            code: failure.code.into(),
            message: failure.message,
            retryable: failure.retryable,
            retry_after_ms: failure.retry_after_ms,
        }
    }
}

impl From<wit::Outcome> for Outcome {
    fn from(outcome: wit::Outcome) -> Outcome {
        match outcome {
            wit::Outcome::Completed(completion) => Outcome::Completed(completion.into()),
            wit::Outcome::Pending(pending) => Outcome::Pending(Pending {
                job: pending.job.into(),
                poll_after_ms: pending.poll_after_ms,
            }),
            wit::Outcome::Failed(failure) => Outcome::Failed(failure.into()),
        }
    }
}

impl From<wit::StreamEvent> for StreamEvent {
    fn from(event: wit::StreamEvent) -> StreamEvent {
        match event {
            wit::StreamEvent::Delta(delta) => StreamEvent::Delta(delta.into()),
            wit::StreamEvent::Done(completion) => StreamEvent::Done(completion.into()),
            wit::StreamEvent::Failed(failure) => StreamEvent::Failed(failure.into()),
            wit::StreamEvent::Skip => StreamEvent::Skip,
        }
    }
}

impl From<wit::CallbackVerdict> for CallbackVerdict {
    fn from(verdict: wit::CallbackVerdict) -> CallbackVerdict {
        match verdict {
            wit::CallbackVerdict::PollNow => CallbackVerdict::PollNow,
            wit::CallbackVerdict::KeepWaiting => CallbackVerdict::KeepWaiting,
        }
    }
}

// To the guest.

impl From<&Model> for wit::ModelRef {
    fn from(model: &Model) -> wit::ModelRef {
        wit::ModelRef {
            slug: model.slug.clone(),
            provider_model: model.provider_model.clone(),
            input: model.input.clone(),
        }
    }
}

impl From<&Job> for wit::Job {
    fn from(job: &Job) -> wit::Job {
        wit::Job {
            id: job.id.clone(),
            state: job.state.clone(),
        }
    }
}

impl From<&CallContext> for wit::CallContext {
    fn from(ctx: &CallContext) -> wit::CallContext {
        wit::CallContext {
            slug: ctx.slug.clone(),
            provider_model: ctx.provider_model.clone(),
            input: ctx.input.clone(),
            base_url: ctx.base_url.clone(),
            attempt_id: ctx.attempt_id.clone(),
            callback_url: ctx.callback_url.clone(),
            files: ctx
                .files
                .iter()
                .map(|grant| wit::FileGrant {
                    file_id: grant.file_id.clone(),
                    url: grant.url.clone(),
                    content_type: grant.content_type.clone(),
                    bytes: grant.bytes.clone(),
                })
                .collect(),
            stream: ctx.stream,
        }
    }
}

impl From<&Answered> for wit::Answered {
    fn from(answered: &Answered) -> wit::Answered {
        match answered {
            Answered::Submit(input) => wit::Answered::Submit(input.clone()),
            Answered::Poll(job) => wit::Answered::Poll(job.into()),
        }
    }
}

impl From<HttpResponse> for wit::HttpResponse {
    fn from(response: HttpResponse) -> wit::HttpResponse {
        wit::HttpResponse {
            status: response.status,
            headers: response.headers,
            body: response.body,
        }
    }
}
