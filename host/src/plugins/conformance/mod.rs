//! The conformance kit behind `modelroute plugin check`: loads a plugin as the server
//! would, then runs it against fixtures — the kit's own (how every adapter must treat
//! common provider failures) and the author's recorded exchanges.

use serde_json::Value;
use std::sync::Arc;

use super::{LoadedPlugin, Runtime, types, wit};

mod compare;
mod fixtures;
#[cfg(test)]
mod tests;
mod warnings;

pub use compare::body_mismatches;
use compare::{outcome_mismatches, request_mismatches};
pub use fixtures::{Expect, ExpectRequest, Fixture, FixtureJob, FixtureResponse};
use warnings::completion_warnings;
pub use warnings::description_warnings;

pub struct Check {
    pub name: String,
    /// one line per mismatch
    pub failure: Option<String>,
}

/// What `plugin check` reports: checks pass or fail; warnings name what works but
/// will not go as the author likely means (they never fail the plugin).
pub struct Report {
    pub checks: Vec<Check>,
    pub warnings: Vec<String>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|c| c.failure.is_some()).count()
    }
}

/// Runs every check; a plugin that does not load fails the first one and stops.
pub fn check(runtime: &Arc<Runtime>, wasm: &[u8], fixtures: &[Fixture]) -> Report {
    let mut checks = Vec::new();
    let mut warnings: Vec<String> = size_warning(wasm.len()).into_iter().collect();
    let mut record = |name: String, result: Result<(), String>| {
        checks.push(Check {
            name,
            failure: result.err(),
        });
    };
    let plugin = match runtime.load(wasm) {
        Ok(plugin) => plugin,
        Err(error) => {
            record(
                "contract version and manifest".into(),
                Err(format!("{error:#}")),
            );
            return Report { checks, warnings };
        }
    };
    record(
        format!(
            "loads as {} {} (contract {})",
            plugin.name, plugin.version, plugin.api_version
        ),
        Ok(()),
    );
    record(
        "manifest, schemas, examples, smoke calls".into(),
        plugin.validate().map_err(|e| format!("{e:#}")),
    );
    warnings.extend(description_warnings(&plugin.manifest));
    for model in &plugin.manifest.models {
        for (name, fixture) in own_fixtures(&model.slug) {
            record(
                format!("{}: {name}", model.slug),
                run(&plugin, &fixture, &mut warnings),
            );
        }
        if plugin.manifest.capabilities.idempotent_submit {
            record(
                format!("{}: the submit carries its attempt id", model.slug),
                submit_carries_attempt_id(&plugin, model),
            );
        }
        if model.accepts_prefill {
            record(
                format!("{}: a continuation sends its prefill", model.slug),
                submit_continues_prefill(&plugin, model),
            );
        }
    }
    for preset in &plugin.manifest.declared_inputs {
        let Some(model) = super::catalogue::declared_example(preset) else {
            continue; // the manifest check above failed on it
        };
        for (name, fixture) in
            own_fixtures(&format!("{}{preset}", super::catalogue::DECLARED_PREFIX))
        {
            record(
                format!("declared {preset} model: {name}"),
                run(&plugin, &fixture, &mut warnings),
            );
        }
        if plugin.manifest.capabilities.idempotent_submit {
            record(
                format!("declared {preset} model: the submit carries its attempt id"),
                submit_carries_attempt_id(&plugin, &model),
            );
        }
    }
    for fixture in fixtures {
        record(
            format!("{}: {}", fixture.model, fixture.name),
            run(&plugin, fixture, &mut warnings),
        );
    }
    Report { checks, warnings }
}

/// Above this a component was most likely built without the small-size profile.
pub const LARGE_COMPONENT_BYTES: usize = 1024 * 1024;

/// A component's size as the report shows it, e.g. `149 KB (152801 bytes)`.
pub fn describe_size(bytes: usize) -> String {
    let kb = bytes as f64 / 1024.0;
    if kb >= 1024.0 {
        format!("{:.1} MB ({bytes} bytes)", kb / 1024.0)
    } else {
        format!("{kb:.0} KB ({bytes} bytes)")
    }
}

/// A warning for a component large enough to mean a build with the default release
/// profile: every byte is compiled and kept per installed version.
pub fn size_warning(bytes: usize) -> Option<String> {
    (bytes > LARGE_COMPONENT_BYTES).then(|| {
        format!(
            "the component is {}; adapters built with the SDK template's [profile.release] \
             (opt-level = \"s\", lto = true, strip = true, codegen-units = 1) are about 150 KB",
            describe_size(bytes)
        )
    })
}

/// What every adapter must do with common provider failures.
fn own_fixtures(slug: &str) -> Vec<(&'static str, Fixture)> {
    let failing =
        |status: u16, headers: Vec<(String, String)>, body: Value, code: Option<&str>| Fixture {
            name: String::new(),
            model: slug.to_string(),
            input: None,
            job: None,
            request: None,
            response: Some(FixtureResponse {
                status,
                headers,
                body,
            }),
            expect: Some(Expect {
                outcome: "failed".into(),
                code: code.map(str::to_string),
                retryable: Some(true),
                ..Expect::default()
            }),
        };
    let throttled = vec![("retry-after".to_string(), "3".to_string())];
    let error = serde_json::json!({"error": {"message": "provider trouble"}});
    vec![
        (
            "429 is a retryable failure",
            failing(429, throttled, error.clone(), None),
        ),
        (
            "500 is a retryable failure",
            failing(500, Vec::new(), error.clone(), None),
        ),
        (
            "503 is a retryable failure",
            failing(503, Vec::new(), error.clone(), None),
        ),
        (
            "401 is our credential, a retryable failure",
            failing(401, Vec::new(), error, None),
        ),
        (
            "a truncated 200 is a retryable failure",
            failing(200, Vec::new(), Value::String("{\"id\": \"tr".into()), None),
        ),
        (
            "an HTML error page is a retryable failure",
            failing(
                502,
                Vec::new(),
                Value::String("<html>Bad gateway</html>".into()),
                None,
            ),
        ),
    ]
}

/// An adapter declaring `idempotent-submit` must send the attempt id as the
/// provider's key: the host re-sends a cut submit trusting that it does.
fn submit_carries_attempt_id(plugin: &LoadedPlugin, model: &types::Model) -> Result<(), String> {
    let attempt_id = "att_conformance_key";
    let ctx = kit_context(plugin, model, attempt_id, false);
    let request = build_submit(plugin, &ctx, &model.example_input)?
        .map_err(|failure| format!("the example input was refused: {}", failure.message))?;
    let in_headers = request
        .headers
        .iter()
        .any(|(_, value)| value.contains(attempt_id));
    let in_body = request
        .body
        .is_some_and(|body| String::from_utf8_lossy(&body).contains(attempt_id));
    if in_headers || in_body {
        Ok(())
    } else {
        Err("the manifest declares idempotent-submit, but build-submit does not send call-context.attempt-id".into())
    }
}

/// The call context the kit calls `model` with, as an attempt `attempt_id` would
/// get it (without files).
fn kit_context(
    plugin: &LoadedPlugin,
    model: &types::Model,
    attempt_id: &str,
    stream: bool,
) -> types::CallContext {
    types::CallContext {
        slug: model.slug.clone(),
        provider_model: model.provider_model.clone(),
        input: model.input.clone(),
        base_url: plugin.manifest.default_base_url.clone(),
        attempt_id: attempt_id.into(),
        callback_url: None,
        files: Vec::new(),
        stream,
    }
}

/// An adapter declaring `accepts-prefill` for a model must serve it the chat input
/// and send the input's `prefill`: the host trusts the answer to be its continuation.
fn submit_continues_prefill(plugin: &LoadedPlugin, model: &types::Model) -> Result<(), String> {
    if model.input != super::catalogue::CHAT {
        return Err(
            "accepts-prefill is for chat models: the host continues only chat answers".into(),
        );
    }
    let ctx = kit_context(plugin, model, "att_conformance", true);
    let mut input: Value = serde_json::from_str(&model.example_input)
        .map_err(|e| format!("the example input is not JSON: {e}"))?;
    let fresh = build_submit(plugin, &ctx, &input.to_string())?
        .map_err(|failure| format!("the example input was refused: {}", failure.message))?;
    input[super::catalogue::PREFILL] = PREFILL_MARKER.into();
    let continuing = build_submit(plugin, &ctx, &input.to_string())?.map_err(|failure| {
        format!(
            "the example input with a prefill was refused: {}",
            failure.message
        )
    })?;
    sends_prefill(&fresh, &continuing, PREFILL_MARKER)
}

/// The text the kit asks a model to continue.
const PREFILL_MARKER: &str = "Conformance prefill: the answer so far";

/// Whether `continuing`, the submit of an input with `prefill`, sends it where the
/// submit of the same input without it (`fresh`) does not.
fn sends_prefill(
    fresh: &types::HttpRequest,
    continuing: &types::HttpRequest,
    prefill: &str,
) -> Result<(), String> {
    let body = |request: &types::HttpRequest| {
        String::from_utf8_lossy(request.body.as_deref().unwrap_or_default()).into_owned()
    };
    if body(continuing).contains(prefill) && !body(fresh).contains(prefill) {
        Ok(())
    } else {
        Err("the manifest declares accepts-prefill, but build-submit does not send the input's prefill".into())
    }
}

/// The model a fixture names: one of the manifest's, or `declared:<preset>` for a
/// model the operator declares with a preset the manifest lists in
/// `declared-inputs` (see [`super::catalogue::declared_example`]).
fn fixture_model(plugin: &LoadedPlugin, name: &str) -> Result<types::Model, String> {
    if let Some(preset) = name.strip_prefix(super::catalogue::DECLARED_PREFIX) {
        if !plugin.manifest.declared_inputs.iter().any(|p| p == preset) {
            return Err(format!(
                "the manifest's declared-inputs do not list {preset:?} (they list: {})",
                plugin.manifest.declared_inputs.join(", ")
            ));
        }
        return super::catalogue::declared_example(preset)
            .ok_or_else(|| format!("{preset:?} is no input preset"));
    }
    plugin
        .model(name)
        .cloned()
        .ok_or_else(|| format!("the manifest has no model {name:?}"))
}

/// Which call an exchange is: the submit of a canonical input or a poll of a job.
enum Exchange {
    Submit { input: String },
    Poll(types::Job),
}

/// The message of the SDK's default `build_poll`.
const DOES_NOT_POLL: &str = "this adapter does not poll";

/// Runs one fixture; every mismatch is one line of the error. Warnings about what
/// the exchange shows go to `warnings`.
fn run(plugin: &LoadedPlugin, fixture: &Fixture, warnings: &mut Vec<String>) -> Result<(), String> {
    let model = fixture_model(plugin, &fixture.model)?;
    let model = &model;
    if fixture.input.is_some() && fixture.job.is_some() {
        return Err(
            "the fixture gives both input (a submit) and job (a poll); a poll has no input".into(),
        );
    }
    if fixture.request.is_none() && fixture.response.is_none() {
        return Err("the fixture gives neither request nor response".into());
    }
    if fixture.response.is_some() != fixture.expect.is_some() {
        return Err(
            "response and expect go together: the fixture gives one without the other".into(),
        );
    }
    let exchange = match &fixture.job {
        Some(job) => Exchange::Poll(types::Job {
            id: job.id.clone(),
            state: job.state.clone(),
        }),
        None => Exchange::Submit {
            input: match &fixture.input {
                Some(input) => input.to_string(),
                None => model.example_input.clone(),
            },
        },
    };
    let files = match &exchange {
        Exchange::Submit { input } => {
            let schema = serde_json::from_str(&model.input_schema).unwrap_or(Value::Null);
            let input = serde_json::from_str(input).unwrap_or(Value::Null);
            super::loaded::example_grants(
                &schema,
                &input,
                plugin.manifest.capabilities.inline_files,
            )
        }
        Exchange::Poll(_) => Vec::new(),
    };
    let ctx = types::CallContext {
        files,
        ..kit_context(plugin, model, "att_conformance", false)
    };
    let mut mismatches = Vec::new();
    if let Some(expected) = &fixture.request {
        let built = match &exchange {
            Exchange::Submit { input } => build_submit(plugin, &ctx, input)?
                .map_err(|f| format!("build-submit refused the input: {}", f.message)),
            Exchange::Poll(job) => build_poll(plugin, &ctx, job)?
                .map_err(|f| format!("build-poll refused the job: {}", f.message)),
        };
        match built {
            Ok(request) => mismatches.extend(request_mismatches(expected, &request)),
            Err(refused) => mismatches.push(refused),
        }
    }
    if let (Some(response), Some(expect)) = (&fixture.response, &fixture.expect) {
        let response = types::HttpResponse {
            status: response.status,
            headers: response.headers.clone(),
            body: match &response.body {
                Value::String(text) => text.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            },
        };
        let outcome = parse_response(plugin, &ctx, &exchange, &response)?;
        mismatches.extend(outcome_mismatches(&outcome, expect));
        let about = |what: String| format!("{}: {}: {what}", fixture.model, fixture.name);
        match &outcome {
            types::Outcome::Completed(completion) => warnings.extend(
                completion_warnings(&plugin.manifest, model, completion)
                    .into_iter()
                    .map(about),
            ),
            types::Outcome::Pending(pending) => {
                if let Err(why) = polls(plugin, &ctx, &pending.job) {
                    mismatches.push(why);
                }
            }
            types::Outcome::Failed(_) => {}
        }
    }
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(mismatches.join("\n"))
    }
}

/// Classifies `response` as the answer to `exchange`: the kit's one call of
/// `parse-response`.
fn parse_response(
    plugin: &LoadedPlugin,
    ctx: &types::CallContext,
    exchange: &Exchange,
    response: &types::HttpResponse,
) -> Result<types::Outcome, String> {
    let answered = wit::Answered::from(&match exchange {
        Exchange::Submit { input } => types::Answered::Submit(input.clone()),
        Exchange::Poll(job) => types::Answered::Poll(job.clone()),
    });
    let (ctx, response) = (
        wit::CallContext::from(ctx),
        wit::HttpResponse::from(response.clone()),
    );
    plugin
        .call("parse-response", move |adapter, store| {
            Box::pin(async move {
                adapter
                    .call_parse_response(store, &ctx, &answered, &response)
                    .await
            })
        })
        .map(types::Outcome::from)
        .map_err(|e| e.to_string())
}

/// `build-submit` of `input`, in the host's types; `Err` when the call gave no
/// answer.
fn build_submit(
    plugin: &LoadedPlugin,
    ctx: &types::CallContext,
    input: &str,
) -> Result<Result<types::HttpRequest, types::Failure>, String> {
    let (ctx, input) = (wit::CallContext::from(ctx), input.to_string());
    plugin
        .call("build-submit", move |adapter, store| {
            Box::pin(async move { adapter.call_build_submit(store, &ctx, &input).await })
        })
        .map(|built| {
            built
                .map(types::HttpRequest::from)
                .map_err(types::Failure::from)
        })
        .map_err(|e| e.to_string())
}

/// `build-poll` of `job`, in the host's types.
fn build_poll(
    plugin: &LoadedPlugin,
    ctx: &types::CallContext,
    job: &types::Job,
) -> Result<Result<types::HttpRequest, types::Failure>, String> {
    let (ctx, job) = (wit::CallContext::from(ctx), wit::Job::from(job));
    plugin
        .call("build-poll", move |adapter, store| {
            Box::pin(async move { adapter.call_build_poll(store, &ctx, &job).await })
        })
        .map(|built| {
            built
                .map(types::HttpRequest::from)
                .map_err(types::Failure::from)
        })
        .map_err(|e| e.to_string())
}

/// An adapter that answers `pending` must build the poll of the job it returned:
/// the host would otherwise never learn how the job ends.
fn polls(plugin: &LoadedPlugin, ctx: &types::CallContext, job: &types::Job) -> Result<(), String> {
    match build_poll(plugin, ctx, job)? {
        Ok(_) => Ok(()),
        Err(failure) if failure.message == DOES_NOT_POLL => {
            Err("answers pending but does not implement build-poll".into())
        }
        Err(failure) => Err(format!(
            "answers pending, but build-poll refuses the job it returned (id {:?}): {}",
            job.id, failure.message
        )),
    }
}
