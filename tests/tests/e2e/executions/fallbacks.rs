//! Model fallbacks (SPEC §11): when every provider of a model has failed, the
//! execution goes on with the next model the client (or the operator) named; the
//! hold covers the most expensive one, the answer names the model that served, and
//! the failed attempts cost nothing.

use super::*;
use crate::support::decimal;

const SMALL: &str = "llama-3.1-8b-instruct";
const LARGE: &str = "llama-3.1-70b-instruct";

fn chat(model: &str, fallbacks: Value) -> Value {
    json!({
        "model": model,
        "fallback_models": fallbacks,
        "mode": "SYNC",
        "input": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64},
    })
}

/// One OpenAI-format provider per model, on its own emulator, so that each model's
/// providers can fail on their own.
struct Setup {
    small: Emulator<openai::OpenAi>,
    large: Emulator<openai::OpenAi>,
    server: Server,
}

async fn setup(executions: &str) -> Setup {
    setup_with(Options {
        executions,
        ..Options::default()
    })
    .await
}

async fn setup_with(options: Options<'_>) -> Setup {
    let small = openai_emulator().await;
    let large = openai_emulator().await;
    let server = Server::start_with(
        &[
            ProviderSpec {
                name: "small-host",
                adapter: "openai",
                base_url: small.base_url(),
                models: &[SMALL, "flux-1.1-pro"],
            },
            ProviderSpec {
                name: "large-host",
                adapter: "openai",
                base_url: large.base_url(),
                models: &[LARGE],
            },
        ],
        options,
    )
    .await;
    Setup {
        small,
        large,
        server,
    }
}

fn always_overloaded() -> Option<Fault> {
    Some(Fault::Status {
        status: 503,
        retry_after: None,
        body: None,
    })
}

#[tokio::test]
async fn a_model_whose_providers_all_fail_goes_on_with_its_fallback_and_names_it() {
    let Setup {
        small,
        large,
        server,
    } = setup("max_attempts = 3").await;
    small.set_always(always_overloaded());

    let reply = server
        .post("/v1/executions", chat(SMALL, json!([LARGE])))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let execution = reply.body;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(
        execution["model"], LARGE,
        "the answer names the model that served"
    );
    assert_eq!(execution["fallback_models"], json!([LARGE]));
    // The only provider of the small model failed once: no retry on it, the
    // fallback went at once.
    assert_eq!(small.count("/v1/chat/completions"), 1);
    assert_eq!(large.count("/v1/chat/completions"), 1);
    let asked: Value = serde_json::from_str(&large.requests()[0].body).unwrap();
    assert_eq!(
        asked["model"],
        "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"
    );

    // The hold covered the larger model, the client paid the answer it got, and
    // the failed attempt cost nothing.
    let id = execution["id"].as_str().unwrap();
    let hold = decimal(execution["hold_amount"].as_str().unwrap());
    let cost = decimal(execution["cost"].as_str().unwrap());
    assert!(
        cost > rust_decimal::Decimal::ZERO && cost <= hold,
        "{execution}"
    );
    let ledger = server.get("/v1/ledger").await.body;
    let settled: Vec<&Value> = ledger["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["execution_id"] == id && e["kind"] == "settle")
        .collect();
    assert_eq!(settled.len(), 1, "{ledger}");
    assert_eq!(decimal(settled[0]["amount"].as_str().unwrap()), cost);
    let verified = server.admin_get("/admin/v1/ledger/verify").await.body;
    assert_eq!(verified["consistent"], json!(true), "{verified}");

    // Listed under the model that served.
    let listed = server
        .get(&format!("/v1/executions?model={LARGE}"))
        .await
        .body;
    assert_eq!(listed["data"][0]["id"], json!(id), "{listed}");
}

#[tokio::test]
async fn the_hold_covers_the_most_expensive_candidate() {
    // The emulators must outlive the server's requests: bound, not dropped.
    let Setup {
        server,
        small: _small,
        large: _large,
    } = setup("").await;
    // A long prompt, so that the holds are above the minimum hold.
    let long = |model: &str, fallbacks: Value| {
        let mut body = chat(model, fallbacks);
        body["input"]["messages"][0]["content"] = json!("lorem ipsum ".repeat(5000));
        body["input"]["max_tokens"] = json!(4096);
        body
    };
    let alone = server.post("/v1/executions", long(SMALL, json!([]))).await;
    let with_large = server
        .post("/v1/executions", long(SMALL, json!([LARGE])))
        .await;
    let large = server.post("/v1/executions", long(LARGE, json!([]))).await;
    for reply in [&alone, &with_large, &large] {
        assert_eq!(reply.body["status"], "COMPLETED", "{:?}", reply.body);
    }
    let hold = |reply: &crate::support::Reply| decimal(reply.body["hold_amount"].as_str().unwrap());
    assert!(
        hold(&alone) < hold(&large),
        "{:?} {:?}",
        alone.body,
        large.body
    );
    assert_eq!(hold(&with_large), hold(&large));
    // Served by the first model: it pays the first model's price.
    assert_eq!(with_large.body["model"], SMALL);
    assert_eq!(with_large.body["cost"], alone.body["cost"]);
}

#[tokio::test]
async fn fallbacks_are_checked_before_anything_is_created() {
    // The emulators must outlive the server's requests: bound, not dropped.
    let Setup {
        server,
        small: _small,
        large: _large,
    } = setup("").await;
    let cases = [
        (
            json!(["no-such-model"]),
            "fallback_models[0]",
            "unknown model",
        ),
        (
            json!([LARGE, LARGE]),
            "fallback_models[1]",
            "already a model",
        ),
        (json!([SMALL]), "fallback_models[0]", "already a model"),
        (json!(["flux-1.1-pro"]), "fallback_models[0]", "modality"),
        (json!([""]), "fallback_models[0]", "non-empty"),
        (json!("llama"), "fallback_models", "array"),
        (
            json!([LARGE, LARGE, LARGE, LARGE, LARGE]),
            "fallback_models",
            "at most",
        ),
    ];
    for (fallbacks, field, says) in cases {
        let reply = server
            .post("/v1/executions", chat(SMALL, fallbacks.clone()))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{fallbacks}: {:?}",
            reply.body
        );
        let error = &reply.body["error"];
        assert_eq!(error["code"], "INPUT_VALIDATION_ERROR");
        let detail = &error["details"][0];
        assert_eq!(detail["field"], field, "{fallbacks}: {error}");
        assert!(
            detail["message"].as_str().unwrap().contains(says),
            "{fallbacks}: {error}"
        );
    }
    let listed = server.get("/v1/executions").await.body;
    assert_eq!(
        listed["data"],
        json!([]),
        "a refused request created something"
    );
    let balance = server.get("/v1/balance").await.body;
    assert_eq!(balance["held"], "0");
}

#[tokio::test]
async fn the_operators_default_fallbacks_apply_unless_the_client_names_its_own() {
    let executions = format!(
        "max_attempts = 2\n[executions.models.\"{SMALL}\"]\nfallback_models = [\"{LARGE}\"]"
    );
    let Setup {
        small,
        large,
        server,
    } = setup(&executions).await;
    small.set_always(always_overloaded());

    let defaulted = server
        .post(
            "/v1/executions",
            json!({"model": SMALL, "mode": "SYNC", "input": {"messages": [{"role": "user", "content": "hi"}]}}),
        )
        .await
        .body;
    assert_eq!(defaulted["status"], "COMPLETED", "{defaulted}");
    assert_eq!(defaulted["model"], LARGE);
    assert_eq!(large.count("/v1/chat/completions"), 1);

    // `[]` asks for none: the small model's failures are the end.
    let alone = server
        .post("/v1/executions", chat(SMALL, json!([])))
        .await
        .body;
    assert_eq!(alone["status"], "FAILED", "{alone}");
    assert_eq!(alone["model"], SMALL);
    assert_eq!(alone["error"]["code"], "MODEL_OVERLOADED");
    assert!(alone.get("fallback_models").is_none(), "{alone}");
    assert_eq!(large.count("/v1/chat/completions"), 1);
}

fn refusal(code: &str, message: &str) -> Option<Fault> {
    Some(Fault::Status {
        status: 400,
        retry_after: None,
        body: Some(
            json!({"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": code}})
                .to_string(),
        ),
    })
}

/// A model's refusal of the input (too long for its context, against its policy)
/// is not retried on the model (no other provider of it is asked), but a fallback
/// model may take it, as OpenRouter does; without one the execution fails with the
/// refusal's code.
#[tokio::test]
async fn a_model_that_refuses_the_input_hands_it_to_the_fallback_not_to_its_other_providers() {
    let small = openai_emulator().await;
    let small_too = openai_emulator().await;
    let large = openai_emulator().await;
    let server = Server::start(&[
        ProviderSpec {
            name: "small-host",
            adapter: "openai",
            base_url: small.base_url(),
            models: &[SMALL],
        },
        ProviderSpec {
            name: "small-host-too",
            adapter: "openai",
            base_url: small_too.base_url(),
            models: &[SMALL],
        },
        ProviderSpec {
            name: "large-host",
            adapter: "openai",
            base_url: large.base_url(),
            models: &[LARGE],
        },
    ])
    .await;
    let too_long = "This model's maximum context length is 8192 tokens.";
    small.set_always(refusal("context_length_exceeded", too_long));
    small_too.set_always(refusal("context_length_exceeded", too_long));
    let served = server
        .post("/v1/executions", chat(SMALL, json!([LARGE])))
        .await
        .body;
    assert_eq!(served["status"], "COMPLETED", "{served}");
    assert_eq!(served["model"], LARGE);
    let asked = small.count("/v1/chat/completions") + small_too.count("/v1/chat/completions");
    assert_eq!(asked, 1, "the refusing model was asked once");

    let policy = "Your request was rejected as a result of our safety system.";
    small.set_always(refusal("content_policy_violation", policy));
    small_too.set_always(refusal("content_policy_violation", policy));
    let failed = server
        .post("/v1/executions", chat(SMALL, json!([])))
        .await
        .body;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["model"], SMALL);
    assert_eq!(failed["error"]["code"], "CONTENT_MODERATION_REJECTED");
    let asked = small.count("/v1/chat/completions") + small_too.count("/v1/chat/completions");
    assert_eq!(asked, 2, "not retried on the same model");
    assert_eq!(large.count("/v1/chat/completions"), 1);
    server.assert_ledger_verifies().await;
}

/// A provider down for a while, then healthy: its breaker opens and executions go
/// straight to the fallback model (the primary is no longer asked); once it has
/// recovered and the cool-down has passed (on the driven clock), the primary serves
/// again.
#[tokio::test]
async fn during_an_outage_the_fallback_serves_and_the_primary_returns_after() {
    let Setup {
        small,
        large,
        server,
    } = setup_with(Options {
        config: "[testing]\nclock_control = true",
        ..Options::default()
    })
    .await;
    small.set_always(always_overloaded());
    for _ in 0..8 {
        let served = server
            .post("/v1/executions", chat(SMALL, json!([LARGE])))
            .await
            .body;
        assert_eq!(served["status"], "COMPLETED", "{served}");
        assert_eq!(served["model"], LARGE);
    }
    let tried = small.count("/v1/chat/completions");
    assert!(tried <= 6, "the breaker should open, not {tried} requests");
    assert_eq!(large.count("/v1/chat/completions"), 8);

    small.set_always(None);
    server.advance_clock(11).await;
    for _ in 0..3 {
        let served = server
            .post("/v1/executions", chat(SMALL, json!([LARGE])))
            .await
            .body;
        assert_eq!(served["model"], SMALL, "{served}");
    }
    assert_eq!(small.count("/v1/chat/completions"), tried + 3);
    assert_eq!(large.count("/v1/chat/completions"), 8);
    server.assert_ledger_verifies().await;
}

#[test]
fn a_start_with_a_bad_default_fallback_names_the_field() {
    let executions =
        format!("[executions.models.\"{SMALL}\"]\nfallback_models = [\"flux-1.1-pro\"]");
    let printed = Server::refused(
        &[ProviderSpec {
            name: "small-host",
            adapter: "openai",
            base_url: "http://127.0.0.1:9".into(),
            models: &[SMALL, "flux-1.1-pro"],
        }],
        Options {
            executions: &executions,
            ..Options::default()
        },
    );
    let field = format!("executions.models.\"{SMALL}\".fallback_models[0]");
    assert!(
        printed.contains(&field) && printed.contains("modality"),
        "{printed}"
    );
}
