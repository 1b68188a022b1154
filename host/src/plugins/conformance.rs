//! The conformance kit behind `modelroute plugin check`: loads a plugin as the server
//! would, then runs it against fixtures — the kit's own (how every adapter must treat
//! common provider failures) and the author's recorded exchanges.

use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

use super::Units;
use super::{LoadedPlugin, Runtime, wit};
use crate::host_pattern::HostPattern;

/// One recorded exchange and what the adapter must make of it: the request it must
/// build (`request`), how it must classify the provider's answer (`response` and
/// `expect`), or both. Which call the exchange is follows from `job`: without it the
/// exchange is the submit of `input`, with it a poll of that job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub name: String,
    pub model: String,
    /// the canonical input the submit carries (defaults to the model's example
    /// input); only for a submit, so never with `job`
    #[serde(default)]
    pub input: Option<Value>,
    /// the provider job being polled, if the exchange is a poll
    #[serde(default)]
    pub job: Option<FixtureJob>,
    /// what `build-submit` (or, with `job`, `build-poll`) must send
    #[serde(default)]
    pub request: Option<ExpectRequest>,
    /// the provider's answer, handed to `parse-response`
    #[serde(default)]
    pub response: Option<FixtureResponse>,
    /// what `parse-response` must make of `response`
    #[serde(default)]
    pub expect: Option<Expect>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureJob {
    pub id: String,
    #[serde(default)]
    pub state: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureResponse {
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// a JSON value (sent as its text) or a string (sent as is)
    pub body: Value,
}

/// The request an adapter must build; each field given is compared, those left out
/// are not.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRequest {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE` (any case)
    #[serde(default)]
    pub method: Option<String>,
    /// the whole URL, compared exactly
    #[serde(default)]
    pub url: Option<String>,
    /// headers the request must carry among others: names in any case, values exact
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// the JSON body, matched by [`body_mismatches`]' rule; a string also matches a
    /// body that is not JSON and is exactly that text
    #[serde(default)]
    pub body: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `completed`, `pending` or `failed`
    pub outcome: String,
    /// for `failed`: the normalized code, e.g. `RATE_LIMITED`
    #[serde(default)]
    pub code: Option<String>,
    /// for `failed`: whether it must be retryable
    #[serde(default)]
    pub retryable: Option<bool>,
    /// for `failed`: the wait the adapter read off the response, in milliseconds
    #[serde(default)]
    pub retry_after_ms: Option<u32>,
    /// for `completed`: the text output
    #[serde(default)]
    pub text: Option<String>,
    /// for `completed`: how many assets
    #[serde(default)]
    pub assets: Option<usize>,
}

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
fn submit_carries_attempt_id(plugin: &LoadedPlugin, model: &wit::Model) -> Result<(), String> {
    let attempt_id = "att_conformance_key";
    let ctx = wit::CallContext {
        slug: model.slug.clone(),
        provider_model: model.provider_model.clone(),
        base_url: plugin.manifest.default_base_url.clone(),
        attempt_id: attempt_id.into(),
        callback_url: None,
        files: Vec::new(),
        stream: false,
    };
    let request = plugin
        .call("build-submit", |adapter, store| {
            adapter.call_build_submit(store, &ctx, &model.example_input)
        })
        .map_err(|e| e.to_string())?
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

/// Which call an exchange is: the submit of a canonical input or a poll of a job.
enum Exchange {
    Submit { input: String },
    Poll(wit::Job),
}

/// The message of the SDK's default `build_poll`.
const DOES_NOT_POLL: &str = "this adapter does not poll";

/// Runs one fixture; every mismatch is one line of the error. Warnings about what
/// the exchange shows go to `warnings`.
fn run(plugin: &LoadedPlugin, fixture: &Fixture, warnings: &mut Vec<String>) -> Result<(), String> {
    let model = plugin
        .model(&fixture.model)
        .ok_or_else(|| format!("the manifest has no model {:?}", fixture.model))?;
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
        Some(job) => Exchange::Poll(wit::Job {
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
    let ctx = wit::CallContext {
        slug: model.slug.clone(),
        provider_model: model.provider_model.clone(),
        base_url: plugin.manifest.default_base_url.clone(),
        attempt_id: "att_conformance".into(),
        callback_url: None,
        files,
        stream: false,
    };
    let mut mismatches = Vec::new();
    if let Some(expected) = &fixture.request {
        let built = match &exchange {
            Exchange::Submit { input } => plugin
                .call("build-submit", |adapter, store| {
                    adapter.call_build_submit(store, &ctx, input)
                })
                .map_err(|e| e.to_string())?
                .map_err(|f| format!("build-submit refused the input: {}", f.message)),
            Exchange::Poll(job) => plugin
                .call("build-poll", |adapter, store| {
                    adapter.call_build_poll(store, &ctx, job)
                })
                .map_err(|e| e.to_string())?
                .map_err(|f| format!("build-poll refused the job: {}", f.message)),
        };
        match built {
            Ok(request) => mismatches.extend(request_mismatches(expected, &request)),
            Err(refused) => mismatches.push(refused),
        }
    }
    if let (Some(response), Some(expect)) = (&fixture.response, &fixture.expect) {
        let response = wit::HttpResponse {
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
            wit::Outcome::Completed(completion) => warnings.extend(
                completion_warnings(&plugin.manifest, model, completion)
                    .into_iter()
                    .map(about),
            ),
            wit::Outcome::Pending(pending) => {
                if let Err(why) = polls(plugin, &ctx, &pending.job) {
                    mismatches.push(why);
                }
            }
            wit::Outcome::Failed(_) => {}
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
    ctx: &wit::CallContext,
    exchange: &Exchange,
    response: &wit::HttpResponse,
) -> Result<wit::Outcome, String> {
    let answered = match exchange {
        Exchange::Submit { input } => wit::Answered::Submit(input.clone()),
        Exchange::Poll(job) => wit::Answered::Poll(job.clone()),
    };
    plugin
        .call("parse-response", |adapter, store| {
            adapter.call_parse_response(store, ctx, &answered, response)
        })
        .map_err(|e| e.to_string())
}

/// An adapter that answers `pending` must build the poll of the job it returned:
/// the host would otherwise never learn how the job ends.
fn polls(plugin: &LoadedPlugin, ctx: &wit::CallContext, job: &wit::Job) -> Result<(), String> {
    let built = plugin
        .call("build-poll", |adapter, store| {
            adapter.call_build_poll(store, ctx, job)
        })
        .map_err(|e| e.to_string())?;
    match built {
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

fn method_name(method: wit::Method) -> &'static str {
    match method {
        wit::Method::Get => "GET",
        wit::Method::Post => "POST",
        wit::Method::Put => "PUT",
        wit::Method::Patch => "PATCH",
        wit::Method::Delete => "DELETE",
    }
}

/// How `request` differs from `expected`, one line per difference.
fn request_mismatches(expected: &ExpectRequest, request: &wit::HttpRequest) -> Vec<String> {
    let mut mismatches = Vec::new();
    let method = method_name(request.method);
    if let Some(want) = &expected.method
        && !want.eq_ignore_ascii_case(method)
    {
        mismatches.push(format!(
            "request method: expected {}, sent {method}",
            want.to_ascii_uppercase()
        ));
    }
    if let Some(want) = &expected.url
        && *want != request.url
    {
        mismatches.push(format!(
            "request url: expected {want:?}, sent {:?}",
            request.url
        ));
    }
    for (name, want) in &expected.headers {
        let sent: Vec<&str> = request
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        if !sent.contains(&want.as_str()) {
            let sent = match sent.as_slice() {
                [] => "none".to_string(),
                values => values
                    .iter()
                    .map(|v| format!("{v:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            mismatches.push(format!(
                "request header {name}: expected {want:?}, sent {sent}"
            ));
        }
    }
    if let Some(want) = &expected.body {
        match request.body.as_deref() {
            None => mismatches.push(format!("request body: expected {want}, sent none")),
            Some(bytes) => match serde_json::from_slice::<Value>(bytes) {
                Ok(sent) => mismatches.extend(body_mismatches(want, &sent)),
                Err(_) => {
                    let text = String::from_utf8_lossy(bytes);
                    if want.as_str() != Some(&*text) {
                        mismatches.push(format!(
                            "request body: expected {want}, sent {:?} (not JSON)",
                            truncate(&text, 200)
                        ));
                    }
                }
            },
        }
    }
    mismatches
}

fn truncate(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// How a JSON body differs from the expected one, one line per difference, each
/// naming its place as a JSON pointer. The rule: an expected object is a subset
/// (every key it names must match, others may be sent; `null` means the key is
/// absent or null); an array must have the same length, element by element; any
/// other value must be equal (numbers by value, so `1` matches `1.0`).
pub fn body_mismatches(expected: &Value, sent: &Value) -> Vec<String> {
    let mut mismatches = Vec::new();
    compare_json(expected, Some(sent), "", &mut mismatches);
    mismatches
}

fn compare_json(expected: &Value, sent: Option<&Value>, at: &str, out: &mut Vec<String>) {
    let place = if at.is_empty() { "/" } else { at };
    let describe = |value: Option<&Value>| match value {
        None => "nothing".to_string(),
        Some(value) => truncate(&value.to_string(), 200),
    };
    match (expected, sent) {
        (Value::Null, None | Some(Value::Null)) => {}
        (Value::Object(want), Some(Value::Object(got))) => {
            for (key, value) in want {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                compare_json(value, got.get(key), &format!("{at}/{escaped}"), out);
            }
        }
        (Value::Array(want), Some(Value::Array(got))) => {
            if want.len() != got.len() {
                out.push(format!(
                    "request body at {place}: expected {} items, sent {}: {}",
                    want.len(),
                    got.len(),
                    describe(sent)
                ));
                return;
            }
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                compare_json(w, Some(g), &format!("{at}/{i}"), out);
            }
        }
        (Value::Number(want), Some(Value::Number(got)))
            if want == got || want.as_f64() == got.as_f64() => {}
        (want, Some(got)) if want == got => {}
        (want, got) => out.push(format!(
            "request body at {place}: expected {}, sent {}",
            describe(Some(want)),
            describe(got)
        )),
    }
}

/// How `outcome` differs from `expect`, one line per difference.
fn outcome_mismatches(outcome: &wit::Outcome, expect: &Expect) -> Vec<String> {
    let mut mismatches = Vec::new();
    match (outcome, expect.outcome.as_str()) {
        (wit::Outcome::Completed(completion), "completed") => {
            if let Some(text) = &expect.text
                && completion.text.as_deref() != Some(text.as_str())
            {
                mismatches.push(format!(
                    "text: expected {text:?}, got {:?}",
                    completion.text
                ));
            }
            if let Some(assets) = expect.assets
                && completion.assets.len() != assets
            {
                mismatches.push(format!(
                    "assets: expected {assets}, got {}",
                    completion.assets.len()
                ));
            }
        }
        (wit::Outcome::Pending(_), "pending") => {}
        (wit::Outcome::Failed(failure), "failed") => {
            let code =
                serde_json::to_value(crate::error::Code::from(failure.code)).unwrap_or_default();
            if let Some(expected) = &expect.code
                && code.as_str() != Some(expected.as_str())
            {
                mismatches.push(format!("code: expected {expected}, got {code}"));
            }
            if let Some(retryable) = expect.retryable
                && failure.retryable != retryable
            {
                mismatches.push(format!(
                    "retryable: expected {retryable}, got {} ({code})",
                    failure.retryable
                ));
            }
            if let Some(retry_after_ms) = expect.retry_after_ms
                && failure.retry_after_ms != Some(retry_after_ms)
            {
                let got = failure
                    .retry_after_ms
                    .map_or("none".to_string(), |ms| ms.to_string());
                mismatches.push(format!(
                    "retry-after-ms: expected {retry_after_ms}, got {got}"
                ));
            }
        }
        (other, expected) => mismatches.push(format!(
            "outcome: expected {expected}, got {}",
            describe(other)
        )),
    }
    mismatches
}

fn describe(outcome: &wit::Outcome) -> String {
    match outcome {
        wit::Outcome::Completed(_) => "completed".into(),
        wit::Outcome::Pending(_) => "pending".into(),
        wit::Outcome::Failed(f) => format!("failed ({:?}: {})", f.code, f.message),
    }
}

/// What a completion shows that the host will not treat as the author likely means:
/// an asset it will refuse to fetch, usage it cannot price.
fn completion_warnings(
    manifest: &wit::Manifest,
    model: &wit::Model,
    completion: &wit::Completion,
) -> Vec<String> {
    let mut warnings = Vec::new();
    // As the host allows them when the operator names no hosts of their own: the
    // manifest's hosts and the base URL's.
    let allowed: Vec<HostPattern> = manifest
        .allowed_hosts
        .iter()
        .filter_map(|entry| HostPattern::parse(entry).ok())
        .chain(
            url::Url::parse(&manifest.default_base_url)
                .ok()
                .and_then(|url| HostPattern::of(&url)),
        )
        .collect();
    for asset in &completion.assets {
        let wit::AssetSource::Url(address) = &asset.source else {
            continue;
        };
        let parsed = url::Url::parse(address)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"));
        match parsed.as_ref().and_then(|url| Some((url, HostPattern::of(url)?))) {
            None => warnings.push(format!(
                "the output asset {address:?} is not an http(s) URL: the host will refuse to fetch it"
            )),
            Some((url, host)) if !allowed.iter().any(|pattern| pattern.matches(url)) => {
                warnings.push(format!(
                    "the output asset {address} is on {host}, which is not among the manifest's allowed-hosts: the host will refuse to fetch it"
                ))
            }
            Some(_) => {}
        }
    }
    if !Units::from(&completion.usage).meet(&model.price) {
        warnings.push(format!(
            "the completion's usage counts none of the units {} is priced by ({}): the host will charge the estimate instead",
            model.slug,
            priced_units(&model.price).join(", ")
        ));
    }
    warnings
}

fn priced_units(price: &wit::Price) -> Vec<&'static str> {
    [
        (price.per_image, "per-image"),
        (price.per_megapixel, "per-megapixel"),
        (price.per_second, "per-second"),
        (price.per_million_input_tokens, "per-million-input-tokens"),
        (price.per_million_output_tokens, "per-million-output-tokens"),
    ]
    .into_iter()
    .filter(|(unit_price, _)| *unit_price > 0)
    .map(|(_, name)| name)
    .collect()
}

/// Catalogue descriptions are shown to clients, who must not learn which provider
/// serves a model: a description naming the plugin, its base URL's host or one of
/// its allowed hosts (as a whole word, in any case) is warned about.
pub fn description_warnings(manifest: &wit::Manifest) -> Vec<String> {
    let base_host = url::Url::parse(&manifest.default_base_url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_string));
    let mut names: Vec<&str> = std::iter::once(manifest.name.as_str())
        .chain(base_host.as_deref())
        .chain(manifest.allowed_hosts.iter().map(String::as_str))
        .filter(|name| !name.trim().is_empty())
        .collect();
    // The longest first, so a warning names the host rather than the name in it.
    names.sort_by_key(|name| std::cmp::Reverse(name.len()));
    let mut warnings = Vec::new();
    for model in &manifest.models {
        if let Some(name) = names
            .iter()
            .find(|name| names_word(&model.description, name))
        {
            warnings.push(format!(
                "{}: the description names {name:?}; catalogue descriptions must not name a provider or its hosts",
                model.slug
            ));
        }
    }
    warnings
}

/// Whether `text` holds `word` in any case, not as part of a longer word.
fn names_word(text: &str, word: &str) -> bool {
    let (text, word) = (text.to_lowercase(), word.to_lowercase());
    let is_word_char = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(&word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::tests::{component, runtime};
    use serde_json::json;

    fn fixtures(json: Value) -> Vec<Fixture> {
        serde_json::from_value(json).unwrap()
    }

    fn shipped_fixtures(plugin: &str) -> Vec<Fixture> {
        let path = format!(
            "{}/../plugins/{plugin}/fixtures.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The report's failures as `name: why` lines, and its warnings.
    fn run_kit(wasm: &str, fixtures: &[Fixture]) -> (Vec<String>, Vec<String>) {
        let report = check(&runtime(Default::default()), &component(wasm), fixtures);
        let failures = report
            .checks
            .iter()
            .filter_map(|c| Some(format!("{}: {}", c.name, c.failure.as_ref()?)))
            .collect();
        (failures, report.warnings)
    }

    #[test]
    fn the_shipped_adapters_pass_their_fixtures_without_warnings() {
        for plugin in ["replicate", "openai"] {
            let fixtures = shipped_fixtures(plugin);
            assert!(
                fixtures.iter().any(|f| f.request.is_some()),
                "{plugin} has request fixtures"
            );
            let (failures, warnings) = run_kit(&format!("plugins/dist/{plugin}.wasm"), &fixtures);
            assert_eq!(failures, Vec::<String>::new(), "{plugin}");
            assert_eq!(warnings, Vec::<String>::new(), "{plugin}");
        }
    }

    #[test]
    fn the_readme_examples_are_fixtures_the_replicate_adapter_passes() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let section = readme
            .split("### Fixture files")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("the README documents the fixture files");
        let examples: Vec<Fixture> = section
            .split("```json\n")
            .skip(1)
            .map(|block| serde_json::from_str(block.split("```").next().unwrap()).unwrap())
            .collect();
        assert_eq!(examples.len(), 2);
        assert!(examples[0].response.is_some() && examples[1].request.is_some());
        let (failures, warnings) = run_kit("plugins/dist/replicate.wasm", &examples);
        assert_eq!(failures, Vec::<String>::new());
        assert_eq!(warnings, Vec::<String>::new());
    }

    #[test]
    fn a_fixture_is_a_request_a_response_or_both_never_unknown_fields() {
        let parsed = fixtures(json!([
            {"name": "r", "model": "m", "request": {"url": "https://x"}},
            {"name": "s", "model": "m", "input": {"prompt": "p"}, "request": {"body": {}},
             "response": {"status": 200, "body": "ok"}, "expect": {"outcome": "completed"}},
            {"name": "p", "model": "m", "job": {"id": "j"}, "request": {"method": "GET"}}
        ]));
        assert_eq!(parsed.len(), 3);
        for unknown in [
            json!({"name": "n", "model": "m", "request": {"verb": "GET"}}),
            json!({"name": "n", "model": "m", "expect": {"outcome": "failed", "retry_after": 1}}),
            json!({"name": "n", "model": "m", "submit": {}}),
        ] {
            let error = serde_json::from_value::<Fixture>(unknown.clone()).unwrap_err();
            assert!(
                error.to_string().contains("unknown field"),
                "{unknown}: {error}"
            );
        }
    }

    #[test]
    fn every_request_mismatch_is_one_line_saying_what_was_expected_and_what_came() {
        let bad = fixtures(json!([{
            "name": "bad submit",
            "model": "flux-1.1-pro",
            "input": {"prompt": "a lighthouse", "width": 512},
            "request": {
                "method": "put",
                "url": "https://api.replicate.com/v1/predictions",
                "headers": [["X-Key", "k"], ["CONTENT-TYPE", "application/json"]],
                "body": {"input": {"prompt": "a lighthouse", "width": 512.0, "height": 512}, "webhook": "https://hook"}
            }
        }, {
            "name": "bad poll",
            "model": "flux-1.1-pro",
            "job": {"id": "p1", "state": "{}"},
            "request": {"method": "GET", "url": "https://api.replicate.com/v1/predictions/p2"}
        }]));
        let (failures, _) = run_kit("plugins/dist/replicate.wasm", &bad);
        assert_eq!(
            failures,
            [
                "flux-1.1-pro: bad submit: request method: expected PUT, sent POST\n\
                 request url: expected \"https://api.replicate.com/v1/predictions\", sent \"https://api.replicate.com/v1/models/black-forest-labs/flux-1.1-pro/predictions\"\n\
                 request header X-Key: expected \"k\", sent none\n\
                 request body at /input/height: expected 512, sent 1024\n\
                 request body at /webhook: expected \"https://hook\", sent nothing",
                "flux-1.1-pro: bad poll: request url: expected \"https://api.replicate.com/v1/predictions/p2\", sent \"https://api.replicate.com/v1/predictions/p1\"",
            ]
        );
    }

    #[test]
    fn a_fixture_must_say_one_call_and_pair_response_with_expect() {
        let bad = fixtures(json!([
            {"name": "both", "model": "flux-1.1-pro", "input": {}, "job": {"id": "j"}, "request": {}},
            {"name": "neither", "model": "flux-1.1-pro"},
            {"name": "half", "model": "flux-1.1-pro", "response": {"status": 200, "body": {}}},
            {"name": "nobody", "model": "no-such-model", "request": {}}
        ]));
        let (failures, _) = run_kit("plugins/dist/replicate.wasm", &bad);
        assert_eq!(failures.len(), 4, "{failures:#?}");
        assert!(
            failures[0].contains("both input (a submit) and job (a poll)"),
            "{}",
            failures[0]
        );
        assert!(
            failures[1].contains("neither request nor response"),
            "{}",
            failures[1]
        );
        assert!(
            failures[2].contains("response and expect go together"),
            "{}",
            failures[2]
        );
        assert!(
            failures[3].contains("no model \"no-such-model\""),
            "{}",
            failures[3]
        );
    }

    #[test]
    fn the_body_rule_is_a_subset_of_objects_and_equality_of_the_rest() {
        let sent = json!({"a": 1, "b": {"c": [1, {"d": "x", "e": 2}], "f/g": true}, "n": null});
        for matching in [
            json!({}),
            json!({"a": 1.0}),
            json!({"b": {"c": [1, {"d": "x"}]}}),
            json!({"b": {"f/g": true}}),
            json!({"missing": null, "n": null}),
        ] {
            assert_eq!(
                body_mismatches(&matching, &sent),
                Vec::<String>::new(),
                "{matching}"
            );
        }
        assert_eq!(
            body_mismatches(
                &json!({"a": 2, "b": {"c": [1], "f/g": null}, "z": "q"}),
                &sent
            ),
            [
                "request body at /a: expected 2, sent 1",
                "request body at /b/c: expected 1 items, sent 2: [1,{\"d\":\"x\",\"e\":2}]",
                "request body at /b/f~1g: expected null, sent true",
                "request body at /z: expected \"q\", sent nothing",
            ]
        );
        assert_eq!(
            body_mismatches(&json!([1]), &json!({"a": 1})),
            ["request body at /: expected [1], sent {\"a\":1}"]
        );
    }

    #[test]
    fn an_adapter_answering_pending_must_poll_the_job_it_returned() {
        let pending = |model: &str, response: Value| {
            json!({"name": "pending", "model": model,
                   "response": {"status": 200, "body": response}, "expect": {"outcome": "pending"}})
        };
        let (failures, _) = run_kit(
            "target/test-plugins/hostile.wasm",
            &fixtures(json!([pending(
                "hostile-test",
                json!({"choices": [{"message": {"content": "pending"}}]})
            )])),
        );
        assert!(
            failures
                .iter()
                .any(|f| f
                    == "hostile-test: pending: answers pending but does not implement build-poll"),
            "{failures:#?}"
        );
        let (failures, _) = run_kit(
            "plugins/dist/replicate.wasm",
            &fixtures(json!([pending(
                "flux-1.1-pro",
                json!({"id": "p1", "status": "processing", "urls": {}})
            )])),
        );
        assert_eq!(failures, Vec::<String>::new());
    }

    #[test]
    fn a_failure_must_carry_the_expected_wait() {
        let throttled = |headers: Value, wait: u32| {
            json!({"name": format!("wait {wait}"), "model": "llama-3.1-8b-instruct",
                   "response": {"status": 429, "headers": headers, "body": {"error": {"message": "slow down"}}},
                   "expect": {"outcome": "failed", "code": "RATE_LIMITED", "retry_after_ms": wait}})
        };
        let (failures, _) = run_kit(
            "plugins/dist/openai.wasm",
            &fixtures(json!([
                throttled(json!([["retry-after-ms", "1500"]]), 1500),
                throttled(json!([["retry-after", "2"]]), 1500),
                throttled(json!([]), 1500),
            ])),
        );
        assert_eq!(
            failures,
            [
                "llama-3.1-8b-instruct: wait 1500: retry-after-ms: expected 1500, got 2000",
                "llama-3.1-8b-instruct: wait 1500: retry-after-ms: expected 1500, got none",
            ]
        );
    }

    #[test]
    fn assets_off_the_allowed_hosts_and_usage_the_price_cannot_read_are_warned_about() {
        let prediction = |output: Value| {
            json!({"name": "done", "model": "flux-1.1-pro", "job": {"id": "p1"},
                   "response": {"status": 200, "body": {"id": "p1", "status": "succeeded", "output": output}},
                   "expect": {"outcome": "completed"}})
        };
        let (failures, warnings) = run_kit(
            "plugins/dist/replicate.wasm",
            &fixtures(json!([
                prediction(json!([
                    "https://replicate.delivery/a.png",
                    "https://api.replicate.com/b.png"
                ])),
                prediction(json!([
                    "https://cdn.example.com/c.png",
                    "ftp://replicate.delivery/d.png"
                ])),
            ])),
        );
        assert_eq!(failures, Vec::<String>::new());
        assert_eq!(
            warnings,
            [
                "flux-1.1-pro: done: the output asset https://cdn.example.com/c.png is on cdn.example.com, which is not among the manifest's allowed-hosts: the host will refuse to fetch it",
                "flux-1.1-pro: done: the output asset \"ftp://replicate.delivery/d.png\" is not an http(s) URL: the host will refuse to fetch it",
            ]
        );

        let chat = |usage: Value| {
            json!({"name": "chat", "model": "llama-3.1-8b-instruct",
                   "response": {"status": 200, "body": {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage}},
                   "expect": {"outcome": "completed", "text": "hi"}})
        };
        let (failures, warnings) = run_kit(
            "plugins/dist/openai.wasm",
            &fixtures(json!([
                chat(json!({"prompt_tokens": 0, "completion_tokens": 2})),
                chat(json!(null)),
            ])),
        );
        assert_eq!(failures, Vec::<String>::new());
        assert_eq!(
            warnings,
            [
                "llama-3.1-8b-instruct: chat: the completion's usage counts none of the units llama-3.1-8b-instruct is priced by (per-million-input-tokens, per-million-output-tokens): the host will charge the estimate instead"
            ]
        );
    }

    #[test]
    fn a_description_naming_the_provider_or_its_hosts_is_warned_about() {
        let model = |slug: &str, description: &str| wit::Model {
            slug: slug.into(),
            provider_model: String::new(),
            modality: wit::Modality::Image,
            description: description.into(),
            input_schema: String::new(),
            example_input: String::new(),
            price: wit::Price {
                per_request: 0,
                per_image: 1,
                per_megapixel: 0,
                per_second: 0,
                per_million_input_tokens: 0,
                per_million_output_tokens: 0,
            },
        };
        let manifest = wit::Manifest {
            name: "fal".into(),
            default_base_url: "https://queue.fal.run".into(),
            allowed_hosts: vec!["v3.fal.media".into(), "cdn.example:8443".into()],
            models: vec![
                model(
                    "neutral",
                    "Fast text-to-image; falls back to a default size.",
                ),
                model("named", "Served by FAL."),
                model("base", "See queue.FAL.run for details."),
                model("asset", "Images land on v3.fal.media."),
                model("port", "Mirrored at cdn.example:8443."),
            ],
            ..super::super::runtime::empty_manifest()
        };
        assert_eq!(
            description_warnings(&manifest),
            [
                "named: the description names \"fal\"; catalogue descriptions must not name a provider or its hosts",
                "base: the description names \"queue.fal.run\"; catalogue descriptions must not name a provider or its hosts",
                "asset: the description names \"v3.fal.media\"; catalogue descriptions must not name a provider or its hosts",
                "port: the description names \"cdn.example:8443\"; catalogue descriptions must not name a provider or its hosts",
            ]
        );
    }

    #[test]
    fn a_large_component_is_reported_with_a_hint_about_the_release_profile() {
        assert_eq!(describe_size(152_801), "149 KB (152801 bytes)");
        assert_eq!(size_warning(152_801), None);
        let large = 2_700_000;
        assert_eq!(describe_size(large), "2.6 MB (2700000 bytes)");
        let warning = size_warning(large).expect("a 2.6 MB component is warned about");
        assert!(warning.contains("2.6 MB"), "{warning}");
        assert!(warning.contains("[profile.release]"), "{warning}");
    }
}
