//! Write a ModelRoute provider adapter.
//!
//! An adapter translates ModelRoute's canonical input into one provider's wire format
//! and classifies the provider's answers. The host does every byte of I/O: your code
//! describes HTTP requests and parses the responses it is handed. Implement [`Adapter`],
//! then register it with [`export_adapter!`]:
//!
//! ```ignore
//! use modelroute_sdk::*;
//!
//! #[derive(Default)]
//! struct MyProvider;
//!
//! impl Adapter for MyProvider { /* manifest, estimate, build_submit, parse_response */ }
//!
//! export_adapter!(MyProvider);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` file is the
//! plugin (the template's `[profile.release]` keeps it near 150 KB).
//! `modelroute plugin check <file.wasm>` tells you whether the host accepts it.

mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "adapter-plugin",
    });
}

pub mod canonical;
mod contract;
mod helpers;
pub use helpers::approx_tokens;

pub use bindings::modelroute::provider::types::{
    Asset, AssetSource, AuthScheme, CallContext, CallbackVerdict, Capabilities, Completion,
    ErrorCode, Failure, FileGrant, FinishReason, HeaderAuth, HttpRequest, HttpResponse, Job,
    Manifest, Method, Modality, Model, ModelRef, Outcome, Pending, Price, StreamDelta, StreamEvent,
    ToolCall, ToolCallDelta, Usage,
};
pub use serde_json::{self, Value, json};

/// The contract version this SDK speaks: the version of the WIT package it binds
/// (`wit/adapter.wit`). The host refuses versions it does not know.
pub use contract::API_VERSION;

/// [`API_VERSION`] as bytes, stamped into every plugin by [`export_adapter!`] in the
/// custom section `modelroute:api-version`, which the host reads before compiling.
#[doc(hidden)]
pub const API_VERSION_BYTES: [u8; API_VERSION.len()] = match API_VERSION.as_bytes().first_chunk() {
    Some(bytes) => *bytes,
    None => unreachable!(),
};

/// One provider wire format. Only the first four methods are required.
pub trait Adapter: Send + Sync + 'static {
    /// Who you are, which models you serve and how the host should talk to you.
    fn manifest(&self) -> Manifest;

    /// Usage `input` is expected to consume; the host prices it to place a hold.
    fn estimate(&self, model: &ModelRef, input: &Value) -> Result<Usage, Failure>;

    /// The request that starts a generation.
    fn build_submit(&self, ctx: &CallContext, input: &Value) -> Result<HttpRequest, Failure>;

    /// Classify the provider's answer to the submit request (with the input it was
    /// built from) or to a poll of a job. An `Err` is the same as
    /// `Ok(Outcome::Failed(..))`, so `?` works on the helpers' results.
    ///
    /// To carry something from the submit to the completion (the requested image
    /// size when the provider's final answer does not repeat it, say), put it in the
    /// [`Job`]'s `state` when you answer [`Outcome::Pending`]: the host keeps it with
    /// the attempt and hands it back with every poll.
    fn parse_response(
        &self,
        ctx: &CallContext,
        answered: Answered<'_>,
        response: &HttpResponse,
    ) -> Result<Outcome, Failure>;

    /// The request that asks how `job` is doing. Needed when `parse_response` can
    /// answer [`Outcome::Pending`] (`modelroute plugin check` fails an adapter that
    /// answers pending without it).
    fn build_poll(&self, _ctx: &CallContext, _job: &Job) -> Result<HttpRequest, Failure> {
        Err(Failure::new(
            ErrorCode::InternalError,
            "this adapter does not poll",
        ))
    }

    /// The request that stops `job`, when the provider can.
    fn build_cancel(&self, _ctx: &CallContext, _job: &Job) -> Option<HttpRequest> {
        None
    }

    /// A callback the provider sent to `ctx.callback_url` about `job`: whether the
    /// job moved on. A callback only wakes the job up: on
    /// [`CallbackVerdict::PollNow`] the host polls it at once and that poll's
    /// [`Adapter::parse_response`] decides the outcome.
    fn parse_webhook(
        &self,
        _ctx: &CallContext,
        _job: &Job,
        _headers: &[(String, String)],
        _body: &[u8],
    ) -> CallbackVerdict {
        CallbackVerdict::PollNow
    }

    /// One server-sent event's `data` from a streaming response. An `Err` is the same
    /// as `Ok(StreamEvent::Failed(..))`.
    ///
    /// Each call stands alone (no state survives between calls): answer what this
    /// event adds ([`StreamEvent::text`] for a piece of text; a [`StreamDelta`] with
    /// [`ToolCallDelta`]s for fragments of tool calls, which the host joins by
    /// index; its `finish_reason` when the event says why the model stopped), and
    /// [`StreamEvent::Done`] when the stream ends.
    fn parse_stream_event(&self, _ctx: &CallContext, _data: &str) -> Result<StreamEvent, Failure> {
        Err(Failure::new(
            ErrorCode::InternalError,
            "this adapter does not stream",
        ))
    }
}

/// What a response answers: the submit request, built from this canonical input, or
/// a poll of this job.
#[derive(Debug, Clone, Copy)]
pub enum Answered<'a> {
    Submit(&'a Value),
    Poll(&'a Job),
}

impl<'a> Answered<'a> {
    /// The job polled; `None` for the submit's answer.
    pub fn job(self) -> Option<&'a Job> {
        match self {
            Answered::Poll(job) => Some(job),
            Answered::Submit(_) => None,
        }
    }

    /// The canonical input; `None` for a poll's answer (carry what you need in the
    /// job's `state`).
    pub fn input(self) -> Option<&'a Value> {
        match self {
            Answered::Submit(input) => Some(input),
            Answered::Poll(_) => None,
        }
    }
}

/// Registers `$adapter` (a type implementing [`Adapter`] and [`Default`]) as this
/// plugin's adapter and stamps the contract version into the component.
#[macro_export]
macro_rules! export_adapter {
    ($adapter:ty) => {
        #[unsafe(no_mangle)]
        fn __modelroute_adapter() -> &'static dyn $crate::Adapter {
            static ADAPTER: ::std::sync::OnceLock<$adapter> = ::std::sync::OnceLock::new();
            ADAPTER.get_or_init(<$adapter as ::core::default::Default>::default)
        }

        #[used]
        #[unsafe(link_section = "modelroute:api-version")]
        static __MODELROUTE_API_VERSION: [u8; $crate::API_VERSION.len()] =
            $crate::API_VERSION_BYTES;
    };
}

unsafe extern "Rust" {
    /// Defined by [`export_adapter!`] in the plugin crate.
    safe fn __modelroute_adapter() -> &'static dyn Adapter;
}

/// Bridges the generated bindings to the registered [`Adapter`].
struct Component;

fn parse_input(input: &str) -> Result<Value, Failure> {
    serde_json::from_str(input).map_err(|e| {
        Failure::new(
            ErrorCode::InputValidationError,
            format!("input is not JSON: {e}"),
        )
    })
}

impl bindings::exports::modelroute::provider::adapter::Guest for Component {
    fn describe() -> Manifest {
        __modelroute_adapter().manifest()
    }

    fn estimate(model: ModelRef, input: String) -> Result<Usage, Failure> {
        let input = parse_input(&input)?;
        __modelroute_adapter().estimate(&model, &input)
    }

    fn build_submit(ctx: CallContext, input: String) -> Result<HttpRequest, Failure> {
        let input = parse_input(&input)?;
        __modelroute_adapter().build_submit(&ctx, &input)
    }

    fn parse_response(
        ctx: CallContext,
        answered: bindings::modelroute::provider::types::Answered,
        response: HttpResponse,
    ) -> Outcome {
        use bindings::modelroute::provider::types::Answered as Wire;
        let adapter = __modelroute_adapter();
        let outcome = match answered {
            Wire::Submit(input) => parse_input(&input).and_then(|input| {
                adapter.parse_response(&ctx, Answered::Submit(&input), &response)
            }),
            Wire::Poll(job) => adapter.parse_response(&ctx, Answered::Poll(&job), &response),
        };
        outcome.unwrap_or_else(Outcome::Failed)
    }

    fn build_poll(ctx: CallContext, job: Job) -> Result<HttpRequest, Failure> {
        __modelroute_adapter().build_poll(&ctx, &job)
    }

    fn build_cancel(ctx: CallContext, job: Job) -> Option<HttpRequest> {
        __modelroute_adapter().build_cancel(&ctx, &job)
    }

    fn parse_webhook(
        ctx: CallContext,
        job: Job,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> CallbackVerdict {
        __modelroute_adapter().parse_webhook(&ctx, &job, &headers, &body)
    }

    fn parse_stream_event(ctx: CallContext, data: String) -> StreamEvent {
        __modelroute_adapter()
            .parse_stream_event(&ctx, &data)
            .unwrap_or_else(StreamEvent::Failed)
    }
}

bindings::export!(Component with_types_in bindings);
