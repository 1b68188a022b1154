//! The conformance kit behind `modelroute plugin check`: loads a plugin as the server
//! would, then runs it against fixtures — the kit's own (how every adapter must treat
//! common provider failures) and the author's recorded exchanges.

use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

use super::{LoadedPlugin, Runtime, wit};

/// One recorded exchange and what the adapter must make of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub name: String,
    pub model: String,
    /// the provider job being polled, if the response answers a poll
    #[serde(default)]
    pub job: Option<FixtureJob>,
    pub response: FixtureResponse,
    pub expect: Expect,
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

#[derive(Debug, Clone, Deserialize)]
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
    /// for `completed`: the text output
    #[serde(default)]
    pub text: Option<String>,
    /// for `completed`: how many assets
    #[serde(default)]
    pub assets: Option<usize>,
}

pub struct Check {
    pub name: String,
    pub failure: Option<String>,
}

/// Runs every check; a plugin that does not load fails the first one and stops.
pub fn check(runtime: &Arc<Runtime>, wasm: &[u8], fixtures: &[Fixture]) -> Vec<Check> {
    let mut checks = Vec::new();
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
            return checks;
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
    for model in &plugin.manifest.models {
        for (name, fixture) in own_fixtures(&model.slug) {
            record(format!("{}: {name}", model.slug), run(&plugin, &fixture));
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
            run(&plugin, fixture),
        );
    }
    checks
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
            job: None,
            response: FixtureResponse {
                status,
                headers,
                body,
            },
            expect: Expect {
                outcome: "failed".into(),
                code: code.map(str::to_string),
                retryable: Some(true),
                text: None,
                assets: None,
            },
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

fn run(plugin: &LoadedPlugin, fixture: &Fixture) -> Result<(), String> {
    let model = plugin
        .model(&fixture.model)
        .ok_or_else(|| format!("the manifest has no model {:?}", fixture.model))?;
    let ctx = wit::CallContext {
        slug: model.slug.clone(),
        provider_model: model.provider_model.clone(),
        base_url: plugin.manifest.default_base_url.clone(),
        attempt_id: "att_conformance".into(),
        callback_url: None,
        files: Vec::new(),
        stream: false,
    };
    let answered = match &fixture.job {
        Some(job) => wit::Answered::Poll(wit::Job {
            id: job.id.clone(),
            state: job.state.clone(),
        }),
        None => wit::Answered::Submit(model.example_input.clone()),
    };
    let response = wit::HttpResponse {
        status: fixture.response.status,
        headers: fixture.response.headers.clone(),
        body: match &fixture.response.body {
            Value::String(text) => text.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        },
    };
    let outcome = plugin
        .call("parse-response", |adapter, store| {
            adapter.call_parse_response(store, &ctx, &answered, &response)
        })
        .map_err(|e| e.to_string())?;
    let expect = &fixture.expect;
    match (&outcome, expect.outcome.as_str()) {
        (wit::Outcome::Completed(completion), "completed") => {
            if let Some(text) = &expect.text
                && completion.text.as_deref() != Some(text.as_str())
            {
                return Err(format!("text {:?}, expected {text:?}", completion.text));
            }
            if let Some(assets) = expect.assets
                && completion.assets.len() != assets
            {
                return Err(format!(
                    "{} assets, expected {assets}",
                    completion.assets.len()
                ));
            }
            Ok(())
        }
        (wit::Outcome::Pending(_), "pending") => Ok(()),
        (wit::Outcome::Failed(failure), "failed") => {
            let code =
                serde_json::to_value(crate::error::Code::from(failure.code)).unwrap_or_default();
            if let Some(expected) = &expect.code
                && code.as_str() != Some(expected.as_str())
            {
                return Err(format!("code {code}, expected {expected}"));
            }
            if let Some(retryable) = expect.retryable
                && failure.retryable != retryable
            {
                return Err(format!(
                    "retryable {}, expected {retryable} ({code})",
                    failure.retryable
                ));
            }
            Ok(())
        }
        (other, expected) => Err(format!("got {}, expected {expected}", describe(other))),
    }
}

fn describe(outcome: &wit::Outcome) -> String {
    match outcome {
        wit::Outcome::Completed(_) => "completed".into(),
        wit::Outcome::Pending(_) => "pending".into(),
        wit::Outcome::Failed(f) => format!("failed ({:?}: {})", f.code, f.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
